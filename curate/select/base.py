"""One interface for every selector: `Budget`, `PoolView`, `Ranking`, `Selection`, `Selector`, `SELECTORS`.

A selector reads a pool through a `PoolView` (lazy, cached access to the pool table, embeddings, signals,
kNN graph, map cells, clusters, projection; or in-memory arrays for tests) and returns a `Selection`: pool
positions in rank order (0 = chosen first) with a weight and a reason per row.

How to add a selector
---------------------
1. Subclass `Selector`, give it a unique `name`, and document in its class docstring which paper it follows
   (`paper = "..."`) and where it deviates (`deviations = "..."`).
2. Take every parameter in `__init__` (keyword arguments with defaults, JSON-serialisable values) and store
   each one as an attribute of the same name: `get_params()` reads them back from the signature, as sklearn
   does, and they are saved in the selection sidecar.
3. Implement `rank(self, view, k, *, seed, budget) -> Ranking`: return pool positions (0..N-1, unique) in the
   order the method would choose them, at least `k` of them when the pool has that many (returning more,
   even the whole pool ranked, is fine; the base takes a prefix). Per-row `weights` (default 1.0),
   `reasons` (one string, or one per ranked row) and `stats` (JSON-serialisable dict) are optional.
   All randomness must come from `np.random.default_rng(seed)` (or a seed passed down), never global state:
   the same inputs and seed must give the same selection, bit for bit.
4. Register it: decorate the class with `@register_selector`; import its module in
   `curate/select/__init__.py` (already done for ila, daar, miw, deita).

Budgets are applied centrally by `Selector.select`, so a selector never counts tokens itself:
- `Budget(rows=R)` / `Budget(fraction=F)`: `k = min(R, N)` / `k = round(F * N)` (half up); the first `k` ranked
  rows are taken.
- `Budget(tokens=T)`: per-row token counts come from the `tokens` signal (prompt + response tokens;
  `curate score --signal tokens` computes it). `k` passed to `rank` is an upper bound: the number of rows that
  fit if the shortest rows were chosen. Rows are then taken in rank order; **a row that would overflow the
  remaining budget is skipped and the scan continues** down the ranking (so a long row never blocks shorter
  later ones), until the ranking ends or no remaining row could fit. The selection is therefore an ordered
  subsequence of the ranking whose token total is <= T.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from curate.errors import MissingArtefactError, ParameterError
from curate.registry import Registry
from curate.run import RunDir
from index.io import atomic_path, read_json, write_json

POOL_VIEW_COLUMNS = ["id", "domain", "kind", "prompt", "response", "n_duplicates"]
TOKENS_SIGNAL = "tokens"

# ---------------------------------------------------------------------------------------------------------
# Budget


_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|tok|tokens|rows)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """How much to select: exactly one of `rows`, `tokens` (prompt+response tokens) or `fraction` of the pool."""

    rows: int | None = None
    tokens: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        set_ = [k for k in ("rows", "tokens", "fraction") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"a Budget needs exactly one of rows, tokens, fraction; got {set_ or 'none'}")
        if self.rows is not None and (int(self.rows) != self.rows or self.rows < 0):
            raise ValueError(f"Budget rows must be a non-negative integer, got {self.rows!r}")
        if self.tokens is not None and (int(self.tokens) != self.tokens or self.tokens < 0):
            raise ValueError(f"Budget tokens must be a non-negative integer, got {self.tokens!r}")
        if self.fraction is not None and not (0.0 <= float(self.fraction) <= 1.0):
            raise ValueError(f"Budget fraction must lie in [0, 1], got {self.fraction!r}")

    @property
    def kind(self) -> str:
        """'rows', 'tokens' or 'fraction'."""
        return "rows" if self.rows is not None else "tokens" if self.tokens is not None else "fraction"

    @classmethod
    def parse(cls, spec: Budget | int | float | str) -> Budget:
        """Read a budget: `Budget`, int rows, float in (0, 1) fraction, or "1000", "20%", "50000tok"."""
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, bool):
            raise ParameterError(f"not a budget: {spec!r}", "give rows (1000), a fraction (20%) or tokens (50000tok)")
        if isinstance(spec, (int, np.integer)):
            return cls(rows=int(spec))
        if isinstance(spec, (float, np.floating)):
            if float(spec).is_integer() and spec >= 1:
                return cls(rows=int(spec))
            return cls(fraction=float(spec))
        if isinstance(spec, str):
            m = _BUDGET_RE.match(spec)
            if not m:
                raise ValueError(
                    f"cannot read budget {spec!r}: use a row count ('1000'), a percentage ('20%') "
                    "or a token count ('50000tok')"
                )
            num, unit = m.group(1), (m.group(2) or "").lower()
            if unit == "%":
                return cls(fraction=float(num) / 100.0)
            if "." in num:
                if unit:
                    raise ValueError(f"budget {spec!r}: {unit} must be a whole number")
                return cls.parse(float(num))
            if unit in ("tok", "tokens"):
                return cls(tokens=int(num))
            return cls(rows=int(num))
        raise ParameterError(
            f"not a budget: {spec!r} ({type(spec).__name__})", "give rows (1000), a fraction (20%) or tokens (50000tok)"
        )

    def resolve(self, n: int, tokens: np.ndarray | None = None) -> int:
        """Rows to rank for a pool of `n` rows: exact for rows/fraction, an upper bound for tokens."""
        if self.rows is not None:
            return min(int(self.rows), n)
        if self.fraction is not None:
            return min(n, int(math.floor(self.fraction * n + 0.5)))
        if tokens is None:
            raise ValueError("a token budget needs per-row token counts (the `tokens` signal)")
        srt = np.sort(np.asarray(tokens, dtype=np.float64))
        return int(np.searchsorted(np.cumsum(srt), float(self.tokens), side="right"))

    def __str__(self) -> str:
        if self.rows is not None:
            return str(self.rows)
        if self.tokens is not None:
            return f"{self.tokens}tok"
        return f"{self.fraction * 100:g}%"


# ---------------------------------------------------------------------------------------------------------
# PoolView


class PoolView:
    """What a selector may read about a pool, loaded lazily and cached; in pool order (positions 0..N-1).

    Build it with `PoolView.from_run(run)` for a run directory, or `PoolView.from_arrays(...)` in memory.
    """

    def __init__(self, run: RunDir | str | os.PathLike | None = None) -> None:
        self.run: RunDir | None = None if run is None else (run if isinstance(run, RunDir) else RunDir(run))
        self._frame: pl.DataFrame | None = None
        self._vectors: np.ndarray | None = None
        self._signals: dict[str, np.ndarray] = {}
        self._knn: Any = None
        self._cells: np.ndarray | None = None
        self._clusters: np.ndarray | None = None
        self._projection: np.ndarray | None = None

    # constructors ------------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: RunDir | str | os.PathLike) -> PoolView:
        """A view over a run directory (reads nothing until asked)."""
        return cls(run)

    @classmethod
    def from_arrays(
        cls,
        ids: Sequence[str] | np.ndarray,
        domains: Sequence[str | None] | None = None,
        vectors: np.ndarray | None = None,
        signals: Mapping[str, np.ndarray] | None = None,
        cells: np.ndarray | None = None,
        clusters: np.ndarray | None = None,
        projection: np.ndarray | None = None,
        knn: Any = None,
        prompts: Sequence[str] | None = None,
        responses: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> PoolView:
        """An in-memory view (tests, benchmarks); arrays are in the order of `ids`.

        `knn` is an object with `neighbors` (int64 [N,k]) and `sims` (float32 [N,k]) or a (neighbors, sims) tuple.
        """
        ids = [str(i) for i in ids]
        n = len(ids)
        if len(set(ids)) != n:
            raise ValueError("PoolView.from_arrays: ids are not unique")

        def col(name: str, values: Sequence | None, default: Any, dtype: Any) -> pl.Series:
            if values is None:
                return pl.Series(name, [default] * n, dtype=dtype)
            if len(values) != n:
                raise ValueError(f"PoolView.from_arrays: {name} has {len(values)} rows, ids has {n}")
            return pl.Series(name, list(values), dtype=dtype)

        view = cls(None)
        view._frame = pl.DataFrame(
            [
                pl.Series("id", ids, dtype=pl.String),
                col("domain", domains, None, pl.String),
                col("kind", kinds, "sft", pl.String),
                col("prompt", prompts, "", pl.String),
                col("response", responses, "", pl.String),
                pl.Series("n_duplicates", [0] * n, dtype=pl.Int64),
            ]
        )
        if vectors is not None:
            vectors = np.asarray(vectors, dtype=np.float32)
            _check_len("vectors", vectors, n)
            view._vectors = vectors
        for name, values in (signals or {}).items():
            arr = np.asarray(values, dtype=np.float64)
            _check_len(f"signal {name!r}", arr, n)
            view._signals[name] = arr
        if cells is not None:
            view._cells = np.asarray(cells, dtype=np.int64)
            _check_len("cells", view._cells, n)
        if clusters is not None:
            view._clusters = np.asarray(clusters, dtype=np.int64)
            _check_len("clusters", view._clusters, n)
        if projection is not None:
            view._projection = np.asarray(projection, dtype=np.float64)
            _check_len("projection", view._projection, n)
        if knn is not None:
            view._knn = _as_knn(knn)
            _check_len("knn neighbors", view._knn.neighbors, n)
        return view

    # pool table --------------------------------------------------------------------------------------------
    @property
    def frame(self) -> pl.DataFrame:
        """Pool columns id, domain, kind, prompt, response, n_duplicates in pool order."""
        if self._frame is None:
            assert self.run is not None
            self._frame = self.run.read_pool(POOL_VIEW_COLUMNS)
        return self._frame

    @property
    def n(self) -> int:
        """Number of (unique) rows in the pool."""
        return self.frame.height

    @property
    def ids(self) -> np.ndarray:
        """Row ids in pool order (object array of str)."""
        return self.frame["id"].to_numpy()

    def domains(self) -> np.ndarray:
        """Domain per row (object array; None where the row has no domain)."""
        return np.asarray(self.frame["domain"].to_list(), dtype=object)

    # embeddings --------------------------------------------------------------------------------------------
    def row_vectors(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The matrix these rows' vectors live in and their rows in it, ascending (None: rows 0..n-1), so a
        method that touches few rows (Deita's walk) need not copy a sub-pool's vectors."""
        return self.vectors(), None

    def vectors(self) -> np.ndarray:
        """Embedding matrix (N, d) float32, L2-normalised, pool order (`curate embed` writes it)."""
        if self._vectors is None:
            if self.run is None:
                raise ValueError("this in-memory PoolView has no vectors")
            from curate.embed import load_vectors

            self._vectors = load_vectors(self.run.root)
            _check_len("embedding vectors", self._vectors, self.n)
        return self._vectors

    # signals -----------------------------------------------------------------------------------------------
    def has_signal(self, name: str) -> bool:
        """Whether signal `name` is stored (or given in memory)."""
        if name in self._signals:
            return True
        return self.run is not None and self.run.signal_path(name).exists()

    def signal_names(self) -> list[str]:
        """Names of every available signal."""
        names = set(self._signals)
        if self.run is not None and (self.run.root / "signals").is_dir():
            names |= {p.stem for p in (self.run.root / "signals").glob("*.parquet")}
        return sorted(names)

    def signal(self, name: str) -> np.ndarray:
        """One float per row, pool order (`curate score --signal NAME` computes it)."""
        if name not in self._signals:
            if self.run is None:
                known = ", ".join(sorted(self._signals)) or "(none)"
                raise KeyError(f"signal {name!r} is not in this in-memory PoolView; known: {known}")
            if not self.run.signal_path(name).exists():
                from curate.signals.base import score_command

                raise MissingArtefactError(
                    f"signal {name!r} is missing ({self.run.signal_path(name)}): "
                    f"run {score_command(name, self.run.root)} first"
                )
            arr = np.asarray(_load_signal(self.run, name), dtype=np.float64)
            _check_len(f"signal {name!r}", arr, self.n)
            self._signals[name] = arr
        return self._signals[name]

    def tokens(self) -> np.ndarray:
        """Prompt + response tokens per row (the `tokens` signal); clear error naming the command if absent."""
        if not self.has_signal(TOKENS_SIGNAL):
            where = f" on {self.run.root}" if self.run is not None else ""
            raise FileNotFoundError(
                f"a token budget or token count needs the `{TOKENS_SIGNAL}` signal (prompt + response tokens), "
                f"which is not stored: run `curate score --signal {TOKENS_SIGNAL}`{where} first"
            )
        return self.signal(TOKENS_SIGNAL)

    # index and map -----------------------------------------------------------------------------------------
    def knn(self) -> Any:
        """The kNN graph (`neighbors` int64 [N,k] positions, `sims` float32 [N,k] cosine, self excluded)."""
        if self._knn is None:
            if self.run is None:
                raise ValueError("this in-memory PoolView has no kNN graph")
            path = self.run.require(self.run.index_dir / "knn.npz", "index")
            from index.knn import KnnGraph

            self._knn = KnnGraph.load(path)
            _check_len("knn neighbors", self._knn.neighbors, self.n)
        return self._knn

    def cells(self) -> np.ndarray:
        """Coverage-grid cell per row (int64), from <run>/map/grid.parquet."""
        if self._cells is None:
            if self.run is None:
                raise ValueError("this in-memory PoolView has no map cells")
            path = self.run.require(self.run.map_dir / "grid.parquet", "map")
            self._cells = self._aligned(pl.read_parquet(path), "cell", path).astype(np.int64)
        return self._cells

    def clusters(self) -> np.ndarray:
        """Cluster per row (int64), from <run>/map/clusters.parquet."""
        if self._clusters is None:
            if self.run is None:
                raise ValueError("this in-memory PoolView has no clusters")
            path = self.run.require(self.run.map_dir / "clusters.parquet", "map")
            self._clusters = self._aligned(pl.read_parquet(path), "cluster", path).astype(np.int64)
        return self._clusters

    def projection(self) -> np.ndarray:
        """Projected coordinates (N, dims) float64: columns x, y (+ more), from <run>/projection.parquet."""
        if self._projection is None:
            if self.run is None:
                raise ValueError("this in-memory PoolView has no projection")
            path = self.run.require(self.run.projection_path, "map")
            df = pl.read_parquet(path)
            dims = [c for c in df.columns if c != "id"]
            joined = self._join(df, path)
            self._projection = joined.select(dims).to_numpy().astype(np.float64)
        return self._projection

    def _join(self, df: pl.DataFrame, path: Path) -> pl.DataFrame:
        joined = self.frame.select("id").join(df, on="id", how="left", maintain_order="left")
        missing = joined.filter(pl.any_horizontal(pl.exclude("id").is_null()))
        if missing.height:
            raise ValueError(
                f"{path} has no value for {missing.height} pool rows (e.g. id {missing['id'][0]}): "
                "it is stale; rebuild it"
            )
        return joined

    def _aligned(self, df: pl.DataFrame, column: str, path: Path) -> np.ndarray:
        return self._join(df.select("id", column), path)[column].to_numpy()


def _load_signal(run: RunDir, name: str) -> np.ndarray:
    from curate.signals import load_signal

    return load_signal(run.root, name)


def _as_knn(knn: Any) -> Any:
    from index.knn import KnnGraph

    if isinstance(knn, tuple):  # a KnnGraph, so facility location (which needs one) runs on in-memory views
        return KnnGraph(np.asarray(knn[0], dtype=np.int64), np.asarray(knn[1], dtype=np.float32))
    if not (hasattr(knn, "neighbors") and hasattr(knn, "sims")):
        raise TypeError("knn must have `neighbors` and `sims` (or be a (neighbors, sims) tuple)")
    return knn


def _check_len(what: str, arr: np.ndarray, n: int) -> None:
    if len(arr) != n:
        raise MissingArtefactError(
            f"{what} has {len(arr)} rows but the pool has {n}: it was made before the pool was re-ingested",
            "re-run the stage that makes it (curate embed / index / map / score) on this run",
        )


# ---------------------------------------------------------------------------------------------------------
# Ranking and Selection


@dataclass
class Ranking:
    """What `Selector.rank` returns: positions in choice order, optional weights / reasons, stats."""

    positions: np.ndarray
    weights: np.ndarray | None = None
    reasons: Sequence[str] | str = ""
    stats: dict[str, Any] = field(default_factory=dict)


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
        pool_ids = run.read_pool(["id"])["id"]
        pos = pl.DataFrame({"id": pool_ids, "pos": np.arange(len(pool_ids), dtype=np.int64)})
        joined = df.select("id").join(pos, on="id", how="left", maintain_order="left")
        if joined["pos"].null_count():
            bad = joined.filter(pl.col("pos").is_null())["id"][0]
            raise ValueError(f"{path}: id {bad} is not in the pool of {run.root} (stale selection?)")
        return cls(
            positions=joined["pos"].to_numpy(),
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
    d = run.root / "selections"
    return sorted(p.stem for p in d.glob("*.parquet")) if d.is_dir() else []


# ---------------------------------------------------------------------------------------------------------
# Selector


SELECTORS: Registry[type[Selector]] = Registry("selector")


def register_selector(cls: type[Selector]) -> type[Selector]:
    """Class decorator: register a Selector subclass under its `name`."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} needs a `name` to be registered")
    return SELECTORS.register(cls.name)(cls)


class Selector:
    """Base class of every selector. Subclasses implement `rank`; `select` applies the budget.

    Class attributes: `name` (registry key), `paper` (what it follows), `deviations` (where it departs).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    deviations: ClassVar[str] = ""
    # stratified selection: "stratum" runs the selector on each stratum's rows alone; "pool" ranks the whole
    # pool once (e.g. DaaR's probes are fitted on the pool) and takes each stratum's rows in that order
    stratify_scope: ClassVar[str] = "stratum"
    # what the `select` stage does when no stratify is given; chosen from held-out loss after fine-tuning
    # (bench/selection_quality.py, bench/RESULTS.md): "domain" where running within each domain won
    default_stratify: ClassVar[str] = "none"

    def get_params(self) -> dict[str, Any]:
        """The `__init__` parameters and their values (stored as same-named attributes)."""
        sig = inspect.signature(type(self).__init__)
        out = {}
        for p in sig.parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[p.name] = getattr(self, p.name)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        """Return at least `k` pool positions (when available) in the order this method picks them."""
        raise TypeError(f"{type(self).__name__} must implement rank(view, k, *, seed, budget)")

    def eligible(self, view: PoolView) -> np.ndarray | None:
        """Rows this method can rank at all (bool [N]; e.g. finite score), or None for every row.

        Stratified selection sizes its quotas from these rows (minus excluded ones)."""
        return None

    def filter_stats(self, view: PoolView, excluded: np.ndarray | None = None) -> dict[str, Any]:
        """Pool-level stats of a row filter the selector applies before ranking (e.g. `max_ifd`), or {}."""
        return {}

    def rank_pool(self, view: PoolView, *, seed: int, budget: Budget) -> Ranking:
        """Every row this method can rank, best first (used when `stratify_scope == "pool"`)."""
        try:
            return self.rank(view, view.n, seed=seed, budget=budget)
        except ShortRankingError as e:
            return e.ranking

    def select(
        self,
        view: PoolView,
        budget: Budget | int | float | str,
        seed: int = 0,
        exclude: np.ndarray | None = None,
        stratify: str = "none",
        mixture: Mapping[str, float] | None = None,
    ) -> Selection:
        """Rank the pool and take rows within `budget`; the same inputs and seed give the same selection.

        `exclude`: pool positions that may not be chosen (e.g. the rows a reference model was trained on);
        the selector ranks k + len(exclude) rows and those positions are dropped from its ranking.
        `stratify`: "none", "domain" or "cluster": the budget is split over strata (proportional to their
        eligible rows, or to `mixture` {domain: weight}) and this selector runs within each stratum
        (`curate.select.stratify`).
        """
        budget = Budget.parse(budget)
        if stratify != "none" or mixture is not None:
            from curate.select.stratify import select_stratified

            return select_stratified(self, view, budget, seed=int(seed), exclude=exclude, by=stratify, mixture=mixture)
        taken = self.take(view, budget, seed=int(seed), exclude=exclude)
        return self.selection(view, taken, budget, seed=int(seed), excluded=_mask(view.n, exclude))

    def selection(
        self, view: PoolView, taken: Taken, budget: Budget, *, seed: int, excluded: np.ndarray | None = None
    ) -> Selection:
        """Wrap taken rows as a `Selection` with ids, the basic stats and the domain mix against the pool."""
        from curate.select.stratify import domain_mix

        ids = view.ids
        stats = dict(taken.stats)
        stats.update(_basic_stats(view, taken.positions))
        stats["mix"] = domain_mix(view, taken.positions, excluded)
        stats.update(self.filter_stats(view, excluded))
        return Selection(
            positions=taken.positions,
            ids=[str(ids[i]) for i in taken.positions],
            weights=taken.weights,
            reasons=taken.reasons,
            method=self.name,
            params=self.get_params(),
            seed=int(seed),
            budget=str(budget),
            stats=stats,
        )

    def take(
        self,
        view: PoolView,
        budget: Budget,
        *,
        seed: int,
        exclude: np.ndarray | None = None,
        partial: bool = False,
    ) -> Taken:
        """Rank `view` and take the rows within `budget` (no ids, no pool-wide stats).

        `partial`: a ranking shorter than the budget needs is taken as it is (a `ShortRankingError` from the
        selector included) and `Taken.ran_out` says so, instead of raising.
        """
        n = view.n
        tokens = view.tokens() if budget.kind == "tokens" else None
        k = budget.resolve(n, tokens)
        excluded = _mask(n, exclude)
        try:
            ranking = self.rank(view, min(n, k + int(excluded.sum())), seed=int(seed), budget=budget)
        except ShortRankingError as e:
            if not partial:
                raise
            ranking = e.ranking
        pos = np.asarray(ranking.positions, dtype=np.int64).ravel()
        if pos.size and (pos.min() < 0 or pos.max() >= n):
            raise ValueError(f"{self.name}: ranked position out of range 0..{n - 1}")
        if np.unique(pos).size != pos.size:
            raise ValueError(f"{self.name}: ranking repeats a position")
        if excluded.any():
            keep = ~excluded[pos]
            ranking = Ranking(
                positions=pos[keep],
                weights=None if ranking.weights is None else np.asarray(ranking.weights)[keep],
                reasons=ranking.reasons if isinstance(ranking.reasons, str)
                else [r for r, ok in zip(ranking.reasons, keep, strict=True) if ok],
                stats={**ranking.stats, "excluded_rows": int(excluded.sum())},
            )
            pos = ranking.positions
            n = int((~excluded).sum())
        if pos.size < k and pos.size < n and budget.kind != "tokens" and not partial:
            raise ValueError(f"{self.name}: ranked {pos.size} rows, the budget needs {k}")
        weights = (
            np.ones(pos.size, dtype=np.float64)
            if ranking.weights is None
            else np.asarray(ranking.weights, dtype=np.float64).ravel()
        )
        reasons = ranking.reasons
        if len(weights) != pos.size or (not isinstance(reasons, str) and len(reasons) != pos.size):
            raise ValueError(f"{self.name}: weights/reasons do not match the {pos.size} ranked rows")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"{self.name}: weights must be finite and >= 0")

        if budget.kind == "tokens":
            take = _take_within_tokens(pos, tokens, budget.tokens)
            ran_out = take.size == pos.size
        else:
            take = np.arange(min(k, pos.size))
            ran_out = take.size < min(k, n)
        return Taken(
            positions=pos[take],
            weights=weights[take],
            reasons=[reasons] * take.size if isinstance(reasons, str) else [reasons[i] for i in take],
            stats=dict(ranking.stats),
            n_ranked=int(pos.size),
            ran_out=bool(ran_out),
        )


@dataclass
class Taken:
    """Rows a selector took within a budget: positions in rank order, weights, reasons, its stats."""

    positions: np.ndarray
    weights: np.ndarray
    reasons: list[str]
    stats: dict[str, Any]
    n_ranked: int
    ran_out: bool


class ShortRankingError(ValueError):
    """A selector can rank fewer rows than the budget needs; `ranking` holds the rows it could rank."""

    def __init__(self, message: str, ranking: Ranking) -> None:
        super().__init__(message)
        self.ranking = ranking


def _mask(n: int, exclude: np.ndarray | None) -> np.ndarray:
    """Boolean [n]: True at the excluded positions."""
    excluded = np.zeros(n, dtype=bool)
    if exclude is not None and len(exclude):
        excluded[np.asarray(exclude, dtype=np.int64)] = True
    return excluded


def _take_within_tokens(pos: np.ndarray, tokens: np.ndarray, limit: int) -> np.ndarray:
    """Indices into `pos` taken in order, skipping rows that would overflow the remaining token budget."""
    tok = np.asarray(tokens, dtype=np.float64)[pos]
    if np.any(tok < 0) or not np.all(np.isfinite(tok)):
        raise ValueError("the `tokens` signal has negative or non-finite values")
    # suffix minimum: once nothing left in the ranking fits, stop scanning
    suffix_min = np.minimum.accumulate(tok[::-1])[::-1] if tok.size else tok
    remaining = float(limit)
    take = []
    for i in range(tok.size):
        if suffix_min[i] > remaining:
            break
        if tok[i] <= remaining:
            take.append(i)
            remaining -= tok[i]
    return np.asarray(take, dtype=np.int64)


def _basic_stats(view: PoolView, chosen: np.ndarray) -> dict[str, Any]:
    stats: dict[str, Any] = {"n_selected": int(chosen.size), "n_pool": int(view.n)}
    if view.has_signal(TOKENS_SIGNAL):
        stats["tokens"] = int(round(float(view.signal(TOKENS_SIGNAL)[chosen].sum())))
    dom = view.frame["domain"].gather(chosen) if chosen.size else view.frame["domain"].head(0)
    counts = dom.fill_null("(none)").value_counts().sort("domain")
    stats["domains"] = {str(d): int(c) for d, c in zip(counts["domain"], counts["count"], strict=True)}
    return stats
