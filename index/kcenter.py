"""Greedy k-center (farthest-point traversal) over L2-normalised rows, exact, with cell pruning for scale.

Distance: cosine distance dist(x, c) = max(1 - x.c, 0) (float32, dot products by `np.einsum`, whose per-row
result does not depend on the row's position, so the pruned and the naive versions agree bit for bit).
Greedy: the first centre is a seeded random row (or, with `initial`, those rows are taken as already chosen and
are not returned); each next centre is the row with the largest distance to its nearest chosen centre, ties
broken by the lowest position. radii[i] is that largest distance when the i-th centre was chosen (the covering
radius of the chosen set before adding it; inf for a random first centre).

Scale: rows are grouped into k-means cells (sorted copy, contiguous per cell). Each cell keeps its radius
r (max Euclidean distance of its rows to the cell centroid m) and the max/argmax of its rows' current min
distances. For unit vectors 1 - x.c = |x - c|^2 / 2, and |x - c| >= |c - m| - r (triangle inequality), so a
new centre c can lower some distance in a cell only if (|c - m| - r)^2 / 2 <= the cell's current max; other
cells are skipped. Norm deviations of the inputs are bounded and subtracted, so the result stays exact.
"""

from __future__ import annotations

import math

import numpy as np

from index.faiss_index import check_vectors

_SLACK = 1e-5  # absolute slack on cosine-distance bounds, covering float32 rounding


def _cos_dist(block: np.ndarray, c: np.ndarray) -> np.ndarray:
    d = np.float32(1.0) - np.einsum("ij,j->i", block, c)
    np.maximum(d, np.float32(0.0), out=d)
    return d


def _check_args(x: np.ndarray, budget: int, initial: np.ndarray | None) -> np.ndarray:
    n = x.shape[0]
    init = np.zeros(0, dtype=np.int64) if initial is None else np.asarray(initial, dtype=np.int64).ravel()
    if init.size and (init.min() < 0 or init.max() >= n):
        raise ValueError(f"initial positions must lie in 0..{n - 1}")
    init = np.unique(init)
    if budget < 0 or budget > n - init.size:
        raise ValueError(f"budget={budget} must be between 0 and the number of unchosen rows ({n - init.size})")
    return init


def k_center_greedy_naive(
    vectors: np.ndarray, budget: int, *, seed: int = 0, initial: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference O(N * budget) greedy k-center (one full pass per centre); same contract as k_center_greedy."""
    x = check_vectors(vectors)
    n = x.shape[0]
    init = _check_args(x, budget, initial)
    mind = np.full(n, np.inf, dtype=np.float32)
    for p in init:
        np.minimum(mind, _cos_dist(x, x[p]), out=mind)
        mind[p] = -1.0
    order = np.empty(budget, dtype=np.int64)
    radii = np.empty(budget, dtype=np.float32)
    for t in range(budget):
        p = int(np.random.default_rng(seed).integers(n)) if (t == 0 and init.size == 0) else int(np.argmax(mind))
        order[t], radii[t] = p, mind[p]
        np.minimum(mind, _cos_dist(x, x[p]), out=mind)
        mind[p] = -1.0
    return order, radii


def k_center_greedy(
    vectors: np.ndarray,
    budget: int,
    *,
    seed: int = 0,
    initial: np.ndarray | None = None,
    progress: bool = True,
    n_cells: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy farthest-point selection of `budget` rows: (order int64 [budget], radii float32 [budget]).

    Exact (same result as k_center_greedy_naive); no N x N matrix. n_cells: pruning cells (default ~2*sqrt(N)).
    """
    from tqdm.auto import tqdm

    from index.cluster import kmeans

    x = check_vectors(vectors)
    n, d = x.shape
    init = _check_args(x, budget, initial)
    order_out = np.empty(budget, dtype=np.int64)
    radii_out = np.empty(budget, dtype=np.float32)
    if budget == 0:
        return order_out, radii_out

    # --- partition into cells (contiguous sorted copy; stable sort keeps positions ascending within a cell)
    nc = int(n_cells) if n_cells is not None else int(max(1, min(round(2 * math.sqrt(n)), n // 64 or 1)))
    nc = max(1, min(nc, n))
    if nc > 1:
        km = kmeans(x, nc, seed=seed, niter=8, max_points_per_centroid=64)
        labels = km.labels
        cent = km.centroids.astype(np.float64)
    else:
        labels = np.zeros(n, dtype=np.int64)
        cent = x.astype(np.float64).mean(0, keepdims=True)
    perm = np.argsort(labels, kind="stable")
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    xs = x[perm]
    sizes = np.bincount(labels, minlength=nc)
    starts = np.zeros(nc + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    cell_of_sorted = np.repeat(np.arange(nc), sizes)
    # cell radii (Euclidean, to the centroid) and the inputs' norm deviation, for the bounds
    radius = np.zeros(nc, dtype=np.float64)
    norm_dev = 0.0
    for j in range(nc):
        seg = xs[starts[j] : starts[j + 1]]
        if seg.shape[0] == 0:
            continue
        diff = seg.astype(np.float64) - cent[j]
        radius[j] = math.sqrt(float(np.einsum("ij,ij->i", diff, diff).max()))
        sq = np.einsum("ij,ij->i", seg, seg, dtype=np.float64)
        norm_dev = max(norm_dev, float(np.abs(sq - 1.0).max()))
    radius = radius * (1 + 1e-6) + 1e-6
    cent_sq = (cent**2).sum(1)

    mind = np.full(n, np.inf, dtype=np.float32)  # sorted order
    cell_max = np.where(sizes > 0, np.inf, -np.inf)
    cell_arg = starts[:-1].copy()  # sorted position of the first maximum of each cell

    def add_centre(p: int) -> None:
        c = x[p]
        c64 = c.astype(np.float64)
        dc = np.sqrt(np.maximum(float(c64 @ c64) - 2.0 * (cent @ c64) + cent_sq, 0.0))
        gap = np.maximum(dc - radius, 0.0)
        lower = 0.5 * gap * gap - norm_dev - _SLACK  # lower bound of 1 - x.c over the cell
        scan = (cell_max > 0) & (lower <= cell_max)
        sp = int(inv[p])
        own = int(cell_of_sorted[sp])
        mind[sp] = -1.0
        scan[own] = True
        cells = np.flatnonzero(scan)
        if cells.size == 0:
            return
        # merge consecutive cells into runs: one einsum per run
        breaks = np.flatnonzero(np.diff(cells) != 1) + 1
        for run in np.split(cells, breaks):
            a, b = int(starts[run[0]]), int(starts[run[-1] + 1])
            if b == a:
                continue
            seg = mind[a:b]
            np.minimum(seg, _cos_dist(xs[a:b], c), out=seg)
            if run.size == 1:
                i = int(np.argmax(seg))
                cell_max[run[0]] = seg[i]
                cell_arg[run[0]] = a + i
            else:
                offs = starts[run] - a
                nonempty = sizes[run] > 0
                ro, ru = offs[nonempty], run[nonempty]
                cm = np.maximum.reduceat(seg, ro)
                is_max = seg == np.repeat(cm, sizes[ru])
                idx = np.where(is_max, np.arange(b - a), b - a)
                cell_max[ru] = cm
                cell_arg[ru] = a + np.minimum.reduceat(idx, ro)

    for p in init:
        add_centre(int(p))
    rng = np.random.default_rng(seed)
    with tqdm(total=budget, desc="k-center greedy", unit="centres", disable=not progress) as bar:
        for t in range(budget):
            if t == 0 and init.size == 0:
                p = int(rng.integers(n))
                r = np.inf
            else:
                m = cell_max.max()
                tied = np.flatnonzero(cell_max == m)
                if tied.size == 1:
                    p = int(perm[cell_arg[tied[0]]])
                else:
                    p = int(perm[cell_arg[tied]].min())
                r = float(m)
            order_out[t] = p
            radii_out[t] = r
            add_centre(p)
            bar.update(1)
    return order_out, radii_out
