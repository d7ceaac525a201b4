"""Map stages over a run directory: the faiss index + kNN graph, and the semantic map of the pool.

`build_index` writes <run>/index/ (faiss index, knn.npz, index.json); `map_pool` writes the projection,
the coverage grid, k-means clusters and a diversity report; `coverage_report` scores a subset against them.
Every artefact records a key (embedding fingerprint + parameters) and is skipped when already current.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.errors import ParameterError
from curate.pool.ids import MissingIdsError, positions
from curate.run import RunDir
from curate.stage import stage
from index.io import atomic_path, read_json, save_npy, write_json

INDEX_FILE = "faiss.index"
KNN_FILE = "knn.npz"
INDEX_JSON = "index.json"
COORD_NAMES = ("x", "y", "z")
NO_DOMAIN = "(none)"


def _fingerprint_and_vectors(run: str | os.PathLike, load: bool = True) -> tuple[str, np.ndarray | None]:
    from curate import embed

    fp = embed.current_fingerprint(run)
    return fp, (embed.load_vectors(run, fp) if load else None)


def _current(json_path: Path, key: dict, *files: Path) -> dict | None:
    """The stored sidecar when its key equals `key` and every file exists, else None."""
    if not json_path.exists() or not all(f.exists() for f in files):
        return None
    stored = read_json(json_path)
    return stored if stored.get("key") == key else None


def _write_parquet(path: Path, df: pl.DataFrame) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        df.write_parquet(tmp)


def _is_exact(index: Any) -> bool:
    import faiss

    return isinstance(index, faiss.IndexFlat)


def _index_key(fp: str, kind: str, k: int, seed: int) -> dict:
    return {"fingerprint": fp, "kind": kind, "k": int(k), "seed": int(seed)}


def _embedding_key(run: RunDir, a: dict) -> dict:
    from curate import embed

    return {"embeddings": embed.current_fingerprint(run)}


@stage("index", inputs=lambda run, a: ["embeddings/current.json"], outputs=lambda run, a: ["index"],
       load=lambda run, a: {**read_json(run.index_dir / INDEX_JSON), "skipped": True}, key=_embedding_key)
def build_index(
    run: str | os.PathLike, *, kind: str = "auto", k: int = 10, seed: int = 0, recall_sample: int = 2_000,
    progress: bool = True,
) -> dict:
    """Build the faiss index and the kNN graph (k neighbours, self excluded) of the current embeddings.

    Writes <run>/index/{faiss.index, knn.npz, index.json}; recall@k is estimated on a sample when the graph
    is approximate. With kind="auto" the graph picks its own method, and past FLAT_MAX_ROWS rows the IVF search
    index is built on the graph's cells (no second k-means). A stage (curate.stage): skipped when the
    embeddings and parameters are those of the stored index.
    """
    rd = RunDir(run)
    out = rd.index_dir
    fp, _ = _fingerprint_and_vectors(run, load=False)
    key = _index_key(fp, kind, k, seed)
    from index.faiss_index import FLAT_MAX_ROWS, ivf_from_cells, save_index
    from index.faiss_index import build_index as build_faiss
    from index.knn import EXACT_MAX_ROWS, knn_graph, recall_at_k

    t0 = time.perf_counter()
    if int(k) < 1:
        raise ParameterError(f"k must be at least 1, got {k}")
    _, vectors = _fingerprint_and_vectors(run)
    requested, k = k, min(int(k), len(vectors) - 1)  # a row has n - 1 neighbours: no padded (-1, 0) entries
    if k < 1:
        raise ParameterError(f"a kNN graph needs at least 2 embedded rows; {run} has {len(vectors)}")
    if kind == "auto":  # the kNN layer picks its own best graph method (exact, or cell-partitioned at scale)
        graph = knn_graph(vectors, k=k, kind="auto", progress=progress, seed=seed)
        exact = len(vectors) <= EXACT_MAX_ROWS
        if graph.cells is not None and len(vectors) > FLAT_MAX_ROWS:
            index = ivf_from_cells(vectors, *graph.cells, seed=seed, progress=progress)
        else:
            index = build_faiss(vectors, kind, seed=seed, progress=progress)
    else:
        index = build_faiss(vectors, kind, seed=seed, progress=progress)
        graph = knn_graph(vectors, k=k, index=index, progress=progress, seed=seed)
        exact = _is_exact(index)
    recall = None if exact else float(recall_at_k(graph, vectors, sample=min(recall_sample, len(vectors)), seed=seed))
    out.mkdir(parents=True, exist_ok=True)
    for old in (INDEX_JSON, KNN_FILE):  # a kill before the new ones are in place leaves no old graph to trust
        (out / old).unlink(missing_ok=True)
    save_index(index, out / INDEX_FILE)
    graph.save(out / KNN_FILE)  # atomic
    info = {
        "key": key, "kind": kind, "index_class": type(index).__name__, "index_exact": _is_exact(index),
        "exact": exact, "n": int(len(vectors)),
        "dim": int(vectors.shape[1]), "k": int(k), "fingerprint": fp, "recall_at_k": recall,
        "recall_sample": None if exact else int(min(recall_sample, len(vectors))),
        "graph": graph.info,  # the kNN method's settings (cells, probes, score dtype)
        "seconds": time.perf_counter() - t0,
    }
    if k != requested:
        info["note"] = f"k={requested} asked for, {k} built: the pool has {len(vectors)} rows"
    write_json(out / INDEX_JSON, info)
    return {**info, "skipped": False}


def load_graph(run: str | os.PathLike, fingerprint: str | None = None) -> Any | None:
    """The stored kNN graph when it was built from the current embeddings, else None."""
    rd = RunDir(run)
    path = rd.index_dir / INDEX_JSON
    if not path.exists() or not (rd.index_dir / KNN_FILE).exists():
        return None
    fp = fingerprint or _fingerprint_and_vectors(run, load=False)[0]
    if read_json(path).get("fingerprint") != fp:
        return None
    from index.knn import KnnGraph

    return KnnGraph.load(rd.index_dir / KNN_FILE)


def coord_names(dims: int) -> list[str]:
    """Column names of a projection: x, y, z, then d3, d4, ..."""
    return [COORD_NAMES[i] if i < len(COORD_NAMES) else f"d{i}" for i in range(dims)]


def default_target_cells(n: int) -> int:
    """About sqrt(N) non-empty cells, capped at 10,000."""
    return int(max(1, min(round(math.sqrt(n)), 10_000)))


def default_n_clusters(n: int) -> int:
    """About sqrt(N / 10) k-means clusters (at least 1, at most N)."""
    return int(max(1, min(round(math.sqrt(n / 10)), n)))


def _domain_labels(rd: RunDir) -> np.ndarray | None:
    cols = rd.scan_pool().collect_schema().names()
    if "domain" not in cols:
        return None
    dom = rd.read_pool(["domain"])["domain"]
    if dom.null_count() == len(dom):
        return None
    return dom.fill_null(NO_DOMAIN).cast(pl.Utf8).to_numpy().astype(str)


MAP_STEPS = ("projection", "grid", "clusters", "diversity")


def _stored_map(run: RunDir, a: dict) -> dict:
    """What `map_pool` returns, read back from the step sidecars of a current map."""
    strip = {"clusters": ("sizes",), "diversity": ("key",)}
    paths = {"projection": run.projection_meta_path, **{s: run.map_dir / f"{s}.json" for s in MAP_STEPS[1:]}}
    return {"skipped": list(MAP_STEPS), "written": [],
            **{s: {k: v for k, v in read_json(p).items() if k not in strip.get(s, ())} for s, p in paths.items()}}


@stage("map", inputs=lambda run, a: ["embeddings/current.json", "index/index.json", "pool"],
       outputs=lambda run, a: ["map", "projection.parquet", "projection.json"], load=_stored_map, key=_embedding_key)
def map_pool(
    run: str | os.PathLike,
    *,
    projection: str = "pca",
    dims: int = 2,
    fit_sample: int | str | None = "auto",
    cell_size: float | None = None,
    target_cells: int | None = None,
    n_clusters: int | None = None,
    seed: int = 0,
    semdedup_threshold: float = 0.95,
    progress: bool = True,
) -> dict:
    """Write the semantic map of the pool: projection, coverage grid, k-means clusters, diversity report.

    Defaults: target_cells ~ sqrt(N) (capped at 10,000) unless cell_size is given; n_clusters ~ sqrt(N/10).
    A stage (curate.stage): nothing runs when the embeddings, kNN graph, pool and parameters are unchanged;
    otherwise each step is keyed by the embedding fingerprint and its own parameters and skipped when current.
    With progress, one bar goes over the four steps (N rows each; a skipped step leaves the total) and the
    steps' own bars show below it. The result's "written" lists the files this call wrote.
    """
    steps = _Steps(progress)
    try:
        return _map_steps(run, steps, projection=projection, dims=dims, fit_sample=fit_sample, cell_size=cell_size,
                          target_cells=target_cells, n_clusters=n_clusters, seed=seed,
                          semdedup_threshold=semdedup_threshold, progress=progress)
    finally:
        steps.close()


class _Steps:
    """The map stage's outer bar: names the running step, advances N rows per step done, drops skipped ones."""

    def __init__(self, progress: bool) -> None:
        self.progress, self.bar, self.n = progress, None, 0
        self.done: dict[str, Any] = {"skipped": [], "written": []}

    def begin(self, n: int) -> dict[str, Any]:
        """Open the bar over 4 steps of n rows; return the result dict the steps fill in."""
        from tqdm.auto import tqdm

        self.n = n
        self.bar = tqdm(total=4 * n, desc="map", unit="rows", unit_scale=True, dynamic_ncols=True,
                        disable=not self.progress)
        return self.done

    def close(self) -> None:
        """Close the bar (if it was opened)."""
        if self.bar is not None:
            self.bar.close()

    def start(self, name: str) -> None:
        """Name the step now running."""
        self.bar.set_postfix_str(name)

    def finish(self, name: str, written: list[Path] | None) -> None:
        """Record a step as written (its files) or skipped (None) and move the bar."""
        if written is None:
            self.done["skipped"].append(name)
            self.bar.total = max(self.bar.total - self.n, self.bar.n)
            self.bar.refresh()
        else:
            self.done["written"].extend(str(p) for p in written)
            self.bar.update(self.n)


def _map_steps(
    run: str | os.PathLike, steps: _Steps, *, projection: str, dims: int, fit_sample: int | str | None,
    cell_size: float | None, target_cells: int | None, n_clusters: int | None, seed: int,
    semdedup_threshold: float, progress: bool,
) -> dict:
    from index.diversity import diversity_report
    from index.grid import assign_cells
    from index.project import project

    rd = RunDir(run)
    fp, vectors = _fingerprint_and_vectors(run)
    ids = rd.read_pool(["id"])["id"]
    n = len(ids)
    if vectors.shape[0] != n:
        raise RuntimeError(f"{rd.root}: {vectors.shape[0]} embedding rows for {n} pool rows: re-run `curate embed`")
    done = steps.begin(n)

    # projection -------------------------------------------------------------------------------
    pkey = {"fingerprint": fp, "method": projection, "dims": int(dims), "fit_sample": fit_sample, "seed": int(seed),
            "n": n}
    pjson = rd.projection_meta_path
    stored = _current(pjson, pkey, rd.projection_path)
    names = coord_names(dims)
    steps.start("projection")
    if stored is None:
        proj = project(vectors, method=projection, dims=dims, fit_sample=fit_sample, seed=seed, progress=progress)
        coords = proj.coords
        frame = pl.DataFrame({"id": ids, **{c: coords[:, i] for i, c in enumerate(names)}})
        _write_parquet(rd.projection_path, frame)
        write_json(pjson, {"key": pkey, **proj.info})
        done["projection"] = proj.info
        steps.finish("projection", [rd.projection_path, pjson])
    else:
        coords = pl.read_parquet(rd.projection_path, columns=names).to_numpy().astype(np.float32)
        done["projection"] = stored
        steps.finish("projection", None)

    # grid -------------------------------------------------------------------------------------
    mdir = rd.map_dir
    tc = None if cell_size is not None else int(target_cells or default_target_cells(n))
    gkey = {"projection": pkey, "cell_size": cell_size, "target_cells": tc}
    stored = _current(mdir / "grid.json", gkey, mdir / "grid.parquet")
    steps.start("grid")
    if stored is None:
        grid = assign_cells(coords, cell_size=cell_size, target_cells=tc)
        _write_parquet(mdir / "grid.parquet", pl.DataFrame({"id": ids, "cell": grid.cells}))
        ginfo = {"key": gkey, **grid.info}
        write_json(mdir / "grid.json", ginfo)
        done["grid"] = ginfo
        steps.finish("grid", [mdir / "grid.parquet", mdir / "grid.json"])
    else:
        done["grid"] = stored
        steps.finish("grid", None)

    # clusters ---------------------------------------------------------------------------------
    k = int(n_clusters or default_n_clusters(n))
    ckey = {"fingerprint": fp, "n_clusters": k, "seed": int(seed), "n": n}
    stored = _current(mdir / "clusters.json", ckey, mdir / "clusters.parquet", mdir / "centroids.npy")
    steps.start("clusters")
    if stored is None:
        from index.cluster import kmeans

        res = kmeans(vectors, k, seed=seed, spherical=True, progress=progress)
        labels = np.asarray(res.labels, dtype=np.int64)
        _write_parquet(mdir / "clusters.parquet", pl.DataFrame({"id": ids, "cluster": labels}))
        save_npy(mdir / "centroids.npy", np.asarray(res.centroids, dtype=np.float32))
        cinfo = {"key": ckey, "n_clusters": k, "sizes": np.asarray(res.sizes).tolist(), "inertia": float(res.inertia)}
        write_json(mdir / "clusters.json", cinfo)
        done["clusters"] = {kk: v for kk, v in cinfo.items() if kk != "sizes"}
        steps.finish("clusters", [mdir / "clusters.parquet", mdir / "centroids.npy", mdir / "clusters.json"])
    else:
        labels = pl.read_parquet(mdir / "clusters.parquet", columns=["cluster"])["cluster"].to_numpy()
        done["clusters"] = {kk: v for kk, v in stored.items() if kk != "sizes"}
        steps.finish("clusters", None)

    # diversity --------------------------------------------------------------------------------
    graph = load_graph(run, fp)
    gstate = read_json(rd.index_dir / INDEX_JSON)["key"] if graph is not None else None
    domains = _domain_labels(rd)  # in the key: re-ingested rows keep their ids when only their domains change
    dom_digest = None if domains is None else hashlib.blake2b("\n".join(domains).encode(), digest_size=8).hexdigest()
    dkey = {"clusters": ckey, "graph": gstate, "semdedup_threshold": semdedup_threshold, "seed": int(seed),
            "domains": dom_digest}
    stored = _current(mdir / "diversity.json", dkey)
    steps.start("diversity")
    if stored is None:
        rep = diversity_report(vectors, graph=graph, labels=domains, clusters=labels,
                               semdedup_threshold=semdedup_threshold, seed=seed)
        if graph is None:
            rep["mean_knn_distance"] = None
            rep["note"] = "no current kNN graph: run `curate index` for the mean kNN distance"
        write_json(mdir / "diversity.json", {"key": dkey, **rep})
        done["diversity"] = rep
        steps.finish("diversity", [mdir / "diversity.json"])
    else:
        done["diversity"] = {kk: v for kk, v in stored.items() if kk != "key"}
        steps.finish("diversity", None)
    return done


def _positions(rd: RunDir, ids: pl.Series, positions_or_ids: Any) -> np.ndarray:
    items = list(positions_or_ids) if not isinstance(positions_or_ids, np.ndarray) else positions_or_ids
    if len(items) and isinstance(items[0], str):
        try:
            return positions(items, ids)
        except MissingIdsError as exc:
            raise KeyError(f"{len(exc.missing)} ids are not in the pool of {rd.root} (first: {exc.first})") from None
    pos = np.asarray(items, dtype=np.int64).ravel()
    if pos.size and (pos.min() < 0 or pos.max() >= len(ids)):
        raise IndexError(f"positions must lie in [0, {len(ids)}) for the pool of {rd.root}")
    return pos


def coverage_report(run: str | os.PathLike, positions_or_ids: Any, *, k: int = 10) -> dict:
    """Coverage (grid cells, density-weighted), diversity and DaaR figures of a subset of the pool.

    Accepts pool positions or pool ids; needs `map_pool` to have run on the current embeddings. Besides
    `coverage` on the map's grid (the one ILA fills), coverage on finer grids (`fine_coverage`) and, with a
    kNN graph, the grid-free `knn_coverage` (`index.diversity.knn_coverage`).
    """
    from index.diversity import diversity_report, domain_centroids
    from index.grid import coverage, density_coverage

    rd = RunDir(run)
    fp, vectors = _fingerprint_and_vectors(run)
    ids = rd.read_pool(["id"])["id"]
    pos = _positions(rd, ids, positions_or_ids)
    if pos.size == 0:
        raise ValueError("coverage_report needs a non-empty subset")
    mdir = rd.map_dir
    gjson = rd.require(mdir / "grid.json", "map")
    if read_json(gjson)["key"]["projection"]["fingerprint"] != fp:
        raise RuntimeError(f"{mdir} was built from other embeddings: re-run `curate map` on {rd.root}")
    cells = pl.read_parquet(rd.require(mdir / "grid.parquet", "map"), columns=["cell"])["cell"].to_numpy()
    clusters = None
    if (mdir / "clusters.parquet").exists():
        clusters = pl.read_parquet(mdir / "clusters.parquet", columns=["cluster"])["cluster"].to_numpy()
    domains = _domain_labels(rd)
    cents = domain_centroids(vectors, domains)[1] if domains is not None else None
    graph = load_graph(run, fp)
    rep = diversity_report(vectors, subset=pos, graph=graph, labels=domains, centroids=cents, clusters=clusters, k=k)
    rep["coverage"] = coverage(cells, pos)
    rep["density_coverage"] = density_coverage(cells, pos)
    rep["n_cells"] = int(np.unique(cells).size)
    rep.update(fine_coverage(rd, pos))
    return rep


#: finer grids `coverage_report` also measures coverage on: the map's cell side divided by each factor
FINE_GRID_FACTORS = (2, 4)


def fine_coverage(run: str | os.PathLike | RunDir, positions: np.ndarray) -> dict[str, Any]:
    """Coverage of a subset on grids finer than the map's (cell side / 2 and / 4, same origin, same projection).

    ILA fills the map's own grid (about sqrt(N) cells), so its `coverage` there is 1.0 by construction at most
    budgets; no selector sees these grids. Keys `coverage_fine<f>` and `n_cells_fine<f>`; {} without a map.
    """
    from index.grid import assign_cells, coverage

    rd = run if isinstance(run, RunDir) else RunDir(run)
    gjson = rd.map_dir / "grid.json"
    if not gjson.exists() or not rd.projection_path.exists():
        return {}
    size = read_json(gjson).get("cell_size")
    if not size:
        return {}
    proj = pl.read_parquet(rd.projection_path)
    coords = proj.drop("id").to_numpy().astype(np.float64)
    out: dict[str, Any] = {}
    for f in FINE_GRID_FACTORS:
        cells = assign_cells(coords, cell_size=float(size) / f).cells
        out[f"coverage_fine{f}"] = coverage(cells, positions)
        out[f"n_cells_fine{f}"] = int(np.unique(cells).size)
    return out
