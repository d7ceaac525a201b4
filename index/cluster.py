"""Lloyd k-means (seeded, optional given initial centroids), then assignment of every row in batches.

Training runs on at most k * max_points_per_centroid rows (a seeded subsample, as faiss does), so k=1000 over
1M rows costs a few seconds per iteration; the final labels, sizes and inertia cover all N rows. The products
run in torch: faiss-cpu 1.15's k-means ran at about 51 GFLOP/s on this machine against 117 for a torch float32
product + argmax (bench/RESULTS.md, issue 12), and the loop itself is a dozen lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index.faiss_index import check_vectors

#: rows per matrix product in the assignment (a 16k x 1000 float32 score block is 64 MB)
ASSIGN_BLOCK = 16_384
#: relative perturbation when a populated centroid is split to refill an empty one (faiss uses 1/1024)
SPLIT_EPS = 1.0 / 1024


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
    batch_size: int = ASSIGN_BLOCK,
) -> KMeansResult:
    """Lloyd k-means, one seeded run: k distinct training rows as the start (or `init_centroids` [k, d], then
    plain Lloyd from them: the centroids move), `niter` assign/mean steps (stopping early when no label
    changes), an empty cluster refilled by splitting the largest. spherical=True re-normalises centroids each
    step and assigns by inner product (for unit vectors this equals L2 assignment)."""
    from tqdm.auto import tqdm

    x = check_vectors(vectors)
    n, d = x.shape
    k = int(k)
    if k < 1 or k > n:
        raise ValueError(f"k={k} must be between 1 and the number of rows ({n})")
    rng = np.random.default_rng(int(seed))
    cap = int(max_points_per_centroid) * k
    train = x[np.sort(rng.choice(n, cap, replace=False))] if n > cap else x
    if init_centroids is not None:
        c = np.array(init_centroids, dtype=np.float32)
        if c.shape != (k, d):
            raise ValueError(f"init_centroids has shape {c.shape}, expected ({k}, {d})")
    else:
        c = train[np.sort(rng.choice(train.shape[0], k, replace=False))].copy()
    if spherical:
        c = _normalise(c)
    labels = None
    for _ in tqdm(range(int(niter)), desc="k-means", disable=not progress):
        new, _ = assign(train, c, spherical=spherical, batch_size=batch_size)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        c = _update(train, labels, c, rng, spherical)
    labels, inertia = assign(x, c, spherical=spherical, batch_size=batch_size, progress=progress, tqdm=tqdm)
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    return KMeansResult(centroids=c, labels=labels, sizes=sizes, inertia=float(inertia))


def _normalise(c: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return (c / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _update(
    x: np.ndarray, labels: np.ndarray, old: np.ndarray, rng: np.random.Generator, spherical: bool
) -> np.ndarray:
    """Cluster means (float64 sums); each empty cluster takes a perturbed copy of the currently largest one,
    which moves the other way, and the two share its rows' count for the next split."""
    import torch

    k, d = old.shape
    sums = torch.zeros((k, d), dtype=torch.float64)
    sums.index_add_(0, torch.from_numpy(labels), torch.from_numpy(x).double())
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    c = np.where(sizes[:, None] > 0, sums.numpy() / np.maximum(sizes, 1)[:, None], old)
    for j in np.flatnonzero(sizes == 0):
        big = int(np.argmax(sizes))
        step = SPLIT_EPS * np.where(rng.random(d) < 0.5, -1.0, 1.0) * np.abs(c[big])
        c[j], c[big] = c[big] + step, c[big] - step
        sizes[j] = sizes[big] = sizes[big] / 2
    c = c.astype(np.float32)
    return _normalise(c) if spherical else c


def assign(
    vectors: np.ndarray,
    centroids: np.ndarray,
    *,
    spherical: bool = False,
    batch_size: int = ASSIGN_BLOCK,
    progress: bool = False,
    tqdm=None,
) -> tuple[np.ndarray, float]:
    """Nearest centroid of every row (L2, or inner product if spherical; ties to the lower centroid) and the
    summed squared L2 distance to it."""
    import torch

    if tqdm is None:
        from tqdm.auto import tqdm
    x = check_vectors(vectors)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    n = x.shape[0]
    ct = torch.from_numpy(c)
    half_norm = 0.5 * (ct * ct).sum(1)  # argmax of x.c - |c|^2/2 is the L2-nearest centroid
    labels = np.empty(n, dtype=np.int64)
    inertia = 0.0
    with torch.inference_mode(), tqdm(total=n, desc="k-means assign", unit="rows", disable=not progress) as bar:
        for s in range(0, n, batch_size):
            xb = torch.from_numpy(np.array(x[s : s + batch_size]))  # a copy: x may be a read-only memmap
            scores = xb @ ct.T
            if not spherical:
                scores -= half_norm
            lab = torch.argmax(scores, dim=1)
            labels[s : s + xb.shape[0]] = lab.numpy()
            inertia += float(((xb - ct[lab]) ** 2).sum(1, dtype=torch.float64).sum())
            bar.update(xb.shape[0])
    return labels, inertia
