"""Diversity figures of a pool, a domain or a subset, all on cosine geometry of the embeddings.

- DaaR (methods.md 2.2): per row, inter = sum over the OTHER domain centroids of cos(e(x), C_j) and
  intra = cos(e(x), C_k) with its own centroid. Centroids are the plain means of the members' embeddings, not
  re-normalised (cosine ignores their length, so this changes nothing in the scores). Set level: Phi_inter =
  mean cosine distance 1 - cos(C_j, C_k) over centroid pairs j < k; Phi_intra(k) = within-domain variance
  = mean squared Euclidean distance of the members to their centroid (trace of the domain covariance).
- mean kNN distance (1 - cosine), k-center covering radius (max over the pool of the cosine distance to the
  nearest subset row), kNN coverage (the share of pool rows whose nearest subset row lies within the pool's
  median distance to the k-th neighbour: a coverage figure with no grid), facility-location value on the kNN
  graph, Vendi score, and SemDeDup-style near-duplicate fraction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: covering_radius: subset rows (the first ones) whose distances bound every pool row's from above,
SCREEN_SUBSET = 1024
#: and the rows with the largest bounds measured exactly first (their maximum prunes the others).
SCREEN_TOP = 4096


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def _codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names, codes = np.unique(np.asarray(labels), return_inverse=True)
    return names, codes.ravel().astype(np.int64)


def _label_sums(vectors: np.ndarray, codes: np.ndarray, k: int, block: int = 32_768) -> tuple[np.ndarray, np.ndarray]:
    """Per label: the float64 sum of its rows [k, d] and of their squared norms [k], a block of rows (in label
    order) at a time, so memory stays at one float64 block, not a float64 copy of all the vectors."""
    order = np.argsort(codes, kind="stable")
    sums = np.zeros((k, vectors.shape[1]), dtype=np.float64)
    sq = np.zeros(k, dtype=np.float64)
    for lo in range(0, order.size, block):
        rows = np.sort(order[lo : lo + block])  # read in position order (memory-mapped vectors), then by label
        by = np.argsort(codes[rows], kind="stable")
        blk, c = np.asarray(vectors[rows], dtype=np.float64)[by], codes[rows][by]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        sums[c[starts]] += np.add.reduceat(blk, starts, axis=0)
        sq[c[starts]] += np.add.reduceat(np.einsum("ij,ij->i", blk, blk), starts)
    return sums, sq


def domain_centroids(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(names [K], centroids [K, d] float32 = mean of each label's rows), names sorted."""
    if len(labels) != vectors.shape[0]:
        raise ValueError(f"labels has {len(labels)} entries for {vectors.shape[0]} vectors")
    names, codes = _codes(labels)
    sums, _ = _label_sums(vectors, codes, names.size)
    counts = np.bincount(codes, minlength=names.size).astype(np.float64)
    return names, (sums / counts[:, None]).astype(np.float32)


def daar_scores(
    vectors: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray | None = None,
    batch_size: int = 65_536,
    names: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row DaaR (inter, intra) scores, float64 [N] each.

    `labels` are the rows' domains; `centroids` [K, d] in the order of `names` (sorted; default the sorted
    unique labels; default centroids: the domain means). Give `names` to score a subset against every domain
    of its pool, including domains the subset has no row of.
    """
    if names is None:
        names, codes = _codes(labels)
    else:
        names = np.asarray(names)
        lab = np.asarray(labels).ravel()
        codes = np.searchsorted(names, lab).astype(np.int64)
        if lab.size and (codes.max() >= names.size or np.any(names[np.minimum(codes, names.size - 1)] != lab)):
            raise ValueError("daar_scores: a label is not among `names` (sorted)")
    if centroids is None:
        if names.size != np.unique(np.asarray(labels)).size:
            raise ValueError("daar_scores: give the centroids of `names` when some have no row here")
        _, centroids = domain_centroids(vectors, labels)
    if centroids.shape[0] != names.size:
        raise ValueError(f"{centroids.shape[0]} centroids for {names.size} domains")
    cn = _normalise(centroids)
    inter = np.empty(vectors.shape[0], dtype=np.float64)
    intra = np.empty(vectors.shape[0], dtype=np.float64)
    for s in range(0, vectors.shape[0], batch_size):
        sims = (_normalise(vectors[s : s + batch_size]) @ cn.T).astype(np.float64)
        own = sims[np.arange(sims.shape[0]), codes[s : s + batch_size]]
        intra[s : s + sims.shape[0]] = own
        inter[s : s + sims.shape[0]] = sims.sum(axis=1) - own
    return inter, intra


def phi_inter(centroids: np.ndarray) -> float:
    """Expected pairwise cosine distance between centroids (0.0 with fewer than two)."""
    k = centroids.shape[0]
    if k < 2:
        return 0.0
    cn = _normalise(centroids).astype(np.float64)
    sims = cn @ cn.T
    iu = np.triu_indices(k, 1)
    return float(np.mean(1.0 - sims[iu]))


def phi_intra(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Within-domain variance per domain: mean squared distance of members to their centroid."""
    names, codes = _codes(labels)
    sums, sq = _label_sums(vectors, codes, names.size)  # E|x - c|^2 = E|x|^2 - |c|^2, in float64, blockwise
    counts = np.bincount(codes, minlength=names.size).astype(np.float64)
    cents = sums / counts[:, None]
    return {str(name): float(max(0.0, sq[k] / counts[k] - cents[k] @ cents[k])) for k, name in enumerate(names)}


def _flat_ip(x: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    return index


def mean_knn_distance(
    graph: Any = None, vectors: np.ndarray | None = None, subset: np.ndarray | None = None, k: int = 10,
    batch_size: int = 16_384,
) -> float:
    """Mean cosine distance (1 - sim) of rows to their k nearest neighbours.

    Pool level: from a KnnGraph (missing neighbours, -1, ignored). Subset level: exact kNN among the subset
    rows only (faiss flat inner-product search on normalised vectors, self excluded).
    """
    if subset is None:
        if graph is None:
            raise ValueError("mean_knn_distance needs a graph (pool level) or vectors and a subset")
        nb = np.asarray(graph.neighbors)[:, :k]
        sims = np.asarray(graph.sims)[:, :k]
        valid = nb >= 0
        if not valid.any():
            return float("nan")
        return float(np.mean(1.0 - sims[valid].astype(np.float64)))
    if vectors is None:
        raise ValueError("mean_knn_distance on a subset needs the vectors")
    sub = np.asarray(subset, dtype=np.int64)
    if sub.size < 2:
        return float("nan")
    x = _normalise(vectors[sub])
    kk = min(k, sub.size - 1)
    index = _flat_ip(x)
    total, count = 0.0, 0
    for s in range(0, sub.size, batch_size):
        sims, idx = index.search(x[s : s + batch_size], kk + 1)
        own = np.arange(s, s + idx.shape[0])[:, None]
        keep = idx != own
        # where self was not returned (exact ties), drop the last column instead
        no_self = keep.all(axis=1)
        keep[no_self, -1] = False
        total += float((1.0 - sims[keep].astype(np.float64)).sum())
        count += int(keep.sum())
    return total / count


def nearest_selected_distance(
    vectors: np.ndarray, subset: np.ndarray, batch_size: int = 65_536, rows: np.ndarray | None = None
) -> np.ndarray:
    """Cosine distance (1 - cos, float64 [N]) of every pool row (or only `rows`, positions) to its nearest
    subset row (exact: float32 matrix products against the subset in row blocks, the maximum per row)."""
    import torch

    sub = np.asarray(subset, dtype=np.int64)
    if sub.size == 0:
        raise ValueError("the distance to a subset needs a non-empty subset")
    st = np.ascontiguousarray(_normalise(vectors[sub]), dtype=np.float32).T
    pos = None if rows is None else np.asarray(rows, dtype=np.int64)
    n = vectors.shape[0] if pos is None else pos.size
    out = np.empty(n, dtype=np.float64)
    step = max(1, min(batch_size, (1 << 26) // max(1, sub.size)))  # bounds the score block (256 MB)
    buf = np.empty(max(1, min(step, n) * sub.size), dtype=np.float32)  # reused: no page faults per block
    with torch.inference_mode():
        for s in range(0, n, step):
            blk = vectors[s : s + step] if pos is None else vectors[pos[s : s + step]]
            q = np.ascontiguousarray(_normalise(blk), dtype=np.float32)
            sc = np.matmul(q, st, out=buf[: q.shape[0] * sub.size].reshape(q.shape[0], sub.size))  # index.cpu
            out[s : s + q.shape[0]] = 1.0 - torch.from_numpy(sc).amax(dim=1).double().numpy()
    return np.maximum(out, 0.0)


def covering_radius(
    vectors: np.ndarray, subset: np.ndarray, batch_size: int = 65_536, return_argmax: bool = False
) -> float | tuple[float, int]:
    """k-center covering radius: max over pool rows of the cosine distance to the nearest subset row.

    Exact, with pruning: a row's distance to the first SCREEN_SUBSET subset rows bounds its distance to the
    whole subset from above. The SCREEN_TOP rows with the largest bounds are measured exactly; their maximum is
    a lower bound on the radius, and a row whose bound falls below it cannot hold the radius. The rest of the
    subset is then taken in doubling chunks, each against the rows still in the running only: for a k-center
    subset, whose first rows are already spread out, a shrinking share of the pool. The argmax is the lowest
    position among equal maxima, as without pruning.
    """
    sub = np.asarray(subset, dtype=np.int64)
    if sub.size <= SCREEN_SUBSET or vectors.shape[0] <= SCREEN_TOP:  # too small to prune
        bound = nearest_selected_distance(vectors, sub, batch_size)
        alive = np.arange(bound.size)
    else:
        bound = nearest_selected_distance(vectors, sub[:SCREEN_SUBSET], batch_size)
        top = np.argpartition(-bound, SCREEN_TOP)[:SCREEN_TOP]
        low = nearest_selected_distance(vectors, sub, batch_size, rows=top).max()
        tol = 4.0 * (vectors.shape[1] + 4) * 2.0**-24  # float32 rounding between two products of a pair, doubled
        alive = np.flatnonzero(bound >= low - tol)  # ascending: argmax keeps the lowest position
        start, chunk = SCREEN_SUBSET, SCREEN_SUBSET
        while start < sub.size:
            end = min(sub.size, start + chunk)
            d = np.minimum(bound[alive], nearest_selected_distance(vectors, sub[start:end], batch_size, rows=alive))
            bound[alive] = d
            alive = alive[d >= low - tol]
            start, chunk = end, 2 * chunk
    arg = int(bound[alive].argmax())
    worst = float(bound[alive][arg])
    return (worst, int(alive[arg])) if return_argmax else worst


def median_knn_radius(graph: Any, k: int | None = None) -> float:
    """The pool's median kNN distance: median over rows of the cosine distance to their k-th nearest neighbour
    (k = the graph's k by default; rows without a k-th neighbour are skipped)."""
    kk = graph.k if k is None else int(k)
    if not 1 <= kk <= graph.k:
        raise ValueError(f"k={kk} must lie in 1..{graph.k} (the graph's neighbours)")
    nb = np.asarray(graph.neighbors)[:, kk - 1]
    sims = np.asarray(graph.sims)[:, kk - 1].astype(np.float64)
    ok = nb >= 0
    if not ok.any():
        return float("nan")
    return float(np.median(1.0 - sims[ok]))


def knn_coverage(distances: np.ndarray, radius: float, tol: float = 1e-6) -> float:
    """Grid-free coverage: the fraction of pool rows whose nearest subset row lies within `radius` (cosine
    distance; `distances` from `nearest_selected_distance`; `tol` absorbs float32 rounding at the boundary)."""
    d = np.asarray(distances, dtype=np.float64)
    return float(np.mean(d <= radius + tol)) if d.size else 0.0


def vendi_score(vectors: np.ndarray, sample: int | None = 5_000, seed: int = 0) -> float:
    """Vendi score: exp of the Shannon entropy of the eigenvalues of K/n, K the cosine similarity matrix.

    Uses the Gram trick (the nonzero eigenvalues of X^T X / n equal those of X X^T / n), so the cost is
    O(n d^2) for n > d. Larger sets are scored on a seeded sample of `sample` rows.
    """
    n = vectors.shape[0]
    if n == 0:
        return 0.0
    if sample is not None and n > sample:
        pos = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        vectors = vectors[pos]
        n = sample
    x = _normalise(vectors).astype(np.float64)
    gram = (x @ x.T) if n <= x.shape[1] else (x.T @ x)
    evals = np.linalg.eigvalsh(gram / n)
    evals = evals[evals > 1e-12]
    p = evals / evals.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def near_duplicates(
    vectors: np.ndarray, clusters: np.ndarray, threshold: float = 0.95, order: np.ndarray | None = None,
    block: int = 2_048,
) -> tuple[float, np.ndarray]:
    """SemDeDup-style near-duplicates: (fraction, flags bool [N]).

    Within each cluster, a row is flagged when a row EARLIER in `order` (default: position order) in the
    same cluster has cosine similarity >= `threshold` with it.
    """
    n = vectors.shape[0]
    clusters = np.asarray(clusters).ravel()
    if clusters.size != n:
        raise ValueError(f"clusters has {clusters.size} entries for {n} vectors")
    rank = np.arange(n) if order is None else np.empty(n, dtype=np.int64)
    if order is not None:
        order = np.asarray(order, dtype=np.int64)
        if order.size != n or np.unique(order).size != n:
            raise ValueError("order must be a permutation of the pool positions")
        rank[order] = np.arange(n)
    flags = np.zeros(n, dtype=bool)
    by = np.lexsort((rank, clusters))  # cluster-major, then the deterministic order
    bounds = np.flatnonzero(np.diff(clusters[by])) + 1
    for members in np.split(by, bounds):
        m = members.size
        if m < 2:
            continue
        x = _normalise(vectors[members])
        for s in range(1, m, block):
            rows = x[s : s + block]
            sims = rows @ x[: s + rows.shape[0]].T  # earlier rows and the block itself
            # keep only strictly earlier columns: column j < s + i for row i
            cols = np.arange(sims.shape[1])[None, :]
            earlier = cols < (s + np.arange(rows.shape[0]))[:, None]
            hit = ((sims >= threshold) & earlier).any(axis=1)
            flags[members[s : s + rows.shape[0]]] = hit
    return float(flags.mean()) if n else 0.0, flags


def diversity_report(
    vectors: np.ndarray,
    subset: np.ndarray | None = None,
    graph: Any = None,
    labels: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    *,
    k: int = 10,
    vendi_sample: int | None = 5_000,
    semdedup_threshold: float = 0.95,
    covering: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Gather the diversity figures for the pool (subset=None) or a subset of pool positions.

    labels: domain per pool row (adds DaaR Phi figures, per-domain figures); centroids: the pool's domain
    centroids in sorted-label order (default: the pool's domain means); clusters: k-means cluster per pool row
    (adds the near-duplicate fraction); graph: pool KnnGraph (pool mean kNN distance, facility location).

    Per-row DaaR scores (per-domain `mean_inter`, `mean_intra`) are always taken against the POOL's centroids
    of every domain, also for a subset (one that lacks a domain still sums over that domain's centroid), so
    they are comparable across subsets of one pool. `phi_inter` and `phi_intra` are set-level: the pairwise
    centroid distance and the within-domain variance of the rows considered (a subset's own domain means;
    `phi_inter_domains` says over how many domains).
    """
    n = vectors.shape[0]
    rows = np.arange(n) if subset is None else np.asarray(subset, dtype=np.int64)
    sub_vecs = vectors[rows] if subset is not None else vectors
    rep: dict[str, Any] = {"n": int(rows.size), "pool_n": int(n)}
    if subset is None and graph is not None:
        rep["mean_knn_distance"] = mean_knn_distance(graph, k=k)
    elif subset is not None:
        rep["mean_knn_distance"] = mean_knn_distance(vectors=vectors, subset=rows, k=k)
    rep["vendi"] = vendi_score(sub_vecs, sample=vendi_sample, seed=seed)
    rep["vendi_sample"] = int(min(rows.size, vendi_sample or rows.size))
    if subset is not None and covering:
        dist = nearest_selected_distance(vectors, rows)
        rep["covering_radius"] = float(dist.max())
        if graph is not None:
            radius = median_knn_radius(graph, min(k, graph.k))
            rep["knn_coverage"] = knn_coverage(dist, radius)
            rep["knn_coverage_radius"] = radius
            rep["knn_coverage_k"] = int(min(k, graph.k))
    if graph is not None and subset is not None:  # the whole pool's value is trivially maximal
        from index.facility import facility_location_value

        rep["facility_location"] = float(facility_location_value(graph, rows))
    if clusters is not None:
        cl = np.asarray(clusters)[rows]
        frac, _ = near_duplicates(sub_vecs, cl, threshold=semdedup_threshold)
        rep["near_duplicate_fraction"] = frac
        rep["semdedup_threshold"] = semdedup_threshold
    if labels is not None:
        all_labels = np.asarray(labels)
        if len(all_labels) != n:
            raise ValueError(f"labels has {len(all_labels)} entries for {n} vectors")
        if centroids is None:
            pool_names, pool_cents = domain_centroids(vectors, all_labels)
        else:
            pool_names, pool_cents = np.unique(all_labels), np.asarray(centroids)
        lab = all_labels[rows]
        names, own_cents = domain_centroids(sub_vecs, lab)
        inter, intra = daar_scores(sub_vecs, lab, pool_cents, names=pool_names)
        within = phi_intra(sub_vecs, lab)
        _, codes = _codes(lab)
        rep["phi_inter"] = phi_inter(own_cents)
        rep["phi_inter_domains"] = int(names.size)
        rep["pool_domains"] = int(pool_names.size)
        rep["domains"] = {
            str(name): {
                "n": int((codes == j).sum()),
                "phi_intra": within[str(name)],
                "mean_inter": float(inter[codes == j].mean()),
                "mean_intra": float(intra[codes == j].mean()),
                "vendi": vendi_score(sub_vecs[codes == j], sample=vendi_sample, seed=seed),
            }
            for j, name in enumerate(names)
        }
    return rep
