"""Resumable per-row arrays: rows computed in shards, each a small parquet file, by an executor.

A killed run keeps its finished shards and resumes with the first missing one. The folder's `meta.json`
holds the key; a folder whose key differs is cleared before computing. `cached_job` takes a shard job
(`index.io.ShardJob`, picklable: what the Ray executor needs); `cached_rows` wraps a plain function of
(lo, hi) for work that stays in this process.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.io import ShardJob, read_json, run_job, shard_name, write_json


def write_columns(path: Path, cols: dict[str, np.ndarray]) -> None:
    """One shard: the arrays as the columns of a parquet file."""
    import polars as pl

    pl.DataFrame({k: np.asarray(v) for k, v in cols.items()}).write_parquet(path)


@dataclass
class _InProcess:
    """A (lo, hi) -> columns function as a shard job; runs only in this process (it may hold live objects)."""

    work: Callable[[int, int], dict[str, np.ndarray]]
    n_rows: int
    shard_rows: int

    def setup(self) -> None:
        return None

    def run(self, state: Any, i: int, tmp: Path, progress: Callable[[int], None] | None = None) -> int:
        lo, hi = i * self.shard_rows, min(self.n_rows, (i + 1) * self.shard_rows)
        write_columns(tmp, self.work(lo, hi))
        return hi - lo


def cached_rows(
    folder: Path,
    n_rows: int,
    shard_rows: int,
    key: dict,
    work: Callable[[int, int], dict[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Arrays of all rows, computing `work(lo, hi)` only for shards not on disk; also the shards computed."""
    return cached_job(folder, n_rows, shard_rows, key, _InProcess(work, n_rows, shard_rows))


def cached_job(
    folder: Path, n_rows: int, shard_rows: int, key: dict, job: ShardJob, executor: Callable | None = None
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Arrays of all rows from `job`'s parquet shards (rows [i*shard_rows, (i+1)*shard_rows) in shard i),
    computing the missing shards with `executor` (default: in this process); also the shards computed."""
    import polars as pl

    folder = Path(folder)
    meta = folder / "meta.json"
    want = {"key": key, "n_rows": n_rows, "shard_rows": shard_rows}
    if folder.exists() and (not meta.exists() or read_json(meta) != _jsonable(want)):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(meta, want)
    n_shards = max(1, -(-n_rows // shard_rows))
    done = (executor or run_job)(job, folder, n_shards, "parquet", None)
    frames = [pl.read_parquet(folder / shard_name(i, "parquet")) for i in range(n_shards)]
    df = pl.concat(frames) if frames else pl.DataFrame()
    if df.height != n_rows:
        raise RuntimeError(f"{folder}: shards hold {df.height} rows, expected {n_rows}; delete the folder")
    return {c: df[c].to_numpy() for c in df.columns}, done


def _jsonable(obj):
    import json

    return json.loads(json.dumps(obj, sort_keys=True, default=str))
