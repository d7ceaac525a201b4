"""Relevance to the target task (RDS-style): cosine of each row's embedding to the validation set.

Rows use the run's current embeddings (the score context's PoolView); the validation rows are embedded with
the same encoder (model path, dtype and text fields read from the run's embeddings/current.json), the
"prompt" field being the question's text and "response" the answer, joined by a newline as the embed
stage does. mode "mean": cosine to the normalised mean validation embedding; "max": the highest cosine
to any validation row. The validation rows are the seeded sample of `n_val` (default 32, `icl_seed`) that the
ICL signals also use: a larger file is sampled; `n_val=None` takes every row.
"""

from __future__ import annotations

import numpy as np

from curate.signals.base import ScoreContext, signal
from curate.signals.validation import read_validation


def relevance_scores(vectors: np.ndarray, val_vectors: np.ndarray, mode: str = "mean", chunk: int = 65536) -> np.ndarray:
    """Cosine relevance of unit row vectors to unit validation vectors ('mean' centroid or 'max')."""
    val = np.asarray(val_vectors, dtype=np.float32)
    if mode == "mean":
        c = val.mean(axis=0)
        norm = np.linalg.norm(c)
        if norm == 0:
            raise ValueError("the validation embeddings average to zero")
        target = (c / norm)[:, None]
    elif mode != "max":
        raise ValueError(f"relevance_mode must be 'mean' or 'max', got {mode!r}")
    out = np.empty(len(vectors), dtype=np.float64)
    for lo in range(0, len(vectors), chunk):
        block = np.asarray(vectors[lo : lo + chunk], dtype=np.float32)
        if mode == "mean":
            out[lo : lo + chunk] = (block @ target)[:, 0]
        else:
            out[lo : lo + chunk] = (block @ val.T).max(axis=1)
    return out


@signal("relevance", params={"relevance_mode": "mean", "n_val": 32, "icl_seed": 0}, roles=("embedder", "validation"))
def _relevance(ctx: ScoreContext) -> np.ndarray:
    """Cosine of the row's embedding to the validation set's mean embedding (or max cosine)."""
    from curate.signals.decontam import encode_like_pool

    if ctx.validation is None:
        raise ValueError("relevance needs a validation set: pass validation=PATH (CLI --validation)")
    n_val = ctx.param("n_val", 32)
    val = read_validation(ctx.validation, None if n_val is None else int(n_val), int(ctx.param("icl_seed", 0)))
    val_vectors = encode_like_pool(ctx.rd, val, ctx.device)
    return relevance_scores(ctx.view.vectors(), val_vectors, ctx.param("relevance_mode", "mean"))
