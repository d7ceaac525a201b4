"""The Selector base class, its Ranking and registry: methods rank, the base applies budget and exclusions.

A selector reads a pool through a `PoolView` (`curate.view`) and returns a `Selection`
(`curate.select.selection`): pool positions in rank order (0 = chosen first) with a weight and a reason per
row. Budgets (`curate.select.budget`) are applied here, centrally.

How to add a selector
---------------------
1. Subclass `Selector`, give it a unique `name`, and document in its class docstring which paper it follows
   (`paper = "..."`) and where it deviates (`deviations = "..."`).
2. Take every parameter in `__init__` (keyword arguments with defaults, JSON-serialisable values) and store
   each one as an attribute of the same name: `get_params()` reads them back from the signature, as sklearn
   does, and they are saved in the selection sidecar.
3. Implement `rank(self, view, k, *, seed, budget) -> Ranking`: return pool positions (0..N-1, unique) in the
   order the method would choose them, at least `k` of them when the pool has that many (returning more,
   even the whole pool ranked, is fine; the base takes a prefix). Per-row `weights` (default 1.0),
   `reasons` (one string, or one per ranked row) and `stats` (JSON-serialisable dict) are optional.
   All randomness must come from `np.random.default_rng(seed)` (or a seed passed down), never global state:
   the same inputs and seed must give the same selection, bit for bit.
4. Register it: decorate the class with `@register_selector`; import its module in
   `curate/select/__init__.py` (already done for ila, daar, miw, deita).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from curate.registry import Registry
from curate.select.budget import Budget, Taken, exclusion_mask, take_within_tokens
from curate.select.selection import Selection
from curate.select.stratify import SubPoolView, domain_mix, select_stratified
from curate.view import TOKENS_SIGNAL, PoolView


@dataclass
class Ranking:
    """What `Selector.rank` returns: positions in choice order, optional weights / reasons, stats."""

    positions: np.ndarray
    weights: np.ndarray | None = None
    reasons: Sequence[str] | str = ""
    stats: dict[str, Any] = field(default_factory=dict)




SELECTORS: Registry[type[Selector]] = Registry("selector")


def register_selector(cls: type[Selector]) -> type[Selector]:
    """Class decorator: register a Selector subclass under its `name`."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} needs a `name` to be registered")
    return SELECTORS.register(cls.name)(cls)


class Selector:
    """Base class of every selector. Subclasses implement `rank`; `select` applies the budget.

    Class attributes: `name` (registry key), `paper` (what it follows), `deviations` (where it departs).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    deviations: ClassVar[str] = ""
    # stratified selection: "stratum" runs the selector on each stratum's rows alone; "pool" ranks the whole
    # pool once (e.g. DaaR's probes are fitted on the pool) and takes each stratum's rows in that order
    stratify_scope: ClassVar[str] = "stratum"
    # what the `select` stage does when no stratify is given; chosen from held-out loss after fine-tuning
    # (bench/selection_quality.py, bench/RESULTS.md): "domain" where running within each domain won
    default_stratify: ClassVar[str] = "none"

    def get_params(self) -> dict[str, Any]:
        """The `__init__` parameters and their values (stored as same-named attributes), less where the
        selector's model passes run (`executor`, `executor_options`): a selection does not depend on it."""
        sig = inspect.signature(type(self).__init__)
        out = {}
        for p in sig.parameters.values():
            if p.name in ("self", "executor", "executor_options") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[p.name] = getattr(self, p.name)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        """Return at least `k` pool positions (when available) in the order this method picks them."""
        raise TypeError(f"{type(self).__name__} must implement rank(view, k, *, seed, budget)")

    def eligible(self, view: PoolView) -> np.ndarray | None:
        """Rows this method can rank at all (bool [N]; e.g. finite score), or None for every row.

        Stratified selection sizes its quotas from these rows (minus excluded ones)."""
        return None

    def filter_stats(self, view: PoolView, excluded: np.ndarray | None = None) -> dict[str, Any]:
        """Pool-level stats of a row filter the selector applies before ranking (e.g. `max_ifd`), or {}."""
        return {}

    def rank_pool(self, view: PoolView, *, seed: int, budget: Budget) -> Ranking:
        """Every row this method can rank, best first (used when `stratify_scope == "pool"`)."""
        try:
            return self.rank(view, view.n, seed=seed, budget=budget)
        except ShortRankingError as e:
            return e.ranking

    def select(
        self,
        view: PoolView,
        budget: Budget | int | float | str,
        seed: int = 0,
        exclude: np.ndarray | None = None,
        stratify: str = "none",
        mixture: Mapping[str, float] | None = None,
    ) -> Selection:
        """Rank the pool and take rows within `budget`; the same inputs and seed give the same selection.

        `exclude`: pool positions that may not be chosen (e.g. the rows a reference model was trained on);
        they are not candidates: the selector ranks the other rows as a pool of their own (`take`).
        `stratify`: "none", "domain" or "cluster": the budget is split over strata (proportional to their
        eligible rows, or to `mixture` {domain: weight}) and this selector runs within each stratum
        (`curate.select.stratify`).
        """
        budget = Budget.parse(budget)
        if stratify != "none" or mixture is not None:
            return select_stratified(self, view, budget, seed=int(seed), exclude=exclude, by=stratify, mixture=mixture)
        taken = self.take(view, budget, seed=int(seed), exclude=exclude)
        return self.selection(view, taken, budget, seed=int(seed), excluded=exclusion_mask(view.n, exclude))

    def selection(
        self, view: PoolView, taken: Taken, budget: Budget, *, seed: int, excluded: np.ndarray | None = None
    ) -> Selection:
        """Wrap taken rows as a `Selection` with ids, the basic stats and the domain mix against the pool."""
        ids = view.ids
        stats = dict(taken.stats)
        stats.update(_basic_stats(view, taken.positions))
        stats["mix"] = domain_mix(view, taken.positions, excluded)
        stats.update(self.filter_stats(view, excluded))
        return Selection(
            positions=taken.positions,
            ids=[str(ids[i]) for i in taken.positions],
            weights=taken.weights,
            reasons=taken.reasons,
            method=self.name,
            params=self.get_params(),
            seed=int(seed),
            budget=str(budget),
            stats=stats,
        )

    def take(
        self,
        view: PoolView,
        budget: Budget,
        *,
        seed: int,
        exclude: np.ndarray | None = None,
        partial: bool = False,
    ) -> Taken:
        """Rank `view` and take the rows within `budget` (no ids, no pool-wide stats).

        `partial`: a ranking shorter than the budget needs is taken as it is (a `ShortRankingError` from the
        selector included) and `Taken.ran_out` says so, instead of raising.
        """
        tokens = view.tokens() if budget.kind == "tokens" else None
        k = budget.resolve(view.n, tokens)
        excluded = exclusion_mask(view.n, exclude)
        n = int((~excluded).sum())
        ranking, short = self._ranked(view, k, seed, budget, excluded, partial)
        while budget.kind == "tokens":
            # k is the count of the shortest rows that fit; a ranking of k rows that skips long ones can leave
            # room that shorter rows further down would fill: rank more until none of the rest fits
            take = take_within_tokens(ranking.positions, tokens, budget.tokens)
            left = budget.tokens - float(tokens[ranking.positions[take]].sum())
            rest = ~excluded
            rest[ranking.positions] = False
            if short or k >= view.n or not rest.any() or tokens[rest].min() > left:
                break
            k = min(view.n, 2 * k)
            ranking, short = self._ranked(view, k, seed, budget, excluded, partial)
        pos = ranking.positions
        if pos.size < k and pos.size < n and budget.kind != "tokens" and not partial:
            raise ValueError(f"{self.name}: ranked {pos.size} rows, the budget needs {k}")
        weights = (
            np.ones(pos.size, dtype=np.float64)
            if ranking.weights is None
            else np.asarray(ranking.weights, dtype=np.float64).ravel()
        )
        reasons = ranking.reasons
        if len(weights) != pos.size or (not isinstance(reasons, str) and len(reasons) != pos.size):
            raise ValueError(f"{self.name}: weights/reasons do not match the {pos.size} ranked rows")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"{self.name}: weights must be finite and >= 0")

        if budget.kind == "tokens":  # `take` from the loop above, on this ranking
            ran_out = take.size == pos.size
        else:
            take = np.arange(min(k, pos.size))
            ran_out = take.size < min(k, n)
        return Taken(
            positions=pos[take],
            weights=weights[take],
            reasons=[reasons] * take.size if isinstance(reasons, str) else [reasons[i] for i in take],
            stats=dict(ranking.stats),
            n_ranked=int(pos.size),
            ran_out=bool(ran_out),
        )

    def _ranked(
        self, view: PoolView, k: int, seed: int, budget: Budget, excluded: np.ndarray, partial: bool
    ) -> tuple[Ranking, bool]:
        """The selector's ranking of k eligible rows, checked; and whether it was cut short (a `ShortRankingError`
        taken as it is, with `partial`).

        Excluded rows (a reference model's, validation copies) are not candidates: the selector ranks the other
        rows as a pool of their own, so they take no cell, centre or quota from eligible rows. Pool-scope
        selectors (DaaR, RDS+: fitted on the whole pool) rank every row and the excluded ones are dropped.
        """
        n = view.n
        m = int(excluded.sum())
        short = False
        eligible = np.flatnonzero(~excluded) if m and self.stratify_scope != "pool" else None
        err: ShortRankingError | None = None
        try:
            if eligible is None:
                ranking = self.rank(view, min(n, k + m), seed=int(seed), budget=budget)
            else:
                sub = SubPoolView(view, eligible)
                ranking = self.rank(sub, min(sub.n, k), seed=int(seed), budget=budget)
        except ShortRankingError as e:
            if not partial and not (m and eligible is None):
                raise
            ranking, short, err = e.ranking, True, e
        pos = np.asarray(ranking.positions, dtype=np.int64).ravel()
        size = n if eligible is None else eligible.size  # rows of the view the selector ranked
        if pos.size and (pos.min() < 0 or pos.max() >= size):
            raise ValueError(f"{self.name}: ranked position out of range 0..{size - 1}")
        if np.unique(pos).size != pos.size:
            raise ValueError(f"{self.name}: ranking repeats a position")
        if err is not None and m and eligible is None:
            # a pool-scope selector was asked for k + m rows and judged its shortfall on them, excluded rows
            # included: it is short only when fewer than k of its rows are left once those are dropped
            have = int((~excluded[pos]).sum())
            short = have < k
            if short and not partial:
                raise err.restated(self.name, have, k, int(excluded[pos].sum())) from None
        if not m:
            return replace(ranking, positions=pos), short
        stats = {**ranking.stats, "excluded_rows": m}
        if eligible is not None:
            return replace(ranking, positions=eligible[pos], stats=stats), short
        keep = ~excluded[pos]
        return Ranking(
            positions=pos[keep],
            weights=None if ranking.weights is None else np.asarray(ranking.weights)[keep],
            reasons=ranking.reasons if isinstance(ranking.reasons, str)
            else [r for r, ok in zip(ranking.reasons, keep, strict=True) if ok],
            stats=stats,
        ), short



class ShortRankingError(ValueError):
    """A selector can rank fewer rows than the budget needs; `ranking` holds the rows it could rank.

    `shortfall(have, need)`, optional: the message for `have` rankable rows against a budget of `need` rows.
    A pool-scope selector is asked for the budget plus the excluded rows (it ranks them too, and they are
    dropped afterwards); the base judges the shortfall on the rows left and restates the error with it."""

    def __init__(
        self, message: str, ranking: Ranking, shortfall: Callable[[int, int], str] | None = None
    ) -> None:
        super().__init__(message)
        self.ranking = ranking
        self.shortfall = shortfall

    def restated(self, name: str, have: int, need: int, excluded: int) -> ShortRankingError:
        """This error for `have` rows left of the ranking (`excluded` of its rows dropped) and a budget of `need`."""
        msg = self.shortfall(have, need) if self.shortfall is not None else (
            f"{name}: ranked {have} rows, the budget needs {need}")
        if excluded:
            msg += f" ({excluded} excluded rows of its ranking are not counted)"
        return ShortRankingError(msg, self.ranking, self.shortfall)



def _basic_stats(view: PoolView, chosen: np.ndarray) -> dict[str, Any]:
    stats: dict[str, Any] = {"n_selected": int(chosen.size), "n_pool": int(view.n)}
    if view.has_signal(TOKENS_SIGNAL):
        stats["tokens"] = int(round(float(view.signal(TOKENS_SIGNAL)[chosen].sum())))
    dom = view.frame["domain"].gather(chosen) if chosen.size else view.frame["domain"].head(0)
    counts = dom.fill_null("(none)").value_counts().sort("domain")
    stats["domains"] = {str(d): int(c) for d, c in zip(counts["domain"], counts["count"], strict=True)}
    return stats
