"""DaaR's contrastive inter/intra diversity bands (`daar_band`): a second DaaR selector, with no probe.

It needs only the pool's embeddings and domain (or cluster) centroids (methods.md 2.2).
"""

from __future__ import annotations

import numpy as np

from curate.errors import ParameterError
from curate.select.budget import Budget
from curate.select.selector import Ranking, Selector, ShortRankingError, register_selector
from curate.view import PoolView


def band_positions(
    scores: np.ndarray, groups: np.ndarray, lower: float, upper: float, *, descending: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose within-group rank (by score, `descending` or ascending; ties by position) lies in
    [floor(lower% * n_g), floor(upper% * n_g)); returns (positions, their quantile rank / n_g).

    Rows whose group is negative are skipped. Output order: by quantile position, then group, then position.
    """
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"band must satisfy 0 <= lower < upper <= 100, got ({lower}, {upper})")
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    pos = np.flatnonzero(groups >= 0)
    key = -scores[pos] if descending else scores[pos]
    o = np.lexsort((pos, key, groups[pos]))
    pos = pos[o]
    g = groups[pos]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, g.size])
    rank = np.arange(g.size) - np.repeat(starts, counts)
    n_g = np.repeat(counts, counts)
    lo = np.floor(lower / 100.0 * n_g + 1e-9).astype(np.int64)
    hi = np.floor(upper / 100.0 * n_g + 1e-9).astype(np.int64)
    keep = (rank >= lo) & (rank < hi)
    pos, rank, g, n_g = pos[keep], rank[keep], g[keep], n_g[keep]
    q = rank / n_g
    o = np.lexsort((pos, g, q))
    return pos[o], q[o]


@register_selector
class DaaRBandSelector(Selector):
    """DaaR's contrastive pools: within each domain, one quantile band of the inter or intra diversity score.

    inter(x in D_k) = Σ_{j≠k} cos(e(x), C_j); intra(x in D_k) = cos(e(x), C_k) (index.diversity.daar_scores).
    Within each domain rows are sorted by the score (`descending` explicit: the paper's text is ambiguous;
    its code sorts inter ascending and intra descending) and ranks [lower%, upper%) of the domain are kept.
    Domains: the pool's `domain` column (`labels="domain"`, rows without one are skipped) or the map's
    clusters (`labels="cluster"`).
    paper: Ling et al., Diversity as a Reward (arXiv 2502.04380), contrastive pools of methods.md 2.2.
    deviations: e(x) is the pool's sentence embedding (the paper: the LM's input-embedding mean); centroids are
    the domain means of the pool's rows.
    """

    name = "daar_band"
    stratify_scope = "pool"  # inter/intra scores need every domain's centroid
    paper = "DaaR contrastive inter/intra diversity pools (arXiv 2502.04380), methods.md 2.2"
    deviations = "pool sentence embeddings as e(x)"

    def __init__(
        self,
        metric: str = "inter",
        band: tuple[float, float] | list[float] = (0.0, 20.0),
        descending: bool | None = None,
        labels: str = "domain",
    ) -> None:
        if metric not in ("inter", "intra"):
            raise ValueError(f"daar_band: metric must be 'inter' or 'intra', got {metric!r}")
        if descending is None:
            raise ParameterError(
                "daar_band needs descending=True or False (the sort direction is explicit; DaaR's code "
                "sorts inter ascending and intra descending)"
            )
        if len(band) != 2 or not 0 <= float(band[0]) < float(band[1]) <= 100:
            raise ValueError(
                f"daar_band: band must be (lower%, upper%) with 0 <= lower < upper <= 100, got {band}"
            )
        if labels not in ("domain", "cluster"):
            raise ValueError(f"daar_band: labels must be 'domain' or 'cluster', got {labels!r}")
        self.metric = metric
        self.band = [float(band[0]), float(band[1])]
        self.descending = bool(descending)
        self.labels = labels

    def _shortfall(self, have: int, need: int) -> str:
        """The message for a band of `have` rows against a budget of `need`: the budget that fits is `have` rows
        (a percentage of the band's width would not be: each domain's band is floored)."""
        fix = f"lower the budget to {have} rows (-b {have}) or widen the band" if have else "widen the band"
        return f"daar_band: the band {self.band} holds {have} rows, the budget needs {need}: {fix}"

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        from index.diversity import daar_scores

        if self.labels == "cluster":
            groups = np.asarray(view.clusters(), dtype=np.int64)
            names = [str(c) for c in np.unique(groups)]
        else:
            dom = view.domains()
            have = np.array([d is not None for d in dom], dtype=bool)
            if not have.any():
                raise ValueError("daar_band: no row has a domain; use labels='cluster' (after `curate map`)")
            names, codes = np.unique(dom[have].astype(str), return_inverse=True)
            groups = np.full(view.n, -1, dtype=np.int64)
            groups[have] = codes
        ok = groups >= 0
        vec = view.vectors()
        inter, intra = daar_scores(vec[ok], groups[ok])
        score = np.full(view.n, np.nan)
        score[ok] = inter if self.metric == "inter" else intra
        pos, q = band_positions(score, groups, self.band[0], self.band[1], descending=self.descending)
        reasons = [
            f"daar_band: {self.metric}={score[p]:.4f}, domain quantile {qq:.3f}"
            for p, qq in zip(pos, q, strict=True)
        ]
        stats = {
            "metric": self.metric,
            "band": self.band,
            "descending": self.descending,
            "band_rows": int(pos.size),
            "n_unlabelled": int((~ok).sum()),
            "band_domains": [str(n) for n in names],
            f"mean_{self.metric}_selected": float(score[pos[:k]].mean()) if k and pos.size else None,
        }
        if pos.size < k and budget.kind != "tokens":
            raise ShortRankingError(
                self._shortfall(pos.size, k), Ranking(pos, reasons=reasons, stats=stats), self._shortfall
            )
        return Ranking(pos, reasons=reasons, stats=stats)
