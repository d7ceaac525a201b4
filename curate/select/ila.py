"""ILA: round-robin over coverage-grid cells, taking the deepest rows first (methods.md 4.3).

Follows Wu et al., "Accelerate Scaling of LLM Alignment via Quantifying the Coverage and Depth of Instruction
Set" (arXiv 2509.06463), as reconstructed in methods.md 4.3: rows live in cells of a uniform grid over a 2-D
projection; each pass takes the highest relative-depth unselected row of every non-empty cell, so the first pass
maximises coverage and later passes add depth.

Deviations / engine extras (the paper's exact procedure was not reachable):
- Per-cell quotas ∝ cell mass^τ (τ = 0: plain round-robin). Rule (Adams' divisor method): the r-th row
  (r = 0, 1, ...) of cell c gets the key r / w_c with w_c = (n_c / n_min)^τ, n_c the cell's eligible rows; rows
  are taken in (key, cell order). So every cell gets its first row at key 0 (the first pass is always one row
  per non-empty cell), and once the budget is spent cell c holds min(n_c, 1 + floor(t · w_c)) rows, t the
  key reached: proportional to n_c^τ beyond the first row. With τ = 0 the key is the pass number.
- The last, partial level (rows sharing the key at which the budget runs out) is filled by depth, highest
  first, instead of cell order. For the first pass this is the paper's rule "if B < #cells, fill with the
  cells whose best row has the highest depth"; for later passes it keeps the extra rows as deep as possible.
- Optional depth threshold: rows with depth below it (or non-finite depth) are never taken.
- Ties in depth are broken by pool position (lower first), so the selection is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curate.select.budget import Budget
from curate.select.ifd_filter import IFD_SIGNAL, IFDFilter, resolve_max_ifd
from curate.select.selector import Ranking, Selector, ShortRankingError, register_selector
from curate.view import PoolView

CELL_ORDERS = ("random", "best")


@dataclass
class ILAResult:
    """Chosen pool positions in selection order, the pass (round) each was taken in, and summary stats."""

    positions: np.ndarray  # int64 [B]
    passes: np.ndarray  # int64 [B]: rank of the row within its cell (0 = first pass)
    stats: dict[str, Any] = field(default_factory=dict)


def _check(
    cells: np.ndarray, depth: np.ndarray, tau: float, cell_order: str
) -> tuple[np.ndarray, np.ndarray]:
    cells = np.asarray(cells)
    depth = np.asarray(depth, dtype=np.float64)
    if cells.ndim != 1 or depth.ndim != 1 or cells.shape[0] != depth.shape[0]:
        raise ValueError(f"cells {cells.shape} and depth {depth.shape} must be 1-D arrays of the same length")
    if not np.issubdtype(cells.dtype, np.integer):
        raise ValueError(f"cells must be integer cell ids, got dtype {cells.dtype}")
    if tau < 0 or not np.isfinite(tau):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    if cell_order not in CELL_ORDERS:
        raise ValueError(f"cell_order must be one of {CELL_ORDERS}, got {cell_order!r}")
    return cells.astype(np.int64, copy=False), depth


def _cell_rank(uniq: np.ndarray, best: np.ndarray, cell_order: str, seed: int) -> np.ndarray:
    """Position of each (sorted unique) cell in the visiting order."""
    n = uniq.size
    if cell_order == "random":
        order = np.random.default_rng(seed).permutation(n)
    else:  # "best": the cell whose best row is deepest first; ties by cell id
        order = np.lexsort((uniq, -best))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    return rank


def _weights(counts: np.ndarray, tau: float) -> np.ndarray:
    if tau == 0:
        return np.ones(counts.size, dtype=np.float64)
    return (counts.astype(np.float64) / float(counts.min())) ** tau


def _stats(cells: np.ndarray, depth: np.ndarray, chosen: np.ndarray, passes: np.ndarray, n_elig: int) -> dict:
    pool_cells = np.unique(cells).size
    hit = np.unique(cells[chosen]).size if chosen.size else 0
    return {
        "coverage": hit / pool_cells if pool_cells else 0.0,
        "cells_hit": int(hit),
        "cells_nonempty": int(pool_cells),
        "mean_depth": float(depth[chosen].mean()) if chosen.size else float("nan"),
        "n_passes": int(passes.max() + 1) if passes.size else 0,
        "n_eligible": int(n_elig),
        "n_selected": int(chosen.size),
    }


def ila_select(
    cells: np.ndarray,
    depth: np.ndarray,
    budget: int,
    *,
    tau: float = 0.0,
    cell_order: str = "random",
    threshold: float | None = None,
    seed: int = 0,
) -> ILAResult:
    """Vectorised ILA round-robin: sort by (cell, -depth), rank within cell, order by (key, cell order).

    `cells` int [N] grid cell per row, `depth` float [N] (relative depth); returns up to `budget` positions.
    No Python loop over rows, so 1M rows take well under a second.
    """
    cells, depth = _check(cells, depth, tau, cell_order)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    elig = np.isfinite(depth)
    if threshold is not None:
        elig &= depth >= threshold
    pos = np.flatnonzero(elig).astype(np.int64)
    if pos.size == 0 or budget == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ILAResult(empty, empty, _stats(cells, depth, empty, empty, pos.size))
    c, d = cells[pos], depth[pos]
    o = np.lexsort((pos, -d, c))  # by cell, then deepest first, then position
    pos, c, d = pos[o], c[o], d[o]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    counts = np.diff(np.r_[starts, c.size])
    uniq = c[starts]
    cell_idx = np.repeat(np.arange(uniq.size), counts)
    rank = np.arange(c.size, dtype=np.int64) - np.repeat(starts, counts)
    key = rank / _weights(counts, tau)[cell_idx]
    crank = _cell_rank(uniq, d[starts], cell_order, seed)[cell_idx]

    order = np.lexsort((crank, key))
    cut = key[order[min(budget, order.size) - 1]]
    if budget >= order.size or key[order[budget]] != cut:  # the budget ends on a complete level
        take = order[:budget]
    else:
        full = order[key[order] < cut]
        level = np.flatnonzero(key == cut)
        level = level[np.lexsort((pos[level], -d[level]))][: budget - full.size]
        take = np.concatenate([full, level])
    chosen, passes = pos[take], rank[take]
    return ILAResult(chosen, passes, _stats(cells, depth, chosen, passes, elig.sum()))


def ila_select_reference(
    cells: np.ndarray,
    depth: np.ndarray,
    budget: int,
    *,
    tau: float = 0.0,
    cell_order: str = "random",
    threshold: float | None = None,
    seed: int = 0,
) -> ILAResult:
    """Naive ILA with Python loops (per-cell lists, pass by pass): the reference for tests and benchmarks."""
    cells, depth = _check(cells, depth, tau, cell_order)
    members: dict[int, list[tuple[float, int]]] = {}
    for i in range(cells.shape[0]):
        v = float(depth[i])
        if v != v or v in (float("inf"), float("-inf")):
            continue
        if threshold is not None and v < threshold:
            continue
        members.setdefault(int(cells[i]), []).append((-v, i))
    uniq = np.array(sorted(members), dtype=np.int64)
    lists = [sorted(members[int(u)]) for u in uniq]
    if not lists or budget == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ILAResult(empty, empty, _stats(cells, depth, empty, empty, 0))
    best = np.array([-lst[0][0] for lst in lists])
    crank = _cell_rank(uniq, best, cell_order, seed)
    visit = sorted(range(len(lists)), key=lambda j: crank[j])
    w = _weights(np.array([len(lst) for lst in lists]), tau)
    nxt = [0] * len(lists)
    chosen: list[int] = []
    passes: list[int] = []
    while len(chosen) < budget:
        live = [j for j in visit if nxt[j] < len(lists[j])]
        if not live:
            break
        k = min(nxt[j] / w[j] for j in live)
        level = [j for j in live if nxt[j] / w[j] == k]  # in cell order
        if len(chosen) + len(level) > budget:  # partial level: deepest candidates first
            level = sorted(level, key=lambda j: lists[j][nxt[j]])[: budget - len(chosen)]
        for j in level:
            chosen.append(lists[j][nxt[j]][1])
            passes.append(nxt[j])
            nxt[j] += 1
    ch = np.array(chosen, dtype=np.int64)
    ps = np.array(passes, dtype=np.int64)
    return ILAResult(ch, ps, _stats(cells, depth, ch, ps, sum(len(x) for x in lists)))


# ---------------------------------------------------------------------------------------------------------
# Selector


@register_selector
class ILASelector(IFDFilter, Selector):
    """ILA round-robin over coverage-grid cells, deepest (relative-depth) row per cell per pass.

    paper: Wu et al., arXiv 2509.06463 (ILA), selection as reconstructed in methods.md 4.3.
    deviations: see `curate.select.ila` (quota exponent τ by Adams' divisor method; partial last level
    filled by depth; optional depth threshold). Cells come from the run's map (`curate map`); the depth
    signal defaults to `relative_depth`. Stats: `grid_coverage` (cells hit / non-empty pool cells),
    `mean_depth`, `n_passes`. `max_ifd` ("auto": 1.0 when `signal` is `ifd`, else off): rows with
    IFD >= max_ifd are never taken (`curate.select.ifd_filter`).
    """

    name = "ila"
    paper = "ILA: Wu et al., Accelerate Scaling of LLM Alignment (arXiv 2509.06463), methods.md 4.3"
    deviations = "per-cell quota ∝ mass^tau (Adams divisor); last partial level by depth; depth threshold"

    def __init__(
        self,
        signal: str = "relative_depth",
        tau: float = 0.0,
        cell_order: str = "random",
        threshold: float | None = None,
        max_ifd: float | str | None = "auto",
    ) -> None:
        if cell_order not in CELL_ORDERS:
            raise ValueError(f"ila: cell_order must be one of {CELL_ORDERS}, got {cell_order!r}")
        if not (float(tau) >= 0):
            raise ValueError(f"ila: tau must be >= 0, got {tau}")
        self.signal = signal
        self.tau = float(tau)
        self.cell_order = cell_order
        self.threshold = None if threshold is None else float(threshold)
        self.max_ifd = resolve_max_ifd(max_ifd, signal == IFD_SIGNAL)

    def eligible(self, view: PoolView) -> np.ndarray:
        """Rows with a finite depth (at least `threshold` when set) that the IFD filter keeps."""
        depth = np.asarray(view.signal(self.signal), dtype=np.float64)
        ok = np.isfinite(depth)
        keep = self.ifd_keep(view)
        ok = ok if keep is None else ok & keep
        return ok if self.threshold is None else ok & (depth >= self.threshold)

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        depth = view.signal(self.signal)  # first: a missing signal is named with the command that makes it
        cells = view.cells()
        keep = self.ifd_keep(view)
        res = ila_select(
            cells,
            depth if keep is None else np.where(keep, depth, np.nan),
            int(k),
            tau=self.tau,
            cell_order=self.cell_order,
            threshold=self.threshold,
            seed=seed,
        )
        c, d = cells[res.positions], depth[res.positions]
        reasons = [
            f"ila: pass {p}, cell {ci}, {self.signal}={di:.4g}"
            for p, ci, di in zip(res.passes.tolist(), c.tolist(), d.tolist(), strict=True)
        ]
        st = dict(res.stats)
        stats = {
            "grid_coverage": st.pop("coverage"),
            **st,
            "signal": self.signal,
            **self.ifd_stats(view, keep),
        }
        ranking = Ranking(res.positions, reasons=reasons, stats=stats)
        if res.positions.size < min(k, view.n) and budget.kind != "tokens":
            rule = "finite depth" if self.threshold is None else f"depth >= {self.threshold:g}"
            if keep is not None:
                rule += f", {IFD_SIGNAL} < {self.max_ifd:g} (max_ifd; -p max_ifd=none turns it off)"
            raise ShortRankingError(
                f"ila: only {res.stats['n_eligible']} rows are eligible ({rule} in signal {self.signal!r}), "
                f"the budget needs {k}",
                ranking,
            )
        return ranking
