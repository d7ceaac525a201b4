"""Known-answer tests for the diversity figures."""

from __future__ import annotations

import numpy as np
import pytest

from index.diversity import (
    covering_radius,
    daar_scores,
    diversity_report,
    domain_centroids,
    mean_knn_distance,
    near_duplicates,
    nearest_selected_distance,
    phi_inter,
    phi_intra,
    vendi_score,
)

S2 = np.sqrt(0.5)


def test_daar_two_domains_exact():
    # domain a: (1,0), (0,1) -> centroid (.5,.5); domain b: (-1,0) x2 -> centroid (-1,0)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    lab = np.array(["a", "a", "b", "b"])
    names, cents = domain_centroids(x, lab)
    assert names.tolist() == ["a", "b"]
    np.testing.assert_allclose(cents, [[0.5, 0.5], [-1.0, 0.0]])
    inter, intra = daar_scores(x, lab)
    np.testing.assert_allclose(intra, [S2, S2, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(inter, [-1.0, 0.0, -S2, -S2], atol=1e-6)
    assert phi_inter(cents) == pytest.approx(1 + S2, abs=1e-6)  # 1 - cos(135 deg)
    within = phi_intra(x, lab)
    assert within["a"] == pytest.approx(0.5) and within["b"] == pytest.approx(0.0)


def test_daar_three_domains_sum_over_others():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    lab = np.array([0, 1, 2])
    inter, intra = daar_scores(x, lab)
    np.testing.assert_allclose(intra, [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(inter, [0 + -1, 0 + 0, -1 + 0], atol=1e-6)


def test_vendi_known_cases():
    assert vendi_score(np.tile([[0.3, 0.4, 0.5]], (50, 1))) == pytest.approx(1.0, abs=1e-6)
    assert vendi_score(np.eye(7)) == pytest.approx(7.0, abs=1e-6)  # n <= d path
    x = np.repeat(np.eye(4), 25, axis=0)  # 100 rows in 4 equal orthogonal groups, n > d path
    assert vendi_score(np.hstack([x, np.zeros((100, 2))])) == pytest.approx(4.0, abs=1e-6)
    # Gram trick equals the direct n x n computation
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 6))
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    ev = np.clip(np.linalg.eigvalsh(yn @ yn.T / 40), 0, None)
    ev = ev[ev > 1e-12]
    ev /= ev.sum()
    assert vendi_score(y) == pytest.approx(np.exp(-(ev * np.log(ev)).sum()), rel=1e-9)


def test_covering_radius_vs_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 16)).astype(np.float32)
    sub = rng.choice(700, 40, replace=False)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    brute = (1 - (xn @ xn[sub].T).max(axis=1)).max()
    r, arg = covering_radius(x, sub, batch_size=128, return_argmax=True)
    assert r == pytest.approx(brute, abs=1e-5)
    assert 1 - (xn[arg] @ xn[sub].T).max() == pytest.approx(brute, abs=1e-5)
    assert covering_radius(x, np.arange(700)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("order", ["kcenter", "random"])
def test_covering_radius_pruned_equals_unpruned(monkeypatch, order):
    """The pruned path (bounds from the first subset rows, doubling chunks) gives the full pass's radius and
    argmax, the lowest position among tied rows included."""
    import index.diversity as div
    from index.kcenter import k_center_greedy

    monkeypatch.setattr(div, "SCREEN_SUBSET", 8)
    monkeypatch.setattr(div, "SCREEN_TOP", 16)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 12)).astype(np.float32)
    if order == "kcenter":
        sub, _ = k_center_greedy(x, 300, seed=0, progress=False)
    else:
        sub = rng.choice(3000, 300, replace=False)
    full = nearest_selected_distance(x, sub)
    a = int(full.argmax())
    j = int(np.setdiff1d(np.arange(a), sub)[0])  # a lower position outside the subset, made a tie of a
    x[j] = x[a]
    full = nearest_selected_distance(x, sub)
    assert int(full.argmax()) == j
    r, arg = covering_radius(x, sub, return_argmax=True)
    assert (r, arg) == (float(full.max()), j)


def test_mean_knn_distance_subset_and_graph():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    sub = np.sort(rng.choice(300, 60, replace=False))
    xn = x[sub] / np.linalg.norm(x[sub], axis=1, keepdims=True)
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    top = -np.sort(-sims, axis=1)[:, :5]
    assert mean_knn_distance(vectors=x, subset=sub, k=5) == pytest.approx(float(np.mean(1 - top)), abs=1e-5)

    class G:  # KnnGraph-shaped: neighbors [N,k] with -1 for missing, sims [N,k]
        neighbors = np.array([[1, 2], [0, -1]])
        sims = np.array([[0.9, 0.5], [0.9, 0.0]], dtype=np.float32)

    assert mean_knn_distance(G(), k=2) == pytest.approx((0.1 + 0.5 + 0.1) / 3, abs=1e-6)


def test_near_duplicates_hand_made():
    x = np.array(
        [
            [1.0, 0.0, 0.0],  # 0 cluster 0, first
            [0.99, 0.1, 0.0],  # 1 cluster 0, near 0 -> dup
            [0.0, 1.0, 0.0],  # 2 cluster 0, far
            [1.0, 0.0, 0.0],  # 3 cluster 1 (identical to 0 but other cluster) -> not dup
            [0.0, 0.0, 1.0],  # 4 cluster 1
            [0.0, 0.05, 1.0],  # 5 cluster 1, near 4 -> dup
        ],
        dtype=np.float32,
    )
    cl = np.array([0, 0, 0, 1, 1, 1])
    frac, flags = near_duplicates(x, cl, threshold=0.95)
    assert flags.tolist() == [False, True, False, False, False, True]
    assert frac == pytest.approx(2 / 6)
    # reversing the order flags the other member of each pair
    _, flags_rev = near_duplicates(x, cl, threshold=0.95, order=np.arange(6)[::-1])
    assert flags_rev.tolist() == [True, False, False, False, True, False]
    # small block size gives the same answer
    assert near_duplicates(x, cl, threshold=0.95, block=1)[1].tolist() == flags.tolist()


def test_diversity_report_pool_and_subset():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 10)).astype(np.float32)
    lab = np.where(np.arange(400) < 150, "math", "code")
    cl = rng.integers(0, 5, 400)
    pool = diversity_report(x, labels=lab, clusters=cl)
    assert pool["n"] == 400 and set(pool["domains"]) == {"code", "math"}
    assert pool["domains"]["math"]["n"] == 150
    assert 1.0 <= pool["vendi"] <= 10.0 + 1e-9
    sub = np.arange(0, 400, 4)
    rep = diversity_report(x, subset=sub, labels=lab, clusters=cl)
    assert rep["n"] == 100 and rep["covering_radius"] > 0
    assert rep["mean_knn_distance"] == pytest.approx(mean_knn_distance(vectors=x, subset=sub, k=10))


def test_subset_daar_figures_use_every_pool_centroid():
    # three domains on orthogonal axes: pool centroids a=(1,0,0), b=(0,1,0), c=(.6,0,.8)
    x = np.array(
        [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0.6, 0, 0.8], [0.6, 0, 0.8]], dtype=np.float32
    )
    lab = np.array(["a", "a", "b", "b", "c", "c"])
    pool = diversity_report(x, labels=lab, covering=False)
    # a row of a: cos to b's centroid 0, to c's 0.6
    assert pool["domains"]["a"]["mean_inter"] == pytest.approx(0.6, abs=1e-6)
    only_a = diversity_report(x, subset=np.array([0, 1]), labels=lab, covering=False)
    a_and_b = diversity_report(x, subset=np.array([0, 2]), labels=lab, covering=False)
    # the same rows of a score the same whatever else the subset holds (was 0.0 with only a's centroid)
    assert only_a["domains"]["a"]["mean_inter"] == pytest.approx(0.6, abs=1e-6)
    assert a_and_b["domains"]["a"]["mean_inter"] == pytest.approx(0.6, abs=1e-6)
    assert a_and_b["domains"]["b"]["mean_inter"] == pytest.approx(0.0, abs=1e-6)  # cos to a 0, to c 0
    assert only_a["domains"]["a"]["mean_intra"] == pytest.approx(1.0, abs=1e-6)
    # given centroids (coverage_report passes the pool's) give the same figures
    _, cents = domain_centroids(x, lab)
    given = diversity_report(x, subset=np.array([0, 1]), labels=lab, centroids=cents, covering=False)
    assert given["domains"] == only_a["domains"]
    # set level: the subset's own domain means; a and b orthogonal -> distance 1, over 2 of 3 domains
    assert a_and_b["phi_inter"] == pytest.approx(1.0, abs=1e-6)
    assert a_and_b["phi_inter_domains"] == 2 and a_and_b["pool_domains"] == 3
    assert only_a["phi_inter"] == 0.0 and only_a["phi_inter_domains"] == 1


def test_daar_scores_against_named_centroids():
    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    cents = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    inter, intra = daar_scores(x[:1], np.array(["a"]), cents, names=np.array(["a", "b", "c"]))
    assert intra.tolist() == pytest.approx([1.0]) and inter.tolist() == pytest.approx([-1.0])
    with pytest.raises(ValueError, match="not among"):
        daar_scores(x[:1], np.array(["z"]), cents, names=np.array(["a", "b", "c"]))


def test_label_sums_in_blocks_equal_the_naive_sums():
    """Centroids and within-domain variance, accumulated a block at a time, equal the float64 naive ones."""
    from index.diversity import _label_sums, domain_centroids, phi_intra

    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 7)).astype(np.float32)
    labels = rng.choice(np.array(["a", "b", "c", "d", "e"]), size=1000, p=[0.5, 0.2, 0.2, 0.05, 0.05])
    names = np.array(sorted(set(labels)))
    codes = np.searchsorted(names, labels)
    sums, sq = _label_sums(x, codes, names.size, block=64)
    for k, n in enumerate(names):
        rows = x[labels == n].astype(np.float64)
        np.testing.assert_allclose(sums[k], rows.sum(0), rtol=1e-12, atol=1e-12)
        assert sq[k] == pytest.approx((rows ** 2).sum(), rel=1e-12)
    got_names, cents = domain_centroids(x, labels)
    assert got_names.tolist() == names.tolist()
    phi = phi_intra(x, labels)
    for k, n in enumerate(names):
        rows = x[labels == n].astype(np.float64)
        np.testing.assert_allclose(cents[k], rows.mean(0), rtol=1e-6, atol=1e-7)
        assert phi[n] == pytest.approx(((rows - rows.mean(0)) ** 2).sum(1).mean(), rel=1e-9)
