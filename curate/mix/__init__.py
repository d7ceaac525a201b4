"""Domain-mixture optimisers that train in the loop: IDEAL (`curate.mix.ideal`) and AutoMixAlign (`curate.mix.ama`).

Each writes `<run>/mixtures/<name>.json` ({"method", "domains", "rounds": [{"round", "weights", ...}], ...}),
the layout `curate train --mixture NAME` and the report read; training goes through `curate.train`.
"""
