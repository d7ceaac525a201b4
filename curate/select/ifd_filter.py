"""The IFD filter shared by selectors that can rank by IFD (`deita`, `ila`, `top-signal`, `miw`): `max_ifd`.

IFD (Cherry / Superfiltering) is the response's loss with the prompt over its loss without it. A row with
IFD >= 1 has a response the prompt does not help to predict (or makes harder); the IFD papers drop such rows
before ranking, because ranking by IFD otherwise puts them first. `max_ifd`:

- "auto" (the default): 1.0 when IFD is the selector's ranking signal (or one factor of Deita's product),
  else off;
- a number: rows whose `ifd` signal is >= that number are never ranked (whatever the ranking signal);
- None (or "none"): off.

Rows with a NaN IFD are left to the selector (a selector ranking by IFD cannot rank them anyway). The filter
is part of a selector's `eligible` rows, so stratified selection sizes its quotas after it, and each
selection's stats (and the export manifest, which carries them) say how many rows it removed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from curate.errors import ParameterError
from curate.view import PoolView

IFD_SIGNAL = "ifd"
AUTO = "auto"
DEFAULT_MAX_IFD = 1.0


def resolve_max_ifd(max_ifd: float | str | None, ranks_by_ifd: bool) -> float | None:
    """The threshold in force: "auto" -> 1.0 when the selector ranks by IFD, else None; None/"none" -> None."""
    if isinstance(max_ifd, str):
        text = max_ifd.strip().lower()
        if text == AUTO:
            return DEFAULT_MAX_IFD if ranks_by_ifd else None
        if text in ("none", "off", "null", ""):
            return None
        try:
            max_ifd = float(text)
        except ValueError:
            raise ParameterError(
                f"max_ifd must be a number, 'auto' or None, got {max_ifd!r}", "e.g. -p max_ifd=1.0 or -p max_ifd=none"
            ) from None
    if max_ifd is None:
        return None
    if isinstance(max_ifd, bool) or not math.isfinite(float(max_ifd)):
        raise ParameterError(f"max_ifd must be a finite number, 'auto' or None, got {max_ifd!r}")
    return float(max_ifd)


class IFDFilter:
    """Mixin for selectors with a `max_ifd` attribute (resolved by `resolve_max_ifd`)."""

    max_ifd: float | None

    def ifd_keep(self, view: PoolView) -> np.ndarray | None:
        """Bool [N]: False where the row's IFD is >= `max_ifd` (NaN IFD kept); None when the filter is off."""
        if self.max_ifd is None:
            return None
        ifd = np.asarray(view.signal(IFD_SIGNAL), dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return ~(ifd >= self.max_ifd)

    def ifd_stats(self, view: PoolView, keep: np.ndarray | None, excluded: np.ndarray | None = None) -> dict[str, Any]:
        """{"ifd_filter": {...}} with the rows removed (among rows not otherwise `excluded`), or {} when off."""
        if keep is None:
            return {}
        ok = np.ones(view.n, dtype=bool) if excluded is None else ~np.asarray(excluded, dtype=bool)
        return {
            "ifd_filter": {
                "signal": IFD_SIGNAL,
                "max_ifd": self.max_ifd,
                "rule": f"rows with {IFD_SIGNAL} >= max_ifd are not ranked",
                "removed": int((~keep & ok).sum()),
                "rows": int(ok.sum()),
            }
        }

    def filter_stats(self, view: PoolView, excluded: np.ndarray | None = None) -> dict[str, Any]:
        """Pool-level count of the rows the filter removed (added to every selection's stats)."""
        return self.ifd_stats(view, self.ifd_keep(view), excluded)
