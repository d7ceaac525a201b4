"""Deita-style score-then-diversity filter: walk rows by score, keep a row only if it is not a near-duplicate.

Follows Liu et al., "What Makes Good Data for Alignment? ... (Deita)" (ICLR 2024), as the baseline that ILA and
DaaR compare with: rows are sorted by a quality score (Deita uses complexity x quality; here any signal, or the
product of several), then added one by one unless the cosine between the row and its nearest already-selected
row is >= τ (default 0.9), until the budget is reached.

Deviations: the score is whatever signal(s) the run has (Deita's own scorers are LLM-based and not bundled);
the embedding is the pool's sentence embedding (Deita uses a Llama-13B sentence embedding). Ties in score are
broken by pool position. Similarities are computed in float32; any pair within 1e-4 of τ is recomputed in
float64 so the blocked and the naive implementations take exactly the same decisions.

Scale: candidates are processed in blocks. A block is checked against the accepted set with one blocked matmul
(the accepted set is at most the budget: a preallocated float32 matrix grown as rows are accepted), then conflicts inside the block are resolved in score
order against the block's earlier accepted rows, which reproduces the sequential loop exactly. Blocks of 512
measured fastest at 1M rows (the in-block product grows with the square of the block).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curate.select.base import Budget, PoolView, Ranking, Selector, register_selector

_EPS = 1e-4


def _check(vectors: np.ndarray, order: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array [N, d], got shape {vectors.shape}")
    order = np.asarray(order, dtype=np.int64)
    if order.ndim != 1 or (order.size and (order.min() < 0 or order.max() >= vectors.shape[0])):
        raise ValueError("order must be a 1-D array of row positions within the vectors")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine and must lie in [-1, 1], got {threshold}")
    return vectors, order


def score_order(score: np.ndarray) -> np.ndarray:
    """Positions sorted by score, highest first; ties by position; non-finite scores are dropped."""
    score = np.asarray(score, dtype=np.float64)
    pos = np.flatnonzero(np.isfinite(score))
    return pos[np.lexsort((pos, -score[pos]))]


def _exact_conflict(x: np.ndarray, others: np.ndarray, threshold: float) -> bool:
    """Whether any row of `others` has cosine >= threshold with `x`, deciding borderline pairs in float64."""
    if not others.size:
        return False
    s32 = others @ x
    if (s32 >= threshold + _EPS).any():
        return True
    near = others[s32 >= threshold - _EPS]
    return bool(near.size and (near.astype(np.float64) @ x.astype(np.float64)).max() >= threshold)


def _block_accept(x: np.ndarray, threshold: float) -> np.ndarray:
    """Sequential acceptance inside one block (rows in order): row j is kept unless an earlier kept row conflicts.

    Rows without any earlier row within reach are decided at once; only the rest go through the loop, which
    reads the float32 similarities already computed and recomputes only borderline pairs in float64.
    """
    n = x.shape[0]
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    g = x @ x.T
    reach = np.tril(g >= threshold - _EPS, k=-1)  # reach[j, i]: earlier row i may conflict with later row j
    for j in np.flatnonzero(reach.any(axis=1)):
        prev = np.flatnonzero(reach[j, :j] & keep[:j])
        if not prev.size:
            continue
        s = g[j, prev]
        if (s >= threshold + _EPS).any():
            keep[j] = False
        else:
            near = prev[s >= threshold - _EPS]
            keep[j] = not (x[near].astype(np.float64) @ x[j].astype(np.float64) >= threshold).any()
    return keep


def deita_filter(
    vectors: np.ndarray,
    order: np.ndarray,
    budget: int | None,
    *,
    threshold: float = 0.9,
    block: int = 512,
    progress: bool = False,
) -> np.ndarray:
    """Blocked Deita filter: positions (from `order`, in that order) kept, at most `budget` of them.

    `vectors` are L2-normalised rows (cosine = dot product). Equals `deita_filter_reference` exactly.
    """
    vectors, order = _check(vectors, order, threshold)
    budget = order.size if budget is None else int(budget)
    sel = np.empty((max(budget, 0), vectors.shape[1]), dtype=np.float32)  # accepted rows, in order
    kept = np.empty(max(budget, 0), dtype=np.int64)
    n_kept = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=budget, desc="deita filter", unit="row")
    for start in range(0, order.size, block):
        if n_kept >= budget:
            break
        cand = order[start : start + block]
        x = vectors[cand]
        ok = np.ones(cand.size, dtype=bool)
        if n_kept:
            top = (x @ sel[:n_kept].T).max(axis=1)
            ok = top < threshold - _EPS
            for i in np.flatnonzero((top >= threshold - _EPS) & (top < threshold + _EPS)):
                ok[i] = not _exact_conflict(x[i], sel[:n_kept], threshold)
        live = np.flatnonzero(ok)
        acc = live[_block_accept(x[live], threshold)][: budget - n_kept]
        kept[n_kept : n_kept + acc.size] = cand[acc]
        sel[n_kept : n_kept + acc.size] = x[acc]
        n_kept += acc.size
        if bar is not None:
            bar.update(acc.size)
    if bar is not None:
        bar.close()
    return kept[:n_kept].copy()


def deita_filter_reference(
    vectors: np.ndarray,
    order: np.ndarray,
    budget: int | None,
    *,
    threshold: float = 0.9,
) -> np.ndarray:
    """Naive sequential Deita filter: one dense similarity of each candidate against all kept rows."""
    vectors, order = _check(vectors, order, threshold)
    budget = order.size if budget is None else int(budget)
    sel = np.empty((max(budget, 0), vectors.shape[1]), dtype=np.float32)
    kept: list[int] = []
    for p in order:
        if len(kept) >= budget:
            break
        x = vectors[p]
        if kept:
            s = float((sel[: len(kept)] @ x).max())
            if s >= threshold + _EPS or (
                s >= threshold - _EPS and _exact_conflict(x, sel[: len(kept)], threshold)
            ):
                continue
        sel[len(kept)] = x
        kept.append(int(p))
    return np.asarray(kept, dtype=np.int64)


def _names(signal: str | Sequence[str]) -> list[str]:
    names = [n.strip() for n in signal.split(",")] if isinstance(signal, str) else [str(n) for n in signal]
    return [n for n in names if n]


@register_selector
class DeitaSelector(Selector):
    """Deita-style: rank by a score (one signal, or the product of several), then drop near-duplicates.

    A row is kept only if the cosine to its nearest already-kept row is < `threshold` (default 0.9), walking
    rows by score until the budget is reached. Exact blocked implementation of the sequential filter. When
    fewer rows survive than the budget needs it raises, unless `fill=True` (tops up with the dropped rows in
    score order, reason "deita: fill").
    paper: Liu et al., Deita (ICLR 2024), the score-first diversity filter; the baseline of ILA and DaaR.
    deviations: any stored signal(s) as the score (Deita's complexity x quality scorers are not bundled);
    the pool's sentence embeddings instead of Deita's Llama-13B embeddings; ties by pool position.
    """

    name = "deita"
    paper = "Deita: Liu et al., What Makes Good Data for Alignment? (ICLR 2024)"
    deviations = "score = any stored signal or product of signals; pool sentence embeddings"

    def __init__(
        self, signal: str | list[str] = "", threshold: float = 0.9, block: int = 512, fill: bool = False
    ) -> None:
        names = _names(signal)
        if not names:
            raise TypeError("deita needs signal=NAME (or a comma-separated list, multiplied together)")
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"deita: threshold is a cosine in [-1, 1], got {threshold}")
        if int(block) < 1:
            raise ValueError(f"deita: block must be >= 1, got {block}")
        self.signal = signal
        self.threshold = float(threshold)
        self.block = int(block)
        self.fill = bool(fill)

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        names = _names(self.signal)
        score = np.ones(view.n, dtype=np.float64)
        for n in names:
            score = score * np.asarray(view.signal(n), dtype=np.float64)
        order = score_order(score)
        kept = deita_filter(
            view.vectors(),
            order,
            int(k),
            threshold=self.threshold,
            block=self.block,
            progress=view.n > 200_000,
        )
        label = "*".join(names)
        n_filled = 0
        if kept.size < min(k, order.size):
            if not self.fill:
                raise ValueError(
                    f"deita: only {kept.size} rows remain once near-duplicates (cosine >= {self.threshold:g}) are "
                    f"dropped, the budget needs {k}: lower the budget, raise the threshold, or pass fill=True "
                    "(tops up with the dropped rows in score order)"
                )
            rest = order[~np.isin(order, kept)][: k - kept.size]
            n_filled = int(rest.size)
        reasons = [
            f"deita: {label}={v:.4g}, nearest kept cosine < {self.threshold:g}" for v in score[kept].tolist()
        ]
        walked = int(np.flatnonzero(order == kept[-1])[0]) + 1 if kept.size else 0
        if n_filled:
            reasons += [
                f"deita: fill, {label}={v:.4g} (near-duplicate of a kept row)" for v in score[rest].tolist()
            ]
            kept = np.concatenate([kept, rest])
        stats = {
            "score": label,
            "threshold": self.threshold,
            "rows_walked": walked,
            "rows_dropped_as_near_duplicates": walked - int(kept.size),
            "mean_score": float(score[kept].mean()) if kept.size else None,
            "n_filled": n_filled,
            "n_nan_score": int(view.n - order.size),
        }
        return Ranking(kept, reasons=reasons, stats=stats)
