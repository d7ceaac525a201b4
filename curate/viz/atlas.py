"""An Embedding Atlas-ready parquet of a run: one row per pool row, in pool order.

Columns: id, x, y, text (prompt, a blank line, response), domain, kind, cell, cluster, every stored signal,
`sel_<name>` (bool) per selection, and `neighbors`, a struct {ids: list<int64>, distances: list<float32>}
per row as `embedding-atlas --neighbors` reads it: ids are zero-based row numbers of this file (= pool
positions) and distances are cosine distances (1 - cosine similarity) from the run's kNN graph, nearest first.
Open it with

    embedding-atlas <run>/atlas.parquet --text text --x x --y y --neighbors neighbors
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from curate.run import RunDir
from index.io import atomic_path


def atlas_path(run: RunDir | str | os.PathLike) -> Path:
    """Where `export_map` writes by default: <run>/atlas.parquet."""
    return RunDir(run).atlas_path


def flag_column(name: str) -> str:
    """`sel_<name>` with characters other than letters, digits and _ replaced by _ (plain SQL identifiers)."""
    return "sel_" + re.sub(r"\W", "_", name)


def neighbors_column(neighbors: np.ndarray, sims: np.ndarray):
    """The kNN graph as an arrow struct column {ids, distances}; -1 (missing) neighbours are left out."""
    import pyarrow as pa

    neighbors = np.asarray(neighbors, dtype=np.int64)
    keep = neighbors >= 0
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    dist = np.clip(1.0 - np.asarray(sims, dtype=np.float32), 0.0, 2.0).astype(np.float32)
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(neighbors[keep]))
    dists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(dist[keep]))
    return pa.StructArray.from_arrays([ids, dists], names=["ids", "distances"])


def export_map(
    run: RunDir | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    selections: Sequence[str] | None = None,
    signals: Sequence[str] | None = None,
    neighbors: bool = True,
) -> Path:
    """Write the Atlas parquet of `run` (default <run>/atlas.parquet) and return its path.

    Needs the map (`curate map`) and, with `neighbors`, the kNN graph (`curate index`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.inspect import map_frame
    from curate.view import PoolView

    rd = RunDir(run)
    view = PoolView.from_run(rd)
    frame = map_frame(rd, selections=selections, signals=signals)
    pool = view.frame
    text = pool["prompt"].fill_null("") + "\n\n" + pool["response"].fill_null("")
    renamed = {c: flag_column(c[4:]) for c in frame.columns if c.startswith("sel:")}
    clash = {v for v in renamed.values() if list(renamed.values()).count(v) > 1}
    if clash:
        raise ValueError(f"selection names collide as Atlas columns: {sorted(clash)}")
    table = (
        frame.rename(renamed)
        .with_columns(text=text, kind=pool["kind"])
        .select("id", "x", "y", "text", "domain", "kind", pl.exclude("id", "x", "y", "text", "domain", "kind"))
        .to_arrow()
    )
    if neighbors:
        graph = view.knn()
        table = table.append_column("neighbors", neighbors_column(graph.neighbors, graph.sims))
    target = Path(out) if out is not None else atlas_path(rd)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, suffix=".parquet") as tmp:
        pq.write_table(pa.table(table), tmp)
        os.chmod(tmp, 0o644)  # readable like any other export, not private like a temp file
    return target
