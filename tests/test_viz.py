"""curate.viz draws what the tables say: colours per category, selected points, box medians, coverage lines,
domain shares, mixture shares, and the kNN neighbours of a row."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from fixtures_pool import Fixed, make_run, write_knn

from curate import viz
from curate.inspect import coverage_curves, map_frame
from curate.select.selection import Selection
from curate.view import PoolView
from curate.viz.maps import sample_rows


@pytest.fixture()
def run(tmp_path):
    """24 synthetic rows (domains code, math, chat, none), map and a 3-NN graph; selection 'fixed' of 5 rows."""
    rd = make_run(tmp_path / "run", n=24, map_=True, knn=3)
    Fixed(order=(0, 1, 2, 5, 9)).select(PoolView.from_run(rd), "5").save(rd, "fixed")
    return rd


def _rgba(colours) -> list[tuple]:
    return [tuple(np.round(c, 4)) for c in colours]


def test_map_scatter_colours_one_colour_per_domain(run):
    frame = map_frame(run)
    fig = viz.map_scatter(frame, "domain")
    ax = fig.axes[0]
    (points,) = ax.collections
    xy = points.get_offsets()
    colours = _rgba(points.get_facecolors())
    assert len(xy) == 24
    shuffled, _ = sample_rows(frame, None)
    by_domain: dict[str, set] = {}
    for dom, colour in zip(shuffled["domain"].fill_null("(none)").to_list(), colours, strict=True):
        by_domain.setdefault(dom, set()).add(colour)
    assert all(len(c) == 1 for c in by_domain.values())  # one colour per domain
    assert len({next(iter(c)) for c in by_domain.values()}) == 4  # four different colours
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chat", "code", "math", "(none)"]


def test_map_scatter_signal_is_continuous_and_nan_grey(run):
    frame = map_frame(run).with_columns(pl.when(pl.col("quality") > 0.5).then(pl.col("quality")).alias("half"))
    fig = viz.map_scatter(frame, "half")
    nan_pts, val_pts = fig.axes[0].collections
    n_val = int((frame["quality"] > 0.5).sum())
    assert len(val_pts.get_offsets()) == n_val and len(nan_pts.get_offsets()) == 24 - n_val
    assert sorted(val_pts.get_array().tolist()) == sorted(frame.filter(pl.col("quality") > 0.5)["quality"].to_list())
    assert len(fig.axes) == 2  # the colour bar


def test_map_scatter_samples_large_frames_and_says_so(run):
    frame = map_frame(run)
    fig = viz.map_scatter(frame, "cluster", max_points=10)
    assert len(fig.axes[0].collections[0].get_offsets()) == 10
    assert "sample of 10 of 24 rows" in fig.axes[0].get_title()
    with pytest.raises(KeyError, match="no column 'nope'"):
        viz.map_scatter(frame, "nope")


def test_selection_maps_draw_the_selected_rows(run):
    frame = map_frame(run)
    fig = viz.selection_maps(frame, ["fixed"])
    grey, red = fig.axes[0].collections
    chosen = frame["sel:fixed"].to_numpy()
    got = {tuple(p) for p in np.round(red.get_offsets(), 6)}
    want = {tuple(p) for p in np.round(frame.select("x", "y").to_numpy()[chosen], 6)}
    assert got == want and len(grey.get_offsets()) == 19
    assert fig.axes[0].get_title() == "fixed: 5 rows"


def test_signal_distributions_medians_per_domain(run):
    frame = map_frame(run)
    fig = viz.signal_distributions(frame, ["tokens", "quality"])
    assert [a.get_title() for a in fig.axes] == ["tokens", "quality"]
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["(all)", "chat", "code", "math", "(none)"]
    medians = [ln for ln in ax.lines if ln.get_color() == "crimson"]
    toks = frame["tokens"].to_numpy()
    doms = frame["domain"].fill_null("(none)").to_numpy()
    want = [np.median(toks)] + [np.median(toks[doms == d]) for d in labels[1:]]
    np.testing.assert_allclose([ln.get_xdata()[0] for ln in medians], want)


def test_coverage_plot_draws_the_curves(run):
    curves = coverage_curves(run, ["fixed"], budgets=[1, 2, 5])
    fig = viz.coverage_plot(curves)
    (line,) = fig.axes[0].lines
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 5])
    np.testing.assert_allclose(line.get_ydata(), curves["coverage"].to_numpy())
    assert line.get_label() == "fixed"


def test_domain_counts_against_the_pool(run):
    frame = map_frame(run)
    table = viz.domain_counts(frame, ["fixed"])
    # rows 0,1,2,5,9 -> domains code, math, chat, math, math
    assert dict(zip(table["domain"], table["fixed"], strict=True)) == {"code": 1, "math": 3, "chat": 1, "(none)": 0}
    assert table["pool"].to_list() == [6, 6, 6, 6]
    fig = viz.domain_counts_plot(frame, ["fixed"])
    bars = fig.axes[0].patches
    pool_w = [b.get_width() for b in bars[:4]]
    fixed_w = [b.get_width() for b in bars[4:]]
    np.testing.assert_allclose(pool_w, [25, 25, 25, 25])
    np.testing.assert_allclose(fixed_w, np.array(table["fixed"].to_list()) / 5 * 100)


MIX = {
    "method": "ama",
    "domains": ["code", "math", "chat"],
    "rounds": [
        {"round": 0, "weights": {"code": 1, "math": 1, "chat": 2}},
        {"round": 1, "weights": {"code": 0.5, "math": 0.5}},
    ],
}


def test_mixture_plot_stacks_each_rounds_shares(tmp_path):
    path = tmp_path / "mixtures" / "ama1.json"
    path.parent.mkdir()
    path.write_text(json.dumps(MIX))
    mix = viz.load_mixture(path)
    assert mix.name == "ama1" and mix.method == "ama" and mix.rounds == [0, 1]
    np.testing.assert_array_equal(mix.weights, [[1, 1, 2], [0.5, 0.5, 0]])  # a missing domain weighs 0
    assert viz.list_mixtures(tmp_path) == [path]
    fig = viz.mixture_plot(path)
    ax = fig.axes[0]
    heights = np.array([b.get_height() for b in ax.patches]).reshape(3, 2)  # domain-major, one bar per round
    np.testing.assert_allclose(heights, [[0.25, 0.5], [0.25, 0.5], [0.5, 0.0]])
    bottoms = np.array([b.get_y() for b in ax.patches]).reshape(3, 2)
    np.testing.assert_allclose(bottoms[2], [0.5, 1.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
    assert ax.get_title() == "ama1: domain mixture over rounds (ama)"
    # the training module's layout has no "method" (and may carry an "objective"): read it too
    path.write_text(json.dumps({"domains": ["a", "b"], "rounds": [{"round": 3, "weights": {"a": 1}}], "objective": {}}))
    assert viz.load_mixture(path).method == "" and viz.load_mixture(path).rounds == [3]


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({**MIX, "rounds": [{"round": 0, "weights": {"poetry": 1}}]}, "not in 'domains'"),
        ({**MIX, "rounds": [{"round": 0, "weights": {"code": -1}}]}, "negative"),
        ({**MIX, "rounds": []}, "no rounds"),
        ({"method": "x", "rounds": []}, "expected an object"),
        ([1, 2], "expected an object"),
    ],
)
def test_load_mixture_rejects_bad_files(tmp_path, doc, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=match):
        viz.load_mixture(path)


def test_neighbours_follow_the_knn_graph(run):
    graph = np.load(run.index_dir / "knn.npz")
    table = viz.neighbours(run, 4, k=3)
    assert table["position"].to_list() == [4, *graph["neighbors"][4].tolist()]
    np.testing.assert_allclose(table["similarity"].to_numpy()[1:], graph["sims"][4], rtol=1e-6)
    assert table["rank"].to_list() == [0, 1, 2, 3] and table["similarity"][0] == 1.0
    pool = run.read_pool(["id", "prompt"])
    assert table["prompt"][1] == pool["prompt"][int(graph["neighbors"][4][0])]
    by_id = viz.neighbours(run, pool["id"][4], k=2)
    assert by_id["position"].to_list() == table["position"].to_list()[:3]
    with pytest.raises(KeyError):
        viz.neighbours(run, "not-an-id")
    with pytest.raises(IndexError):
        viz.neighbours(run, 24)


def test_neighbours_skip_missing_and_cut_texts(run):
    nb, sims = write_knn(run, np.eye(24, 8, dtype=np.float32) + 0.1, 3)
    nb[2, 1:] = -1
    np.savez(run.index_dir / "knn.npz", neighbors=nb, sims=sims)
    table = viz.neighbours(run, 2, k=3, chars=5)
    assert table["position"].to_list() == [2, int(nb[2, 0])]
    assert all(len(p) <= 5 for p in table["prompt"].to_list())
    assert table["prompt"][0].endswith("…")


def test_png_is_a_drawn_image(run):
    from io import BytesIO

    from PIL import Image

    data = viz.png_bytes(viz.map_scatter(map_frame(run), "domain"))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(Image.open(BytesIO(data)).convert("RGB")).astype(int)
    assert ((pixels.max(2) - pixels.min(2)) > 80).sum() > 50  # coloured points, not a blank canvas
    assert viz.png_data_uri(viz.map_scatter(map_frame(run), "domain")).startswith("data:image/png;base64,")


def test_selection_flags_match_saved_selection(run):
    frame = map_frame(run)
    chosen = np.sort(Selection.load(run, "fixed").positions)
    np.testing.assert_array_equal(np.flatnonzero(frame["sel:fixed"].to_numpy()), chosen)
