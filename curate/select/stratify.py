"""Stratified selection for every selector: split the budget over strata, run the selector within each one.

Strata (`by`): "domain" (the pool's `domain` column; rows without one form the stratum '(none)'; a pool where
no row has a domain falls back to the k-means clusters of `curate map`, and the stats say so) or "cluster"
(those clusters).

Quotas: the budget (rows, or tokens for a token budget) is apportioned over strata in proportion to each
stratum's eligible rows (rows the selector can rank, minus excluded reference rows), or to a mixture
{domain: weight} (e.g. the last round of `mixtures/<name>.json`), by the largest-remainder rule
(`largest_remainder`), capped at what each stratum holds (its eligible rows, or their tokens): the share a
capped stratum cannot use is apportioned again over the others.

Within a stratum the selector runs on that stratum's rows alone (`SubPoolView`: k-center and facility-location
distances, Deita's near-duplicate filter and ILA's grid cells are all within the stratum; the kNN graph is the
pool's, restricted to neighbours inside the stratum), with the same seed, and takes its quota exactly as the
unstratified `Selector.select` would on that sub-pool. Selectors whose `stratify_scope` is "pool" (DaaR: its
probes are fitted once on the whole pool) rank the pool once and each stratum takes its rows in that order.
When a stratum yields fewer rows than its quota (its ranking runs out: NaN scores, Deita's near-duplicates, a
depth threshold), its cap drops to what it gave and the quotas are apportioned again, so the leftover passes
to the other strata; the stats record it (`passed_on`, per-stratum `ran_out`). With a token budget the
fragments the strata leave (each stops where its next row no longer fits) are offered to them again
(`_fill_leftover`, stats `leftover_filled`).

The strata's selections are interleaved into one ranking by within-stratum progress ((r + 0.5) / n_s, ties by
stratum order), so any prefix keeps the mix. Every selection (stratified or not) records its domain mix
against the pool's rows less the excluded ones (`stats["mix"]`, made by `domain_mix`: counts, total variation and
KL divergence); rows a selector cannot rank (NaN scores, the IFD filter) still count in the pool's side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from curate.errors import ParameterError
from curate.select.budget import Budget, Taken
from curate.select.budget import exclusion_mask as _mask
from curate.select.budget import take_within_tokens as _take_within_tokens
from curate.select.selection import Selection
from curate.view import PoolView

if TYPE_CHECKING:
    from curate.select.selector import Selector

STRATIFY = ("none", "domain", "cluster")
NO_DOMAIN = "(none)"
# a selection whose domain mix is this far (total variation) from the pool's is flagged by `compare`
MIX_FLAG_TV = 0.2


# ---------------------------------------------------------------------------------------------------------
# quotas


def largest_remainder(
    total: int, weights: Sequence[float], caps: Sequence[int] | None = None
) -> np.ndarray:
    """Apportion `total` units over strata in proportion to `weights` (largest-remainder / Hamilton rule).

    Each stratum gets floor(total * w / sum(w)); the units left go one each to the largest remainders, ties to
    the lower stratum index. With `caps`, a stratum whose exact share exceeds its cap gets its cap and the rest
    is apportioned again over the others (repeated until no share exceeds its cap); if the caps hold less
    than `total`, every stratum gets its cap. Arithmetic is exact (fractions), so hand examples reproduce.
    """
    # a float as the decimal it prints as (0.3 is 3/10, not the binary 0.29999...), so ties are real ties
    w = [Fraction(repr(float(x))) if not isinstance(x, (int, np.integer)) else Fraction(int(x)) for x in weights]
    if any(x < 0 for x in w):
        raise ValueError(f"quota weights must be >= 0, got {list(weights)}")
    if int(total) != total or total < 0:
        raise ValueError(f"the total to apportion must be a non-negative integer, got {total}")
    total = int(total)
    m = len(w)
    cap = [None] * m if caps is None else [int(c) for c in caps]
    if len(cap) != m:
        raise ValueError(f"{len(cap)} caps for {m} weights")
    out = [0] * m
    active = [i for i in range(m) if w[i] > 0 and (cap[i] is None or cap[i] > 0)]
    if caps is not None and total >= sum(cap[i] for i in active):
        for i in active:
            out[i] = cap[i]
        return np.asarray(out, dtype=np.int64)
    if total and not active:
        raise ValueError("cannot apportion a non-zero total: every stratum has weight 0 (or nothing to give)")
    left = total
    while active:
        s = sum(w[i] for i in active)
        over = [i for i in active if cap[i] is not None and left * w[i] > cap[i] * s]
        if not over:
            break
        for i in over:
            out[i] = cap[i]
            left -= cap[i]
        active = [i for i in active if i not in over]
    if not active:
        return np.asarray(out, dtype=np.int64)
    s = sum(w[i] for i in active)
    exact = {i: left * w[i] / s for i in active}
    floors = {i: int(exact[i]) for i in active}
    rest = left - sum(floors.values())
    by_rem = sorted(active, key=lambda i: (-(exact[i] - floors[i]), i))
    for i in active:
        out[i] = floors[i]
    for i in by_rem[:rest]:
        out[i] += 1
    return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------
# strata


@dataclass
class Strata:
    """Stratum names (sorted), each row's stratum index, what they come from, and a note when they fell back."""

    names: list[str]
    labels: np.ndarray
    by: str
    note: str | None = None


def domain_codes(view: PoolView) -> tuple[list[str], np.ndarray]:
    """Sorted domain names ('(none)' for rows without one) and each row's index into them."""
    dom = view.frame.select(pl.col("domain").fill_null(NO_DOMAIN))["domain"]
    names = sorted(dom.unique().to_list())
    codes = dom.rank("dense").to_numpy().astype(np.int64) - 1
    return names, codes


def pool_strata(view: PoolView, by: str) -> Strata:
    """The strata of a pool: its domains (falling back to the map's clusters when no row has one) or clusters."""
    if by not in ("domain", "cluster"):
        raise ParameterError(f"stratify must be one of {', '.join(STRATIFY)}, got {by!r}")
    note = None
    if by == "domain":
        names, codes = domain_codes(view)
        if names != [NO_DOMAIN]:
            return Strata(names, codes, "domain")
    clusters = _clusters(view, by)
    uniq, codes = np.unique(clusters, return_inverse=True)
    names = [f"cluster {int(c)}" for c in uniq]
    if by == "domain":
        note = f"the pool has no domains: stratified over its {len(names)} k-means clusters of `curate map`"
    return Strata(names, codes.astype(np.int64), "cluster", note)


def _clusters(view: PoolView, by: str) -> np.ndarray:
    why = "no row of the pool has a domain, so " if by == "domain" else ""
    if view.run is not None and not (view.run.map_dir / "clusters.parquet").exists():
        raise ParameterError(
            f"stratify={by}: {why}the strata are the k-means clusters of the map, which is not built",
            f"run `curate map --run {view.run.root}` first" + (", or ingest a pool with a domain column" if why else ""),
        )
    try:
        return np.asarray(view.clusters(), dtype=np.int64)
    except ValueError as e:
        raise ParameterError(f"stratify={by}: {why}the strata are k-means clusters, and {e}") from None


# ---------------------------------------------------------------------------------------------------------
# domain mix


def mix_divergence(pool: Mapping[str, float], selected: Mapping[str, float]) -> dict[str, float | None]:
    """Total variation (0.5 * sum |p - q|) and KL(selected || pool) in nats between two count mixes."""
    keys = sorted(set(pool) | set(selected))
    p = np.asarray([float(pool.get(k, 0)) for k in keys])
    q = np.asarray([float(selected.get(k, 0)) for k in keys])
    if p.sum() <= 0 or q.sum() <= 0:
        return {"total_variation": None, "kl": None}
    p, q = p / p.sum(), q / q.sum()
    tv = 0.5 * float(np.abs(p - q).sum())
    nz = q > 0
    kl = float(np.sum(q[nz] * np.log(q[nz] / p[nz]))) if np.all(p[nz] > 0) else float("inf")
    return {"total_variation": tv, "kl": kl}


def domain_mix(view: PoolView, chosen: np.ndarray, excluded: np.ndarray | None = None) -> dict[str, Any]:
    """The selection's rows per domain against the pool's (rows not excluded), with their divergence."""
    names, codes = domain_codes(view)
    ok = np.ones(view.n, dtype=bool) if excluded is None else ~excluded
    pool = np.bincount(codes[ok], minlength=len(names))
    sel = np.bincount(codes[np.asarray(chosen, dtype=np.int64)], minlength=len(names))
    pool_d = {names[i]: int(pool[i]) for i in range(len(names))}
    sel_d = {names[i]: int(sel[i]) for i in range(len(names)) if sel[i] or pool[i]}
    return {"by": "domain", "pool": pool_d, "selected": sel_d, **mix_divergence(pool_d, sel_d)}


# ---------------------------------------------------------------------------------------------------------
# a stratum's rows as a pool


class SubPoolView(PoolView):
    """The rows `positions` of a parent view as a pool of their own (positions 0..len-1), read lazily.

    Embeddings, signals, cells, clusters and projection are the parent's rows; the kNN graph keeps only
    neighbours inside the subset (others become -1 / 0, moved to the end of each row).
    """

    def __init__(self, parent: PoolView, positions: np.ndarray, local: np.ndarray | None = None) -> None:
        super().__init__(None)
        self.run = parent.run
        self.parent = parent
        self.positions = np.asarray(positions, dtype=np.int64)
        self._local = local  # optional [parent.n] array: index of each parent row within its own subset

    @property
    def frame(self) -> pl.DataFrame:
        """The parent's pool columns at these rows."""
        if self._frame is None:
            self._frame = self.parent.frame[self.positions]
        return self._frame

    @property
    def n(self) -> int:
        """Rows in the subset."""
        return int(self.positions.size)

    def vectors(self) -> np.ndarray:
        """The parent's embeddings at these rows."""
        if self._vectors is None:
            self._vectors = self.parent.vectors()[self.positions]
        return self._vectors

    def in_pool(self) -> tuple[PoolView, np.ndarray | None]:
        """The parent's pool and these rows' positions in it."""
        pool, rows = self.parent.in_pool()
        return pool, (self.positions if rows is None else rows[self.positions])

    def row_vectors(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The parent's matrix and these rows in it (positions are ascending, as `_members` gives them)."""
        if self._vectors is not None or np.any(np.diff(self.positions) <= 0):
            return self.vectors(), None
        base, rows = self.parent.row_vectors()
        return base, (self.positions if rows is None else rows[self.positions])

    def has_signal(self, name: str) -> bool:
        """Whether the parent has signal `name`."""
        return name in self._signals or self.parent.has_signal(name)

    def signal_names(self) -> list[str]:
        """The parent's signals."""
        return self.parent.signal_names()

    def signal(self, name: str) -> np.ndarray:
        """The parent's signal at these rows."""
        if name not in self._signals:
            self._signals[name] = self.parent.signal(name)[self.positions]
        return self._signals[name]

    def cells(self) -> np.ndarray:
        """The parent's grid cells at these rows."""
        if self._cells is None:
            self._cells = self.parent.cells()[self.positions]
        return self._cells

    def clusters(self) -> np.ndarray:
        """The parent's clusters at these rows."""
        if self._clusters is None:
            self._clusters = self.parent.clusters()[self.positions]
        return self._clusters

    def projection(self) -> np.ndarray:
        """The parent's projection at these rows."""
        if self._projection is None:
            self._projection = self.parent.projection()[self.positions]
        return self._projection

    def knn(self) -> Any:
        """The parent's kNN graph restricted to neighbours inside the subset, in subset positions."""
        if self._knn is None:
            from index.knn import KnnGraph

            g = self.parent.knn()
            nb = np.asarray(g.neighbors[self.positions], dtype=np.int64)
            sims = np.asarray(g.sims[self.positions], dtype=np.float32)
            if self._local is None:
                local = np.full(self.parent.n, -1, dtype=np.int64)
                local[self.positions] = np.arange(self.n, dtype=np.int64)
                member = local
            else:
                member = np.full(self.parent.n, -1, dtype=np.int64)
                member[self.positions] = self._local[self.positions]
            ok = nb >= 0
            mapped = np.where(ok, member[np.where(ok, nb, 0)], -1)
            valid = mapped >= 0
            order = np.argsort(~valid, axis=1, kind="stable")
            mapped = np.take_along_axis(np.where(valid, mapped, -1), order, axis=1)
            sims = np.take_along_axis(np.where(valid, sims, 0.0).astype(np.float32), order, axis=1)
            self._knn = KnnGraph(neighbors=mapped, sims=sims)
        return self._knn


# ---------------------------------------------------------------------------------------------------------
# stratified selection


def select_stratified(
    selector: Selector,
    view: PoolView,
    budget: Budget,
    *,
    seed: int = 0,
    exclude: np.ndarray | None = None,
    by: str = "domain",
    mixture: Mapping[str, float] | None = None,
) -> Selection:
    """Run `selector` within each stratum of `view` (see the module doc) and merge the results."""
    if by == "none":
        raise ParameterError("a mixture gives the quotas of strata: pass stratify='domain' with it")
    strata = pool_strata(view, by)
    if mixture is not None and strata.by != "domain":
        raise ParameterError(
            f"a mixture weighs domains, but the strata are {strata.by}s"
            + (" (the pool has no domains)" if by == "domain" else ""),
            "use stratify=domain on a pool with a domain column, or drop the mixture",
        )
    n, m = view.n, len(strata.names)
    excluded = _mask(n, exclude)
    elig = ~excluded
    own = selector.eligible(view)
    if own is not None:
        elig &= np.asarray(own, dtype=bool)
    labels = strata.labels
    counts = np.bincount(labels[elig], minlength=m)
    weights, target, missing = _weights(strata, counts, mixture)
    tokens = view.tokens() if budget.kind == "tokens" else None
    if tokens is not None:
        tok = np.asarray(tokens, dtype=np.float64)[elig]
        if np.any(tok < 0) or not np.all(np.isfinite(tok)):  # a NaN would make its stratum's cap garbage
            raise ValueError("the `tokens` signal has negative or non-finite values")
        caps = np.bincount(labels[elig], weights=tok, minlength=m)
        caps = np.floor(caps).astype(np.int64)
        total = int(budget.tokens)
    else:
        caps = counts.astype(np.int64)
        total = min(budget.resolve(n), int(elig.sum()))

    members = _members(labels, m)
    if selector.stratify_scope == "pool":
        taken, quotas, first, rounds, ran_out, filled = _pool_scope(
            selector, view, budget, seed, excluded, members, labels, weights, caps, total, tokens)
    else:
        taken, quotas, first, rounds, ran_out, filled = _stratum_scope(
            selector, view, budget, seed, excluded, members, weights, caps, total, tokens, elig)
    return _merge(selector, view, budget, seed, excluded, strata, taken, quotas, first, rounds, ran_out,
                  counts, weights, target, missing, tokens, filled)


def _weights(
    strata: Strata, counts: np.ndarray, mixture: Mapping[str, float] | None
) -> tuple[list[float], str, list[str]]:
    """Quota weights per stratum: eligible rows, or the mixture's weight of each domain (0 when it names none)."""
    if mixture is None:
        return [int(c) for c in counts], "pool", []
    w = {str(k): float(v) for k, v in mixture.items()}
    bad = {k: v for k, v in w.items() if not np.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"mixture weights must be finite and >= 0, got {bad}")
    missing = sorted(set(w) - set(strata.names))
    weights = [w.get(name, 0.0) for name in strata.names]
    if not any(x > 0 and c > 0 for x, c in zip(weights, counts, strict=True)):
        raise ValueError(
            f"the mixture gives no weight to any domain of the pool with eligible rows "
            f"(mixture: {sorted(w)}; pool: {strata.names})"
        )
    return weights, "mixture", missing


def _members(labels: np.ndarray, m: int) -> list[np.ndarray]:
    """Positions of each stratum, ascending (stratum labels as 16/32-bit ints: numpy's stable sort is then a
    radix sort, ~10x faster on a million rows than on int64)."""
    small = labels.astype(np.int16 if m < 2**15 else np.int32, copy=False)
    order = np.argsort(small, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(m + 1))
    return [order[bounds[s] : bounds[s + 1]] for s in range(m)]


def _sub_budget(budget: Budget, quota: int) -> Budget:
    return Budget(tokens=int(quota)) if budget.kind == "tokens" else Budget(rows=int(quota))


def _used(t: Taken, tokens: np.ndarray | None, rows: np.ndarray) -> int:
    """What a stratum's selection spent: rows, or tokens (of `rows`, its pool positions)."""
    if tokens is None:
        return int(t.positions.size)
    return int(round(float(np.asarray(tokens, dtype=np.float64)[rows].sum())))


def _stratum_scope(selector, view, budget, seed, excluded, members, weights, caps, total, tokens, elig):
    """Run the selector on each stratum's rows alone; re-apportion while strata run out; with a token budget,
    offer the fragments left to the strata again (`_fill_leftover`)."""
    m = len(members)
    caps = caps.copy()
    quotas = largest_remainder(total, weights, caps)
    first = quotas.copy()
    done: dict[int, tuple[int, Taken]] = {}  # stratum -> (quota it ran with, result in pool positions)
    ran_out: set[int] = set()
    subs: dict[int, SubPoolView] = {}

    def run(s: int, q: int) -> Taken:
        rows = members[s]
        sub = subs.setdefault(s, SubPoolView(view, rows))
        t = selector.take(sub, _sub_budget(budget, q), seed=seed, exclude=np.flatnonzero(excluded[rows]),
                          partial=True)
        t.positions = rows[t.positions]
        return t

    rounds = 0
    for _ in range(4 * m + 4):
        rounds += 1
        short = False
        for s in range(m):
            q = int(quotas[s])
            if q == 0:
                done[s] = (0, _empty())
                continue
            if s in done and done[s][0] == q:
                continue
            t = run(s, q)
            done[s] = (q, t)
            used = _used(t, tokens, t.positions)
            if t.ran_out and used < q:
                caps[s] = used
                ran_out.add(s)
                short = True
        if not short:
            break
        quotas = largest_remainder(total, weights, caps)
    taken = {s: done[s][1] for s in range(m)}
    filled = 0
    if tokens is not None:
        filled = _fill_leftover(taken, quotas, run, tokens, total, weights, [r[elig[r]] for r in members])
    return taken, quotas, first, rounds, ran_out, filled


def _fill_leftover(taken, quotas, retake, tokens, total, weights, candidates) -> int:
    """Spend the fragments a token budget leaves: a stratum rarely spends its quota exactly, and what each one
    leaves (less than its next ranked row) adds up. The pooled leftover is offered to each stratum in turn,
    largest shortfall first, that still has an unselected candidate short enough: it runs again with its spend
    plus the leftover (`retake(s, quota)`), and the new result is kept when it spends more. A stratum whose
    retake gained nothing is not run again (the leftover only shrinks; rows its selector cannot rank stay
    unranked), so a fill costs at most one fruitless run per stratum. Up to 4 passes, until none gains. Updates
    `taken` and `quotas` in place; returns the tokens gained."""
    tok = np.asarray(tokens, dtype=np.float64)
    used = {s: _used(taken[s], tokens, taken[s].positions) for s in range(len(candidates))}
    done: set[int] = set()
    gained = 0
    for _ in range(4):
        progress = False
        for s in sorted(used, key=lambda s: (used[s] - int(quotas[s]), s)):
            left = total - sum(used.values())
            if left <= 0:
                break
            if s in done or weights[s] <= 0:
                continue
            free = np.setdiff1d(candidates[s], taken[s].positions)
            if free.size == 0 or tok[free].min() > left:
                continue
            t = retake(s, used[s] + left)
            u = _used(t, tokens, t.positions)
            if u > used[s]:
                gained += u - used[s]
                taken[s], used[s], quotas[s] = t, u, used[s] + left
                progress = True
            else:
                done.add(s)
        if not progress:
            break
    return gained


def _pool_scope(selector, view, budget, seed, excluded, members, labels, weights, caps, total, tokens):
    """Rank the whole pool once; each stratum takes its quota of its own rows in that order."""
    m = len(members)
    ranking = selector.rank_pool(view, seed=seed, budget=budget)
    pos = np.asarray(ranking.positions, dtype=np.int64).ravel()
    if np.unique(pos).size != pos.size or (pos.size and (pos.min() < 0 or pos.max() >= view.n)):
        raise ValueError(f"{selector.name}: the pool ranking repeats a position or leaves 0..{view.n - 1}")
    w = np.ones(pos.size) if ranking.weights is None else np.asarray(ranking.weights, dtype=np.float64)
    reasons = ranking.reasons
    keep = ~excluded[pos]
    idx = np.flatnonzero(keep)
    per = _split(idx, labels[pos[idx]], m)
    if tokens is None:
        ranked_caps = np.asarray([p.size for p in per], dtype=np.int64)
    else:
        tok = np.asarray(tokens, dtype=np.float64)
        ranked_caps = np.asarray([np.floor(tok[pos[p]].sum()) for p in per], dtype=np.int64)
    first = largest_remainder(total, weights, caps)
    quotas = largest_remainder(total, weights, np.minimum(caps, ranked_caps))
    ran_out = {s for s in range(m) if ranked_caps[s] < first[s]}

    def cut(s: int, q: int) -> Taken:
        p = per[s]
        take = _take_within_tokens(pos[p], tokens, q) if tokens is not None else np.arange(min(q, p.size))
        sel = p[take]
        return Taken(
            positions=pos[sel],
            weights=w[sel],
            reasons=[reasons] * sel.size if isinstance(reasons, str) else [reasons[i] for i in sel],
            stats={},
            n_ranked=int(p.size),
            ran_out=bool(take.size == p.size),
        )

    out = {s: cut(s, int(quotas[s])) for s in range(m)}
    filled = 0
    if tokens is not None:
        filled = _fill_leftover(out, quotas, cut, tokens, total, weights, [pos[p] for p in per])
    stats = dict(ranking.stats)
    if excluded.any():
        stats["excluded_rows"] = int(excluded.sum())
    out[-1] = Taken(np.zeros(0, dtype=np.int64), np.zeros(0), [], stats, int(pos.size), False)
    return out, quotas, first, 1, ran_out, filled


def _split(idx: np.ndarray, lab: np.ndarray, m: int) -> list[np.ndarray]:
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(m + 1))
    return [idx[order[bounds[s] : bounds[s + 1]]] for s in range(m)]


def _empty() -> Taken:
    return Taken(np.zeros(0, dtype=np.int64), np.zeros(0), [], {}, 0, False)


def _merge(selector, view, budget, seed, excluded, strata, taken, quotas, first, rounds, ran_out, counts,
           weights, target, missing, tokens, filled) -> Selection:
    """Interleave the strata's selections by within-stratum progress and record quotas and mix."""
    m = len(strata.names)
    parts, keys, labs = [], [], []
    for s in range(m):
        t = taken[s]
        c = t.positions.size
        parts.append(t)
        keys.append((np.arange(c) + 0.5) / max(c, 1))
        labs.append(np.full(c, s, dtype=np.int64))
    key, lab = np.concatenate(keys), np.concatenate(labs)
    order = np.lexsort((lab, key))
    pos = np.concatenate([t.positions for t in parts])[order]
    w = np.concatenate([np.asarray(t.weights, dtype=np.float64) for t in parts])[order]
    word = strata.by
    reasons_all = [f"{word} {strata.names[s].removeprefix('cluster ')}: {r}"
                   for s, t in enumerate(parts) for r in t.reasons]
    reasons = [reasons_all[i] for i in order]

    per: dict[str, Any] = {}
    passed = 0
    for s, name in enumerate(strata.names):
        t = parts[s]
        used = _used(t, tokens, t.positions)
        short = s in ran_out
        entry: dict[str, Any] = {
            "eligible": int(counts[s]),
            "weight": float(weights[s]),
            "quota": int(first[s]),
            "selected": int(t.positions.size),
            "ran_out": short,
        }
        if tokens is not None:
            entry["tokens"] = used
        if int(quotas[s]) != int(first[s]):
            entry["quota_after_passing_on"] = int(quotas[s])
        if t.stats:
            entry["stats"] = t.stats
        if short:  # what it gave up of its first quota (a stratum that ran out after receiving more gave none)
            passed += max(0, int(first[s]) - used)
        per[name] = entry
    info: dict[str, Any] = {
        "by": strata.by,
        "requested": "domain" if strata.note else strata.by,
        "scope": selector.stratify_scope,
        "target": target,
        "unit": "tokens" if tokens is not None else "rows",
        "passed_on": int(passed),
        "rounds": int(rounds),
        "strata": per,
    }
    if tokens is not None:
        info["leftover_filled"] = int(filled)
    if strata.note:
        info["note"] = strata.note
    if missing:
        info["mixture_domains_not_in_pool"] = missing
    sel_counts = {name: e["selected"] for name, e in per.items()}
    target_counts = {name: float(weights[s]) for s, name in enumerate(strata.names)}
    info.update({f"{k}_vs_target": v for k, v in mix_divergence(target_counts, sel_counts).items()})
    stats = dict(taken[-1].stats) if -1 in taken else {}
    stats["stratify"] = info
    if strata.note:
        stats["note"] = strata.note
    t = Taken(pos, w, reasons, stats, int(pos.size), False)
    return selector.selection(view, t, budget, seed=seed, excluded=excluded)
