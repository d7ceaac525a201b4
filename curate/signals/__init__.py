"""Per-row signals: LM loss / perplexity / IFD, ILA depth, ICL proxy, relevance, heuristics, MIW weights.

Stage: `score(run, names, model=..., ...)` writes `<run>/signals/<name>.parquet` (id, value) with a
sidecar `<name>.json` holding its key; `load_signal(run, name)` reads one back in pool order. Signals are
registered by name in `SIGNALS` (`curate.signals.SIGNALS.names()` lists them).
"""

from __future__ import annotations

from curate.signals import heuristics, icl, lm_signals, miw_signal, relevance  # noqa: F401  (registration)
from curate.signals.base import SIGNALS, ScoreContext, SignalDef, signal
from curate.signals.miw import MIWResult, learn_weights, normalise_indicators, weighted_score
from curate.signals.rank import percentile_rank
from curate.signals.stage import score
from curate.signals.store import load_signal

__all__ = [
    "SIGNALS",
    "MIWResult",
    "ScoreContext",
    "SignalDef",
    "learn_weights",
    "load_signal",
    "normalise_indicators",
    "percentile_rank",
    "score",
    "signal",
    "weighted_score",
]
