"""curate: a data-curation engine for LLM fine-tuning pools.

Layers (imports go downward only): train > mix > select > signals > export > pool > index.
"""

__version__ = "0.1.0"
