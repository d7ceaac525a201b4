from __future__ import annotations

import numpy as np
import pytest
from vectors import clustered

from index.kcenter import k_center_greedy, k_center_greedy_naive


def _bruteforce(x, budget, first=None, initial=()):
    """Independent float64 reference: farthest point, ties to the lowest position."""
    x64 = x.astype(np.float64)
    chosen = list(initial)
    order, radii = [], []
    for t in range(budget):
        if t == 0 and not chosen:
            p, r = first, np.inf
        else:
            dist = np.clip(1 - x64 @ x64[chosen].T, 0, None).min(axis=1)
            dist[chosen] = -1
            p = int(np.argmax(dist))
            r = dist[p]
        order.append(p)
        radii.append(r)
        chosen.append(p)
    return np.array(order), np.array(radii)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_equals_naive_and_bruteforce(seed):
    rng = np.random.default_rng(seed)
    x = clustered(rng, 1500, 24, 12)
    budget = 60
    o, r = k_center_greedy(x, budget, seed=seed, progress=False, pool_size=64)
    on, rn = k_center_greedy_naive(x, budget, seed=seed)
    np.testing.assert_array_equal(o, on)
    np.testing.assert_array_equal(r, rn)
    ob, rb = _bruteforce(x, budget, first=int(on[0]))
    np.testing.assert_array_equal(o, ob)
    np.testing.assert_allclose(r[1:], rb[1:], atol=1e-5)
    assert np.isinf(r[0]) and (np.diff(r[1:]) <= 1e-6).all()  # radii never grow
    assert len(set(o.tolist())) == budget


def test_duplicates_and_exhaustion():
    rng = np.random.default_rng(5)
    base = clustered(rng, 40, 8, 3)
    x = np.concatenate([base, base[:15], base[:5]])  # 60 rows, 40 distinct
    for pool_size in (1, 7, 60):
        o, r = k_center_greedy(x, 60, seed=1, progress=False, pool_size=pool_size, block=16)
        on, rn = k_center_greedy_naive(x, 60, seed=1)
        np.testing.assert_array_equal(o, on)
        np.testing.assert_array_equal(r, rn)
    assert sorted(o.tolist()) == list(range(60))
    # duplicates come last (float32 gives 1 - x.x within a few ulps of 0)
    assert (r[40:] <= 1e-6).all() and (r[1:40] > 1e-3).all()
    # once every remaining distance is exactly 0, rows are taken in position order (ties: lowest position)
    tail = o[np.flatnonzero(np.cumsum(r[::-1] != 0)[::-1] == 0)]
    assert tail.size > 5 and (np.diff(tail) > 0).all()


def test_initial_positions_are_covered_not_returned():
    rng = np.random.default_rng(6)
    x = clustered(rng, 800, 16, 8)
    init = np.array([5, 100, 400, 5])
    o, r = k_center_greedy(x, 30, initial=init, progress=False, pool_size=40)
    on, rn = k_center_greedy_naive(x, 30, initial=init)
    np.testing.assert_array_equal(o, on)
    np.testing.assert_array_equal(r, rn)
    assert not set(o.tolist()) & {5, 100, 400}
    ob, rb = _bruteforce(x, 30, initial=[5, 100, 400])
    np.testing.assert_array_equal(o, ob)
    np.testing.assert_allclose(r, rb, atol=1e-5)


def test_unnormalised_input_still_exact_and_errors():
    rng = np.random.default_rng(7)
    x = clustered(rng, 500, 8, 4) * rng.uniform(0.5, 1.5, (500, 1)).astype(np.float32)
    o, r = k_center_greedy(x, 25, progress=False, pool_size=30)
    on, rn = k_center_greedy_naive(x, 25)
    np.testing.assert_array_equal(o, on)
    np.testing.assert_array_equal(r, rn)
    with pytest.raises(ValueError, match="budget"):
        k_center_greedy(x, 501, progress=False)
    with pytest.raises(ValueError, match="initial"):
        k_center_greedy(x, 5, initial=[600], progress=False)
    assert k_center_greedy(x, 0, progress=False)[0].shape == (0,)


def test_default_pool_and_tiny_blocks_equal_naive():
    rng = np.random.default_rng(8)
    x = clustered(rng, 3000, 32, 30, spread=0.8)
    x[2500:2600] = x[:100]  # duplicated rows far from each other's cluster positions
    o, r = k_center_greedy(x, 150, seed=4, progress=False)
    on, rn = k_center_greedy_naive(x, 150, seed=4)
    np.testing.assert_array_equal(o, on)
    np.testing.assert_array_equal(r, rn)
    o, r = k_center_greedy(x, 150, seed=4, progress=False, pool_size=5, block=100)
    np.testing.assert_array_equal(o, on)
    np.testing.assert_array_equal(r, rn)


def test_lazy_refresh_skips_covered_rows_and_long_exact_checks_equal_naive():
    """Past 256 centres a fresh candidate's exact check takes the per-row product path; refreshes bring up to
    date only rows that could reach the pool, far fewer products than a full refresh (N per centre)."""
    rng = np.random.default_rng(11)
    x = clustered(rng, 4000, 24, 40, spread=0.6)
    on, rn = k_center_greedy_naive(x, 700, seed=2)
    for pool_size in (64, None):
        stats: dict = {}
        o, r = k_center_greedy(x, 700, seed=2, progress=False, pool_size=pool_size, block=512, stats=stats)
        np.testing.assert_array_equal(o, on)
        np.testing.assert_array_equal(r, rn)
        assert stats["refreshes"] >= 2
        assert 0 < stats["refresh_pairs"] < 0.5 * 4000 * 700


@pytest.mark.parametrize(("budget", "initial"), [(1, None), (40, None), (300, None), (25, [3, 90, 400])])
def test_stats_give_the_covering_radius_of_the_whole_selection(budget, initial):
    """The covering radius in `stats` is the radius of the next greedy pick, exactly as the naive greedy gets it
    with one more centre, and agrees with diversity.covering_radius (float32 products) within rounding."""
    from index.diversity import covering_radius

    rng = np.random.default_rng(budget)
    x = clustered(rng, 2500, 24, 30, spread=0.6)
    stats: dict = {}
    o, _ = k_center_greedy(x, budget, seed=3, initial=initial, progress=False, pool_size=64, block=256,
                           stats=stats)
    on, rn = k_center_greedy_naive(x, budget + 1, seed=3, initial=initial)
    np.testing.assert_array_equal(o, on[:budget])
    assert stats["farthest"] == on[budget]
    assert stats["covering_radius"] == rn[budget]
    chosen = np.concatenate([np.asarray(initial or [], dtype=np.int64), o])
    r, arg = covering_radius(x, chosen, return_argmax=True)
    assert abs(r - stats["covering_radius"]) < 1e-5 and arg == stats["farthest"]


def test_stats_covering_radius_is_zero_once_every_row_is_chosen():
    x = clustered(np.random.default_rng(0), 50, 8, 3)
    stats: dict = {}
    k_center_greedy(x, 50, progress=False, stats=stats)
    assert stats["covering_radius"] == 0.0 and stats["farthest"] == -1


def test_selector_reports_the_covering_radius_of_its_whole_selection():
    """`final_radius` is the selection's covering radius (the farthest row from every chosen centre), not the last
    pick's distance to the centres before it, which is the radius of one centre fewer."""
    from curate.select import Budget, PoolView, make_selector
    from index.diversity import covering_radius

    x = clustered(np.random.default_rng(0), 300, 8, 6)
    v = PoolView.from_arrays([f"r{i}" for i in range(300)], vectors=x)
    sel = make_selector("k-center").select(v, Budget(rows=12), seed=0)
    assert sel.stats["final_radius"] == pytest.approx(covering_radius(x, sel.positions), abs=1e-5)
    _, radii = k_center_greedy(x, 12, seed=0)
    assert sel.stats["final_radius"] < radii[-1]  # the old figure: the radius of the first 11
