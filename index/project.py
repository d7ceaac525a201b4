"""Low-dimensional projections of an embedding pool (PCA, UMAP) for maps and grid coverage.

Large pools are fitted on a seeded sample and the remaining rows are transformed in batches; `Projection.info`
records which rows were fitted and how the rest were placed, so a map can be audited and reproduced.

UMAP path: vectors are first reduced with PCA to `pca_dims` (50) dimensions, which keeps the neighbourhood
structure of sentence embeddings while making UMAP's nearest-neighbour search and the transform several times
cheaper. The rows outside the fit sample are placed, by default (`transform="knn"`), the way UMAP initialises
its own `transform`: each new row goes to the membership-weighted mean of the 2-D positions of its
`n_neighbors` nearest fitted rows (exact faiss search in the PCA space, UMAP's smooth-kNN weights), without
UMAP's refinement epochs. `transform="umap"` calls umap-learn's `transform` instead (slower, refines).
UMAP is initialised with `init="pca"` by default: umap-learn's spectral initialisation gave different layouts
for the same seed in one process (measured), which would break reproducible maps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PCA_AUTO_SAMPLE = 200_000
UMAP_AUTO_SAMPLE = 10_000


@dataclass
class Projection:
    """Coordinates [N, dims] float32 and a record of how they were produced."""

    coords: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PCAModel:
    """A fitted PCA: `transform(x) = (x - mean) @ components.T`."""

    mean: np.ndarray  # float32 [d]
    components: np.ndarray  # float32 [dims, d]
    explained_variance: np.ndarray  # float64 [dims]

    def transform(self, x: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
        out = np.empty((x.shape[0], self.components.shape[0]), dtype=np.float32)
        wt = self.components.T.astype(np.float32)
        for s in range(0, x.shape[0], batch_size):
            blk = np.asarray(x[s : s + batch_size], dtype=np.float32)
            out[s : s + batch_size] = (blk - self.mean) @ wt
        return out


def _check_vectors(vectors: np.ndarray) -> np.ndarray:
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"vectors must be a non-empty 2-D array [N, d], got shape {vectors.shape}")
    return vectors


def fit_pca(x: np.ndarray, dims: int, batch_size: int = 65_536) -> PCAModel:
    """PCA by eigendecomposition of the d x d covariance (blocked, float64 accumulation).

    Signs are fixed so that the largest-magnitude loading of every component is positive (deterministic).
    """
    n, d = x.shape
    if not 1 <= dims <= d:
        raise ValueError(f"dims must be in [1, {d}], got {dims}")
    mean = np.zeros(d, dtype=np.float64)
    for s in range(0, n, batch_size):
        mean += np.asarray(x[s : s + batch_size], dtype=np.float64).sum(axis=0)
    mean /= n
    mean32 = mean.astype(np.float32)
    cov = np.zeros((d, d), dtype=np.float64)
    for s in range(0, n, batch_size):
        blk = np.asarray(x[s : s + batch_size], dtype=np.float32) - mean32
        cov += (blk.T @ blk).astype(np.float64)
    cov /= max(n - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    top = np.argsort(evals)[::-1][:dims]
    comps = evecs[:, top].T.copy()
    flip = np.sign(comps[np.arange(dims), np.abs(comps).argmax(axis=1)])
    flip[flip == 0] = 1.0
    comps *= flip[:, None]
    return PCAModel(mean32, comps.astype(np.float32), evals[top])


def _sample(n: int, fit_sample: int | str | None, auto: int, seed: int) -> np.ndarray | None:
    """Sorted positions of the fit sample, or None to fit on every row."""
    if fit_sample == "auto":
        fit_sample = auto
    if fit_sample is None or int(fit_sample) >= n:
        return None
    if int(fit_sample) < 2:
        raise ValueError(f"fit_sample must be >= 2, got {fit_sample}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(fit_sample), replace=False))


def _smooth_knn_weights(dist: np.ndarray, n_iter: int = 64, tol: float = 1e-5) -> np.ndarray:
    """UMAP membership strengths exp(-(d - rho) / sigma), sigma set by bisection so each row's weights sum to
    log2(k), stopped once every row is within `tol` of it (umap-learn's tolerance) or after `n_iter` steps."""
    k = dist.shape[1]
    target = np.log2(k)
    rho = dist[:, :1]
    gap = np.maximum(dist - rho, 0.0)
    lo = np.zeros((dist.shape[0], 1))
    hi = np.full((dist.shape[0], 1), np.inf)
    sigma = np.ones((dist.shape[0], 1))
    # rows with >= log2(k) neighbours tied at rho (duplicates) sum to at least that for any sigma: sigma -> 0
    stuck = (gap == 0).sum(axis=1, keepdims=True) >= target
    for _ in range(n_iter):
        total = np.exp(-gap / sigma).sum(axis=1, keepdims=True)
        if (np.abs(total - target) < tol)[~stuck].all():
            break
        over = total > target
        hi = np.where(over, sigma, hi)
        lo = np.where(over, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2.0, 0.5 * (lo + hi))
    sigma = np.where(stuck, 0.0, sigma)
    sigma = np.maximum(sigma, 1e-3 * np.maximum(dist.mean(axis=1, keepdims=True), 1e-12))
    return np.exp(-gap / sigma)


def _knn_place(
    ref: np.ndarray, ref_coords: np.ndarray, queries: np.ndarray, k: int, batch_size: int, progress: bool
) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(ref.shape[1])
    index.add(np.ascontiguousarray(ref, dtype=np.float32))
    k = min(k, ref.shape[0])
    out = np.empty((queries.shape[0], ref_coords.shape[1]), dtype=np.float32)
    bar = _bar(queries.shape[0], "place rows", progress)
    for s in range(0, queries.shape[0], batch_size):
        q = np.ascontiguousarray(queries[s : s + batch_size], dtype=np.float32)
        d2, nn = index.search(q, k)
        w = _smooth_knn_weights(np.sqrt(np.maximum(d2, 0.0)).astype(np.float64))
        w /= w.sum(axis=1, keepdims=True)
        out[s : s + q.shape[0]] = np.einsum("qk,qkc->qc", w, ref_coords[nn].astype(np.float64))
        bar.update(q.shape[0])
    bar.close()
    return out


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row", unit_scale=True, disable=not progress)


def project(
    vectors: np.ndarray,
    *,
    method: str = "pca",
    dims: int = 2,
    fit_sample: int | str | None = "auto",
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    pca_dims: int = 50,
    transform: str = "knn",
    n_epochs: int | None = 200,
    init: str = "pca",
    batch_size: int = 65_536,
    progress: bool = True,
) -> Projection:
    """Project `vectors` [N, d] to `dims` dimensions with PCA or UMAP, deterministically for a given seed.

    `fit_sample`: rows to fit on ("auto": 200,000 for PCA, 10,000 for UMAP; None: all rows); the other rows
    are transformed in batches (PCA: exact linear map; UMAP: see the module docstring).
    """
    t0 = time.perf_counter()
    vectors = _check_vectors(vectors)
    n, d = vectors.shape
    if method not in ("pca", "umap"):
        raise ValueError(f"unknown projection method {method!r}: use 'pca' or 'umap'")
    if transform not in ("knn", "umap"):
        raise ValueError(f"unknown transform {transform!r}: use 'knn' or 'umap'")
    if not 1 <= dims <= d:
        raise ValueError(f"dims must be in [1, {d}], got {dims}")
    auto = PCA_AUTO_SAMPLE if method == "pca" else UMAP_AUTO_SAMPLE
    sample = _sample(n, fit_sample, auto, seed)
    fit_rows = vectors if sample is None else vectors[sample]
    fitted_on = n if sample is None else int(sample.size)
    info: dict[str, Any] = {"method": method, "dims": dims, "n": n, "fitted_on": fitted_on,
                            "transformed": n - fitted_on, "seed": seed}
    if method == "pca":
        model = fit_pca(fit_rows, dims, batch_size)
        coords = model.transform(vectors, batch_size)
        info["explained_variance"] = model.explained_variance.tolist()
        info["transform"] = "linear"
    else:
        import umap

        reduce_to = min(pca_dims, d)
        if reduce_to < d:
            pca = fit_pca(fit_rows, reduce_to, batch_size)
            low = pca.transform(vectors, batch_size)
            fit_low = low if sample is None else low[sample]
        else:
            low = np.ascontiguousarray(vectors, dtype=np.float32)
            fit_low = low if sample is None else low[sample]
        info.update(pca_dims=reduce_to, n_neighbors=n_neighbors, min_dist=min_dist, transform=transform)
        reducer = umap.UMAP(n_components=dims, n_neighbors=min(n_neighbors, fitted_on - 1), min_dist=min_dist,
                            random_state=seed, transform_seed=seed, n_epochs=n_epochs, init=init, verbose=False)
        t_fit = time.perf_counter()
        fit_coords = reducer.fit_transform(fit_low).astype(np.float32)
        info["fit_seconds"] = time.perf_counter() - t_fit
        coords = np.empty((n, dims), dtype=np.float32)
        if sample is None:
            coords[:] = fit_coords
        else:
            coords[sample] = fit_coords
            rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
            if transform == "knn":
                coords[rest] = _knn_place(fit_low, fit_coords, low[rest], n_neighbors, batch_size, progress)
            else:
                bar = _bar(rest.size, "umap transform", progress)
                for s in range(0, rest.size, batch_size):
                    part = rest[s : s + batch_size]
                    coords[part] = reducer.transform(low[part]).astype(np.float32)
                    bar.update(part.size)
                bar.close()
    info["seconds"] = time.perf_counter() - t0
    return Projection(np.ascontiguousarray(coords, dtype=np.float32), info)
