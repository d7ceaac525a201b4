"""End-to-end test of the map stages on a tiny run directory."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from curate import embed as embed_stage
from curate import map as map_stage
from curate.run import RunDir
from index.grid import coverage
from index.io import read_json

N, D = 240, 16


@pytest.fixture()
def tiny_run(tmp_path, monkeypatch):
    """A pool of 240 rows in 3 domains with clustered unit vectors standing in for the embed stage."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, D)) * 3
    vec = centres[np.arange(N) % 6] + rng.normal(size=(N, D))
    vec = (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"{i:032x}" for i in range(N)]
    domains = [["math", "code", None][i % 3] for i in range(N)]
    rd = RunDir(tmp_path / "run")
    rd.pool_dir.mkdir(parents=True)
    pl.DataFrame({"id": ids, "domain": domains, "prompt": ["p"] * N, "response": ["r"] * N}).write_parquet(
        rd.pool_dir / "shard-00000.parquet"
    )
    state = {"fp": "fp-a", "vectors": vec}
    monkeypatch.setattr(embed_stage, "current_fingerprint", lambda run: state["fp"])
    monkeypatch.setattr(embed_stage, "load_vectors", lambda run, fingerprint=None, **kw: state["vectors"])
    return rd, state


def test_index_stage_builds_its_search_index_on_the_graphs_cells_at_scale(tiny_run, monkeypatch):
    """Past FLAT_MAX_ROWS (lowered here) the auto index is an IVF whose lists are the kNN graph's cells."""
    import faiss

    import index.faiss_index as fi
    import index.knn as knn_mod

    rd, _ = tiny_run
    monkeypatch.setattr(fi, "FLAT_MAX_ROWS", 100)
    monkeypatch.setattr(knn_mod, "EXACT_MAX_ROWS", 100)
    built = []
    real = fi.ivf_from_cells
    monkeypatch.setattr(fi, "ivf_from_cells", lambda x, c, lab, **kw: built.append(lab) or real(x, c, lab, **kw))
    monkeypatch.setattr(fi, "build_index", lambda *a, **kw: pytest.fail("a second k-means"))
    info = map_stage.build_index(rd.root, k=5, progress=False)
    assert info["index_class"] == "IndexIVFFlat" and info["graph"]["method"] == "cells" and info["recall_at_k"] > 0.5
    loaded = fi.load_index(rd.index_dir / "faiss.index")
    ivf = faiss.extract_index_ivf(loaded)  # a view: `loaded` must stay alive
    assert ivf.ntotal == N and ivf.nlist == info["graph"]["cells"]
    assert [ivf.invlists.list_size(j) for j in range(ivf.nlist)] == np.bincount(built[0], minlength=ivf.nlist).tolist()


def test_build_index_and_map_pool(tiny_run):
    rd, state = tiny_run
    vec = state["vectors"]
    info = map_stage.build_index(rd.root, k=5, progress=False)
    assert info["skipped"] is False and info["n"] == N and info["exact"] is True
    for name in ("faiss.index", "knn.npz", "index.json"):
        assert (rd.index_dir / name).exists()
    assert read_json(rd.index_dir / "index.json")["graph"] == {"method": "flat"}
    graph = map_stage.load_graph(rd.root)
    sims = vec @ vec.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(graph.sims, -np.sort(-sims, axis=1)[:, :5], atol=1e-5)
    assert map_stage.build_index(rd.root, k=5, progress=False)["skipped"] is True

    out = map_stage.map_pool(rd.root, n_clusters=6, target_cells=20, progress=False)
    assert out["skipped"] == []
    proj = pl.read_parquet(rd.projection_path)
    assert proj.columns == ["id", "x", "y"] and proj.height == N
    pj = read_json(rd.root / "projection.json")
    assert pj["method"] == "pca" and pj["fitted_on"] == N and pj["key"]["fingerprint"] == "fp-a"
    grid = pl.read_parquet(rd.map_dir / "grid.parquet")
    assert grid.columns == ["id", "cell"] and grid["cell"].dtype == pl.Int64
    gj = read_json(rd.map_dir / "grid.json")
    assert gj["n_nonempty"] == grid["cell"].n_unique() and abs(gj["n_nonempty"] - 20) <= 2
    clusters = pl.read_parquet(rd.map_dir / "clusters.parquet")
    assert clusters["cluster"].n_unique() == 6
    assert np.load(rd.map_dir / "centroids.npy").shape == (6, D)
    assert sum(read_json(rd.map_dir / "clusters.json")["sizes"]) == N
    div = read_json(rd.map_dir / "diversity.json")
    assert set(div["domains"]) == {"math", "code", "(none)"} and div["domains"]["math"]["n"] == 80
    assert div["mean_knn_distance"] == pytest.approx(float(np.mean(1 - graph.sims)), abs=1e-6)
    assert 0 <= div["near_duplicate_fraction"] <= 1

    again = map_stage.map_pool(rd.root, n_clusters=6, target_cells=20, progress=False)
    assert again["skipped"] == ["projection", "grid", "clusters", "diversity"]
    # a new grid parameter recomputes the grid only
    third = map_stage.map_pool(rd.root, n_clusters=6, target_cells=10, progress=False)
    assert third["skipped"] == ["projection", "clusters", "diversity"]
    # the same rows with other domains (ids unchanged): the per-domain diversity is recomputed
    pool = pl.read_parquet(rd.pool_dir / "shard-00000.parquet")
    pool.with_columns(pl.lit("all").alias("domain")).write_parquet(rd.pool_dir / "shard-00000.parquet")
    fourth = map_stage.map_pool(rd.root, n_clusters=6, target_cells=10, progress=False)
    assert fourth["skipped"] == ["projection", "grid", "clusters"]
    assert set(read_json(rd.map_dir / "diversity.json")["domains"]) == {"all"}
    pool.write_parquet(rd.pool_dir / "shard-00000.parquet")

    sub = list(range(0, N, 7))
    rep = map_stage.coverage_report(rd.root, sub)
    cells = pl.read_parquet(rd.map_dir / "grid.parquet")["cell"].to_numpy()
    assert rep["coverage"] == pytest.approx(coverage(cells, sub))
    assert rep["n"] == len(sub) and rep["covering_radius"] > 0 and "facility_location" in rep
    by_id = map_stage.coverage_report(rd.root, [f"{i:032x}" for i in sub])
    assert by_id["coverage"] == rep["coverage"] and by_id["vendi"] == pytest.approx(rep["vendi"])
    with pytest.raises(KeyError, match="not in the pool"):
        map_stage.coverage_report(rd.root, ["nope"])

    # new embeddings: everything keyed by the fingerprint is recomputed; the old graph is not used
    state["fp"] = "fp-b"
    assert map_stage.load_graph(rd.root) is None
    (rd.root / "embeddings").mkdir()  # what selectors read: PoolView refuses the graph of other embeddings
    (rd.root / "embeddings" / "current.json").write_text('{"fingerprint": "fp-b"}')
    from curate.errors import MissingArtefactError
    from curate.view import PoolView

    with pytest.raises(MissingArtefactError, match="built from other embeddings"):
        PoolView.from_run(rd.root).knn()
    with pytest.raises(Exception, match="k must be at least 1"):
        map_stage.build_index(rd.root, k=0, progress=False)
    fresh = map_stage.map_pool(rd.root, n_clusters=6, target_cells=10, progress=False)
    assert fresh["skipped"] == []
    assert read_json(rd.map_dir / "diversity.json")["mean_knn_distance"] is None


def test_map_pool_progress_bar_and_written_files(tiny_run, capsys):
    rd, _ = tiny_run
    out = map_stage.map_pool(rd.root, n_clusters=6, target_cells=20, progress=True)
    err = capsys.readouterr().err
    assert "map: 100%" in err and "rows/s" in err and f"{4 * N}/{4 * N}" in err
    assert "k-means assign" in err  # the steps' own bars below the outer one
    assert set(out["written"]) == {str(p) for p in (
        rd.projection_path, rd.root / "projection.json", rd.map_dir / "grid.parquet", rd.map_dir / "grid.json",
        rd.map_dir / "clusters.parquet", rd.map_dir / "centroids.npy", rd.map_dir / "clusters.json",
        rd.map_dir / "diversity.json")}  # fmt: skip
    # a new grid parameter: only the grid step runs, and the bar's total is that step's rows
    again = map_stage.map_pool(rd.root, n_clusters=6, target_cells=10, progress=True)
    err = capsys.readouterr().err
    assert f"{N}/{N}" in err and again["written"] == [str(rd.map_dir / "grid.parquet"), str(rd.map_dir / "grid.json")]
    map_stage.map_pool(rd.root, n_clusters=6, target_cells=12, progress=False)
    assert capsys.readouterr().err == ""


def test_map_command_prints_the_files_it_wrote(tiny_run):
    from typer.testing import CliRunner

    from curate.cli import app

    rd, _ = tiny_run
    res = CliRunner().invoke(app, ["map", "--run", str(rd.root), "--n-clusters", "6", "--target-cells", "20"])
    assert res.exit_code == 0, res.output
    wrote = [line.removeprefix("wrote: ") for line in res.output.splitlines() if line.startswith("wrote: ")]
    assert str(rd.map_dir / "diversity.json") in wrote and len(wrote) == 8
    res = CliRunner().invoke(app, ["map", "--run", str(rd.root), "--n-clusters", "6", "--target-cells", "20"])
    assert "wrote: " not in res.output
    assert "current, not rebuilt: projection, grid, clusters, diversity" in res.output
