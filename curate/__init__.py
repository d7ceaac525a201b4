"""curate: a data-curation engine for LLM fine-tuning pools.

Layers (imports go downward only): mix > train > select > signals > export > pool > index.
"""

__version__ = "0.1.0"
