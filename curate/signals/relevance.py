"""Relevance to the target task (RDS-style): cosine of each row's embedding to the validation set.

Rows use the run's current embeddings (curate.embed.load_vectors); the validation rows are embedded with
the same encoder (model path, dtype and text fields read from the run's embeddings/current.json), the
"prompt" field being the question's text and "response" the answer, joined by a newline as the embed
stage does. mode "mean": cosine to the normalised mean validation embedding; "max": the highest cosine
to any validation row.
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
    from curate.embed import current_fingerprint, load_vectors
    from index.embed import Encoder
    from index.io import read_json

    if ctx.validation is None:
        raise ValueError("relevance needs a validation set: pass validation=PATH (CLI --validation)")
    fp = current_fingerprint(ctx.rd.root)
    cur = read_json(ctx.rd.root / "embeddings" / "current.json")
    fields = list(cur.get("fields") or ["prompt", "response"])
    n_val = ctx.param("n_val", 32)
    val = read_validation(ctx.validation, None if n_val is None else int(n_val), int(ctx.param("icl_seed", 0)))
    texts = []
    for item in val:
        parts = {"prompt": item.question_text, "response": item.answer}
        missing = [f for f in fields if f not in parts]
        if missing:
            raise ValueError(f"embeddings of {ctx.rd.root} use field(s) {missing} that a validation row lacks")
        texts.append("\n".join(parts[f] for f in fields))
    enc = Encoder.load(cur["model_path"], dtype=cur.get("dtype", "float32"), device=ctx.device or "auto")
    if enc.fingerprint_with({"fields": fields}) != fp:  # embedded with an explicit max_seq_length?
        from curate.embed import embedding_meta

        msl = embedding_meta(ctx.rd.root, fp).get("max_seq_length")
        enc = Encoder.load(cur["model_path"], dtype=cur.get("dtype", "float32"), device=ctx.device or "auto",
                           max_seq_length=msl)
        if enc.fingerprint_with({"fields": fields}) != fp:
            raise ValueError(
                f"cannot rebuild the encoder of embeddings {fp} (model {cur['model_path']}): re-run `curate embed`"
            )
    vectors = load_vectors(ctx.rd.root, fp)
    return relevance_scores(vectors, enc.encode(texts), ctx.param("relevance_mode", "mean"))
