"""k-nearest-neighbour graph of a pool (cosine similarity on L2-normalised float32 rows, self excluded).

Methods (`kind`):
- "flat": exact, faiss flat inner-product search in query batches (O(N^2 d); fine up to ~50k rows here).
- "cells": approximate, for large N. Rows are partitioned by k-means into ~max(sqrt(N), N/512) cells (and, with
  `spill` > 1, each row is also listed in its next nearest cells). Each cell probes a list of cells: its `probe`
  most similar cells (by centroid cosine) plus every cell whose centroid similarity to it is >= `threshold`, so
  a cell inside a dense region (a large cluster cut into many cells) probes all of that region while an
  isolated cell probes few. Cells with identical lists form one group, scored with one matrix product per query
  batch against the group's candidate rows (AMX/BLAS speed, unlike per-query list scanning; bfloat16 where the
  CPU multiplies it natively, float32 elsewhere: `index.cpu`). In bf16 the candidates are centred on the group
  mean so the rounded products keep precision near the top, and the best k+1+KEEP_EXTRA are re-scored exactly
  in float32; float32 products are the sims as they are. With float32 products and one listing per row
  (spill 1), the lists are made symmetric (a cell also probes every cell that probes it: more candidates, never
  fewer) and each pair of cells is multiplied once and read both by rows and by columns (`_score_pairs`).
  (probe, threshold, spill) is the cheapest setting whose estimated recall@k on a seeded row sample (exact
  neighbours listed in a probed cell) reaches `target_recall` (TARGET_RECALL); the estimate is the recall
  before the bf16 preselection, which loses almost nothing with the centring.
- "ivf" / "hnsw": faiss approximate indexes (see index.faiss_index), searched per query.
- "auto": "flat" up to EXACT_MAX_ROWS rows, "cells" beyond.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index.cpu import native_bf16
from index.faiss_index import (
    TOPK_BLOCK,
    check_vectors,
    exact_search,
    read_only_tensor,
    tie_hits,
    topk_columns,
)
from index.io import atomic_path

#: knn_graph(kind="auto") is exact up to this many rows (all pairs: 50k x 50k x 384 takes ~15 s here).
EXACT_MAX_ROWS = 50_000
#: estimated recall@k the "cells" method tunes its probe lists for.
TARGET_RECALL = 0.96
#: rows whose exact neighbours the "cells" tuner checks (seeded sample).
TUNE_SAMPLE = 1000
#: most cells a row may be listed in ("spill").
SPILL_MAX = 4
#: candidates kept per query beyond k+1 from the bf16 scores, for the exact float32 re-scoring.
KEEP_EXTRA = 5
#: scores per matrix product (bounds the score buffer: 2 bytes each in bf16, 4 in float32). Large enough for
#: ~900 query rows against 150k candidates: BLAS ran 105 GFLOP/s with 223 rows there, 131 with 894 (AMD EPYC).
SCORE_ELEMS = 1 << 27
#: most query rows per matrix product.
QUERY_STEP = 4096
#: rows per block whose maximum is taken first when a product is read by columns (`_reaching`).
HIT_BLOCK = 16


@dataclass
class KnnGraph:
    """kNN graph: `neighbors` int64 [N, k] pool positions (self excluded, -1 if missing, then sim 0);
    `sims` float32 [N, k] cosine similarities, descending per row; `info`: how it was built; `cells`: the
    "cells" method's partition (unit centroids float32 [C, d], cell of each row int64 [N]), from which
    `index.faiss_index.ivf_from_cells` builds a search index without a second k-means (info and cells: not saved).
    """

    neighbors: np.ndarray
    sims: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    cells: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.neighbors = np.asarray(self.neighbors, dtype=np.int64)
        self.sims = np.asarray(self.sims, dtype=np.float32)
        if self.neighbors.ndim != 2 or self.neighbors.shape != self.sims.shape:
            raise ValueError(
                f"KnnGraph: neighbors {self.neighbors.shape} and sims {self.sims.shape} must be equal 2-D shapes"
            )

    @property
    def k(self) -> int:
        return int(self.neighbors.shape[1])

    @property
    def n(self) -> int:
        return int(self.neighbors.shape[0])

    def save(self, path: str | os.PathLike) -> None:
        """Write `neighbors` and `sims` to an .npz file atomically."""
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, neighbors=self.neighbors, sims=self.sims)

    @classmethod
    def load(cls, path: str | os.PathLike) -> KnnGraph:
        """Read a graph written by `save`."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"kNN graph not found: {path}")
        with np.load(path) as z:
            missing = {"neighbors", "sims"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a kNN graph file, missing arrays {sorted(missing)}")
            return cls(neighbors=z["neighbors"], sims=z["sims"])

    def to_csr(self, symmetric: bool = False):
        """Similarity matrix [N, N] as scipy CSR: row i holds sims to i's neighbours (missing ones skipped).

        symmetric=True takes the elementwise max of the matrix and its transpose, so (i, j) is set when either
        is among the other's neighbours.
        """
        import scipy.sparse as sp

        n, k = self.neighbors.shape
        rows = np.repeat(np.arange(n, dtype=np.int64), k)
        cols = self.neighbors.ravel()
        vals = self.sims.ravel()
        keep = cols >= 0
        m = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n), dtype=np.float32)
        m.sum_duplicates()
        if symmetric:
            m = m.maximum(m.T).tocsr()
        m.sort_indices()
        return m


def _drop_self(cand_idx: np.ndarray, cand_sims: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From candidates sorted by descending sim, remove each row's own position (wherever it sits, so
    exact duplicates ranked before self are kept) and invalid (-1) entries; keep the first k (-1/0 padding)."""
    valid = (cand_idx != rows[:, None]) & (cand_idx >= 0)
    # stable order of valid entries first, preserving their rank
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    idx = np.take_along_axis(cand_idx, order, axis=1)
    sims = np.take_along_axis(cand_sims, order, axis=1).astype(np.float32)
    ok = np.take_along_axis(valid, order, axis=1)
    idx = np.where(ok, idx, -1)
    sims = np.where(ok, sims, np.float32(0.0))
    if idx.shape[1] < k:  # fewer candidates than k (tiny pools)
        pad = k - idx.shape[1]
        idx = np.concatenate([idx, np.full((idx.shape[0], pad), -1, dtype=np.int64)], axis=1)
        sims = np.concatenate([sims, np.zeros((sims.shape[0], pad), dtype=np.float32)], axis=1)
    return idx.astype(np.int64), sims.astype(np.float32)


def _best_without_self(
    cand_idx: np.ndarray, cand_sims: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of unordered candidates per row: by descending sim, ties by lower position, self dropped."""
    srt = np.lexsort((cand_idx, -cand_sims), axis=1)
    return _drop_self(np.take_along_axis(cand_idx, srt, axis=1), np.take_along_axis(cand_sims, srt, axis=1), rows, k)


def exact_knn(vectors: np.ndarray, queries_positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force kNN (self excluded) of the rows at `queries_positions`: (neighbors int64 [Q,k], sims [Q,k])."""
    x = check_vectors(vectors)
    pos = np.asarray(queries_positions, dtype=np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= x.shape[0]):
        raise ValueError(f"queries_positions out of range 0..{x.shape[0] - 1}")
    kk = min(k + 1, x.shape[0])
    sims, idx = exact_search(x, x[pos], kk)
    return _drop_self(idx, sims, pos, k)


def recall_at_k(graph: KnnGraph, vectors: np.ndarray, sample: int = 10_000, seed: int = 0) -> float:
    """Mean fraction of the exact k nearest neighbours (self excluded) found by `graph`, on a seeded row sample.

    Ties count as found: a returned neighbour at least as similar as the k-th exact one (within float32 rounding,
    TIE_TOL) is a hit. Among exact duplicates any k of them are right, while matching ids would call all but the
    lowest-numbered ones misses (on BIG-bench-like vectors, 0.85 by ids against 0.98 with ties).
    """
    x = check_vectors(vectors)
    n = x.shape[0]
    if graph.n != n:
        raise ValueError(f"graph has {graph.n} rows but vectors have {n}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    ex, ex_sims = exact_knn(x, rows, graph.k)
    n_valid = (ex >= 0).sum(axis=1)  # the valid exact neighbours come first
    kth = ex_sims[np.arange(rows.size), np.maximum(n_valid - 1, 0)]
    got = np.where(graph.neighbors[rows] == rows[:, None], -1, graph.neighbors[rows])
    return int(tie_hits(x, x[rows], got, kth, n_valid).sum()) / max(int(n_valid.sum()), 1)


def knn_graph(
    vectors: np.ndarray,
    k: int = 10,
    *,
    kind: str = "auto",
    index=None,
    batch_size: int = 16384,
    progress: bool = True,
    seed: int = 0,
    probe: int | None = None,
    n_cells: int | None = None,
    spill: int | None = None,
    threshold: float | None = None,
    target_recall: float = TARGET_RECALL,
    pairs_once: bool | None = None,
) -> KnnGraph:
    """kNN graph of `vectors` (float32, L2-normalised) with self excluded; see the module doc for `kind`.

    `index`: an already built faiss index over the same rows (searched with k+1 per query; overrides kind).
    `probe`/`spill`/`threshold`/`n_cells` fix the "cells" method's parameters (default: tuned to `target_recall`;
    a fixed `probe` without `threshold` probes only the `probe` most similar cells). `pairs_once`: symmetric
    lists, each pair of cells multiplied once in float32 (needs spill 1; default: where products are float32
    anyway); False scores each cell's own lists, in bf16 where the CPU has it.
    """
    x = check_vectors(vectors)
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if index is not None:
        if index.ntotal != n:
            raise ValueError(f"index holds {index.ntotal} rows but vectors have {n}")
        return _knn_from_index(index, x, k, batch_size, progress,
                               {"method": "index", "index_class": type(index).__name__})
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX_ROWS else "cells"
    if kind == "flat":
        import faiss

        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(x)
        return _knn_from_index(flat, x, k, batch_size, progress, {"method": "flat"})
    if kind in ("ivf", "hnsw"):
        from index.faiss_index import build_index

        idx = build_index(x, kind, seed=seed, progress=progress)
        return _knn_from_index(idx, x, k, batch_size, progress, {"method": kind})
    if kind == "cells":
        return _knn_cells(x, k, probe=probe, n_cells=n_cells, seed=seed, progress=progress,
                          target_recall=target_recall, spill=spill, threshold=threshold, pairs_once=pairs_once)
    raise ValueError(f"unknown kNN method {kind!r}; expected auto, flat, cells, ivf or hnsw")


def _knn_from_index(
    index, x: np.ndarray, k: int, batch_size: int, progress: bool, info: dict[str, Any]
) -> KnnGraph:
    from tqdm.auto import tqdm

    n = x.shape[0]
    kk = min(k + 1, n)
    neighbors = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    with tqdm(total=n, desc="kNN graph", unit="rows", disable=not progress) as bar:
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            d, i = index.search(x[s:e], kk)
            neighbors[s:e], sims[s:e] = _drop_self(i.astype(np.int64), d, np.arange(s, e), k)
            bar.update(e - s)
    return KnnGraph(neighbors=neighbors, sims=sims, info=info)


def _knn_cells(
    x: np.ndarray,
    k: int,
    *,
    probe: int | None,
    n_cells: int | None,
    seed: int,
    progress: bool,
    target_recall: float,
    spill: int | None = None,
    threshold: float | None = None,
    tune_sample: int = TUNE_SAMPLE,
    pairs_once: bool | None = None,
) -> KnnGraph:
    """The "cells" method (see the module doc): k-means cells, per-cell probe lists, blocked bf16 scoring."""
    import torch

    from index.cluster import kmeans

    n, d = x.shape
    # ~max(sqrt(N), N/512) cells: with cells of ~512 rows the per-cell products stay large enough for AMX/BLAS
    nc = int(n_cells) if n_cells is not None else int(max(1, min(round(max(math.sqrt(n), n / 512)), n // 32 or 1)))
    km = kmeans(x, nc, seed=seed, niter=10, max_points_per_centroid=64, spherical=True)
    labels = km.labels
    cent = km.centroids / np.maximum(np.linalg.norm(km.centroids, axis=1, keepdims=True), 1e-12)
    csim = cent @ cent.T
    csim = np.maximum(csim, csim.T)  # exactly symmetric, so threshold-only probe lists are too
    np.fill_diagonal(csim, np.inf)  # own cell first in every ranking and inside every threshold
    rank = np.argsort(-csim, axis=1, kind="stable")
    a_max = min(nc, SPILL_MAX)
    info: dict[str, Any] = {"method": "cells", "cells": nc, "target_recall": target_recall}
    dt = torch.bfloat16 if native_bf16() and not pairs_once else torch.float32  # the candidate products' dtype
    if pairs_once:  # forced: spill 1, only the probe lists are tuned
        if spill is not None and spill > 1:
            raise ValueError(f"pairs_once needs spill 1 (each row listed in its own cell only), got spill={spill}")
        spill = 1
    pairs_once = dt == torch.float32 if pairs_once is None else bool(pairs_once)
    if probe is None or spill is None:
        probe, spill, threshold, info["estimated_recall"] = _tune(
            x, cent, labels, csim, rank, k, target_recall, tune_sample, seed, probe, spill, threshold, a_max,
            pairs_once=pairs_once)
    probe = int(max(1, min(probe, nc)))
    spill = int(max(1, min(spill, a_max)))
    thr = np.inf if threshold is None else float(threshold)
    # rows listed per cell: own cell only (spill=1), or each row also in its spill-1 next nearest cells
    if spill == 1:
        flat_cells, flat_rows = labels, np.arange(n, dtype=np.int64)
    else:
        flat_cells = _top_cells(x, cent, labels, spill).ravel()
        flat_rows = np.repeat(np.arange(n, dtype=np.int64), spill)
    mo = np.argsort(flat_cells, kind="stable")
    members = flat_rows[mo]
    mstart = np.zeros(nc + 1, dtype=np.int64)
    np.cumsum(np.bincount(flat_cells, minlength=nc), out=mstart[1:])
    order = np.argsort(labels, kind="stable")
    starts = np.zeros(nc + 1, dtype=np.int64)
    np.cumsum(np.bincount(labels, minlength=nc), out=starts[1:])
    # float32 with one listing per row: lists made symmetric, each pair of cells multiplied once (`_score_pairs`)
    info["pairs_once"] = pairs_once and spill == 1
    groups = _probe_groups(csim, rank, probe, thr, starts, symmetric=info["pairs_once"])
    listed, qrows = np.diff(mstart), np.diff(starts)
    scored = sum(int(listed[js].sum()) * int(qrows[cs].sum()) for cs, js in groups)
    info.update(probe=probe, threshold=None if thr == np.inf else thr, spill=spill, groups=len(groups),
                candidates_per_row=scored / n, score_dtype=str(dt).removeprefix("torch."))
    desc = f"kNN graph (cells={nc}, probe={probe}, threshold={thr:.3g}, spill={spill})"
    if info["pairs_once"]:
        graph = _score_pairs(x, k, groups, order, starts, progress, desc)
    else:
        with torch.inference_mode():
            graph = _score_groups(read_only_tensor(x), k, groups, order, starts, members, mstart, spill > 1, dt,
                                  progress, desc)
    graph.info = info
    graph.cells = (cent.astype(np.float32), labels)
    return graph


def _probe_groups(
    csim: np.ndarray, rank: np.ndarray, probe: int, threshold: float, starts: np.ndarray, symmetric: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(query cells, probed cells) groups: cell c probes its `probe` most similar cells and every cell whose
    centroid similarity to it is >= `threshold` (`symmetric`: also every cell that probes c); cells with
    identical probe lists share one candidate block."""
    nc = csim.shape[0]
    live = np.flatnonzero(np.diff(starts) > 0)
    lists = {}
    for c in live:
        js = rank[c, :probe]
        lists[c] = np.union1d(js, np.flatnonzero(csim[c] >= threshold)) if threshold < np.inf else np.sort(js)
    if symmetric and lists:
        c_of = np.concatenate([np.full(js.size, c) for c, js in lists.items()])
        j_of = np.concatenate(list(lists.values()))
        code = np.unique(np.concatenate([c_of * nc + j_of, j_of * nc + c_of]))
        cut = np.searchsorted(code, np.concatenate([live, [nc]]) * nc)
        lists = {c: code[cut[i] : cut[i + 1]] % nc for i, c in enumerate(live)}
    by_list: dict[bytes, tuple[list[int], np.ndarray]] = {}
    for c, js in lists.items():
        by_list.setdefault(js.tobytes(), ([], js))[0].append(c)
    return [(np.asarray(cs, dtype=np.int64), js) for cs, js in by_list.values()]


def _score_groups(
    xt,
    k: int,
    groups: list[tuple[np.ndarray, np.ndarray]],
    order: np.ndarray,
    starts: np.ndarray,
    members: np.ndarray,
    mstart: np.ndarray,
    dedup: bool,
    dt,
    progress: bool,
    desc: str,
) -> KnnGraph:
    """Score every group's query rows against its candidate rows; keep the k best (self excluded), exact sims.

    Candidates are centred on the mean of the group's query rows before the bf16 cast: q.(c - mu) ranks the
    candidates of q exactly like q.c (q.mu is constant per query), but the products near the top are small,
    so the bf16-rounded products (bf16 output: 8 significant bits) are much finer there than q.c would be
    (in dense clusters the 11th and 30th neighbours differ by ~0.004, the bf16 step just below 1). The best
    k + 1 + `KEEP_EXTRA` per query are then re-scored exactly in float32. In float32 (`dt`) the products are
    the sims already: no centring, no re-scoring.
    """
    import torch
    from tqdm.auto import tqdm

    n, d = xt.shape
    kc = min(k + 1 + KEEP_EXTRA, n)
    neighbors = np.full((n, k), -1, dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    counts = mstart[1:] - mstart[:-1]
    cand_max = max((int(counts[js].sum()) for _, js in groups), default=1)
    pad_max = -(-cand_max // TOPK_BLOCK) * TOPK_BLOCK
    # buffers allocated once: large fresh tensors are page-faulted in on every use otherwise
    cbuf = torch.empty((pad_max, d), dtype=dt)
    sbuf = torch.empty(SCORE_ELEMS + pad_max, dtype=dt)
    exact = dt == torch.float32  # float32 products are the sims; bf16 ones only preselect
    if not exact:
        stage = torch.empty((min(cand_max, 16384), d), dtype=torch.float32)  # a centred block before the cast
        gbuf = torch.empty((min(n, QUERY_STEP) * kc, d), dtype=torch.float32)
        # per-cell row sums and counts, for the mean of each group's query rows
        cell_of = torch.from_numpy(np.repeat(np.arange(starts.size - 1), np.diff(starts)))
        cell_sum = torch.zeros((starts.size - 1, d), dtype=torch.float64)
        for s in range(0, n, 65536):
            rows = torch.from_numpy(order[s : s + 65536])
            cell_sum.index_add_(0, cell_of[s : s + 65536], xt.index_select(0, rows).double())
        cell_n = torch.from_numpy(np.diff(starts).astype(np.float64))
    with tqdm(total=n, desc=desc, unit="rows", disable=not progress) as bar:
        for cells, js in groups:
            cand = np.concatenate([members[mstart[j] : mstart[j + 1]] for j in js])
            if dedup:
                cand = np.unique(cand)
            q_ids = np.concatenate([order[starts[c] : starts[c + 1]] for c in cells])
            m = cand.size
            mp = -(-m // TOPK_BLOCK) * TOPK_BLOCK
            cand_t = torch.from_numpy(cand)
            cb = cbuf[:mp]
            if exact:
                torch.index_select(xt, 0, cand_t, out=cb[:m])
            else:
                cells_t = torch.from_numpy(cells)
                mu = (cell_sum[cells_t].sum(0) / cell_n[cells_t].sum()).float()
                for s in range(0, m, stage.shape[0]):  # centred candidate block, cast to bf16
                    e = min(m, s + stage.shape[0])
                    blk = torch.index_select(xt, 0, cand_t[s:e], out=stage[: e - s])
                    blk -= mu
                    cb[s:e].copy_(blk)
            cb[m:].zero_()
            kk = min(kc, m)
            step = max(1, min(QUERY_STEP, SCORE_ELEMS // mp))
            for s in range(0, q_ids.size, step):
                qi = q_ids[s : s + step]
                qi_t = torch.from_numpy(qi)
                xq = xt.index_select(0, qi_t)
                sc = sbuf[: qi.size * mp].view(qi.size, mp)
                if exact:  # numpy's BLAS: the faster float32 product (index.cpu)
                    np.matmul(xq.numpy(), cb.numpy().T, out=sc.numpy())
                else:
                    torch.matmul(xq.to(dt), cb.T, out=sc)
                topi = topk_columns(sc, m, kk)
                gid = cand_t[topi]  # [q, kk] pool positions
                if exact:
                    ex = torch.gather(sc, 1, topi).numpy()
                else:  # exact float32 re-scoring
                    g = torch.index_select(xt, 0, gid.reshape(-1), out=gbuf[: gid.numel()]).view(qi.size, kk, d)
                    ex = torch.bmm(g, xq[:, :, None])[:, :, 0].numpy()
                neighbors[qi], sims[qi] = _best_without_self(gid.numpy(), ex, qi, k)
                bar.update(qi.size)
    return KnnGraph(neighbors=neighbors, sims=sims)


def _reaching(sc: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the entries of `sc` [q, w] at or above their column's `bound`, found through the
    maxima of HIT_BLOCK-row blocks (one pass over `sc`, then only the few blocks whose maximum reaches)."""
    q, w = sc.shape
    nb = q // HIT_BLOCK
    blk, col = np.nonzero(sc[: nb * HIT_BLOCK].reshape(nb, HIT_BLOCK, w).max(axis=1) >= bound)
    rows = blk[:, None] * HIT_BLOCK + np.arange(HIT_BLOCK)
    r, c = np.nonzero(sc[rows, col[:, None]] >= bound[col][:, None])
    tail_r, tail_c = np.nonzero(sc[nb * HIT_BLOCK :] >= bound)  # rows past the last whole block
    return np.concatenate([rows[r, c], tail_r + nb * HIT_BLOCK]), np.concatenate([col[r], tail_c])


def _per_row(
    rows: np.ndarray, sims: np.ndarray, ids: np.ndarray, kc: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat candidates (rows may repeat) as (unique rows, sims [u, kc], ids [u, kc]): each row's kc best,
    padded with -inf / -1."""
    o = np.lexsort((-sims, rows))
    rows, sims, ids = rows[o], sims[o], ids[o]
    upd, first, cnt = np.unique(rows, return_index=True, return_counts=True)
    pos = np.arange(rows.size) - np.repeat(first, cnt)
    keep = pos < kc
    at = (np.repeat(np.arange(upd.size), cnt)[keep], pos[keep])
    out_s = np.full((upd.size, kc), -np.inf, dtype=np.float32)
    out_i = np.full((upd.size, kc), -1, dtype=np.int64)
    out_s[at], out_i[at] = sims[keep], ids[keep]
    return upd, out_s, out_i


def _merge(
    best_s: np.ndarray, best_i: np.ndarray, bound: np.ndarray, rows: np.ndarray, sims: np.ndarray, ids: np.ndarray
) -> None:
    """Fold candidates sims/ids [r, c] of the distinct `rows` into the per-row lists (kc best, unordered) and
    refresh those rows' bounds (the smallest sim in each list; -inf while a list has room)."""
    import torch

    s = np.concatenate([best_s[rows], sims], axis=1)
    i = np.concatenate([best_i[rows], ids], axis=1)
    top = torch.topk(torch.from_numpy(s), best_s.shape[1], dim=1, sorted=False).indices.numpy()
    best_s[rows] = np.take_along_axis(s, top, axis=1)
    best_i[rows] = np.take_along_axis(i, top, axis=1)
    bound[rows] = best_s[rows].min(axis=1)


def _score_pairs(
    x: np.ndarray,
    k: int,
    groups: list[tuple[np.ndarray, np.ndarray]],
    order: np.ndarray,
    starts: np.ndarray,
    progress: bool,
    desc: str,
) -> KnnGraph:
    """Float32 scoring of symmetric probe lists (spill 1): every pair of probing cells is multiplied once.

    A group's rows are scored in query chunks against its own rows from the chunk on and the rows of the cells
    it probes in later groups. Read by rows, each product gives the chunk's rows their best candidates (as
    `_score_groups` does); read by columns, it gives the other rows theirs. Groups and chunks are taken last
    first, so every column's row already holds its best among the candidates after it, and only the entries
    that reach that row's kc-th best so far (its bound) are kept: a small share, found through block maxima
    (`_reaching`). Same candidates per row as `_score_groups` given the same groups, so the same neighbours (ties
    aside), for about half the products.
    """
    import torch
    from tqdm.auto import tqdm

    n, d = x.shape
    nc = starts.size - 1
    kc = min(k + 1 + KEEP_EXTRA, n)
    best_s = np.full((n, kc), -np.inf, dtype=np.float32)
    best_i = np.full((n, kc), -1, dtype=np.int64)
    bound = np.full(n, -np.inf, dtype=np.float32)  # min of best_s per row, kept by _merge
    group_of = np.full(nc, len(groups), dtype=np.int64)
    for g, (cells, _) in enumerate(groups):
        group_of[cells] = g
    sizes = np.diff(starts)
    width_max = max((int(sizes[js[group_of[js] >= g]].sum()) for g, (_, js) in enumerate(groups)), default=1)
    cbuf = np.empty((width_max, d), dtype=np.float32)
    sbuf = np.empty(SCORE_ELEMS + width_max, dtype=np.float32)
    xt = read_only_tensor(x)
    with torch.inference_mode(), tqdm(total=n, desc=desc, unit="rows", disable=not progress) as bar:
        for g in range(len(groups) - 1, -1, -1):
            cells, js = groups[g]
            q_ids = np.concatenate([order[starts[c] : starts[c + 1]] for c in cells])
            later = js[group_of[js] > g]
            cand = np.concatenate([q_ids] + [order[starts[j] : starts[j + 1]] for j in later])
            m = cand.size
            cb = cbuf[:m]
            torch.index_select(xt, 0, torch.from_numpy(cand), out=torch.from_numpy(cb))
            step = max(1, min(QUERY_STEP, SCORE_ELEMS // m))
            for s in reversed(range(0, q_ids.size, step)):
                e = min(q_ids.size, s + step)
                w = m - s
                sc = np.matmul(cb[s:e], cb[s:].T, out=sbuf[: (e - s) * w].reshape(e - s, w))
                # by columns: rows after the chunk take the entries that reach their bound
                rest = sc[:, e - s :]
                hit_r, hit_c = _reaching(rest, bound[cand[e:]])
                if hit_r.size:
                    _merge(best_s, best_i, bound, *_per_row(cand[e + hit_c], rest[hit_r, hit_c], q_ids[s + hit_r], kc))
                # by rows: the chunk's best among its own rows from s on and the later groups' rows. Their lists
                # are still empty (a row is a column only in the products of earlier chunks and groups, taken
                # after this one), so the best are written, not merged
                kk = min(kc, w)
                top = topk_columns(torch.from_numpy(sc), w, kk).numpy()
                rows, vals = q_ids[s:e], np.take_along_axis(sc, top, axis=1)
                best_s[rows, :kk], best_i[rows, :kk] = vals, cand[s + top]
                bound[rows] = vals.min(axis=1) if kk == kc else -np.inf
                bar.update(e - s)
    return KnnGraph(*_best_without_self(best_i, best_s, np.arange(n), k))


def _top_cells(x: np.ndarray, cent: np.ndarray, labels: np.ndarray, a: int, block: int = 65536) -> np.ndarray:
    """The `a` most similar cells of every row, own (k-means) cell first, then by descending similarity."""
    n = x.shape[0]
    out = np.empty((n, a), dtype=np.int64)
    for s in range(0, n, block):
        sc = x[s : s + block] @ cent.T
        sc[np.arange(sc.shape[0]), labels[s : s + block]] = np.inf
        part = np.argpartition(-sc, a - 1, axis=1)[:, :a] if a < sc.shape[1] else np.argsort(-sc, axis=1)
        srt = np.argsort(-np.take_along_axis(sc, part, axis=1), axis=1, kind="stable")
        out[s : s + block] = np.take_along_axis(part, srt, axis=1)
    return out


def _tune(
    x: np.ndarray,
    cent: np.ndarray,
    labels: np.ndarray,
    csim: np.ndarray,
    rank: np.ndarray,
    k: int,
    target: float,
    sample: int,
    seed: int,
    probe: int | None,
    spill: int | None,
    threshold: float | None,
    a_max: int,
    pairs_once: bool = False,
) -> tuple[int, int, float | None, float]:
    """Cheapest (probe, spill, threshold, its estimated recall) whose estimated recall@k reaches `target`.

    On a seeded row sample: a query's exact neighbour counts as found when one of the cells it is listed in
    (its `spill` nearest) is probed by the query's cell (among its `probe` most similar cells, or at centroid
    similarity >= threshold); cost = rows scored for the sampled queries. For each (spill, probe) the largest
    threshold reaching the target is exact on the sample. Fixed arguments are not tuned (with `probe` fixed
    and no `threshold`, only the `probe` nearest cells are probed). With `pairs_once` (float32 scoring) and
    spill 1, lists are made symmetric (a cell also probes the cells that probe it) and cost half their products:
    `_score_pairs` multiplies each pair of cells once.
    """
    n = x.shape[0]
    nc = rank.shape[0]
    rng = np.random.default_rng(seed + 7)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    ex, _ = exact_knn(x, rows, k)
    valid = ex >= 0
    nb = ex[valid]
    if nb.size == 0:
        return probe or 1, spill or 1, threshold, 1.0
    qcell = np.repeat(labels[rows], valid.sum(1))
    uniq, inv = np.unique(nb, return_inverse=True)
    top = _top_cells(x[uniq], cent, labels[uniq], a_max)[inv]  # listing cells of each neighbour
    pos_of = np.empty_like(rank)
    np.put_along_axis(pos_of, rank, np.arange(nc)[None, :].repeat(nc, 0), axis=1)
    r = pos_of[qcell[:, None], top]  # rank of each listing cell within the query cell's ranking
    cs = csim[qcell[:, None], top]  # and its centroid similarity to the query cell
    sizes = np.bincount(labels, minlength=nc).astype(np.float64)
    qc, qw = np.unique(labels[rows], return_counts=True)
    need = int(math.ceil(target * nb.size - 1e-9))
    tune_thr = probe is None and threshold is None
    probes = [p for p in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if p <= nc] + [nc]
    best = None
    for a in [spill] if spill is not None else range(1, a_max + 1):
        for p in [probe] if probe is not None else probes:
            sym = pairs_once and a == 1  # lists made symmetric: also the cells whose lists hold the query's cell
            by_rank = (r[:, :a] < p).any(axis=1)
            if sym:
                by_rank |= pos_of[top[:, 0], qcell] < p
            t = np.inf if threshold is None else float(threshold)
            if tune_thr:
                missing = need - int(by_rank.sum())
                if missing > 0:  # the largest threshold admitting `missing` more neighbours
                    t = float(np.sort(cs[~by_rank, :a].max(axis=1))[::-1][missing - 1])
            covered = int((by_rank | (cs[:, :a] >= t).any(axis=1)).sum())
            if covered < need and not (probe is not None and spill is not None):
                continue
            probed = (pos_of[qc] < p) | (csim[qc] >= t)
            if sym:
                probed |= (pos_of[:, qc] < p).T
            cost = a * float((probed * sizes[None, :]).sum(axis=1) @ qw) / (2 if sym else 1)
            if best is None or cost < best[0]:
                best = (cost, p, a, None if t == np.inf else t, covered / nb.size)
    if best is None:
        return nc, 1, None, 1.0
    return best[1], best[2], best[3], best[4]
