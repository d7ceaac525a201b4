from __future__ import annotations

import numpy as np
import pytest

from index.cluster import kmeans


def _blobs(seed=0, n_per=60, d=8, k=4, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32) * 3
    lab = np.repeat(np.arange(k), n_per)
    x = centres[lab] + spread * rng.standard_normal((lab.size, d)).astype(np.float32)
    return x.astype(np.float32), centres, lab


# pinned output of faiss 1.15 for these seeds (label numbering depends on the seeded init)
PINNED_TINY = [(0, [0, 0, 0, 1, 1, 1]), (2, [1, 1, 1, 0, 0, 0])]


def _naive_lloyd(x, c, niter, spherical=False):
    """Reference Lloyd in float64 numpy, one row at a time for the assignment (no empty clusters arise)."""
    x64, c = x.astype(np.float64), c.astype(np.float64)
    for _ in range(niter):
        if spherical:
            lab = np.array([int(np.argmax(c @ r)) for r in x64])
        else:
            lab = np.array([int(np.argmin(((c - r) ** 2).sum(1))) for r in x64])
        c = np.stack([x64[lab == j].mean(0) for j in range(c.shape[0])])
        if spherical:
            c /= np.linalg.norm(c, axis=1, keepdims=True)
    return lab, c


def test_tiny_fixed_reference():
    x = np.array([[0, 0], [0, 1], [1, 0], [10, 10], [10, 11], [11, 10]], dtype=np.float32)
    for seed, labels in PINNED_TINY:
        r = kmeans(x, 2, seed=seed, niter=10)
        np.testing.assert_array_equal(r.labels, labels)
        np.testing.assert_allclose(r.centroids[labels[0]], [1 / 3, 1 / 3], atol=1e-5)
        np.testing.assert_allclose(r.centroids[labels[3]], [31 / 3, 31 / 3], atol=1e-5)
        np.testing.assert_array_equal(r.sizes, [3, 3])
        # hand value: squared distances 2/9, 5/9, 5/9 in each group
        assert r.inertia == pytest.approx(24 / 9, rel=1e-5)


def test_same_seed_same_result_and_labels_dtype():
    x, _, _ = _blobs(1, n_per=200, k=6)
    a = kmeans(x, 6, seed=3)
    b = kmeans(x, 6, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.labels.dtype == np.int64 and a.sizes.dtype == np.int64 and a.centroids.dtype == np.float32
    assert a.sizes.sum() == x.shape[0]


def test_init_centroids_recovered_and_match_sklearn():
    from sklearn.cluster import KMeans

    x, centres, lab = _blobs(2, n_per=80, k=5)
    init = centres + 0.3  # near the true centres, in the true order
    r = kmeans(x, 5, init_centroids=init, niter=10)
    np.testing.assert_array_equal(r.labels, lab)  # label j stays the cluster that started at init[j]
    np.testing.assert_allclose(r.centroids, [x[lab == j].mean(0) for j in range(5)], atol=1e-4)
    sk = KMeans(5, init=init, n_init=1, max_iter=10, random_state=0).fit(x)
    np.testing.assert_array_equal(r.labels, sk.labels_)
    np.testing.assert_allclose(r.centroids, sk.cluster_centers_, atol=1e-4)
    assert r.inertia == pytest.approx(sk.inertia_, rel=1e-4)


def test_spherical_and_errors():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    r = kmeans(x, 4, spherical=True, seed=1)
    np.testing.assert_allclose(np.linalg.norm(r.centroids, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(r.labels, np.argmax(x @ r.centroids.T, axis=1))
    with pytest.raises(ValueError, match="between 1 and"):
        kmeans(x, 301)
    with pytest.raises(ValueError, match="init_centroids"):
        kmeans(x, 4, init_centroids=np.zeros((3, 6)))


@pytest.mark.parametrize("spherical", [False, True])
def test_equals_naive_lloyd_from_the_same_start(spherical):
    x, centres, _ = _blobs(5, n_per=50, d=6, k=4, spread=1.2)  # overlapping blobs: labels move for a while
    if spherical:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    init = x[[0, 50, 100, 150]].copy()
    r = kmeans(x, 4, init_centroids=init, niter=6, spherical=spherical)
    lab, c = _naive_lloyd(x, init, 6, spherical)
    np.testing.assert_allclose(r.centroids, c, atol=1e-5)
    np.testing.assert_array_equal(r.labels, lab)
    assert r.inertia == pytest.approx(float(((x - c[lab]) ** 2).sum()), rel=1e-5)


def test_subsampled_training_is_seeded_and_all_rows_assigned():
    x, _, _ = _blobs(6, n_per=300, k=3)
    a = kmeans(x, 3, seed=7, max_points_per_centroid=10)  # trains on 30 of 900 rows
    b = kmeans(x, 3, seed=7, max_points_per_centroid=10)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.sizes.tolist() == [300, 300, 300]
    d2 = ((x[:, None, :] - a.centroids[None]) ** 2).sum(2)
    np.testing.assert_array_equal(a.labels, np.argmin(d2, axis=1))


def test_empty_cluster_is_refilled_by_splitting_the_largest():
    x, _, lab = _blobs(8, n_per=40, k=2)
    init = np.stack([x[0], x[40], np.full(x.shape[1], 1e3, dtype=np.float32)])  # the third start attracts no row
    r = kmeans(x, 3, init_centroids=init, niter=10)
    assert (r.sizes > 0).all() and r.sizes.sum() == 80
    assert np.abs(r.centroids).max() < 100  # the far start was moved into the data
    # one true blob is split in two, the other kept whole
    assert sorted(np.bincount(lab[r.labels == j], minlength=2).max() for j in range(3)) == sorted(r.sizes.tolist())
