"""`max_ifd`: selectors ranking by IFD drop rows with IFD >= 1 by default, count them, and stratified quotas are
sized after the filter."""

from __future__ import annotations

import numpy as np
import pytest

from curate.errors import ParameterError
from curate.select import Budget, PoolView, make_selector
from curate.select.ifd_filter import resolve_max_ifd


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _view(ifd: np.ndarray, domains=None, depth=None, cells=None) -> PoolView:
    n = ifd.size
    rng = np.random.default_rng(0)
    signals = {"ifd": ifd}
    if depth is not None:
        signals["depth"] = depth
    return PoolView.from_arrays(
        [f"r{i}" for i in range(n)],
        domains=domains,
        vectors=_unit(rng, n),
        signals=signals,
        cells=np.arange(n) % 4 if cells is None else cells,
    )


# IFD above 1 is the largest, so ranking by IFD would take these rows first
IFD = np.array([1.8, 0.2, 1.0, 0.9, 0.5, 3.0, 0.7, 0.1, 0.95, 0.3])
ABOVE = {0, 2, 5}  # ifd >= 1


def test_resolve_max_ifd():
    assert resolve_max_ifd("auto", True) == 1.0
    assert resolve_max_ifd("auto", False) is None
    assert resolve_max_ifd(None, True) is None
    assert resolve_max_ifd("none", True) is None
    assert resolve_max_ifd("1.5", False) == 1.5
    assert resolve_max_ifd(2, True) == 2.0
    with pytest.raises(ParameterError):
        resolve_max_ifd("high", True)
    with pytest.raises(ParameterError):
        resolve_max_ifd(float("inf"), True)


@pytest.mark.parametrize(
    "method, params",
    [
        ("deita", {"signal": "ifd", "threshold": 1.0}),
        ("ila", {"signal": "ifd"}),
        ("top-signal", {"signal": "ifd"}),
        ("miw", {"signal": "ifd"}),
        ("miw", {"weights": {"ifd": 1.0}}),
    ],
)
def test_ranking_by_ifd_drops_rows_at_or_above_one_and_counts_them(method, params):
    view = _view(IFD)
    sel = make_selector(method, **params).select(view, 5, seed=0)
    assert sel.params["max_ifd"] == 1.0
    assert not set(sel.positions.tolist()) & ABOVE
    assert np.all(IFD[sel.positions] < 1.0)
    f = sel.stats["ifd_filter"]
    assert f["removed"] == 3 and f["max_ifd"] == 1.0 and f["rows"] == 10
    # off: the rows with the highest IFD come first again
    off = make_selector(method, **params, max_ifd=None).select(view, 5, seed=0)
    assert off.params["max_ifd"] is None and "ifd_filter" not in off.stats
    assert 5 in off.positions.tolist()  # ifd 3.0, the top row


def test_top_signal_order_after_the_filter_and_a_custom_threshold():
    view = _view(IFD)
    sel = make_selector("top-signal", signal="ifd").select(view, 4, seed=0)
    assert sel.positions.tolist() == [8, 3, 6, 4]  # 0.95, 0.9, 0.7, 0.5
    sel = make_selector("top-signal", signal="ifd", max_ifd=2.0).select(view, 3, seed=0)
    assert sel.positions.tolist() == [0, 2, 8]  # 1.8, 1.0, 0.95: only 3.0 removed
    assert sel.stats["ifd_filter"]["removed"] == 1


def test_other_signals_are_not_filtered_unless_asked():
    depth = np.linspace(1.0, 0.0, IFD.size)  # row 0 deepest
    view = _view(IFD, depth=depth)
    plain = make_selector("ila", signal="depth", cell_order="best")
    assert plain.max_ifd is None
    assert make_selector("miw").max_ifd is None and make_selector("miw", weights={"mtld": 1.0}).max_ifd is None
    assert make_selector("deita", signal="mtld").max_ifd is None
    assert make_selector("deita", signal="ifd,mtld").max_ifd == 1.0
    assert 0 in plain.select(view, 4, seed=0).positions.tolist()
    asked = make_selector("ila", signal="depth", cell_order="best", max_ifd=1.0)
    sel = asked.select(view, 4, seed=0)
    assert not set(sel.positions.tolist()) & ABOVE
    assert sel.stats["ifd_filter"]["removed"] == 3


def test_nan_ifd_is_left_to_the_selector_and_excluded_rows_are_not_counted():
    ifd = IFD.copy()
    ifd[1] = np.nan
    view = _view(ifd)
    sel = make_selector("top-signal", signal="ifd").select(view, 3, seed=0, exclude=np.array([0, 4]))
    f = sel.stats["ifd_filter"]
    assert f["removed"] == 2 and f["rows"] == 8  # rows 2 and 5; row 0 is excluded anyway
    assert sel.stats["n_nan"] == 1


def test_short_ranking_names_the_filter():
    view = _view(IFD)
    with pytest.raises(ValueError, match="max_ifd"):
        make_selector("top-signal", signal="ifd").select(view, 9, seed=0)


def test_stratified_quotas_are_sized_after_the_filter():
    # domain a: 10 rows, 6 with ifd >= 1; domain b: 10 rows, none. Eligible after the filter: a 4, b 10.
    ifd = np.array([1.5] * 6 + [0.1, 0.2, 0.3, 0.4] + list(np.linspace(0.1, 0.9, 10)))
    domains = ["a"] * 10 + ["b"] * 10
    view = _view(ifd, domains=domains, cells=np.arange(20) % 5)
    for method, params in (("top-signal", {"signal": "ifd"}), ("ila", {"signal": "ifd"}),
                           ("deita", {"signal": "ifd", "threshold": 1.0})):
        sel = make_selector(method, **params).select(view, Budget(rows=10), seed=0, stratify="domain")
        strata = sel.stats["stratify"]["strata"]
        # quotas in proportion to 4 : 10 eligible rows: 2.86 -> 3 and 7.14 -> 7 (not 5 : 5 on all rows)
        assert strata["a"]["eligible"] == 4 and strata["b"]["eligible"] == 10
        assert strata["a"]["quota"] == 3 and strata["b"]["quota"] == 7
        assert not strata["a"]["ran_out"] and sel.stats["stratify"]["passed_on"] == 0
        assert np.all(ifd[sel.positions] < 1.0)
        assert sel.stats["ifd_filter"]["removed"] == 6
        assert strata["a"]["stats"]["ifd_filter"]["removed"] == 6
        assert strata["b"]["stats"]["ifd_filter"]["removed"] == 0


def test_cli_flag_stats_in_the_saved_selection_and_manifest(tmp_path):
    from fixtures_pool import make_run, write_signal
    from typer.testing import CliRunner

    from curate.cli import app
    from curate.export import export
    from curate.select import load_selection
    from index.io import read_json

    run = make_run(tmp_path / "run", n=20)
    ids = PoolView.from_run(run).ids.tolist()
    ifd = np.r_[IFD, IFD * 0.3]  # rows 0, 2, 5 at or above 1; 0.9 and 0.95 at or above 0.9
    write_signal(run, "ifd", ids, ifd)
    args = ["select", "--run", str(run.root), "-m", "top-signal", "-b", "5", "-p", "signal=ifd", "--stratify", "none"]
    res = CliRunner().invoke(app, args + ["--name", "auto"])
    assert res.exit_code == 0, res.output
    sel = load_selection(run, "auto")
    assert sel.params["max_ifd"] == 1.0 and sel.stats["ifd_filter"]["removed"] == int((ifd >= 1).sum()) == 3
    res = CliRunner().invoke(app, args + ["--name", "strict", "--max-ifd", "0.9"])
    assert res.exit_code == 0, res.output
    assert load_selection(run, "strict").stats["ifd_filter"]["removed"] == int((ifd >= 0.9).sum()) == 5
    res = CliRunner().invoke(app, args + ["--name", "off", "--max-ifd", "none"])
    assert res.exit_code == 0, res.output
    off = load_selection(run, "off")
    assert off.params["max_ifd"] is None and off.ids[0] == ids[5]
    manifest = read_json(export(run, "auto") / "manifest.json")
    assert manifest["selection_stats"]["ifd_filter"]["removed"] == 3
