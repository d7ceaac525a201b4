"""ILA-style coverage on a uniform grid over projected coordinates.

Each row gets the cell `floor((z - min) / S)` per dimension, folded into one int64 id (row-major, mixed radix).
Coverage of a subset = non-empty cells it occupies / non-empty cells of the pool (methods.md 4.2, table row 10).
`density_coverage` is the density-weighted variant: the share of pool rows that lie in cells the subset touches,
so covering a crowded cell counts more than covering an outlier cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

_MAX_RADIX = np.iinfo(np.int64).max // 2


@dataclass
class GridCells:
    """Cell id per row plus the grid that produced it (cell size, origin, cells per dimension)."""

    cells: np.ndarray  # int64 [N]
    cell_size: float
    mins: np.ndarray  # float64 [D]
    shape: tuple[int, ...]  # cells per dimension
    n_nonempty: int
    info: dict[str, Any] = field(default_factory=dict)


def _check_coords(coords: np.ndarray) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[0] == 0:
        raise ValueError(f"coords must be a non-empty 2-D array [N, D], got shape {coords.shape}")
    if not np.isfinite(coords).all():
        bad = int(np.argwhere(~np.isfinite(coords))[0, 0])
        raise ValueError(f"coords has a non-finite value at row {bad}")
    return coords


def _cells_for(coords: np.ndarray, mins: np.ndarray, size: float) -> tuple[np.ndarray, tuple[int, ...]]:
    scaled = np.floor((coords - mins) / size)
    if float(np.prod(scaled.max(axis=0) + 1.0)) > _MAX_RADIX:  # checked in float: the int cast would wrap
        raise ValueError(f"a grid of cell_size {size:g} over these coordinates overflows int64 ids: choose a larger "
                         "cell_size")
    idx = scaled.astype(np.int64)
    np.maximum(idx, 0, out=idx)
    shape = tuple(int(v) + 1 for v in idx.max(axis=0))
    total = 1
    for s in shape:
        total *= s
    if total > _MAX_RADIX:
        raise ValueError(f"grid of {shape} cells overflows int64 ids: choose a larger cell_size")
    cells = np.zeros(coords.shape[0], dtype=np.int64)
    for d, s in enumerate(shape):
        cells *= s
        cells += idx[:, d]
    return cells, shape


def _n_unique(cells: np.ndarray) -> int:
    return int(np.unique(cells).size)


def assign_cells(
    coords: np.ndarray,
    *,
    cell_size: float | None = None,
    target_cells: int | None = None,
    max_iter: int = 60,
) -> GridCells:
    """Assign every row of `coords` [N, D] to a grid cell.

    Give `cell_size` (S) directly, or `target_cells`: S is then found by bisection on log S so that the number
    of non-empty cells is as close as possible to the target (the count falls, not always strictly, as S grows).
    """
    coords = _check_coords(coords)
    mins = coords.min(axis=0)
    if cell_size is not None and target_cells is not None:
        raise ValueError("give cell_size or target_cells, not both")
    if cell_size is not None:
        if not cell_size > 0:
            raise ValueError(f"cell_size must be > 0, got {cell_size}")
        cells, shape = _cells_for(coords, mins, float(cell_size))
        n = _n_unique(cells)
        return GridCells(cells, float(cell_size), mins, shape, n, {"cell_size": float(cell_size), "n_nonempty": n,
                                                                   "mins": mins.tolist(), "shape": list(shape)})
    if target_cells is None:
        raise ValueError("give cell_size or target_cells")
    if target_cells < 1:
        raise ValueError(f"target_cells must be >= 1, got {target_cells}")
    extent = float((coords.max(axis=0) - mins).max())
    if extent == 0.0:  # every point identical: one cell whatever S
        cells = np.zeros(coords.shape[0], dtype=np.int64)
        shape = (1,) * coords.shape[1]
        return GridCells(cells, 1.0, mins, shape, 1, {"cell_size": 1.0, "n_nonempty": 1, "mins": mins.tolist(),
                                                      "shape": list(shape), "target_cells": int(target_cells)})
    dim = coords.shape[1]
    # hi: one cell per dimension (count 1); lo: small enough to separate far more cells than the target.
    hi = extent * 1.000001
    lo = extent / max(2.0, float(target_cells) ** (1.0 / dim) * 64.0)
    n_lo = 0
    for _ in range(40):
        try:
            n_lo = _n_unique(_cells_for(coords, mins, lo)[0])
        except ValueError:  # lo so small the ids overflow: the target is surely reached above it
            lo *= 4.0
            continue
        if n_lo > target_cells or n_lo == coords.shape[0]:
            break
        lo /= 8.0  # tight clusters: go finer until the count passes the target (or every row is alone)
    best = (abs(1 - target_cells), hi)
    if abs(n_lo - target_cells) < best[0]:
        best = (abs(n_lo - target_cells), lo)
    if n_lo > target_cells:
        a, b = np.log(lo), np.log(hi)  # count(a) > target >= count(b)
        for _ in range(max_iter):
            mid = 0.5 * (a + b)
            n_mid = _n_unique(_cells_for(coords, mins, float(np.exp(mid)))[0])
            gap = abs(n_mid - target_cells)
            if gap < best[0] or (gap == best[0] and np.exp(mid) < best[1]):
                best = (gap, float(np.exp(mid)))
            if n_mid == target_cells:
                break
            if n_mid > target_cells:
                a = mid
            else:
                b = mid
            if b - a < 1e-9:
                break
    size = float(best[1])
    cells, shape = _cells_for(coords, mins, size)
    n = _n_unique(cells)
    return GridCells(cells, size, mins, shape, n, {"cell_size": size, "n_nonempty": n, "mins": mins.tolist(),
                                                  "shape": list(shape), "target_cells": int(target_cells)})


def _cells_array(cells: GridCells | np.ndarray) -> np.ndarray:
    arr = cells.cells if isinstance(cells, GridCells) else np.asarray(cells)
    if arr.ndim != 1:
        raise ValueError(f"cells must be 1-D, got shape {arr.shape}")
    return arr


def _positions(subset_positions: np.ndarray, n: int) -> np.ndarray:
    pos = np.asarray(subset_positions, dtype=np.int64).ravel()
    if pos.size and (pos.min() < 0 or pos.max() >= n):
        bad = pos[(pos < 0) | (pos >= n)][0]
        raise IndexError(f"subset position {int(bad)} is outside the pool of {n} rows")
    return pos


def coverage(cells: GridCells | np.ndarray, subset_positions: np.ndarray) -> float:
    """Non-empty pool cells the subset occupies / non-empty pool cells."""
    arr = _cells_array(cells)
    pos = _positions(subset_positions, arr.size)
    return float(np.unique(arr[pos]).size / np.unique(arr).size)


def density_coverage(cells: GridCells | np.ndarray, subset_positions: np.ndarray) -> float:
    """Share of pool rows lying in a cell the subset occupies (coverage weighted by cell mass)."""
    arr = _cells_array(cells)
    pos = _positions(subset_positions, arr.size)
    covered = np.unique(arr[pos])
    return float(np.isin(arr, covered).sum() / arr.size)


def coverage_curve(
    cells: GridCells | np.ndarray, order: np.ndarray, budgets: np.ndarray | list[int], *, density: bool = False
) -> np.ndarray:
    """Coverage of `order[:b]` for every b in `budgets`, from one pass over `order`.

    With `density=True`, the density-weighted coverage instead.
    """
    arr = _cells_array(cells)
    order = _positions(order, arr.size)
    budgets = np.asarray(budgets, dtype=np.int64)
    if budgets.size and (budgets.min() < 0 or budgets.max() > order.size):
        raise ValueError(f"budgets must lie in [0, {order.size}] (the length of order)")
    uniq, dense, counts = np.unique(arr, return_inverse=True, return_counts=True)
    seq = dense.ravel()[order]
    _, first = np.unique(seq, return_index=True)
    gain = np.zeros(order.size + 1, dtype=np.float64)
    if density:
        gain[first + 1] = counts[seq[first]] / arr.size
    else:
        gain[first + 1] = 1.0 / uniq.size
    cum = np.cumsum(gain)
    return cum[budgets]
