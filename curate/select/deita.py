"""Deita-style score-then-diversity filter: walk rows by score, keep a row only if it is not a near-duplicate.

Follows Liu et al., "What Makes Good Data for Alignment? ... (Deita)" (ICLR 2024), as the baseline that ILA and
DaaR compare with: rows are sorted by a quality score (Deita uses complexity x quality; here any signal, or the
product of several), then added one by one unless the cosine between the row and its nearest already-selected
row is >= τ (default 0.9), until the budget is reached.

Deviations: the score is whatever signal(s) the run has (Deita's own scorers are LLM-based and not bundled);
the embedding is the pool's sentence embedding (Deita uses a Llama-13B sentence embedding). Ties in score are
broken by pool position.

Exactness: a candidate conflicts with a kept row iff their cosine, computed in float64, is >= τ. The naive loop
(`deita_filter_reference`) and every fast path take exactly those decisions: products are first computed by a
cheaper "screen" whose error is bounded (`fp32_margin`, `bf16_margin`: 1.5e-4 and 0.0125 at d = 384), pairs farther than that from τ are
decided by the screen, and only the rest are recomputed in float64.

Scale: candidates are walked in blocks of 512. Each block is screened against the kept rows with one matrix
product (bf16 on CPUs with bf16 units, where it runs about 8x float32 BLAS; float32 elsewhere; faiss's flat
index as a third, slower option kept for comparison), then conflicts inside the block are resolved in score
order, which reproduces the sequential loop exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curate.errors import ParameterError
from curate.select.budget import Budget
from curate.select.ifd_filter import IFD_SIGNAL, IFDFilter, resolve_max_ifd
from curate.select.selector import Ranking, Selector, ShortRankingError, register_selector
from curate.view import PoolView
from index.cpu import native_bf16


def fp32_margin(d: int) -> float:
    """Bound on |float32 product - float64 product| for rows of norm within 0.05% of 1: d * 2^-24 from the
    float32 sums (any order), doubled, plus 1e-4 to spare (1.5e-4 at d = 384)."""
    return 1e-4 + d * 2.0**-23


def bf16_margin(d: int) -> float:
    """The same bound for bf16 products: inputs rounded (2u + u^2, u = 2^-8), output rounded (u), float32
    sums as above; 0.0118 + d * 6.1e-8 with the norms' slack, rounded up to 0.0125 + d * 2^-23."""
    return 0.0125 + d * 2.0**-23


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


def _require_unit(x: np.ndarray, positions: np.ndarray) -> None:
    """Raise unless every row is L2-normalised: cosine = dot product, and the screens' error bounds assume it."""
    sq = np.einsum("ij,ij->i", x, x)
    dev = np.abs(sq - 1.0)
    if dev.size and dev.max() > 1e-3:
        i = int(np.argmax(dev))
        raise ValueError(
            f"vectors must be L2-normalised (cosine = dot product): row {int(positions[i])} has norm "
            f"{float(np.sqrt(sq[i])):.4g}"
        )


def score_order(score: np.ndarray) -> np.ndarray:
    """Positions sorted by score, highest first; ties by position; non-finite scores are dropped."""
    score = np.asarray(score, dtype=np.float64)
    pos = np.flatnonzero(np.isfinite(score))
    return pos[np.lexsort((pos, -score[pos]))]


def _cos64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosines of unit rows `a` [k, d] with `b` ([k, d], or one row [d]) in float64: the one
    arithmetic that decides every borderline pair."""
    return (a.astype(np.float64) * b.astype(np.float64)).sum(axis=1)


def _block_accept(x: np.ndarray, g: np.ndarray, threshold: float, margin: float) -> np.ndarray:
    """Sequential acceptance inside one block (rows in order): row j is kept unless an earlier kept row conflicts.

    `g` is the block's screened similarity matrix, within `margin` of the exact one. Rows with no earlier row
    within reach are decided at once; the rest go through the loop, which recomputes in float64 only the pairs
    the screen cannot decide.
    """
    n = x.shape[0]
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    reach = np.tril(g >= threshold - margin, k=-1)  # reach[j, i]: earlier row i may conflict with later row j
    for j in np.flatnonzero(reach.any(axis=1)):
        prev = np.flatnonzero(reach[j, :j] & keep[:j])
        if not prev.size:
            continue
        if (g[j, prev] >= threshold + margin).any():
            keep[j] = False
        else:
            keep[j] = not (_cos64(x[prev], x[j]) >= threshold).any()
    return keep


class _Fp32Screen:
    """Accepted rows and the float32 (BLAS) products of a block against them and against itself.

    Float32 products of unit vectors are within `fp32_margin(d)` of float64, so only pairs that close to the
    threshold need the float64 recheck. Each block is `load`ed once, then screened, then its accepted rows
    `add`ed.
    """

    def __init__(self, capacity: int, d: int) -> None:
        self.margin = fp32_margin(d)
        self.kept = np.empty((capacity, d), dtype=np.float32)
        self.n = 0

    def load(self, x: np.ndarray) -> None:
        self.x = x

    def add(self, rows: np.ndarray) -> None:
        self.kept[self.n : self.n + rows.size] = self.x[rows]
        self.n += rows.size

    def versus_kept(self):
        return self.x @ self.kept[: self.n].T

    def row_max(self, s) -> np.ndarray:
        return s.max(axis=1)

    def pairs_at_least(self, s, rows: np.ndarray, lo: float) -> tuple[np.ndarray, np.ndarray]:
        r, c = np.nonzero(s[rows] >= lo)
        return rows[r], c

    def gram(self, rows: np.ndarray) -> np.ndarray:
        return self.x[rows] @ self.x[rows].T


class _FaissScreen(_Fp32Screen):
    """The same float32 decisions through a growing `faiss.IndexFlatIP`: top-1 search for every candidate,
    range search for the unsure ones. Kept as the reference tool's exact search (bench/select_scale.py)."""

    def __init__(self, capacity: int, d: int) -> None:
        import faiss

        super().__init__(capacity, d)
        self.index = faiss.IndexFlatIP(d)

    def add(self, rows: np.ndarray) -> None:
        self.index.add(self.x[rows])
        super().add(rows)

    def versus_kept(self):
        return self.index.search(self.x, 1)[0][:, 0]

    def row_max(self, s) -> np.ndarray:
        return s

    def pairs_at_least(self, s, rows: np.ndarray, lo: float) -> tuple[np.ndarray, np.ndarray]:
        lims, _, found = self.index.range_search(self.x[rows], lo)
        return np.repeat(rows, np.diff(lims).astype(np.int64)), found


class _Bf16Screen(_Fp32Screen):
    """The same, with products in bf16 (fp32 accumulate; AMX where present), about 8x float32 BLAS here.

    Pairs more than `bf16_margin(d)` (0.0125 at d = 384) from the threshold are decided by the screen and only
    the rest are recomputed. Kept rows are padded to multiples of 2,048 so oneDNN reuses a few matmul shapes
    instead of building one per block.
    """

    _PAD = 2048

    def __init__(self, capacity: int, d: int) -> None:
        import torch

        super().__init__(capacity, d)
        self.margin = bf16_margin(d)
        self.torch = torch
        self.kept_bf = torch.zeros((-(-capacity // self._PAD) * self._PAD, d), dtype=torch.bfloat16)

    def load(self, x: np.ndarray) -> None:
        self.x = x
        self.xb = self.torch.from_numpy(x).bfloat16()

    def add(self, rows: np.ndarray) -> None:
        self.kept_bf[self.n : self.n + rows.size] = self.xb[self.torch.from_numpy(rows)]
        super().add(rows)

    def versus_kept(self):
        k_pad = -(-self.n // self._PAD) * self._PAD
        return (self.xb @ self.kept_bf[:k_pad].T)[:, : self.n]

    def row_max(self, s) -> np.ndarray:
        # Non-negative bf16 values order like their int16 bit patterns, and a max over int16 is vectorised
        # (a bf16 max is not); a row whose max is negative comes out negative, which is all the caller needs.
        return s.view(self.torch.int16).amax(dim=1).view(self.torch.bfloat16).float().numpy()

    def pairs_at_least(self, s, rows: np.ndarray, lo: float) -> tuple[np.ndarray, np.ndarray]:
        r, c = self.torch.nonzero(s[self.torch.from_numpy(rows)].float() >= lo, as_tuple=True)
        return rows[r.numpy()], c.numpy()

    def gram(self, rows: np.ndarray) -> np.ndarray:
        xb = self.xb[self.torch.from_numpy(rows)]
        return (xb @ xb.T).float().numpy()


_SCREENS = {"fp32": _Fp32Screen, "faiss": _FaissScreen, "bf16": _Bf16Screen}


def deita_filter(
    vectors: np.ndarray,
    order: np.ndarray,
    budget: int | None,
    *,
    threshold: float = 0.9,
    block: int = 512,
    screen: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Blocked Deita filter: positions (from `order`, in that order) kept, at most `budget` of them.

    `vectors` are L2-normalised rows (cosine = dot product). Equals `deita_filter_reference` exactly with
    any screen: "bf16" (fast where the CPU has bf16 units), "fp32" (numpy BLAS), "faiss" (a growing flat
    index), or "auto" (bf16 where the CPU has bf16 units, else fp32).
    """
    vectors, order = _check(vectors, order, threshold)
    if screen == "auto":
        screen = "bf16" if native_bf16() else "fp32"
    if screen not in _SCREENS:
        raise ValueError(f"screen must be 'auto' or one of {sorted(_SCREENS)}, got {screen!r}")
    budget = max(0, order.size if budget is None else int(budget))
    if screen == "bf16" and threshold - bf16_margin(vectors.shape[1]) <= 0:
        screen = "fp32"  # row_max's int16 trick needs a positive lower bound; such thresholds are unusual
    sc = _SCREENS[screen](budget, vectors.shape[1])
    lo, hi = threshold - sc.margin, threshold + sc.margin
    kept = np.empty(budget, dtype=np.int64)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=budget, desc="deita filter", unit="row")
    for start in range(0, order.size, block):
        if sc.n >= budget:
            break
        cand = order[start : start + block]
        x = vectors[cand]
        _require_unit(x, cand)
        sc.load(x)
        hit = np.zeros(cand.size, dtype=bool)
        if sc.n:  # against the rows kept in earlier blocks: the screen decides, float64 settles the rest
            s = sc.versus_kept()
            top = sc.row_max(s)
            hit = top >= hi
            unsure = np.flatnonzero((top >= lo) & ~hit)
            if unsure.size:
                r, c = sc.pairs_at_least(s, unsure, lo)
                hit[r[_cos64(x[r], sc.kept[c]) >= threshold]] = True
        live = np.flatnonzero(~hit)
        acc = live[_block_accept(x[live], sc.gram(live), threshold, sc.margin)][: budget - sc.n]
        kept[sc.n : sc.n + acc.size] = cand[acc]
        sc.add(acc)
        if bar is not None:
            bar.update(acc.size)
    if bar is not None:
        bar.close()
    return kept[: sc.n].copy()


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
    eps = fp32_margin(vectors.shape[1])
    kept: list[int] = []
    for p in order:
        if len(kept) >= budget:
            break
        x = vectors[p]
        if abs(float(x @ x) - 1.0) > 1e-3:
            _require_unit(x[None], np.array([p]))  # raises, naming the row
        if kept:
            s32 = sel[: len(kept)] @ x
            top = float(s32.max())
            if top >= threshold + eps or (
                top >= threshold - eps and (_cos64(sel[: len(kept)][s32 >= threshold - eps], x) >= threshold).any()
            ):
                continue
        sel[len(kept)] = x
        kept.append(int(p))
    return np.asarray(kept, dtype=np.int64)


def _ifd_note(max_ifd: float | None, keep: np.ndarray | None) -> str:
    """", and N rows with ifd >= M" for error messages (empty when the IFD filter is off)."""
    if keep is None:
        return ""
    return f" and {int((~keep).sum())} rows with {IFD_SIGNAL} >= {max_ifd:g} (max_ifd; -p max_ifd=none turns it off)"


def _names(signal: str | Sequence[str]) -> list[str]:
    names = [n.strip() for n in signal.split(",")] if isinstance(signal, str) else [str(n) for n in signal]
    return [n for n in names if n]


@register_selector
class DeitaSelector(IFDFilter, Selector):
    """Deita-style: rank by a score (one signal, or the product of several), then drop near-duplicates.

    A row is kept only if the cosine to its nearest already-kept row is < `threshold` (default 0.9), walking
    rows by score until the budget is reached. Exact blocked implementation of the sequential filter (`screen`:
    "auto", "bf16", "fp32" or "faiss" changes only the speed). When
    fewer rows survive than the budget needs it raises, unless `fill=True` (tops up with the dropped rows in
    score order, reason "deita: fill"). `max_ifd` ("auto": 1.0 when `ifd` is one of the score's signals):
    rows with IFD >= max_ifd are never ranked (`curate.select.ifd_filter`).
    paper: Liu et al., Deita (ICLR 2024), the score-first diversity filter; the baseline of ILA and DaaR.
    deviations: any stored signal(s) as the score (Deita's complexity x quality scorers are not bundled);
    the pool's sentence embeddings instead of Deita's Llama-13B embeddings; ties by pool position.
    """

    name = "deita"
    default_stratify = "domain"  # won on held-out loss, bench/RESULTS.md (selection quality)
    paper = "Deita: Liu et al., What Makes Good Data for Alignment? (ICLR 2024)"
    deviations = "score = any stored signal or product of signals; pool sentence embeddings"

    def __init__(
        self,
        signal: str | list[str] = "",
        threshold: float = 0.9,
        block: int = 512,
        fill: bool = False,
        screen: str = "auto",
        max_ifd: float | str | None = "auto",
    ) -> None:
        names = _names(signal)
        if not names:
            raise ParameterError(
                "deita needs signal=NAME (a stored signal, or a comma-separated list multiplied together)",
                "e.g. `curate score --run RUN --signal ifd --model smollm2`, then `-p signal=ifd`",
            )
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"deita: threshold is a cosine in [-1, 1], got {threshold}")
        if int(block) < 1:
            raise ValueError(f"deita: block must be >= 1, got {block}")
        self.signal = signal
        self.threshold = float(threshold)
        self.block = int(block)
        self.fill = bool(fill)
        if screen != "auto" and screen not in _SCREENS:
            raise ValueError(f"deita: screen must be 'auto' or one of {sorted(_SCREENS)}, got {screen!r}")
        self.screen = screen
        self.max_ifd = resolve_max_ifd(max_ifd, IFD_SIGNAL in names)

    def _score(self, view: PoolView) -> np.ndarray:
        """The product of the score signals; NaN where the IFD filter removes the row."""
        score = np.ones(view.n, dtype=np.float64)
        for n in _names(self.signal):
            score = score * np.asarray(view.signal(n), dtype=np.float64)
        keep = self.ifd_keep(view)
        return score if keep is None else np.where(keep, score, np.nan)

    def eligible(self, view: PoolView) -> np.ndarray:
        """Rows with a finite score."""
        return np.isfinite(self._score(view))

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        names = _names(self.signal)
        score = self._score(view)
        keep = self.ifd_keep(view)
        order = score_order(score)
        base, rows = view.row_vectors()  # a stratum's rows stay in the pool's matrix: no copy
        kept = deita_filter(
            base,
            order if rows is None else rows[order],
            int(k),
            threshold=self.threshold,
            block=self.block,
            screen=self.screen,
            progress=view.n > 200_000,
        )
        if rows is not None:
            kept = np.searchsorted(rows, kept)
        label = "*".join(names)
        n_filled = 0
        if kept.size < min(k, order.size) and budget.kind != "tokens":  # k only bounds a token budget
            if not self.fill:
                raise ShortRankingError(
                    f"deita: only {kept.size} rows remain once near-duplicates (cosine >= {self.threshold:g}) are "
                    f"dropped{_ifd_note(self.max_ifd, keep)}, the budget needs {k}: lower the budget, raise the "
                    "threshold, or pass fill=True (tops up with the dropped rows in score order)",
                    Ranking(kept, reasons=[f"deita: {label}={v:.4g}, nearest kept cosine < {self.threshold:g}"
                                           for v in score[kept].tolist()],
                            stats={"score": label, **self.ifd_stats(view, keep)}),
                )
            rest = order[~np.isin(order, kept)][: k - kept.size]
            n_filled = int(rest.size)
        reasons = [
            f"deita: {label}={v:.4g}, nearest kept cosine < {self.threshold:g}" for v in score[kept].tolist()
        ]
        walked = int(np.flatnonzero(order == kept[-1])[0]) + 1 if kept.size else 0
        dropped = walked - int(kept.size)  # before the fill rows join `kept`
        if n_filled:
            reasons += [
                f"deita: fill, {label}={v:.4g} (near-duplicate of a kept row)" for v in score[rest].tolist()
            ]
            kept = np.concatenate([kept, rest])
        stats = {
            "score": label,
            "threshold": self.threshold,
            "rows_walked": walked,
            "rows_dropped_as_near_duplicates": dropped,
            "mean_score": float(score[kept].mean()) if kept.size else None,
            "n_filled": n_filled,
            "n_nan_score": int((~np.isfinite(score) & (True if keep is None else keep)).sum()),
            **self.ifd_stats(view, keep),
        }
        return Ranking(kept, reasons=reasons, stats=stats)
