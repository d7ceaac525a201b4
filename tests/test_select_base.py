"""The selector interface: budgets, token budgets, PoolView alignment, Selection round trip, the select stage."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from fixtures_pool import make_run

from curate.select import SELECTORS, Budget, PoolView, Ranking, Selection, Selector, list_selections, select


class FixedOrder(Selector):
    """Test selector: returns a fixed ranking (not registered)."""

    name = "fixed"

    def __init__(self, order: tuple = (), weights: tuple | None = None) -> None:
        self.order = order
        self.weights = weights

    def rank(self, view, k, *, seed, budget):
        w = None if self.weights is None else np.asarray(self.weights, dtype=float)
        return Ranking(np.asarray(self.order), weights=w, reasons=[f"r{i}" for i in self.order])


def view(n: int = 10, tokens=None) -> PoolView:
    sig = {} if tokens is None else {"tokens": np.asarray(tokens, dtype=float)}
    return PoolView.from_arrays([f"id{i}" for i in range(n)], signals=sig)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("1000", Budget(rows=1000)),
        (" 20% ", Budget(fraction=0.2)),
        ("12.5%", Budget(fraction=0.125)),
        ("50000tok", Budget(tokens=50000)),
        ("50000 tokens", Budget(tokens=50000)),
        ("7rows", Budget(rows=7)),
        (0.3, Budget(fraction=0.3)),
        ("0.3", Budget(fraction=0.3)),
        (5, Budget(rows=5)),
        (5.0, Budget(rows=5)),
        (Budget(tokens=3), Budget(tokens=3)),
    ],
)
def test_budget_parse(spec, expected):
    assert Budget.parse(spec) == expected
    assert Budget.parse(str(Budget.parse(spec))) == expected  # str() round-trips


@pytest.mark.parametrize("spec", ["", "abc", "-5", "150%", "1.5tok", "10 apples"])
def test_budget_parse_rejects(spec):
    with pytest.raises(ValueError):
        Budget.parse(spec)


@pytest.mark.parametrize("spec, message", [(1.0, "ambiguous.*100%"), ("1.0", "ambiguous"),
                                           ("150%", "'150%'.*at most 100%")])
def test_budget_parse_names_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        Budget.parse(spec)


def test_budget_needs_exactly_one():
    with pytest.raises(ValueError, match="exactly one"):
        Budget(rows=1, tokens=2)
    with pytest.raises(ValueError, match="exactly one"):
        Budget()
    with pytest.raises(TypeError):
        Budget.parse(True)


def test_budget_resolve():
    assert Budget(rows=5).resolve(3) == 3
    assert Budget(rows=2).resolve(10) == 2
    assert Budget(fraction=0.25).resolve(10) == 3  # 2.5 rounds half up
    assert Budget(fraction=0.2).resolve(10) == 2
    assert Budget(fraction=1.0).resolve(7) == 7
    # token upper bound: shortest rows 1+2+3 = 6 <= 7, +4 = 10 > 7
    assert Budget(tokens=7).resolve(4, np.array([4.0, 1.0, 3.0, 2.0])) == 3
    with pytest.raises(ValueError, match="tokens"):
        Budget(tokens=7).resolve(4)


def test_rows_budget_takes_prefix_of_ranking():
    sel = FixedOrder(order=(3, 1, 4, 0, 2)).select(view(5), "3", seed=0)
    assert sel.positions.tolist() == [3, 1, 4]
    assert sel.ids == ["id3", "id1", "id4"]
    assert sel.reasons == ["r3", "r1", "r4"]
    assert sel.weights.tolist() == [1.0, 1.0, 1.0]
    assert sel.budget == "3" and sel.method == "fixed" and sel.params == {"order": (3, 1, 4, 0, 2), "weights": None}
    assert sel.to_frame()["rank"].to_list() == [0, 1, 2]


def test_token_budget_skips_rows_that_overflow():
    tokens = [5, 8, 2, 4, 1, 9]
    # ranking 1(8) 0(5) 5(9) 3(4) 2(2) 4(1), budget 15: take 1 (8, left 7), take 0 (5, left 2),
    # skip 5 (9), skip 3 (4), take 2 (2, left 0), then nothing fits (row 4 needs 1) -> stop
    sel = FixedOrder(order=(1, 0, 5, 3, 2, 4)).select(view(6, tokens), "15tok")
    assert sel.positions.tolist() == [1, 0, 2]
    assert sel.stats["tokens"] == 15
    assert sel.budget == "15tok"
    # with room for the last row it is taken after the skipped ones
    sel = FixedOrder(order=(1, 0, 5, 3, 2, 4)).select(view(6, tokens), "16tok")
    assert sel.positions.tolist() == [1, 0, 2, 4]
    # zero budget selects nothing; a huge budget selects all
    assert FixedOrder(order=(0, 1)).select(view(2, [1, 1]), "0tok").positions.tolist() == []
    assert len(FixedOrder(order=(0, 1)).select(view(2, [1, 1]), "100tok")) == 2


def test_token_budget_ranks_on_while_shorter_rows_would_still_fit():
    """A token budget asks a selector for k rows (as many as the shortest rows would fill); when its ranking skips
    long rows and leaves room, the selector ranks more rows until nothing left fits. Before, k-center stopped at
    its k ranked rows with short rows unselected and budget left."""
    from curate.select import make_selector

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tokens = np.array([100.0] * 20 + [1.0] * 20)
    v = PoolView.from_arrays([f"r{i}" for i in range(40)], vectors=x, signals={"tokens": tokens})
    sel = make_selector("k-center").select(v, Budget(tokens=230), seed=0)
    assert Budget(tokens=230).resolve(40, tokens) == 22  # what the first ranking asks for
    assert tokens[sel.positions].sum() == 220 and set(range(20, 40)) <= set(sel.positions.tolist())
    # the selection is the k-center order of the longer ranking, filtered by the budget
    order = make_selector("k-center").rank(v, 40, seed=0, budget=Budget(rows=40)).positions
    take = [p for p in order if tokens[p] == 1 or p in sel.positions]
    assert sel.positions.tolist() == take


def test_token_budget_without_tokens_signal_names_the_command():
    with pytest.raises(FileNotFoundError, match="curate score --signal tokens"):
        FixedOrder(order=(0,)).select(view(3), "10tok")


def test_ranking_is_validated():
    with pytest.raises(ValueError, match="repeats"):
        FixedOrder(order=(0, 0, 1)).select(view(3), "2")
    with pytest.raises(ValueError, match="out of range"):
        FixedOrder(order=(0, 7)).select(view(3), "2")
    with pytest.raises(ValueError, match="ranked 1 rows"):
        FixedOrder(order=(0,)).select(view(3), "2")
    with pytest.raises(ValueError, match="finite"):
        FixedOrder(order=(0, 1), weights=(1.0, -1.0)).select(view(3), "2")


def test_weights_are_kept():
    sel = FixedOrder(order=(2, 0), weights=(0.5, 2.0)).select(view(3), "2")
    assert sel.weights.tolist() == [0.5, 2.0]


def test_from_arrays_checks_lengths():
    with pytest.raises(ValueError, match="signal 'x' has 2 rows but the pool has 3"):
        PoolView.from_arrays(["a", "b", "c"], signals={"x": [1.0, 2.0]})
    with pytest.raises(ValueError, match="not unique"):
        PoolView.from_arrays(["a", "a"])
    v = PoolView.from_arrays(["a", "b"], domains=["x", None], knn=(np.array([[1], [0]]), np.array([[0.5], [0.5]])))
    assert v.domains().tolist() == ["x", None]
    assert v.knn().neighbors.tolist() == [[1], [0]]
    with pytest.raises(KeyError, match="signal 'nope'"):
        v.signal("nope")


def test_pool_view_from_run_aligns_by_id(tmp_path):
    run = make_run(tmp_path, n=12, knn=3, map_=True)
    v = PoolView.from_run(run)
    pool = run.read_pool(["id", "domain"])
    assert v.n == 12 and v.ids.tolist() == pool["id"].to_list()
    assert v.vectors().shape == (12, 8)
    assert v.signal_names() == ["quality", "tokens"]
    # write the grid in reverse order: the view must still align it to pool order
    grid = pl.read_parquet(run.map_dir / "grid.parquet")
    expected = grid["cell"].to_numpy()
    grid.reverse().write_parquet(run.map_dir / "grid.parquet")
    assert np.array_equal(PoolView.from_run(run).cells(), expected)
    assert PoolView.from_run(run).projection().shape == (12, 2)
    # a grid missing a row is stale: clear error
    grid.head(11).write_parquet(run.map_dir / "grid.parquet")
    with pytest.raises(ValueError, match="no value for 1 pool rows"):
        PoolView.from_run(run).cells()


def test_selection_save_load_round_trip(tmp_path):
    run = make_run(tmp_path, n=10)
    sel = FixedOrder(order=(4, 2, 9), weights=(1.0, 0.25, 3.0)).select(PoolView.from_run(run), "3", seed=5)
    sel.save(run, "mine")
    back = Selection.load(run, "mine")
    assert back.positions.tolist() == [4, 2, 9]
    assert back.ids == sel.ids and back.reasons == sel.reasons
    assert back.weights.tolist() == [1.0, 0.25, 3.0]
    assert back.seed == 5 and back.method == "fixed" and back.budget == "3"
    df = pl.read_parquet(run.selection_path("mine"))
    assert df.columns == ["id", "weight", "rank", "reason"]
    assert df.schema["rank"] == pl.Int64 and df.schema["weight"] == pl.Float64
    assert list_selections(run) == ["mine"]
    with pytest.raises(ValueError, match="bad selection name"):
        sel.save(run, "../evil")


def test_select_stage_saves_under_name_and_is_deterministic(tmp_path):
    run = make_run(tmp_path, n=20)
    a = select(run, "random", "25%", seed=3)
    assert run.selection_path("random").exists()
    b = select(run, "random", Budget(fraction=0.25), seed=3, name="again")
    assert a.ids == b.ids and len(a) == 5
    assert run.selection_path("again").read_bytes() == run.selection_path("random").read_bytes()
    assert a.stats["coverage"] is None and "map not built" in a.stats["coverage_note"]
    with pytest.raises(KeyError, match="unknown selector 'nope'"):
        select(run, "nope", 3)
    with pytest.raises(TypeError, match="bad parameters"):
        select(run, "random", 3, colour="red")


def test_registry_lists_baselines():
    for name in ["random", "balanced-random", "longest", "top-signal", "k-center", "facility-location"]:
        assert name in SELECTORS
        cls = SELECTORS.get(name)
        assert cls.name == name and cls.paper


def test_select_skips_a_current_selection_and_reruns_when_an_input_changes(tmp_path, monkeypatch):
    import os

    from curate.select import baselines

    run = make_run(tmp_path, n=20)
    calls = []
    real = baselines.RandomSelector.rank

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(baselines.RandomSelector, "rank", counted)
    first = select(run, "random", 5, seed=1)
    stamp = run.selection_path("random").stat().st_mtime_ns
    again = select(run, "random", 5, seed=1)
    assert len(calls) == 1 and again.ids == first.ids and run.selection_path("random").stat().st_mtime_ns == stamp
    select(run, "random", 5, seed=2)  # another argument: rerun
    assert len(calls) == 2
    shard = sorted((run.root / "pool").glob("*.parquet"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # an input changed
    select(run, "random", 5, seed=2)
    assert len(calls) == 3
    select(run, "random", 5, seed=2, force=True)
    assert len(calls) == 4


def test_the_pool_view_reads_extra_columns_once_in_pool_order(tmp_path):
    """PoolView.columns: the one pool reader of selectors and signals (ScoreContext.pool goes through it)."""
    from fixtures_pool import make_run

    from curate.signals.base import ScoreContext
    from curate.view import PoolView

    run = make_run(tmp_path / "run", n=12)
    view = PoolView.from_run(run.root)
    got = view.columns(["messages", "id", "meta"])
    assert got.columns == ["id", "messages", "meta"]
    assert got["id"].to_list() == run.read_pool(["id"])["id"].to_list()
    assert got["messages"].to_list() == run.read_pool(["messages"])["messages"].to_list()
    frame = view.frame
    assert view.columns(["messages"])["messages"].to_list() == got["messages"].to_list() and view.frame is frame
    ctx = ScoreContext(run.root, models={}, validation=None, dtype=None, batch_tokens=1, progress=False, params={})
    assert ctx.pool.columns == ["id", "domain", "messages", "prompt", "response", "meta"] and ctx.n == 12
    with pytest.raises(ValueError, match="no column"):
        PoolView.from_arrays(ids=["a"], vectors=np.ones((1, 2), dtype=np.float32)).columns(["messages"])


def test_excluded_rows_are_not_candidates_so_they_take_no_cell_or_quota():
    """Reference rows are ILA's deepest (the reference model trained on them); ranked and then dropped they took
    their cells' first-pass picks, so two of four cells went without a row. Ranked as a pool of their own, the
    eligible rows fill every cell, and balanced random stays balanced."""
    from collections import Counter

    from curate.select import make_selector

    cells = np.repeat(np.arange(4), 3)
    depth = np.tile([0.9, 0.5, 0.1], 4) + np.repeat([0.0, 0.01, 0.02, 0.03], 3)
    v = PoolView.from_arrays([f"r{i}" for i in range(12)], cells=cells, signals={"relative_depth": depth})
    sel = make_selector("ila", cell_order="best").select(v, Budget(rows=4), seed=0, exclude=np.array([0, 3]))
    assert sel.positions.tolist() == [9, 6, 4, 1] and sorted(cells[sel.positions].tolist()) == [0, 1, 2, 3]
    assert sel.stats["excluded_rows"] == 2
    domains = ["a"] * 6 + ["b"] * 6
    w = PoolView.from_arrays([f"r{i}" for i in range(12)], domains=domains)
    for seed in range(5):
        sel = make_selector("balanced-random").select(w, Budget(rows=4), seed=seed, exclude=np.array([0, 1, 2]))
        assert Counter(domains[p] for p in sel.positions) == {"a": 2, "b": 2} and min(sel.positions) >= 3


@pytest.mark.parametrize("spec, n, rows", [
    ("29%", 50, 15), ("35%", 90, 32), ("14.5%", 10, 1), ("0.5%", 100, 1), ("12.5%", 4, 1), ("2.5%", 20, 1),
    ("29%", 49, 14), ("20%", 10, 2), ("0.3", 5, 2), ("0.5", 7, 4), (0.25, 10, 3), ("100%", 7, 7),
])
def test_percentages_round_half_up_exactly(spec, n, rows):
    """29% of 50 rows is 14.5: half up gives 15 (floor(0.29 * 50 + 0.5) in binary floating point gave 14)."""
    assert Budget.parse(spec).resolve(n) == rows


def test_other_budget_forms_keep_their_rows():
    assert Budget.parse("7").resolve(5) == 5 and Budget.parse(3).resolve(10) == 3
    assert Budget.parse("6tok").resolve(4, np.array([4.0, 1.0, 3.0, 2.0])) == 3
    assert Budget.parse("14.3%") == Budget(fraction=0.143) and str(Budget.parse("29%")) == "29%"


def test_a_percentage_that_rounds_to_no_row_is_an_error_naming_the_pool(tmp_path):
    from curate.errors import ParameterError

    run = make_run(tmp_path, n=20)
    with pytest.raises(ParameterError, match=r"budget '2%' selects nothing: the pool holds 20 rows") as e:
        select(run, "random", "2%")
    assert "at least 2.5%" in str(e.value.hint)
    with pytest.raises(ParameterError, match="selects nothing"):
        select(run, "random", "0%")
    assert len(select(run, "random", "2.5%")) == 1  # 0.5 rounds half up


class FileOrder(Selector):
    """Test selector ranking the positions written in a file (and in a list of files), as DaaR reads seed files."""

    name = "file-order"

    def __init__(self, order_file: str = "", more: list | None = None, folder: str | None = None) -> None:
        self.order_file, self.more, self.folder = order_file, more, folder

    def rank(self, view, k, *, seed, budget):
        from pathlib import Path

        texts = [Path(self.order_file).read_text(), *(Path(p).read_text() for p in self.more or [])]
        return Ranking(np.asarray([int(t) for text in texts for t in text.split()]))


def test_files_named_by_selector_parameters_are_inputs_of_the_select_stage(tmp_path, monkeypatch):
    """DaaR's seeds=PATH.jsonl and domain_descriptions=FILE were keyed by the path only: a file edited in place
    gave back the stale selection."""
    import os

    from curate.select import SELECTORS, _selection_inputs

    monkeypatch.setitem(SELECTORS._items, "file-order", FileOrder)
    run = make_run(tmp_path / "run", n=20)
    order, more = tmp_path / "order.txt", tmp_path / "more.txt"
    order.write_text("3 1 2")
    more.write_text("9")
    kw = {"order_file": str(order), "more": [str(more)], "folder": str(tmp_path)}
    assert select(run, "file-order", 4, **kw).positions.tolist() == [3, 1, 2, 9]

    def edit(path, text):
        st = path.stat()
        path.write_text(text)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime, whatever the clock

    edit(order, "0 4 5")
    assert select(run, "file-order", 4, **kw).positions.tolist() == [0, 4, 5, 9]
    edit(more, "7")
    assert select(run, "file-order", 4, **kw).positions.tolist() == [0, 4, 5, 7]
    inputs = _selection_inputs(run, {"method": "file-order", "stratify": None, "mixture": None, **kw})
    assert inputs[-2:] == [str(order.resolve()), str(more.resolve())]  # files only: the folder is not read


class ModelCalls(Selector):
    """Test selector taking a `model` folder, as DaaR and RDS+ do; counts its runs."""

    name = "model-calls"
    runs = 0

    def __init__(self, model: str = "") -> None:
        self.model = model

    def rank(self, view, k, *, seed, budget):
        ModelCalls.runs += 1
        return Ranking(np.arange(k))


def test_a_model_rewritten_in_place_reruns_the_selection(tmp_path, monkeypatch):
    """DaaR's and RDS+'s model folders were keyed by their path only: new weights at the same path gave back the
    selection made with the old ones. Selections without a model keep their key (no fingerprint part)."""
    from fixtures_lm import build_tiny_lm

    from curate.select import _model_fingerprints

    monkeypatch.setitem(SELECTORS._items, "model-calls", ModelCalls)
    run = make_run(tmp_path / "run", n=20)
    model = build_tiny_lm(tmp_path / "lm", seed=0)
    select(run, "model-calls", 3, model=str(model))
    select(run, "model-calls", 3, model=str(model))
    assert ModelCalls.runs == 1
    build_tiny_lm(model, seed=1)  # other weights, same folder
    select(run, "model-calls", 3, model=str(model))
    assert ModelCalls.runs == 2
    assert _model_fingerprints(run, {"method": "random", "budget": 3}) == {}
    assert _model_fingerprints(run, {"model": str(tmp_path / "not-a-model")}) == {}
