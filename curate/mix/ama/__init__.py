"""AutoMixAlign (Corrado et al., ACL 2025): task (domain) mixing against per-task specialists.

    from curate.mix.ama import ama
    res = ama("runs/x", "sel", method="ama-s", model="smollm2", lora=True, max_steps=500)
    res.mixture            # <run>/mixtures/ama.json, usable by `curate train --mixture ama`

Modules: `optim` (EXP3 for AMA-S, exponentiated gradient for AMA-R / DoReMi), `objective` (the clipped excess
loss as the training module's row objective, and the per-step task-weight update), `specialists` (per-task
models and their cached per-row losses), `run` (the driver and the baselines). docs/methods.md describes what
follows the paper and what is reconstructed.
"""

from curate.mix.ama.objective import ExcessObjective
from curate.mix.ama.optim import Exp3, ExpGrad
from curate.mix.ama.run import METHODS, AmaResult, ama

__all__ = ["METHODS", "AmaResult", "ExcessObjective", "Exp3", "ExpGrad", "ama"]
