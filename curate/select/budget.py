"""Budgets (rows, a fraction or tokens) and taking a ranking's rows within one: shared by every selector.

Budgets are applied centrally by `Selector.select`, so a selector never counts tokens itself:
- `Budget(rows=R)` / `Budget(fraction=F)`: `k = min(R, N)` / `k = round(F * N)` (half up, exact: F is taken as
  the decimal it prints as, so "29%" of 50 rows is 14.5 -> 15); the first `k` ranked rows are taken.
- `Budget(tokens=T)`: per-row token counts come from the `tokens` signal (prompt + response tokens;
  `curate score --signal tokens` computes it). `k` passed to `rank` is an upper bound: the number of rows that
  fit if the shortest rows were chosen. Rows are then taken in rank order; **a row that would overflow the
  remaining budget is skipped and the scan continues** down the ranking (so a long row never blocks shorter
  later ones), until the ranking ends or no remaining row could fit. The selection is therefore an ordered
  subsequence of the ranking whose token total is <= T.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from curate.errors import ParameterError

#: the signal holding prompt + response tokens per row, which a token budget reads

_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|tok|tokens|rows)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """How much to select: exactly one of `rows`, `tokens` (prompt+response tokens) or `fraction` of the pool."""

    rows: int | None = None
    tokens: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        set_ = [k for k in ("rows", "tokens", "fraction") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"a Budget needs exactly one of rows, tokens, fraction; got {set_ or 'none'}")
        if self.rows is not None and (int(self.rows) != self.rows or self.rows < 0):
            raise ValueError(f"Budget rows must be a non-negative integer, got {self.rows!r}")
        if self.tokens is not None and (int(self.tokens) != self.tokens or self.tokens < 0):
            raise ValueError(f"Budget tokens must be a non-negative integer, got {self.tokens!r}")
        if self.fraction is not None and not (0.0 <= float(self.fraction) <= 1.0):
            raise ValueError(f"Budget fraction must lie in [0, 1], got {self.fraction!r}")

    @property
    def kind(self) -> str:
        """'rows', 'tokens' or 'fraction'."""
        return "rows" if self.rows is not None else "tokens" if self.tokens is not None else "fraction"

    @classmethod
    def parse(cls, spec: Budget | int | float | str) -> Budget:
        """Read a budget: `Budget`, int rows, float in (0, 1) fraction, or "1000", "20%", "50000tok"."""
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, bool):
            raise ParameterError(f"not a budget: {spec!r}", "give rows (1000), a fraction (20%) or tokens (50000tok)")
        if isinstance(spec, (int, np.integer)):
            return cls(rows=int(spec))
        if isinstance(spec, (float, np.floating)):
            if float(spec) == 1.0:  # all of the pool as a fraction, or one row: say which
                raise ParameterError(f"budget {spec!r} is ambiguous", "write 100% for every row, or 1 for one row")
            if float(spec).is_integer() and spec > 1:
                return cls(rows=int(spec))
            return cls(fraction=float(spec))
        if isinstance(spec, str):
            m = _BUDGET_RE.match(spec)
            if not m:
                raise ValueError(
                    f"cannot read budget {spec!r}: use a row count ('1000'), a percentage ('20%') "
                    "or a token count ('50000tok')"
                )
            num, unit = m.group(1), (m.group(2) or "").lower()
            if unit == "%":  # the nearest float to the decimal written (float(num) / 100 can miss it)
                if Fraction(num) > 100:
                    raise ParameterError(f"budget {spec!r}: a percentage of the pool is at most 100%")
                return cls(fraction=float(Fraction(num) / 100))
            if "." in num:
                if unit:
                    raise ValueError(f"budget {spec!r}: {unit} must be a whole number")
                return cls.parse(float(num))
            if unit in ("tok", "tokens"):
                return cls(tokens=int(num))
            return cls(rows=int(num))
        raise ParameterError(
            f"not a budget: {spec!r} ({type(spec).__name__})", "give rows (1000), a fraction (20%) or tokens (50000tok)"
        )

    def resolve(self, n: int, tokens: np.ndarray | None = None) -> int:
        """Rows to rank for a pool of `n` rows: exact for rows/fraction, an upper bound for tokens."""
        if self.rows is not None:
            return min(int(self.rows), n)
        if self.fraction is not None:
            # exact half up: the fraction as the decimal it prints as ("29%" is 29/100, not the binary
            # 0.28999..., whose 50 rows would round 14.5 down), so a percentage of a pool rounds as written
            f = Fraction(repr(float(self.fraction)))
            return min(n, (2 * f.numerator * int(n) + f.denominator) // (2 * f.denominator))
        if tokens is None:
            raise ValueError("a token budget needs per-row token counts (the `tokens` signal)")
        srt = np.sort(np.asarray(tokens, dtype=np.float64))
        return int(np.searchsorted(np.cumsum(srt), float(self.tokens), side="right"))

    def __str__(self) -> str:
        if self.rows is not None:
            return str(self.rows)
        if self.tokens is not None:
            return f"{self.tokens}tok"
        return f"{self.fraction * 100:g}%"



def take_within_tokens(pos: np.ndarray, tokens: np.ndarray, limit: int) -> np.ndarray:
    """Indices into `pos` taken in order, skipping rows that would overflow the remaining token budget."""
    tok = np.asarray(tokens, dtype=np.float64)[pos]
    if np.any(tok < 0) or not np.all(np.isfinite(tok)):
        raise ValueError("the `tokens` signal has negative or non-finite values")
    # suffix minimum: once nothing left in the ranking fits, stop scanning
    suffix_min = np.minimum.accumulate(tok[::-1])[::-1] if tok.size else tok
    remaining = float(limit)
    take = []
    for i in range(tok.size):
        if suffix_min[i] > remaining:
            break
        if tok[i] <= remaining:
            take.append(i)
            remaining -= tok[i]
    return np.asarray(take, dtype=np.int64)


@dataclass
class Taken:
    """Rows a selector took within a budget: positions in rank order, weights, reasons, its stats."""

    positions: np.ndarray
    weights: np.ndarray
    reasons: list[str]
    stats: dict[str, Any]
    n_ranked: int
    ran_out: bool


def exclusion_mask(n: int, exclude: np.ndarray | None) -> np.ndarray:
    """Boolean [n]: True at the excluded positions."""
    excluded = np.zeros(n, dtype=bool)
    if exclude is not None and len(exclude):
        excluded[np.asarray(exclude, dtype=np.int64)] = True
    return excluded
