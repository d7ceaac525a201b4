"""Inner-product faiss indexes over L2-normalised float32 vectors (cosine similarity).

`build_index(kind="auto")` picks an exact flat index up to `FLAT_MAX_ROWS` rows and an IVF index beyond it.
IVF uses nlist ~ 4*sqrt(N) lists trained on a seeded sample; when nprobe is not given it is tuned on a seeded
query sample: the smallest nprobe in 1, 2, 4, ... whose recall@10 against exact search reaches
`TARGET_RECALL`.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

from index.io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import faiss

#: `kind="auto"` builds an exact flat index up to this many rows, an IVF index beyond.
FLAT_MAX_ROWS = 200_000
#: recall@10 (vs exact search) that the automatic nprobe choice must reach on its tuning sample.
TARGET_RECALL = 0.95
#: training rows per IVF list (faiss recommends 30-256).
TRAIN_PER_LIST = 40
#: similarity below the k-th exact neighbour's that still counts as a tie in a recall (float32 rounding).
TIE_TOL = 1e-6
KINDS = ("flat", "ivf", "hnsw", "auto")


def check_vectors(vectors: np.ndarray, name: str = "vectors") -> np.ndarray:
    """Return `vectors` as a C-contiguous float32 [N, d] array, or raise a clear error."""
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [N, d], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name}: expected floating point values, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    # Check finiteness in chunks so a 1M-row matrix does not need a full boolean copy.
    step = 65536
    for s in range(0, arr.shape[0], step):
        block = arr[s : s + step]
        if not np.isfinite(block).all():
            row = s + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise ValueError(f"{name}: row {row} contains NaN or inf")
    return arr


def default_nlist(n: int) -> int:
    """IVF list count: about 4*sqrt(N), at least 1 and at most N/8 (so lists are not near-empty)."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 8)))


def build_index(
    vectors: np.ndarray,
    kind: str = "auto",
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    seed: int = 0,
    progress: bool = False,
    target_recall: float = TARGET_RECALL,
) -> faiss.Index:
    """Build an inner-product index over `vectors` (float32, L2-normalised, so scores are cosines).

    kind: "flat" (exact), "ivf" (IndexIVFFlat), "hnsw" (IndexHNSWFlat, M=`hnsw_m`) or "auto"
    (flat up to FLAT_MAX_ROWS rows, IVF beyond). For IVF, nprobe=None tunes nprobe to `target_recall`.
    """
    import faiss

    x = check_vectors(vectors)
    n, d = x.shape
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX_ROWS else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * hnsw_m)
        index.hnsw.efSearch = 64
        _add_in_batches(index, x, progress, "hnsw add")
        return index
    # IVF
    nl = int(nlist) if nlist is not None else default_nlist(n)
    if nl < 1 or nl > n:
        raise ValueError(f"nlist={nl} must be between 1 and the number of rows ({n})")
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nl, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    rng = np.random.default_rng(seed)
    n_train = min(n, max(nl * TRAIN_PER_LIST, 10_000))
    train_rows = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
    index.cp.max_points_per_centroid = TRAIN_PER_LIST + 1  # already sampled: no second subsample
    index.cp.niter = 10  # 10 Lloyd iterations (faiss default 25): the lists only need to be reasonable
    index.train(x[train_rows])
    return _fill_ivf(index, x, progress, nprobe, target_recall, seed)


def ivf_from_cells(
    vectors: np.ndarray,
    centroids: np.ndarray,
    labels: np.ndarray,
    *,
    nprobe: int | None = None,
    seed: int = 0,
    progress: bool = False,
    target_recall: float = TARGET_RECALL,
) -> faiss.Index:
    """An IVF inner-product index whose lists are a given partition (e.g. the kNN graph's cells): `centroids`
    [C, d] form the coarse quantizer and row i goes to list labels[i], so no k-means or assignment is repeated.
    nprobe=None tunes it to `target_recall` as `build_index` does."""
    import faiss

    x = check_vectors(vectors)
    cent = check_vectors(centroids, "centroids")
    lab = np.asarray(labels, dtype=np.int64)
    n, d = x.shape
    nl = cent.shape[0]
    if cent.shape[1] != d:
        raise ValueError(f"centroids have dimension {cent.shape[1]} but vectors have {d}")
    if lab.shape != (n,) or (n and (lab.min() < 0 or lab.max() >= nl)):
        raise ValueError(f"labels must be {n} list numbers in 0..{nl - 1}")
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(cent)
    index = faiss.IndexIVFFlat(quantizer, d, nl, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True  # faiss's wrapper keeps `quantizer` referenced by the index
    return _fill_ivf(index, x, progress, nprobe, target_recall, seed, labels=lab)


def _fill_ivf(
    index: faiss.Index, x: np.ndarray, progress: bool, nprobe: int | None, target_recall: float, seed: int,
    labels: np.ndarray | None = None,
) -> faiss.Index:
    """Add every row to a trained IVF index (to list labels[i] when given) and set nprobe (None: tuned)."""
    _add_in_batches(index, x, progress, "ivf add", labels)
    if nprobe is not None:
        index.nprobe = int(max(1, min(nprobe, index.nlist)))
    else:
        index.nprobe = tune_nprobe(index, x, target_recall=target_recall, seed=seed)
    return index


def _add_in_batches(
    index: faiss.Index, x: np.ndarray, progress: bool, desc: str, labels: np.ndarray | None = None,
    batch: int = 65536,
) -> None:
    """Add rows in batches with a progress bar; with `labels` (IVF only) row i goes to list labels[i]."""
    from faiss.contrib.ivf_tools import add_preassigned
    from tqdm.auto import tqdm

    with tqdm(total=x.shape[0], desc=desc, unit="rows", disable=not progress) as bar:
        for s in range(0, x.shape[0], batch):
            if labels is None:
                index.add(x[s : s + batch])
            else:
                add_preassigned(index, x[s : s + batch], labels[s : s + batch])
            bar.update(min(batch, x.shape[0] - s))


def tune_nprobe(
    index: faiss.Index,
    x: np.ndarray,
    *,
    target_recall: float = TARGET_RECALL,
    k: int = 10,
    sample: int = 1000,
    seed: int = 0,
) -> int:
    """Smallest nprobe in 1, 2, 4, ... reaching `target_recall` recall@k on a seeded sample of rows of `x`.

    Ties count as found, as in `index.knn.recall_at_k`: a returned row at least as similar as the k-th exact one
    (within TIE_TOL) is a hit, so exact duplicates do not ask for a larger nprobe than the search needs."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    n = x.shape[0]
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    q = x[rows]
    kk = min(k, n)
    exact_s, _ = exact_search(x, q, kk)
    nprobe = 1
    while True:
        ivf.nprobe = nprobe
        _, got = index.search(q, kk)
        recall = tie_hits(x, q, got, exact_s[:, -1], np.full(len(q), kk)).sum() / exact_s.size
        if recall >= target_recall or nprobe >= ivf.nlist:
            return nprobe
        nprobe = min(nprobe * 2, ivf.nlist)


def tie_hits(
    x: np.ndarray, queries: np.ndarray, got: np.ndarray, kth: np.ndarray, cap: np.ndarray, chunk: int = 1024
) -> np.ndarray:
    """Per query, its returned rows `got` [Q, m] (row positions in `x`, -1 for none) at least as similar to it as
    `kth` [Q], its k-th exact similarity (within TIE_TOL), counted up to `cap` [Q]: recall's hits with ties found
    (among exact duplicates any k of them are right)."""
    out = np.zeros(len(queries), dtype=np.int64)
    for s in range(0, len(queries), chunk):
        g = got[s : s + chunk]
        sims = np.einsum("qkd,qd->qk", x[np.maximum(g, 0)], queries[s : s + chunk])
        out[s : s + chunk] = np.minimum(((sims >= kth[s : s + chunk, None] - TIE_TOL) & (g >= 0)).sum(axis=1),
                                        cap[s : s + chunk])
    return out


def read_only_tensor(a: np.ndarray):
    """A float32 torch view of `a` without a copy, for reading only: torch warns about read-only arrays (the
    memory-mapped vectors), though nothing here writes through the view."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


#: scores kept per query and row block beyond k, so ties at the k-th score still break by lower position
TIE_EXTRA = 8
#: column blocks of the block-maxima top-k (see topk_columns).
TOPK_BLOCK = 32


def exact_search(
    x: np.ndarray, queries: np.ndarray, k: int, block: int = 65536, query_block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of `queries` against all rows of `x`: float32 matrix products of query blocks
    against row blocks and a top-k per block, merged (ties by lower position; more than TIE_EXTRA rows tied at
    the k-th score of one block break arbitrarily). The products run in numpy's BLAS (see `index.cpu`), the
    top-k by block maxima in torch: 1.6x torch's product + top-k on a 2-core AMD EPYC (108 vs 67 GFLOP/s)."""
    import torch

    nq = queries.shape[0]
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    buf = np.empty(min(nq, query_block) * min(block, x.shape[0]), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, x.shape[0], block):
            xb = np.ascontiguousarray(x[s : s + block], dtype=np.float32)
            m = xb.shape[0]
            kk = min(k + TIE_EXTRA, m)
            sims = np.empty((nq, kk), dtype=np.float32)
            idx = np.empty((nq, kk), dtype=np.int64)
            for a in range(0, nq, query_block):
                qb = q[a : a + query_block]
                sc = torch.from_numpy(np.matmul(qb, xb.T, out=buf[: qb.shape[0] * m].reshape(qb.shape[0], m)))
                cols = topk_columns(sc, m, kk)
                sims[a : a + qb.shape[0]] = torch.gather(sc, 1, cols).numpy()
                idx[a : a + qb.shape[0]] = cols.numpy() + s
            best_s, best_i = _merge_topk(best_s, best_i, sims, idx, k)
    return best_s, best_i


def topk_columns(sc, m: int, kk: int):
    """Column positions (torch int64 [q, kk], unordered) of the `kk` largest of the first `m` scores per row
    of the torch tensor `sc` (columns past `m` are padding, overwritten with -inf).

    The first TOPK_BLOCK * w columns (w = width // TOPK_BLOCK) are split into w blocks of TOPK_BLOCK adjacent
    columns; the kk largest values lie in the kk blocks with the largest maxima (any other block's maximum is
    beaten by kk values in other blocks) or in the few columns left over, so one cheap max pass and a top-k
    over the block maxima and over those columns replace a top-k over every column.
    """
    import torch

    q, mp = sc.shape
    if mp > m:
        sc[:, m:] = -torch.inf
    w = mp // TOPK_BLOCK
    if w <= 4 * kk:
        return torch.topk(sc[:, :m], kk, dim=1, sorted=False).indices
    body = TOPK_BLOCK * w
    bmax = sc[:, :body].unflatten(1, (w, TOPK_BLOCK)).amax(2)  # [q, w]: max of columns b*TOPK_BLOCK + 0..31
    tb = torch.topk(bmax, kk, dim=1, sorted=False).indices
    cols = (tb[:, :, None] * TOPK_BLOCK + torch.arange(TOPK_BLOCK)[None, None, :]).reshape(q, -1)
    if body < mp:
        cols = torch.cat([cols, torch.arange(body, mp).expand(q, -1)], dim=1)
    sub = torch.gather(sc, 1, cols)
    return torch.gather(cols, 1, torch.topk(sub, kk, dim=1, sorted=False).indices)


def _merge_topk(
    s1: np.ndarray, i1: np.ndarray, s2: np.ndarray, i2: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two top-k lists per row: descending similarity, ties broken by lower position."""
    s = np.concatenate([s1, s2], axis=1)
    i = np.concatenate([i1, i2], axis=1)
    key_i = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((key_i, -s), axis=1)[:, :k] if s.shape[0] else np.zeros((0, k), dtype=np.int64)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k search: (sims float32 [Q, k] descending, idx int64 [Q, k]; -1 where fewer than k were found)."""
    q = check_vectors(queries, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dimension {q.shape[1]} but the index has dimension {index.d}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sims, idx = index.search(q, int(k))
    return sims.astype(np.float32, copy=False), idx.astype(np.int64, copy=False)


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write a faiss index atomically (temporary file beside `path`, renamed on success)."""
    import faiss

    with atomic_path(path, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: str | os.PathLike) -> faiss.Index:
    """Read a faiss index written by `save_index`."""
    import faiss

    if not os.path.exists(path):
        raise FileNotFoundError(f"faiss index not found: {path}")
    return faiss.read_index(str(path))
