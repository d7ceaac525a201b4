"""Facility location over a sparse similarity graph, maximised by lazy greedy (exactly naive greedy's result).

Objective: f(S) = sum_i max(0, max_{j in S} W[j, i]), with f(empty) = 0, where row j of W lists what candidate
j offers to each point i. From a KnnGraph, W = max(G, G^T) + I: G[i, j] = cosine of j in i's k nearest
neighbours, symmetrised (a pair counts when either is a neighbour of the other), non-neighbours 0 and self 1
on the diagonal. A csr_matrix input is used as W as given (same convention as apricot's
FacilityLocationSelection(metric="precomputed") on a sparse matrix: rows are candidates).
Greedy adds the candidate of largest marginal gain, ties broken by the lowest position; lazy evaluation keeps
stale gains in a heap as upper bounds (valid because f is submodular), so the order and gains equal naive greedy.
"""

from __future__ import annotations

import heapq

import numpy as np


def similarity_matrix(graph, *, symmetric: bool = True):
    """W (float64 CSR) for a KnnGraph (symmetrised, + identity) or a square csr_matrix (as given)."""
    import scipy.sparse as sp

    from index.knn import KnnGraph

    if isinstance(graph, KnnGraph):
        w = graph.to_csr(symmetric=symmetric).astype(np.float64)
        w = (w + sp.identity(w.shape[0], dtype=np.float64, format="csr")).tocsr()
    elif sp.issparse(graph):
        w = sp.csr_matrix(graph, dtype=np.float64)
    else:
        raise TypeError(f"expected a KnnGraph or a scipy sparse matrix, got {type(graph).__name__}")
    if w.shape[0] != w.shape[1]:
        raise ValueError(f"similarity matrix must be square, got shape {w.shape}")
    w.sum_duplicates()
    w.sort_indices()
    return w


def _gain(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, cur: np.ndarray, j: int) -> float:
    a, b = indptr[j], indptr[j + 1]
    return float(np.maximum(data[a:b] - cur[indices[a:b]], 0.0).sum())


def facility_location(graph, budget: int, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Lazy-greedy facility location: (order int64 [budget], gains float64 [budget] = marginal gain of each)."""
    from tqdm.auto import tqdm

    w = similarity_matrix(graph)
    n = w.shape[0]
    if budget < 0 or budget > n:
        raise ValueError(f"budget={budget} must be between 0 and the number of rows ({n})")
    data, indices, indptr = w.data, w.indices, w.indptr
    cur = np.zeros(n, dtype=np.float64)
    # First bounds for all rows at once (with nothing chosen, row j offers the sum of its positive similarities),
    # raised by a hair so they stay upper bounds whatever the summation order; stamp -1 marks them stale, so
    # every pick is still scored exactly by _gain and the result equals naive greedy, ties included.
    first = np.zeros(n, dtype=np.float64)
    nonempty = np.diff(indptr) > 0
    if nonempty.any():
        first[nonempty] = np.add.reduceat(np.maximum(data, 0.0), indptr[:-1][nonempty])
    first = first * (1.0 + 1e-9) + 1e-12
    heap = list(zip((-first).tolist(), range(n), [-1] * n, strict=True))
    heapq.heapify(heap)
    order = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget, dtype=np.float64)
    with tqdm(total=budget, desc="facility location", unit="picks", disable=not progress) as bar:
        for t in range(budget):
            while True:
                neg, j, stamp = heapq.heappop(heap)
                if stamp == t:  # fresh: its exact gain beats every other upper bound (ties: lower j first)
                    break
                heapq.heappush(heap, (-_gain(data, indices, indptr, cur, j), j, t))
            order[t], gains[t] = j, -neg
            a, b = indptr[j], indptr[j + 1]
            cols = indices[a:b]
            cur[cols] = np.maximum(cur[cols], data[a:b])
            bar.update(1)
    return order, gains


def facility_location_naive(graph, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference greedy: recomputes every candidate's gain at every step (O(budget * nnz))."""
    w = similarity_matrix(graph)
    n = w.shape[0]
    if budget < 0 or budget > n:
        raise ValueError(f"budget={budget} must be between 0 and the number of rows ({n})")
    cur = np.zeros(n, dtype=np.float64)
    chosen = np.zeros(n, dtype=bool)
    order = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget, dtype=np.float64)
    for t in range(budget):
        g = np.array([_gain(w.data, w.indices, w.indptr, cur, j) for j in range(n)])
        g[chosen] = -np.inf
        j = int(np.argmax(g))
        order[t], gains[t] = j, g[j]
        chosen[j] = True
        row = w.getrow(j)
        cur[row.indices] = np.maximum(cur[row.indices], row.data)
    return order, gains


def facility_location_value(graph, subset) -> float:
    """f(S) = sum_i max(0, max_{j in S} W[j, i]) for the positions in `subset` (same W as facility_location)."""
    w = similarity_matrix(graph)
    s = np.asarray(subset, dtype=np.int64).ravel()
    if s.size == 0:
        return 0.0
    if s.min() < 0 or s.max() >= w.shape[0]:
        raise ValueError(f"subset positions must lie in 0..{w.shape[0] - 1}")
    best = w[np.unique(s)].max(axis=0).toarray().ravel()
    return float(np.maximum(best, 0.0).sum())
