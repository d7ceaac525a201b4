"""Resumable per-row arrays: rows computed in shards (index.io.run_shards), each a small parquet file.

A killed run keeps its finished shards and resumes with the first missing one. The folder's `meta.json`
holds the key; a folder whose key differs is cleared before computing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from index.io import read_json, run_shards, shard_name, write_json


def cached_rows(
    folder: Path,
    n_rows: int,
    shard_rows: int,
    key: dict,
    work: Callable[[int, int], dict[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Arrays of all rows, computing `work(lo, hi)` only for shards not on disk; also the shards computed."""
    import polars as pl

    folder = Path(folder)
    meta = folder / "meta.json"
    want = {"key": key, "n_rows": n_rows, "shard_rows": shard_rows}
    if folder.exists() and (not meta.exists() or read_json(meta) != _jsonable(want)):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(meta, want)
    n_shards = max(1, -(-n_rows // shard_rows))

    def run(i: int, tmp: Path) -> None:
        lo, hi = i * shard_rows, min(n_rows, (i + 1) * shard_rows)
        cols = work(lo, hi)
        pl.DataFrame({k: np.asarray(v) for k, v in cols.items()}).write_parquet(tmp)

    done = run_shards(folder, n_shards, "parquet", run)
    frames = [pl.read_parquet(folder / shard_name(i, "parquet")) for i in range(n_shards)]
    df = pl.concat(frames) if frames else pl.DataFrame()
    if df.height != n_rows:
        raise RuntimeError(f"{folder}: shards hold {df.height} rows, expected {n_rows}; delete the folder")
    return {c: df[c].to_numpy() for c in df.columns}, done


def _jsonable(obj):
    import json

    return json.loads(json.dumps(obj, sort_keys=True, default=str))
