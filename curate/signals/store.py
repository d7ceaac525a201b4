"""Reading and writing `<run>/signals/<name>.parquet` (id, value) with its sidecar `<name>.json`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from curate.run import RunDir
from index.io import atomic_path, read_json, write_json


def sidecar_path(run: str | os.PathLike, name: str):
    return RunDir(run).signal_path(name).with_suffix(".json")


def stored_key(run: str | os.PathLike, name: str) -> dict | None:
    """The key a stored signal was computed with, or None when it is absent."""
    side = sidecar_path(run, name)
    if not side.exists() or not RunDir(run).signal_path(name).exists():
        return None
    return read_json(side).get("key")


def write_signal(
    run: str | os.PathLike,
    name: str,
    ids: Sequence[str],
    values: np.ndarray,
    key: dict,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a signal (id, value f64, pool order) and then its sidecar, both atomically; the old sidecar goes
    first, so a kill between the two leaves values without a key (recomputed), never new values under an
    old key."""
    import polars as pl

    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(ids),):
        raise ValueError(f"signal {name!r}: {values.shape} values for {len(ids)} rows")
    path = RunDir(run).signal_path(name)
    sidecar_path(run, name).unlink(missing_ok=True)
    with atomic_path(path, suffix=".parquet") as tmp:
        pl.DataFrame({"id": list(ids), "value": values}, schema={"id": pl.String, "value": pl.Float64}).write_parquet(tmp)
    side = {"name": name, "key": key, "n": len(ids)}
    if extra:
        side.update(extra)
    write_json(sidecar_path(run, name), side)


def load_signal(run: str | os.PathLike, name: str) -> np.ndarray:
    """A stored signal as float64 values aligned to pool order (clear error if missing or stale)."""
    import polars as pl

    from curate.pool.ids import DuplicateIdsError, MissingIdsError, align
    from curate.signals.base import score_command

    rd = RunDir(run)
    path = rd.signal_path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"signal {name!r} is missing in {rd.root}: run {score_command(name, rd.root)} "
            f"(Python: curate.signals.score({str(rd.root)!r}, [{name!r}], ...)) first"
        )
    df = pl.read_parquet(path)
    ids = rd.read_pool(["id"])["id"]
    if df.height == ids.len() and df["id"].equals(ids):
        return df["value"].to_numpy().astype(np.float64, copy=False)
    try:
        joined = align(ids, df, require_all=True)
    except (MissingIdsError, DuplicateIdsError):
        raise ValueError(
            f"signal {name!r} in {rd.root} was computed on another pool: re-run {score_command(name, rd.root)}"
        ) from None
    return joined["value"].to_numpy().astype(np.float64, copy=False)
