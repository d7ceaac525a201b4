"""Percentile-rank normalisation (ties get the average rank), globally or within groups."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile_rank(values: np.ndarray, groups: Sequence | np.ndarray | None = None) -> np.ndarray:
    """Map values to [0, 1] by rank: (average rank - 1) / (n - 1) within each group.

    Tied values share their average rank; a group of one row gets 0.5; NaN stays NaN and is left out
    of the ranking. `groups` (one label per row, None allowed as its own group) ranks within groups.
    """
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    if groups is None:
        labels = np.zeros(len(values), dtype=np.int64)
    else:
        keys = ["\x00none" if g is None else str(g) for g in groups]
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} group labels for {len(values)} values")
        _, labels = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    for g in np.unique(labels):
        idx = np.flatnonzero((labels == g) & ~np.isnan(values))
        if len(idx) == 0:
            continue
        if len(idx) == 1:
            out[idx] = 0.5
            continue
        r = rankdata(values[idx], method="average")
        out[idx] = (r - 1.0) / (len(idx) - 1.0)
    return out
