"""Selection: a chosen subset saved as selections/<name>, so exports and reports read it with no selector."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.pool.ids import MissingIdsError, positions
from curate.run import RunDir
from index.io import atomic_path, read_json, write_json


@dataclass
class Selection:
    """A chosen subset: pool positions and ids in rank order, with a weight and a reason per row."""

    positions: np.ndarray
    ids: list[str]
    weights: np.ndarray
    reasons: list[str]
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    budget: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.int64)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        n = len(self.positions)
        if not (len(self.ids) == len(self.weights) == len(self.reasons) == n):
            raise ValueError("Selection: positions, ids, weights and reasons must have the same length")

    def __len__(self) -> int:
        return len(self.positions)

    def to_frame(self) -> pl.DataFrame:
        """id, weight, rank (0 = chosen first), reason."""
        return pl.DataFrame(
            {
                "id": pl.Series(self.ids, dtype=pl.String),
                "weight": pl.Series(self.weights, dtype=pl.Float64),
                "rank": pl.Series(np.arange(len(self), dtype=np.int64), dtype=pl.Int64),
                "reason": pl.Series(self.reasons, dtype=pl.String),
            }
        )

    def sidecar(self) -> dict[str, Any]:
        """The JSON sidecar: method, params, seed, budget, stats, n."""
        return {
            "method": self.method,
            "params": self.params,
            "seed": int(self.seed),
            "budget": self.budget,
            "stats": self.stats,
            "n": len(self),
        }

    def save(self, run: RunDir | str | os.PathLike, name: str) -> Path:
        """Write selections/<name>.parquet and <name>.json atomically; return the parquet path."""
        run = run if isinstance(run, RunDir) else RunDir(run)
        _check_name(name)
        path = run.selection_path(name)
        with atomic_path(path, suffix=".parquet") as tmp:
            self.to_frame().write_parquet(tmp)
        write_json(path.with_suffix(".json"), self.sidecar())
        return path

    @classmethod
    def load(cls, run: RunDir | str | os.PathLike, name: str) -> Selection:
        """Read a saved selection; positions are recovered from the pool ids."""
        run = run if isinstance(run, RunDir) else RunDir(run)
        path = run.require(run.selection_path(name), f"select --name {name}")
        df = pl.read_parquet(path).sort("rank")
        side_path = path.with_suffix(".json")
        side = read_json(side_path) if side_path.exists() else {}
        try:
            pos = positions(df["id"], run.read_pool(["id"])["id"])
        except MissingIdsError as exc:
            raise ValueError(f"{path}: id {exc.first} is not in the pool of {run.root} (stale selection?)") from None
        return cls(
            positions=pos,
            ids=df["id"].to_list(),
            weights=df["weight"].to_numpy(),
            reasons=df["reason"].to_list(),
            method=side.get("method", ""),
            params=side.get("params", {}),
            seed=side.get("seed", 0),
            budget=side.get("budget", ""),
            stats=side.get("stats", {}),
        )


def _check_name(name: str) -> None:
    if not name or not re.fullmatch(r"[A-Za-z0-9_.=+-]+", name) or name.startswith("."):
        raise ValueError(f"bad selection name {name!r}: use letters, digits and _ . = + -")


def list_selections(run: RunDir | str | os.PathLike) -> list[str]:
    """Names of the selections saved in a run."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    d = run.selections_dir
    return sorted(p.stem for p in d.glob("*.parquet")) if d.is_dir() else []

