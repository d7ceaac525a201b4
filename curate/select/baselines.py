"""Honest baselines every method is compared with: random, per-domain balanced random, longest-k, top-k of a
signal, k-center greedy (coverage) and facility location (representativeness on the kNN graph).

All are deterministic for a given seed; ties are broken by pool position.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from curate.errors import ParameterError
from curate.select.budget import Budget
from curate.select.ifd_filter import IFD_SIGNAL, IFDFilter, resolve_max_ifd
from curate.select.selector import Ranking, Selector, ShortRankingError, register_selector
from curate.view import TOKENS_SIGNAL, PoolView

NO_DOMAIN = "(none)"


@register_selector
class RandomSelector(Selector):
    """Uniform random subset: a permutation of the pool from `np.random.default_rng(seed)`.

    paper: the Random-k baseline of DaaR / ILA. deviations: none.
    """

    name = "random"
    paper = "Random-k baseline (DaaR, ILA)"

    def __init__(self) -> None:
        pass

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        order = np.random.default_rng(seed).permutation(view.n)
        return Ranking(order, reasons="random")


def domain_groups(view: PoolView) -> tuple[list[str], np.ndarray]:
    """Sorted domain names (rows without a domain form the group '(none)') and each row's group index."""
    dom = view.frame["domain"].fill_null(NO_DOMAIN)
    names = sorted(dom.unique().to_list())
    lookup = {d: i for i, d in enumerate(names)}
    return names, np.asarray([lookup[d] for d in dom.to_list()], dtype=np.int64)


@register_selector
class BalancedRandomSelector(Selector):
    """Per-domain balanced random: an equal quota per domain, leftovers to domains that still have rows.

    Each domain's rows are shuffled with one generator seeded by `seed` (domains in sorted order); the
    ranking then interleaves the domains round by round (round r takes the r-th shuffled row of every domain
    that has one, domains in a seeded random order per round), so any prefix of it is as balanced as
    possible: every domain gets min(size, t) rows and the few remaining go to other unfilled domains.
    Rows without a domain form one group, '(none)'. When no row has a domain, the k-means clusters of
    `curate map` are the groups (named 'cluster N'), and the stats say so (`groups`, `note`).
    paper: the per-domain / uniform-mixture baseline of IDEAL and AMA. deviations: none.
    """

    name = "balanced-random"
    paper = "uniform domain mixture baseline (IDEAL, AutoMixAlign)"

    def __init__(self) -> None:
        pass

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        rng = np.random.default_rng(seed)
        names, group = domain_groups(view)
        groups_from = "domain"
        if names == [NO_DOMAIN]:  # no domains: balance over k-means clusters instead of returning random
            if view.run is not None and not (view.run.map_dir / "clusters.parquet").exists():
                raise ParameterError(
                    "balanced-random: no row of the pool has a domain, so there is nothing to balance",
                    f"run `curate map --run {view.run.root}` to make k-means clusters (used as domains), "
                    "or ingest a pool with a domain column",
                )
            clusters = view.clusters()
            uniq, group = np.unique(clusters, return_inverse=True)
            names = [f"cluster {int(c)}" for c in uniq]
            groups_from = "cluster"
        members = [rng.permutation(np.flatnonzero(group == g)) for g in range(len(names))]
        sizes = np.asarray([m.size for m in members], dtype=np.int64)
        order: list[int] = []
        reasons: list[str] = []
        for r in range(int(sizes.max()) if sizes.size else 0):
            for g in rng.permutation(len(names)):
                if r < sizes[g]:
                    order.append(int(members[g][r]))
                    reasons.append(f"balanced-random: {groups_from} {names[g].removeprefix('cluster ')}, round {r}")
        quota = {}
        if budget.kind != "tokens":
            counts = np.bincount(group[np.asarray(order[:k], dtype=np.int64)], minlength=len(names))
            quota = {names[g]: int(counts[g]) for g in range(len(names))}
        stats: dict[str, Any] = {
            "groups": groups_from,
            "domain_sizes": {names[g]: int(sizes[g]) for g in range(len(names))},
        }
        if groups_from == "cluster":
            stats["note"] = f"the pool has no domains: balanced over {len(names)} k-means clusters of `curate map`"
        if quota:
            stats["quota"] = quota
        return Ranking(np.asarray(order, dtype=np.int64), reasons=reasons, stats=stats)


def row_lengths(view: PoolView) -> tuple[np.ndarray, str]:
    """Prompt + response length per row: tokens (the `tokens` signal) if stored, else characters."""
    if view.has_signal(TOKENS_SIGNAL):
        return np.asarray(view.signal(TOKENS_SIGNAL), dtype=np.float64), "tokens"
    chars = view.frame.select(
        pl.col("prompt").fill_null("").str.len_chars() + pl.col("response").fill_null("").str.len_chars()
    ).to_series()
    return chars.to_numpy().astype(np.float64), "characters"


@register_selector
class LongestSelector(Selector):
    """Longest-k: the rows with the longest prompt + response (in tokens if the `tokens` signal is stored,
    else characters); ties by pool position.

    paper: the "Longest" baseline of Zhao et al. 2024 ("Long is more for alignment"). deviations: length
    counts prompt + response, not the response alone.
    """

    name = "longest"
    paper = "Longest-k baseline (Zhao et al. 2024, Long Is More for Alignment)"
    deviations = "length is prompt + response, not the response alone"

    def __init__(self) -> None:
        pass

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        length, unit = row_lengths(view)
        order = np.argsort(-length, kind="stable")
        reasons = [f"longest: {int(length[i])} {unit}" for i in order]
        return Ranking(order, reasons=reasons, stats={"length_unit": unit})


@register_selector
class TopSignalSelector(IFDFilter, Selector):
    """Top-k of any stored signal (`signal=NAME`), highest first (`descending=True`) or lowest first.

    Rows whose value is NaN are never ranked (counted in stats as `n_nan`); ties by pool position.
    `max_ifd` ("auto": 1.0 when `signal` is `ifd`, else off): rows with IFD >= max_ifd are never ranked.
    """

    name = "top-signal"
    paper = "score-then-top-k baseline (e.g. IFD / Alpagasus-style filtering)"

    def __init__(self, signal: str = "", descending: bool = True, max_ifd: float | str | None = "auto") -> None:
        if not signal:
            raise ParameterError(
                "top-signal needs signal=NAME (a stored signal)", "e.g. `curate score --run RUN --signal mtld`, then `-p signal=mtld`"
            )
        self.signal = signal
        self.descending = bool(descending)
        self.max_ifd = resolve_max_ifd(max_ifd, signal == IFD_SIGNAL)

    def eligible(self, view: PoolView) -> np.ndarray:
        """Rows whose signal is not NaN and that the IFD filter keeps."""
        ok = ~np.isnan(np.asarray(view.signal(self.signal), dtype=np.float64))
        keep = self.ifd_keep(view)
        return ok if keep is None else ok & keep

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        values = np.asarray(view.signal(self.signal), dtype=np.float64)
        keep = self.ifd_keep(view)
        ok = np.flatnonzero(~np.isnan(values) & (True if keep is None else keep))
        key = -values[ok] if self.descending else values[ok]
        order = ok[np.argsort(key, kind="stable")]
        word = "highest" if self.descending else "lowest"
        reasons = [f"top-signal: {self.signal}={values[i]:.4g} ({word} first)" for i in order]
        n_nan = int(np.isnan(values).sum())
        stats = {"signal": self.signal, "n_nan": n_nan, **self.ifd_stats(view, keep)}
        ranking = Ranking(order, reasons=reasons, stats=stats)
        if order.size < min(k, view.n) and budget.kind != "tokens":
            removed = "" if keep is None else f" and the IFD filter removes {int((~keep).sum())} (max_ifd={self.max_ifd:g})"
            raise ShortRankingError(
                f"top-signal: signal {self.signal!r} has {n_nan} NaN rows{removed}, "
                f"so only {order.size} rows can be ranked and the budget needs {k}",
                ranking,
            )
        return ranking


@register_selector
class KCenterSelector(Selector):
    """k-center greedy on the embeddings: start from a seeded random row, repeatedly add the row farthest
    from the chosen set; the reason records that row's distance (the covering radius at that step).

    paper: Sener & Savarese 2018 (core-set k-center greedy), the standard coverage baseline.
    deviations: none (wraps `index.kcenter.k_center_greedy`).
    """

    name = "k-center"
    default_stratify = "domain"  # won on held-out loss, bench/RESULTS.md (selection quality)
    paper = "k-center greedy core-set (Sener & Savarese, ICLR 2018)"

    def __init__(self) -> None:
        pass

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        from index.kcenter import k_center_greedy

        vectors = view.vectors()
        found: dict = {}
        order, radii = k_center_greedy(vectors, int(k), seed=seed, initial=None, stats=found)
        order = np.asarray(order, dtype=np.int64)
        radii = np.asarray(radii, dtype=np.float64)
        reasons = [f"k-center: radius {r:.4f}" for r in radii]  # each pick's distance to the centres before it
        # the whole selection's covering radius (radii[-1] is the radius of the first k - 1 centres)
        stats = {"final_radius": found.get("covering_radius") if radii.size else None}
        return Ranking(order, reasons=reasons, stats=stats)


@register_selector
class FacilityLocationSelector(Selector):
    """Facility location on the kNN graph: greedily add the row with the largest gain in
    sum_i max_{s in S} sim(i, s) (similarities from the stored kNN graph); the reason records the gain.

    paper: Lin & Bilmes 2011 / apricot facility location. deviations: similarities are restricted to the
    kNN graph (sparse), as apricot does with a sparse similarity matrix; wraps `index.facility`.
    """

    name = "facility-location"
    default_stratify = "domain"  # won on held-out loss, bench/RESULTS.md (selection quality)
    paper = "facility location (Lin & Bilmes 2011; apricot)"
    deviations = "similarities restricted to the stored kNN graph"

    def __init__(self) -> None:
        pass

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        from index.facility import facility_location

        order, gains = facility_location(view.knn(), int(k))
        order = np.asarray(order, dtype=np.int64)
        gains = np.asarray(gains, dtype=np.float64)
        reasons = [f"facility-location: gain {g:.4f}" for g in gains]
        stats = {"objective": float(gains.sum())}
        return Ranking(order, reasons=reasons, stats=stats)
