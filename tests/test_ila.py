"""ILA round-robin: golden first pass, equality with the naive loop, quotas, threshold, selector wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from curate.select import PoolView, make_selector
from curate.select.ila import ila_select, ila_select_reference


def _pool(n: int = 300, n_cells: int = 17, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, n_cells, n) * 7 + 3  # sparse, non-contiguous cell ids
    depth = np.round(rng.random(n), 2)  # many ties
    return cells, depth


@pytest.mark.parametrize("cell_order", ["random", "best"])
def test_first_pass_takes_exactly_one_row_from_every_nonempty_cell(cell_order: str) -> None:
    cells, depth = _pool()
    n_cells = np.unique(cells).size
    res = ila_select(cells, depth, n_cells, cell_order=cell_order, seed=3)
    first = res.positions
    assert sorted(cells[first].tolist()) == sorted(np.unique(cells).tolist())
    assert res.stats["coverage"] == 1.0 and res.stats["n_passes"] == 1
    for p in first:  # the deepest row of its cell (ties: lowest position)
        members = np.flatnonzero(cells == cells[p])
        best = members[np.lexsort((members, -depth[members]))][0]
        assert p == best
    # the second pass starts only after every cell was visited once
    more = ila_select(cells, depth, n_cells + 5, cell_order=cell_order, seed=3)
    assert np.array_equal(more.positions[:n_cells], first) or cell_order == "random"
    assert (more.passes[:n_cells] == 0).all() and (more.passes[n_cells:] == 1).all()


def test_budget_below_cells_fills_with_the_cells_of_deepest_best_row() -> None:
    cells = np.array([0, 0, 1, 1, 2, 3, 3])
    depth = np.array([0.1, 0.9, 0.5, 0.2, 0.7, 0.3, 0.95])
    res = ila_select(cells, depth, 2, cell_order="random", seed=0)
    assert res.positions.tolist() == [6, 1]  # cells 3 (0.95) and 0 (0.9)
    assert res.stats["coverage"] == 0.5


def test_hand_example_round_robin_best_order() -> None:
    cells = np.array([5, 5, 5, 9, 9, 2])
    depth = np.array([0.2, 0.8, 0.5, 0.6, 0.1, 0.3])
    res = ila_select(cells, depth, 6, cell_order="best")
    # pass 0 in order of the cell's best depth: cell 5 (0.8), 9 (0.6), 2 (0.3); pass 1: 5 (0.5), 9 (0.1); pass 2
    assert res.positions.tolist() == [1, 3, 5, 2, 4, 0]
    assert res.passes.tolist() == [0, 0, 0, 1, 1, 2]
    assert res.stats["mean_depth"] == pytest.approx(depth.mean())


def test_quota_exponent_one_is_proportional_after_the_first_row() -> None:
    cells = np.repeat([0, 1], [10, 40])
    depth = np.linspace(1, 0, 50)
    res = ila_select(cells, depth, 26, tau=1.0, cell_order="best")
    got = np.bincount(cells[res.positions], minlength=2)
    # Adams divisor: cell c holds min(n_c, 1 + floor(t * w_c)), w = (n_c / n_min)^tau = (1, 4)
    # keys r/1 and r/4: 25 rows have key < 5; the level key == 5 (cell 0 row 5, cell 1 row 20) is partial
    # and goes by depth, so cell 0 (the deeper rows) gets the last one
    assert got.tolist() == [6, 20]
    uniform = ila_select(cells, depth, 26, tau=0.0, cell_order="best")
    assert np.bincount(cells[uniform.positions], minlength=2).tolist() == [10, 16]


def test_threshold_and_nan_rows_are_never_taken() -> None:
    cells, depth = _pool()
    depth[::11] = np.nan
    res = ila_select(cells, depth, 10_000, threshold=0.5)
    assert np.all(depth[res.positions] >= 0.5)
    assert res.positions.size == int(np.sum(depth >= 0.5))


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("cell_order", ["random", "best"])
def test_vectorised_equals_naive_loop(tau: float, cell_order: str) -> None:
    rng = np.random.default_rng(1)
    for trial in range(40):
        n = int(rng.integers(1, 150))
        cells = rng.integers(0, int(rng.integers(1, 25)), n)
        depth = np.round(rng.random(n), 1)
        depth[rng.random(n) < 0.05] = np.nan
        budget = int(rng.integers(0, n + 3))
        thr = 0.2 if trial % 3 == 0 else None
        a = ila_select(cells, depth, budget, tau=tau, cell_order=cell_order, threshold=thr, seed=trial)
        b = ila_select_reference(
            cells, depth, budget, tau=tau, cell_order=cell_order, threshold=thr, seed=trial
        )
        assert np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.passes, b.passes)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="cell_order"):
        ila_select(np.zeros(3, int), np.ones(3), 1, cell_order="zigzag")
    with pytest.raises(ValueError, match="same length"):
        ila_select(np.zeros(3, int), np.ones(4), 1)
    with pytest.raises(ValueError, match="integer"):
        ila_select(np.zeros(3), np.ones(3), 1)


def test_selector_reads_cells_and_signal_from_the_view() -> None:
    cells, depth = _pool(120, 9)
    view = PoolView.from_arrays([f"r{i}" for i in range(120)], cells=cells, signals={"relative_depth": depth})
    sel = make_selector("ila", cell_order="best").select(view, 30, seed=2)
    ref = ila_select(cells, depth, 30, cell_order="best", seed=2)
    assert np.array_equal(sel.positions, ref.positions)
    assert sel.stats["grid_coverage"] == 1.0 and sel.reasons[0].startswith("ila: pass 0")
    again = make_selector("ila", cell_order="random").select(view, "10%", seed=5)
    assert np.array_equal(again.positions, make_selector("ila").select(view, 12, seed=5).positions)


def test_selector_shortfall_names_the_rule() -> None:
    view = PoolView.from_arrays(
        list("abcd"), cells=np.array([0, 0, 1, 1]), signals={"d": np.array([0.1, 0.9, 0.2, 0.8])}
    )
    with pytest.raises(ValueError, match=r"only 2 rows are eligible \(depth >= 0.5"):
        make_selector("ila", signal="d", threshold=0.5).select(view, 3)
    assert make_selector("ila", signal="d", threshold=0.5).select(view, 2).positions.tolist() in (
        [1, 3],
        [3, 1],
    )
