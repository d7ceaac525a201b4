"""k-means with faiss (seeded, optional given initial centroids), then assignment of every row in batches.

faiss trains on at most k * max_points_per_centroid rows (a seeded subsample), so k=1000 over 1M rows costs a
few seconds per iteration; the final labels, sizes and inertia cover all N rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index.faiss_index import check_vectors


@dataclass
class KMeansResult:
    """centroids float32 [k, d]; labels int64 [N] (nearest centroid); sizes int64 [k]; inertia = sum over rows of
    the squared L2 distance to the assigned centroid."""

    centroids: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    inertia: float

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def kmeans(
    vectors: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 20,
    init_centroids: np.ndarray | None = None,
    spherical: bool = False,
    max_points_per_centroid: int = 256,
    progress: bool = False,
    batch_size: int = 65536,
) -> KMeansResult:
    """Lloyd k-means (faiss.Kmeans, one run, seeded); `init_centroids` [k, d] replaces the random init
    (plain k-means started from them: the centroids move). spherical=True re-normalises centroids each
    iteration and assigns by inner product (for unit vectors this equals L2 assignment)."""
    import faiss
    from tqdm.auto import tqdm

    x = check_vectors(vectors)
    n, d = x.shape
    k = int(k)
    if k < 1 or k > n:
        raise ValueError(f"k={k} must be between 1 and the number of rows ({n})")
    km = faiss.Kmeans(
        d,
        k,
        niter=int(niter),
        seed=int(seed),
        spherical=bool(spherical),
        max_points_per_centroid=int(max_points_per_centroid),
        min_points_per_centroid=1,
        verbose=False,
    )
    if init_centroids is not None:
        init = np.ascontiguousarray(init_centroids, dtype=np.float32)
        if init.shape != (k, d):
            raise ValueError(f"init_centroids has shape {init.shape}, expected ({k}, {d})")
        km.train(x, init_centroids=init)
    else:
        km.train(x)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32).reshape(k, d)
    labels, inertia = assign(x, centroids, spherical=spherical, batch_size=batch_size, progress=progress,
                             tqdm=tqdm)
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    return KMeansResult(centroids=centroids, labels=labels, sizes=sizes, inertia=float(inertia))


def assign(
    vectors: np.ndarray,
    centroids: np.ndarray,
    *,
    spherical: bool = False,
    batch_size: int = 65536,
    progress: bool = False,
    tqdm=None,
) -> tuple[np.ndarray, float]:
    """Nearest centroid of every row (L2, or inner product if spherical) and the summed squared L2 distance."""
    import faiss

    if tqdm is None:
        from tqdm.auto import tqdm
    x = check_vectors(vectors)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    n, d = x.shape
    index = faiss.IndexFlatIP(d) if spherical else faiss.IndexFlatL2(d)
    index.add(c)
    labels = np.empty(n, dtype=np.int64)
    inertia = 0.0
    cn = (c.astype(np.float64) ** 2).sum(1)
    with tqdm(total=n, desc="k-means assign", unit="rows", disable=not progress) as bar:
        for s in range(0, n, batch_size):
            blk = x[s : s + batch_size]
            dist, lab = index.search(blk, 1)
            lab = lab[:, 0].astype(np.int64)
            labels[s : s + blk.shape[0]] = lab
            if spherical:  # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2
                xn = (blk.astype(np.float64) ** 2).sum(1)
                inertia += float(np.maximum(xn - 2 * dist[:, 0] + cn[lab], 0).sum())
            else:
                inertia += float(np.maximum(dist[:, 0], 0).astype(np.float64).sum())
            bar.update(blk.shape[0])
    return labels, inertia
