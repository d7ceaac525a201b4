from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from index.facility import (
    facility_location,
    facility_location_naive,
    facility_location_value,
    similarity_matrix,
)
from index.knn import KnnGraph, knn_graph


def _random_graph(seed, n=60, k=5):
    rng = np.random.default_rng(seed)
    nb = np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)])
    sims = -np.sort(-rng.uniform(-0.2, 1.0, (n, k)), axis=1).astype(np.float32)
    return KnnGraph(nb, sims)


@pytest.mark.parametrize("seed", range(5))
def test_lazy_equals_naive_greedy_and_value(seed):
    g = _random_graph(seed)
    o, gains = facility_location(g, 25, progress=False)
    on, gn = facility_location_naive(g, 25)
    np.testing.assert_array_equal(o, on)
    np.testing.assert_allclose(gains, gn, rtol=0, atol=1e-12)
    assert (np.diff(gains) <= 1e-12).all()  # submodular: gains never grow
    for t in (1, 7, 25):
        assert facility_location_value(g, o[:t]) == pytest.approx(gains[:t].sum(), abs=1e-9)


def test_objective_by_hand():
    # 3 points; 0 and 1 are neighbours (sim 0.5), 2 has neighbour 1 (sim 0.25)
    g = KnnGraph(np.array([[1], [0], [1]]), np.array([[0.5], [0.5], [0.25]], dtype=np.float32))
    w = similarity_matrix(g).toarray()
    np.testing.assert_allclose(w, [[1, 0.5, 0], [0.5, 1, 0.25], [0, 0.25, 1]])
    assert facility_location_value(g, [1]) == pytest.approx(0.5 + 1 + 0.25)
    o, gains = facility_location(g, 3, progress=False)
    # gains: rows offer 1.5, 1.75, 1.25; after 1: row 2 adds 1 - 0.25, row 0 adds 1 - 0.5
    np.testing.assert_array_equal(o, [1, 2, 0])
    np.testing.assert_allclose(gains, [1.75, 0.75, 0.5])
    assert facility_location_value(g, []) == 0.0


def test_matches_apricot_on_digits_knn_graph():
    from apricot import FacilityLocationSelection
    from sklearn.datasets import load_digits

    x = load_digits().data[:400].astype(np.float32)
    x -= x.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    g = knn_graph(x, k=10, kind="flat", progress=False)
    w = similarity_matrix(g)  # float64 CSR, symmetric, unit diagonal
    budget = 60
    o, gains = facility_location(g, budget, progress=False)
    for optimizer in ("lazy", "naive"):
        sel = FacilityLocationSelection(budget, metric="precomputed", optimizer=optimizer).fit(w)
        ranking, ref_gains = np.asarray(sel.ranking), np.asarray(sel.gains)
        np.testing.assert_allclose(gains, ref_gains, rtol=1e-9, atol=1e-9)
        # same ranking up to exact ties, which apricot breaks differently (we take the lowest position)
        diff = np.flatnonzero(o != ranking)
        if diff.size:
            t = int(diff[0])
            assert t >= 50, f"rankings diverge at step {t}"
            v = facility_location_value(g, o[:t])
            assert facility_location_value(g, np.append(o[:t], ranking[t])) - v == pytest.approx(gains[t], abs=1e-9)
            assert o[t] < ranking[t]


def test_csr_input_and_errors():
    w = sp.csr_matrix(np.array([[1.0, 0.9, 0.0], [0.1, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    o, gains = facility_location(w, 2, progress=False)  # row 0 offers 1 + 0.9
    np.testing.assert_array_equal(o, [0, 2])
    np.testing.assert_allclose(gains, [1.9, 1.0])
    with pytest.raises(ValueError, match="budget"):
        facility_location(w, 4, progress=False)
    with pytest.raises(TypeError):
        facility_location(np.eye(3), 1, progress=False)


def test_lazy_equals_naive_with_exact_ties_and_empty_rows():
    """Quantised similarities (many exact ties) and an empty last row: lazy greedy still equals naive greedy."""
    import scipy.sparse as sp

    from index.facility import facility_location, facility_location_naive

    rng = np.random.default_rng(0)
    for t in range(20):
        n = int(rng.integers(5, 60))
        m = sp.random(n, n, density=0.2, random_state=t, format="lil")
        m[n - 1, :] = 0
        m = m.tocsr()
        m.data = np.round(m.data * 4) / 4
        m.eliminate_zeros()
        b = int(rng.integers(1, n))
        o1, g1 = facility_location(m, b, progress=False)
        o2, g2 = facility_location_naive(m, b)
        assert o1.tolist() == o2.tolist()
        np.testing.assert_array_equal(g1, g2)
