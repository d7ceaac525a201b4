"""Coverage a selector cannot fill by construction: finer grids than the map's, and the grid-free kNN coverage."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from curate.map import fine_coverage
from curate.run import RunDir
from index.diversity import diversity_report, knn_coverage, median_knn_radius, nearest_selected_distance
from index.io import write_json
from index.knn import KnnGraph


def _circle(n: int) -> np.ndarray:
    a = 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def _exact_graph(x: np.ndarray, k: int) -> KnnGraph:
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    nb = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return KnnGraph(neighbors=nb, sims=np.take_along_axis(sims, nb, axis=1))


def test_knn_coverage_on_a_circle_known_answers():
    n = 40
    x = _circle(n)
    step = 1 - np.cos(2 * np.pi / n)  # cosine distance between neighbours on the circle
    every4 = np.arange(0, n, 4)  # a pool row is 0, 1 or 2 steps from its nearest selected row
    dist = nearest_selected_distance(x, every4)
    assert dist[every4] == pytest.approx(0.0, abs=1e-6)
    # k = 2: both nearest neighbours one step away -> radius one step; rows two steps away are not covered
    g2 = _exact_graph(x, 2)
    assert median_knn_radius(g2) == pytest.approx(step, rel=1e-4)
    rep = diversity_report(x, subset=every4, graph=g2, k=2)
    assert rep["knn_coverage"] == pytest.approx(0.75)
    assert rep["knn_coverage_k"] == 2 and rep["knn_coverage_radius"] == pytest.approx(step, rel=1e-4)
    # k = 4: the 4th neighbour is two steps away -> every row is covered
    g4 = _exact_graph(x, 4)
    assert diversity_report(x, subset=every4, graph=g4, k=4)["knn_coverage"] == 1.0
    # one row selected: itself and its two neighbours within one step
    assert diversity_report(x, subset=np.array([0]), graph=g2, k=2)["knn_coverage"] == pytest.approx(3 / n)
    assert knn_coverage(np.array([0.0, 0.1, 0.2]), 0.1) == pytest.approx(2 / 3)


def test_median_knn_radius_skips_missing_neighbours_and_checks_k():
    g = KnnGraph(neighbors=np.array([[1, -1], [0, 2], [1, 0]]), sims=np.array([[0.9, 0.0], [0.9, 0.5], [0.5, 0.1]]))
    assert median_knn_radius(g, 2) == pytest.approx(np.median([0.5, 0.9]))
    assert median_knn_radius(g, 1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="1..2"):
        median_knn_radius(g, 3)


def test_fine_grids_known_answer(tmp_path):
    # two tight groups of four points; the map's grid (cell side 1) puts each group in one cell
    pts = [(0.1, 0.1), (0.6, 0.1), (0.1, 0.6), (0.6, 0.6)]
    coords = np.array(pts + [(x + 5, y) for x, y in pts])
    rd = RunDir(tmp_path / "run")
    rd.map_dir.mkdir(parents=True)
    write_json(rd.map_dir / "grid.json", {"cell_size": 1.0})
    pl.DataFrame({"id": [str(i) for i in range(8)], "x": coords[:, 0], "y": coords[:, 1]}).write_parquet(
        rd.projection_path
    )
    one_each = np.array([0, 4])  # fills the map's grid (2 of 2 cells): coverage 1.0 there
    out = fine_coverage(rd, one_each)
    # side 1/2 and 1/4: each point alone in its cell, 8 cells; two of them covered
    assert out == {"coverage_fine2": 0.25, "n_cells_fine2": 8, "coverage_fine4": 0.25, "n_cells_fine4": 8}
    assert fine_coverage(rd, np.arange(8))["coverage_fine2"] == 1.0
    assert fine_coverage(RunDir(tmp_path / "none"), one_each) == {}


def test_coverage_report_gives_independent_figures_where_ila_scores_one(tmp_path, monkeypatch):
    from curate import embed as embed_stage
    from curate import map as map_stage
    from curate.select.ila import ila_select

    n, d = 240, 16
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(6, d))[np.arange(n) % 6] * 3 + rng.normal(size=(n, d))
    vec = (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float32)
    rd = RunDir(tmp_path / "run")
    rd.pool_dir.mkdir(parents=True)
    pl.DataFrame({"id": [f"{i:032x}" for i in range(n)], "domain": ["a", "b", "c"] * (n // 3),
                  "prompt": ["p"] * n, "response": ["r"] * n, "kind": ["sft"] * n,
                  "n_duplicates": [0] * n}).write_parquet(rd.pool_dir / "shard-00000.parquet")
    monkeypatch.setattr(embed_stage, "current_fingerprint", lambda run: "fp")
    monkeypatch.setattr(embed_stage, "load_vectors", lambda run, fingerprint=None, **kw: vec)
    map_stage.build_index(rd.root, k=5, progress=False)
    map_stage.map_pool(rd.root, n_clusters=6, target_cells=15, progress=False)
    cells = pl.read_parquet(rd.map_dir / "grid.parquet")["cell"].to_numpy()
    chosen = ila_select(cells, rng.uniform(size=n), 24, seed=0).positions  # 10% of the pool, > cells
    rep = map_stage.coverage_report(rd.root, chosen)
    assert rep["coverage"] == 1.0  # the grid ILA filled
    assert rep["coverage_fine4"] < rep["coverage_fine2"] < 1.0
    assert rep["n_cells_fine4"] > rep["n_cells_fine2"] > rep["n_cells"]
    graph = map_stage.load_graph(rd.root)
    radius = float(np.median(1 - graph.sims[:, 4].astype(np.float64)))
    sims = vec @ vec[chosen].T
    expected = float(np.mean(1 - sims.max(axis=1) <= radius + 1e-6))
    assert rep["knn_coverage"] == pytest.approx(expected) and 0 < rep["knn_coverage"] < 1
    assert rep["knn_coverage_radius"] == pytest.approx(radius, abs=1e-6)

    # compare shows the independent figures next to the grid ILA filled, and DaaR's held-out R^2
    from fixtures_pool import Fixed

    from curate.compare import compare
    from curate.select import PoolView

    view = PoolView.from_run(rd)
    ila = Fixed(order=tuple(chosen.tolist())).select(view, len(chosen))
    ila.save(rd, "ila")
    daar = Fixed(order=tuple(range(24))).select(view, 24)
    daar.stats["probe_heldout_r2"] = -1.02
    daar.save(rd, "daar")
    table = {r["selection"]: r for r in compare(rd.root, ["ila", "daar"], progress=False).to_dicts()}
    assert table["ila"]["coverage"] == 1.0 and table["ila"]["coverage_fine4"] == rep["coverage_fine4"]
    assert table["ila"]["knn_coverage"] == pytest.approx(rep["knn_coverage"])
    assert table["daar"]["daar_probe_r2"] == -1.02 and table["ila"]["daar_probe_r2"] is None
