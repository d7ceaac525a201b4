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


def test_tiny_fixed_reference():
    x = np.array([[0, 0], [0, 1], [1, 0], [10, 10], [10, 11], [11, 10]], dtype=np.float32)
    # pinned output of faiss 1.15 for these seeds (label numbering depends on the seeded init)
    for seed, labels in [(0, [0, 0, 0, 1, 1, 1]), (2, [1, 1, 1, 0, 0, 0])]:
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
