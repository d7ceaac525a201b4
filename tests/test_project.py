"""Projection tests: PCA against sklearn, sampling/transform bookkeeping, determinism; UMAP only when slow."""

from __future__ import annotations

import numpy as np
import pytest

from index.project import fit_pca, project


def anisotropic(n: int = 600, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.2, d)
    return (rng.normal(size=(n, d)) * scales + rng.normal(size=d)).astype(np.float32)


def test_pca_equals_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    x = anisotropic()
    ours = project(x, method="pca", dims=3, fit_sample=None, progress=False)
    ref = PCA(n_components=3).fit_transform(x.astype(np.float64))
    assert ours.coords.shape == (600, 3) and ours.coords.dtype == np.float32
    for j in range(3):
        sign = np.sign(ours.coords[:, j] @ ref[:, j])
        np.testing.assert_allclose(ours.coords[:, j] * sign, ref[:, j], atol=2e-4)
    model = fit_pca(x, 3)
    skl = PCA(n_components=3).fit(x.astype(np.float64))
    np.testing.assert_allclose(model.explained_variance, skl.explained_variance_, rtol=1e-4)


def test_pca_fit_on_sample_records_and_is_linear():
    x = anisotropic(n=1_000)
    p = project(x, method="pca", dims=2, fit_sample=300, seed=3, progress=False)
    assert p.info["fitted_on"] == 300 and p.info["transformed"] == 700 and p.info["n"] == 1_000
    assert p.info["method"] == "pca" and p.info["dims"] == 2
    # same linear map for every row: refit on the same seeded sample reproduces it
    rng = np.random.default_rng(3)
    sample = np.sort(rng.choice(1_000, size=300, replace=False))
    model = fit_pca(x[sample], 2)
    np.testing.assert_allclose(p.coords, model.transform(x), atol=1e-5)
    # leading axis aligns with the largest-variance input dimension
    assert abs(model.components[0, 0]) > 0.9


def test_projection_deterministic_with_seed():
    x = anisotropic(n=800)
    a = project(x, method="pca", fit_sample=200, seed=7, progress=False)
    b = project(x, method="pca", fit_sample=200, seed=7, progress=False)
    c = project(x, method="pca", fit_sample=200, seed=8, progress=False)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert not np.array_equal(a.coords, c.coords)


def test_bad_arguments():
    x = anisotropic(n=20, d=4)
    with pytest.raises(ValueError, match="unknown projection method"):
        project(x, method="tsne")
    with pytest.raises(ValueError, match="dims"):
        project(x, dims=5)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        project(np.zeros((0, 4), dtype=np.float32))


@pytest.mark.slow
def test_umap_fit_on_sample_and_place_rest():
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 64)) * 4
    x = (centres[rng.integers(0, 5, 1_500)] + rng.normal(size=(1_500, 64))).astype(np.float32)
    p = project(x, method="umap", dims=2, fit_sample=600, seed=0, progress=False)
    assert p.info["fitted_on"] == 600 and p.info["transformed"] == 900 and p.info["pca_dims"] == 50
    assert np.isfinite(p.coords).all()
    assert trustworthiness(x, p.coords, n_neighbors=10) > 0.85
    q = project(x, method="umap", dims=2, fit_sample=600, seed=0, progress=False)
    np.testing.assert_array_equal(p.coords, q.coords)


def test_placement_weights_match_a_per_row_bisection():
    """UMAP placement weights: exp(-(d - d_1) / sigma) with each row's sigma solving sum = log2(k), as a plain
    scalar bisection per row finds it (the vectorised one stops at umap-learn's tolerance)."""
    from index.project import _smooth_knn_weights

    rng = np.random.default_rng(3)
    dist = np.sort(rng.uniform(0.1, 2.0, (50, 15)), axis=1)
    dist[0] = 0.7  # all neighbours equally far: every weight is 1, sum k > log2(k) for any sigma
    dist[1, :5] = dist[1, 0]  # 5 > log2(15) tied nearest: sigma -> 0 (floored), the others weigh ~0
    w = _smooth_knn_weights(dist)
    target = np.log2(15)
    for i in range(2, 50):
        gap = dist[i] - dist[i, 0]
        lo, hi = 0.0, 1e3
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if np.exp(-gap / mid).sum() > target else (mid, hi)
        np.testing.assert_allclose(w[i], np.exp(-gap / mid), atol=1e-4)
        assert abs(w[i].sum() - target) < 1e-5
    np.testing.assert_array_equal(w[0], np.ones(15))
    np.testing.assert_array_equal(w[1, :5], np.ones(5))
    floor = 1e-3 * dist[1].mean()
    np.testing.assert_allclose(w[1, 5:], np.exp(-(dist[1, 5:] - dist[1, 0]) / floor))
    assert (w[1, 5:] < 1e-6).all()
