"""Deita-style filter: never two kept rows above the threshold, and exactly the naive sequential loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from curate.select import Budget, PoolView, make_selector
from curate.select.deita import bf16_margin, deita_filter, deita_filter_reference, score_order


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 8), d))
    return _unit(centres[rng.integers(0, len(centres), n)] + 0.15 * rng.standard_normal((n, d)))


def test_hand_example() -> None:
    v = _unit(np.array([[1, 0], [1, 0.01], [0, 1], [0.6, 0.8], [-1, 0]], dtype=np.float64))
    score = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    # row 1 ~ row 0 (cos ~1); row 3 has cos 0.8 with row 2 and 0.6 with row 0: kept at 0.9, dropped at 0.7
    assert deita_filter(v, score_order(score), None, threshold=0.9).tolist() == [0, 2, 3, 4]
    assert deita_filter(v, score_order(score), None, threshold=0.7).tolist() == [0, 2, 4]
    assert deita_filter(v, score_order(score), 2, threshold=0.9).tolist() == [0, 2]


@pytest.mark.parametrize("screen", ["bf16", "fp32", "faiss"])
@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9, 0.97])
@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_blocked_equals_naive_and_respects_threshold(threshold: float, block: int, screen: str) -> None:
    for seed in range(4):
        v = _clustered(500, 8, seed)
        score = np.round(np.random.default_rng(seed).random(500), 2)  # ties
        order = score_order(score)
        budget = [None, 60, 10_000, 0][seed]
        fast = deita_filter(v, order, budget, threshold=threshold, block=block, screen=screen)
        slow = deita_filter_reference(v, order, budget, threshold=threshold)
        assert np.array_equal(fast, slow)
        if fast.size > 1:
            g = v[fast].astype(np.float64) @ v[fast].T.astype(np.float64)
            np.fill_diagonal(g, -1.0)
            assert g.max() < threshold
        # walking in score order: the kept rows are a subsequence of the order
        assert np.all(np.diff(np.argsort(order)[fast]) > 0)


def test_borderline_pairs_decided_exactly() -> None:
    # two rows at cosine exactly 0.9 in float64 terms: the later one conflicts (>= threshold)
    a = np.array([1.0, 0.0])
    b = np.array([0.9, np.sqrt(1 - 0.81)])
    v = np.array([a, b], dtype=np.float32)
    cos = float(v[0].astype(np.float64) @ v[1].astype(np.float64))
    assert deita_filter_reference(v, np.array([0, 1]), None, threshold=cos).tolist() == [0]
    for block, screen in itertools.product((1, 2), ("bf16", "fp32", "faiss")):
        kept = deita_filter(v, np.array([0, 1]), None, threshold=cos, block=block, screen=screen)
        assert kept.tolist() == [0]
        above = np.nextafter(cos, 2)
        assert deita_filter(v, np.array([0, 1]), None, threshold=above, block=block, screen=screen).tolist() == [0, 1]


def _pairs_near(threshold: float, n_pairs: int, d: int, seed: int) -> np.ndarray:
    """Unit rows in pairs whose cosines are spread within +-0.015 of the threshold, shuffled."""
    rng = np.random.default_rng(seed)
    a = _unit(rng.standard_normal((n_pairs, d)))
    u = rng.standard_normal((n_pairs, d))
    u -= (u * a).sum(axis=1, keepdims=True) * a
    u = _unit(u)
    cos = threshold + rng.uniform(-0.015, 0.015, (n_pairs, 1))
    b = _unit(cos * a + np.sqrt(1 - cos**2) * u)
    return np.concatenate([a, b])[rng.permutation(2 * n_pairs)]


@pytest.mark.parametrize("d", [384, 2048])
@pytest.mark.parametrize("screen", ["bf16", "fp32", "faiss"])
def test_every_screen_decides_near_threshold_pairs_like_the_naive_loop(screen: str, d: int) -> None:
    # rows at cosines inside the bf16 screen's margin: every such pair goes to the float64 recheck
    n_pairs = 600 if d == 384 else 200
    v = _pairs_near(0.9, n_pairs, d, seed=3)
    order = np.arange(len(v))
    kept = deita_filter(v, order, None, threshold=0.9, block=128, screen=screen)
    assert np.array_equal(kept, deita_filter_reference(v, order, None, threshold=0.9))
    assert n_pairs < kept.size < 2 * n_pairs  # both outcomes happen: some partners kept, some dropped


def test_bf16_products_stay_inside_the_screen_margin() -> None:
    # the bf16 screen's exactness rests on |bf16 product - float64 product| < 0.0118 for unit rows (see
    # bf16_margin); check it on the matmul torch actually runs here, on near-threshold and aligned rows
    import torch

    v = np.concatenate([_pairs_near(0.9, 500, 384, seed=4), _unit(np.ones((4, 384)) + np.eye(4, 384))])
    exact = v.astype(np.float64) @ v.T.astype(np.float64)
    vb = torch.from_numpy(v).bfloat16()
    screened = (vb @ vb.T).float().numpy()
    assert np.abs(screened - exact).max() < 0.0118 < bf16_margin(384)


def test_nan_scores_are_skipped_and_bad_input_raises() -> None:
    assert score_order(np.array([1.0, np.nan, 3.0])).tolist() == [2, 0]
    with pytest.raises(ValueError, match="threshold"):
        deita_filter(np.eye(2, dtype=np.float32), np.array([0, 1]), None, threshold=1.5)
    with pytest.raises(ValueError, match="positions"):
        deita_filter(np.eye(2, dtype=np.float32), np.array([0, 5]), None)
    raw = np.array([[1.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    for filt in (deita_filter, deita_filter_reference):
        with pytest.raises(ValueError, match="L2-normalised.*row 1 has norm 5"):
            filt(raw, np.array([0, 1]), None)
    with pytest.raises(ValueError, match="screen must be"):
        deita_filter(np.eye(2, dtype=np.float32), np.array([0, 1]), None, screen="gpu")


def test_low_thresholds_fall_back_from_the_bf16_screen() -> None:
    # the bf16 row maximum needs a positive lower bound; at threshold <= margin the fp32 screen is used
    v = _clustered(300, 8, 5)
    order = np.arange(300)
    for threshold in (0.0, 0.01, -0.3):
        fast = deita_filter(v, order, None, threshold=threshold, screen="bf16")
        assert np.array_equal(fast, deita_filter_reference(v, order, None, threshold=threshold))


def test_selector_product_of_signals() -> None:
    v = _clustered(200, 6, 9)
    rng = np.random.default_rng(0)
    a, b = rng.random(200), rng.random(200)
    view = PoolView.from_arrays([f"r{i}" for i in range(200)], vectors=v, signals={"q": a, "c": b})
    sel = make_selector("deita", signal="q,c", threshold=0.95).select(view, 25)
    assert np.array_equal(sel.positions, deita_filter_reference(v, score_order(a * b), 25, threshold=0.95))
    assert sel.stats["rows_walked"] >= 25 and sel.reasons[0].startswith("deita: q*c=")
    with pytest.raises(TypeError, match="signal"):
        make_selector("deita")


def test_selector_shortfall_raises_or_fills() -> None:
    v = _unit(np.array([[1, 0], [1, 0.001], [0, 1], [0.001, 1]], dtype=np.float64))
    view = PoolView.from_arrays(list("abcd"), vectors=v, signals={"q": np.array([4.0, 3.0, 2.0, 1.0])})
    with pytest.raises(ValueError, match="only 2 rows remain"):
        make_selector("deita", signal="q").select(view, 3)
    sel = make_selector("deita", signal="q", fill=True).select(view, 3)
    assert sel.positions.tolist() == [0, 2, 1] and sel.reasons[2].startswith("deita: fill")


def test_token_budget_is_not_short_and_fill_stats_count_the_walk():
    """A token budget's k only bounds the rows: Deita returns what is left after near-duplicates instead of
    raising; with fill=True the dropped count is that of the walk, before the fill rows join."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[1] = x[0]
    v = PoolView.from_arrays([f"r{i}" for i in range(40)], vectors=x,
                             signals={"tokens": np.ones(40), "q": np.arange(40, 0, -1.0)})
    sel = make_selector("deita", signal="q").select(v, Budget(tokens=1000), seed=0)
    assert len(sel) == 39 and 1 not in sel.positions.tolist()
    y = np.zeros((6, 4), np.float32)
    y[:3, 0] = 1
    y[3:, 1] = 1  # two groups of 3 identical rows
    w = PoolView.from_arrays([f"r{i}" for i in range(6)], vectors=y, signals={"q": np.arange(6, 0, -1.0)})
    sel = make_selector("deita", signal="q", fill=True).select(w, Budget(rows=5), seed=0)
    assert sel.positions.tolist() == [0, 3, 1, 2, 4]
    assert (sel.stats["rows_walked"], sel.stats["rows_dropped_as_near_duplicates"], sel.stats["n_filled"]) == (4, 2, 3)
