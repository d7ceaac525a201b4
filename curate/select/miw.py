"""MIW-style selection: the top rows by a learned weighted sum of rank-normalised indicators (methods.md 5.3).

Follows Song et al., "Learning Multi-Indicator Weights for Data Selection" (arXiv 2605.09665) as reconstructed
in methods.md 5.3 ("MIW-style", not the paper's exact method): indicators are percentile-ranked to [0, 1],
weighted by weights learned per (task, model) with an ICL proxy (`curate score --signal miw_score`, which saves
them to <run>/signals/miw_weights.json), and the top-r% rows by the weighted score are kept (r is the budget,
e.g. "30%" as in the paper's GSM8K setting).

Deviations: the indicator set, normalisation, proxy and search are our reconstruction (see
`curate.signals.miw`); rows whose score is NaN are never taken; ties are broken by pool position.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from curate.select.budget import Budget
from curate.select.ifd_filter import IFD_SIGNAL, IFDFilter, resolve_max_ifd
from curate.select.selector import Ranking, Selector, ShortRankingError, register_selector
from curate.view import PoolView


def rank_by_score(score: np.ndarray) -> np.ndarray:
    """Positions by score, highest first; ties by position; NaN scores left out."""
    score = np.asarray(score, dtype=np.float64)
    pos = np.flatnonzero(~np.isnan(score))
    return pos[np.lexsort((pos, -score[pos]))]


def _file_weights(view: PoolView) -> dict[str, float]:
    from index.io import read_json

    if view.run is None:
        raise ValueError("miw: weights='file' needs a run directory (this PoolView is in memory)")
    path = view.run.miw_weights_path
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run `curate score --signal miw_score` on {view.run.root} first "
            "(it learns the indicator weights)"
        )
    data = read_json(path)
    w = data.get("weights")
    if not isinstance(w, Mapping) or not w:
        raise ValueError(f"{path}: no 'weights' object (indicator name -> weight)")
    return {str(k): float(v) for k, v in w.items()}


@register_selector
class MIWSelector(IFDFilter, Selector):
    """Top rows by the MIW-style learned weighted indicator score.

    `weights=None`: rank by the stored signal `signal` (default `miw_score`, which already applies the
    learned weights). `weights="file"`: read <run>/signals/miw_weights.json and apply its weights to the
    rank-normalised indicator signals. `weights={name: w, ...}`: apply the given weights (not normalised:
    the score is sum_k w_k * percentile_rank(I_k)). Indicators are percentile-ranked over the whole pool, as
    `miw_score` ranks them, also when a stratum or the rows left after exclusions are ranked.
    paper: Song et al., Learning Multi-Indicator Weights for Data Selection (arXiv 2605.09665).
    deviations: methods.md 5.3 reconstruction ("MIW-style"); ties by pool position.
    `max_ifd` ("auto": 1.0 when the score is the `ifd` signal or a given weights dict weighs `ifd`, else off):
    rows with IFD >= max_ifd are never ranked (`curate.select.ifd_filter`).
    """

    name = "miw"
    default_stratify = "domain"  # won on held-out loss, bench/RESULTS.md (selection quality)
    paper = "MIW: Song et al., Learning Multi-Indicator Weights for Data Selection (arXiv 2605.09665)"
    deviations = "MIW-style reconstruction of methods.md 5.3 (indicators, proxy and search are ours)"

    def __init__(
        self,
        signal: str = "miw_score",
        weights: str | dict[str, float] | None = None,
        max_ifd: float | str | None = "auto",
    ) -> None:
        if weights is not None and not isinstance(weights, Mapping) and weights != "file":
            raise ValueError(
                f"miw: weights must be None, 'file' or a {{indicator: weight}} dict, got {weights!r}"
            )
        if isinstance(weights, Mapping) and not weights:
            raise ValueError("miw: the weights dict is empty")
        self.signal = signal
        self.weights = dict(weights) if isinstance(weights, Mapping) else weights
        by_ifd = signal == IFD_SIGNAL if weights is None else (
            isinstance(weights, Mapping) and float(weights.get(IFD_SIGNAL, 0.0)) != 0.0
        )
        self.max_ifd = resolve_max_ifd(max_ifd, by_ifd)

    def score(self, view: PoolView) -> tuple[np.ndarray, dict[str, Any]]:
        """The per-row score and a description of how it was made (NaN where the IFD filter removes the row)."""
        if self.weights is None:
            score, how = np.asarray(view.signal(self.signal), dtype=np.float64), {"score": self.signal}
        else:
            # indicators are percentile-ranked over the whole pool, as `miw_score` ranks them: a stratum or the
            # rows left after exclusions (a `SubPoolView`) takes its rows of the pool's score
            pool, rows = view.in_pool()
            w = _file_weights(pool) if self.weights == "file" else {k: float(v) for k, v in self.weights.items()}
            score = self._pool_score(pool, w)
            score, how = (score if rows is None else score[rows]), {"score": "weighted indicators", "weights": w}
        keep = self.ifd_keep(view)
        if keep is None:
            return score, how
        return np.where(keep, score, np.nan), {**how, **self.ifd_stats(view, keep)}

    def _pool_score(self, pool: PoolView, w: dict[str, float]) -> np.ndarray:
        """The weighted indicator score of every row of `pool`, kept for the last pool (strata reuse it)."""
        from curate.signals import weighted_score

        cached = getattr(self, "_pool_cache", None)
        if cached is not None and cached[0] is pool and cached[1] == w:
            return cached[2]
        score = weighted_score({name: pool.signal(name) for name in w}, w)
        self._pool_cache = (pool, w, score)
        return score

    def eligible(self, view: PoolView) -> np.ndarray:
        """Rows whose score is not NaN, without computing it (stratified selection asks before every stratum
        ranks): a NaN signal (weighted indicators count NaN as the median, 0.5) or the IFD filter."""
        ok = np.ones(view.n, dtype=bool) if self.weights is not None else ~np.isnan(
            np.asarray(view.signal(self.signal), dtype=np.float64))
        keep = self.ifd_keep(view)
        return ok if keep is None else ok & keep

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        score, how = self.score(view)
        order = rank_by_score(score)
        if order.size < min(k, view.n) and budget.kind != "tokens":
            raise ShortRankingError(
                f"miw: only {order.size} rows have a score (the others are NaN"
                + (f" or have {IFD_SIGNAL} >= max_ifd={self.max_ifd:g}" if self.max_ifd is not None else "")
                + f"), the budget needs {k}",
                Ranking(order, reasons=[f"miw: score={v:.4g}" for v in score[order].tolist()], stats=how),
            )
        top = order[: max(int(k), 0)] if budget.kind != "tokens" else order
        reasons = [f"miw: score={v:.4g}" for v in score[top].tolist()]
        stats = {
            **how,
            "mean_score": float(score[top[:k]].mean()) if k and top.size else None,
            "n_nan": int(view.n - order.size) - int(how.get("ifd_filter", {}).get("removed", 0)),
        }
        return Ranking(top, reasons=reasons, stats=stats)
