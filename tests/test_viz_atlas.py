"""The Embedding Atlas parquet: its layout (always), and loading it with embedding-atlas (when installed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_pool import Fixed, make_run, write_knn
from typer.testing import CliRunner

from curate.cli import app
from curate.view import PoolView
from curate.viz import export_map
from curate.viz.atlas import flag_column


@pytest.fixture()
def run(tmp_path):
    """24 synthetic rows with a map, a 3-NN graph and a selection named 'k-center' (rows 3, 7, 11)."""
    rd = make_run(tmp_path / "run", n=24, map_=True, knn=3)
    Fixed(order=(3, 7, 11)).select(PoolView.from_run(rd), "3").save(rd, "k-center")
    return rd


def test_atlas_parquet_layout(run):
    path = export_map(run)
    assert path == run.root / "atlas.parquet"
    table = pq.read_table(path)
    schema = table.schema
    assert schema.names[:6] == ["id", "x", "y", "text", "domain", "kind"]
    assert {"cell", "cluster", "tokens", "quality", "sel_k_center", "neighbors"} <= set(schema.names)
    assert schema.field("x").type == pa.float64() and schema.field("sel_k_center").type == pa.bool_()
    assert schema.field("neighbors").type == pa.struct(
        [pa.field("ids", pa.list_(pa.int64())), pa.field("distances", pa.list_(pa.float32()))]
    )
    pool = run.read_pool(["id", "prompt", "response"])
    assert table["id"].to_pylist() == pool["id"].to_list()  # row i of the file is pool position i
    assert table["text"][5].as_py() == pool["prompt"][5] + "\n\n" + pool["response"][5]
    assert np.flatnonzero(table["sel_k_center"].to_numpy()).tolist() == [3, 7, 11]
    graph = np.load(run.index_dir / "knn.npz")
    nb = table["neighbors"].to_pylist()
    assert [r["ids"] for r in nb] == graph["neighbors"].tolist()  # zero-based row ids
    np.testing.assert_allclose([r["distances"] for r in nb], 1.0 - graph["sims"], atol=1e-6)


def test_atlas_parquet_reads_as_embedding_atlas_reads_it(run):
    """pandas rows of {"ids", "distances"}, stacked into k-NN matrices as the tool's graph metrics do."""
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(export_map(run))
    ids = np.stack([np.array(r["ids"]) for r in df["neighbors"]])
    dist = np.stack([np.array(r["distances"]) for r in df["neighbors"]])
    assert ids.shape == dist.shape == (24, 3)
    assert ids.min() >= 0 and ids.max() < len(df) and not (ids == np.arange(24)[:, None]).any()
    assert (np.diff(dist, axis=1) >= -1e-6).all()  # nearest first


def test_atlas_leaves_out_missing_neighbours(run):
    nb, sims = write_knn(run, np.eye(24, 8, dtype=np.float32) + 0.1, 3)
    nb[0, 1:] = -1
    np.savez(run.index_dir / "knn.npz", neighbors=nb, sims=sims)
    rows = pq.read_table(export_map(run))["neighbors"].to_pylist()
    assert rows[0]["ids"] == [int(nb[0, 0])] and len(rows[0]["distances"]) == 1
    assert len(rows[1]["ids"]) == 3


def test_atlas_without_graph_needs_index_or_opt_out(tmp_path):
    rd = make_run(tmp_path / "run", n=12, map_=True)
    with pytest.raises(FileNotFoundError, match="curate index"):
        export_map(rd)
    table = pq.read_table(export_map(rd, tmp_path / "out" / "a.parquet", neighbors=False))
    assert "neighbors" not in table.schema.names and table.num_rows == 12


def test_flag_columns_are_plain_identifiers():
    assert flag_column("k-center") == "sel_k_center" and flag_column("ila1k") == "sel_ila1k"


def test_cli_export_map_prints_the_open_command(run):
    res = CliRunner().invoke(app, ["export-map", "--run", str(run.root)])
    assert res.exit_code == 0, res.output
    assert (run.root / "atlas.parquet").exists()
    assert "embedding-atlas" in res.output and "--neighbors neighbors" in res.output


def test_loads_in_embedding_atlas(run):
    """With the `atlas` extra: the tool's own loader, its PageRank over our neighbours, and its view props."""
    pytest.importorskip("embedding_atlas", reason="the optional `atlas` extra is not installed")
    from embedding_atlas.cli import load_datasets
    from embedding_atlas.graph_metrics import compute_pagerank_column
    from embedding_atlas.options import make_embedding_atlas_props

    df = load_datasets([str(export_map(run))])
    rank = np.asarray(compute_pagerank_column(df, neighbors="neighbors"), dtype=float)
    assert rank.shape == (24,) and np.isfinite(rank).all() and rank.max() > 0
    props = make_embedding_atlas_props(row_id="id", x="x", y="y", neighbors="neighbors", text="text")
    assert props
