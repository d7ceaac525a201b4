"""The nearest neighbours of one pool row, from the run's kNN graph, as a table of texts."""

from __future__ import annotations

import os

import numpy as np
import polars as pl

from curate.run import RunDir
from curate.view import PoolView


def _shorten(text: str | None, chars: int | None) -> str:
    text = "" if text is None else str(text)
    if chars is None or len(text) <= chars:
        return text
    return text[: max(chars - 1, 0)] + "…"


def neighbours(
    run: RunDir | str | os.PathLike | PoolView,
    row: int | str,
    k: int = 10,
    *,
    chars: int | None = 300,
) -> pl.DataFrame:
    """Row `row` (pool position or id) then its k nearest neighbours: rank, position, id, domain, similarity,
    prompt and response (cut to `chars` characters). Similarity is the graph's cosine."""
    view = run if isinstance(run, PoolView) else PoolView.from_run(run)
    ids = view.ids
    if isinstance(row, str):
        hits = np.flatnonzero(ids == row)
        if not hits.size:
            raise KeyError(f"id {row!r} is not in the pool")
        pos = int(hits[0])
    else:
        pos = int(row)
        if not 0 <= pos < view.n:
            raise IndexError(f"row {pos} is outside the pool (0..{view.n - 1})")
    graph = view.knn()
    nb, sims = graph.neighbors[pos, :k], graph.sims[pos, :k]
    keep = nb >= 0  # approximate graphs mark missing neighbours with -1
    positions = [pos, *nb[keep].tolist()]
    similarity = [1.0, *sims[keep].astype(float).tolist()]
    frame = view.frame
    return pl.DataFrame(
        {
            "rank": list(range(len(positions))),
            "position": positions,
            "id": [ids[p] for p in positions],
            "domain": [frame["domain"][p] for p in positions],
            "similarity": similarity,
            "prompt": [_shorten(frame["prompt"][p], chars) for p in positions],
            "response": [_shorten(frame["response"][p], chars) for p in positions],
        },
        schema_overrides={"domain": pl.String},
    )
