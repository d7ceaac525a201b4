"""PoolView: the one lazy view of a run's pool that selectors, signals, reports and viewers read (table columns,
embeddings, kNN graph, map, signals), loaded on first use and cached, in pool order."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.errors import MissingArtefactError
from curate.pool.ids import align
from curate.run import RunDir
from index.io import read_json

POOL_VIEW_COLUMNS = ["id", "domain", "kind", "prompt", "response", "n_duplicates"]
#: the signal holding each row's prompt + response tokens (token budgets and counts)
TOKENS_SIGNAL = "tokens"


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

    def columns(self, names: Sequence[str]) -> pl.DataFrame:
        """Pool columns `names` (id first) in pool order; columns beyond the view's own are read once, on first
        use, and kept (e.g. the signals' messages and meta)."""
        frame = self.frame
        extra = [c for c in names if c not in frame.columns]
        if extra:
            if self.run is None:
                raise ValueError(f"this in-memory PoolView has no column(s) {extra}")
            more = self.run.read_pool(["id", *extra])
            if not more["id"].equals(frame["id"]):
                raise MissingArtefactError(f"{self.run.pool_dir} changed while it was read; run again")
            self._frame = frame = pl.concat([frame, more.drop("id")], how="horizontal")
        return frame.select(["id", *(c for c in names if c != "id")])

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

    def in_pool(self) -> tuple[PoolView, np.ndarray | None]:
        """The whole pool these rows come from and their positions in it (None: this view is the pool)."""
        return self, None

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
        if self.run is not None and self.run.signals_dir.is_dir():
            names |= {p.stem for p in self.run.signals_dir.glob("*.parquet")}
        return sorted(names)

    def signal(self, name: str) -> np.ndarray:
        """One float per row, pool order (`curate score --signal NAME` computes it)."""
        if name not in self._signals:
            if self.run is None:
                known = ", ".join(sorted(self._signals)) or "(none)"
                raise KeyError(f"signal {name!r} is not in this in-memory PoolView; known: {known}")
            if not self.run.signal_path(name).exists():
                from curate.signals import SIGNALS  # the package: every signal module registered
                from curate.signals.base import score_command

                if name not in SIGNALS.names():  # a typo, not a signal still to compute
                    stored = ", ".join(self.signal_names()) or "(none)"
                    raise MissingArtefactError(f"no signal {name!r}: it is not stored in {self.run.signals_dir} "
                                               f"(stored: {stored}) and no signal of that name is registered "
                                               "(`curate methods` lists them)")
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
            self._check_graph_embeddings()
            from index.knn import KnnGraph

            self._knn = KnnGraph.load(path)
            _check_len("knn neighbors", self._knn.neighbors, self.n)
        return self._knn

    def _check_graph_embeddings(self) -> None:
        """The stored graph must come from the embeddings that are current (not those of an earlier embed)."""
        built, current = self.run.index_dir / "index.json", self.run.current_embeddings_path
        if not (built.exists() and current.exists()):
            return
        if read_json(built).get("fingerprint") != read_json(current).get("fingerprint"):
            raise MissingArtefactError(
                f"the kNN graph in {self.run.index_dir} was built from other embeddings than the current ones",
                f"re-run `curate index --run {self.run.root}`",
            )

    def cells(self) -> np.ndarray:
        """Coverage-grid cell per row (int64), from <run>/map/grid.parquet."""
        if self._cells is None:
            self._cells = self._map_column("grid.parquet", "cell", "map cells")
        return self._cells

    def clusters(self) -> np.ndarray:
        """Cluster per row (int64), from <run>/map/clusters.parquet."""
        if self._clusters is None:
            self._clusters = self._map_column("clusters.parquet", "cluster", "clusters")
        return self._clusters

    def _map_column(self, file: str, column: str, what: str) -> np.ndarray:
        """One int64 column of a map-stage file, aligned to the pool's rows."""
        if self.run is None:
            raise ValueError(f"this in-memory PoolView has no {what}")
        path = self.run.require(self.run.map_dir / file, "map")
        return self._aligned(pl.read_parquet(path), column, path).astype(np.int64)

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
        joined = align(self.frame["id"], df)
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
