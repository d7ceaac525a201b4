"""The task-weight optimisers of AutoMixAlign and its DoReMi-style baseline, on plain numpy (no model).

- `ExpGrad` (AMA-R, DoReMi): exponentiated-gradient ascent on task weights α ∈ Δ^k (Group-DRO style),
  α_i ← α_i exp(η ê_i) / Z, then optional smoothing toward uniform α ← (1 − s) α + s / k.
- `Exp3` (AMA-S): EXP3 over tasks: sampling probabilities α = (1 − c) q + c / k (so α_i ≥ c / k, the floor),
  importance-weighted estimates ê_i (see `Exp3.estimates`), q_i ← q_i exp(η ê_i) / Z.

Weights are kept as logarithms so that long runs or large estimates never overflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def _check_k(k: int) -> int:
    if int(k) < 2:
        raise ValueError(f"a task mixture needs at least 2 tasks, got {k}")
    return int(k)


def _check_estimates(est: Sequence[float], k: int) -> np.ndarray:
    e = np.asarray(est, dtype=np.float64)
    if e.shape != (k,) or not np.all(np.isfinite(e)):
        raise ValueError(f"task loss estimates must be {k} finite numbers, got {e.tolist()}")
    return e


class ExpGrad:
    """Exponentiated-gradient task weights (AMA-R / DoReMi): `update(ê)` then read `weights`."""

    def __init__(self, k: int, eta: float = 0.01, smoothing: float = 0.0) -> None:
        self.k = _check_k(k)
        if eta <= 0:
            raise ValueError(f"eta (the task-weight step size) must be > 0, got {eta}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing toward uniform must be in [0, 1), got {smoothing}")
        self.eta, self.smoothing = float(eta), float(smoothing)
        self.log_w = np.zeros(self.k)

    @property
    def weights(self) -> np.ndarray:
        """The current task weights α (sum to 1)."""
        return _softmax(self.log_w)

    def update(self, estimates: Sequence[float]) -> np.ndarray:
        """α_i ← α_i exp(η ê_i), renormalised and smoothed toward uniform; returns the new α."""
        self.log_w = self.log_w + self.eta * _check_estimates(estimates, self.k)
        w = _softmax(self.log_w)
        if self.smoothing > 0:
            w = (1.0 - self.smoothing) * w + self.smoothing / self.k
        self.log_w = np.log(w)
        return w

    def config(self) -> dict[str, Any]:
        """The optimiser's settings (part of the training run's key)."""
        return {"kind": "expgrad", "k": self.k, "eta": self.eta, "smoothing": self.smoothing}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue (the log-weights)."""
        return {"log_w": self.log_w.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`."""
        self.log_w = np.asarray(state["log_w"], dtype=np.float64)


class Exp3:
    """EXP3 task sampling with an exploration floor (AMA-S): sample by `probs`, then `update(ê)`."""

    def __init__(self, k: int, eta: float = 0.01, floor: float = 0.05) -> None:
        self.k = _check_k(k)
        if eta <= 0:
            raise ValueError(f"eta (the EXP3 step size) must be > 0, got {eta}")
        if not 0.0 < floor <= 1.0:
            raise ValueError(f"the exploration floor c must be in (0, 1], got {floor}")
        self.eta, self.floor = float(eta), float(floor)
        self.log_q = np.zeros(self.k)

    @property
    def q(self) -> np.ndarray:
        """The exponential weights q (before mixing in the floor)."""
        return _softmax(self.log_q)

    @property
    def probs(self) -> np.ndarray:
        """Sampling probabilities α = (1 − c) q + c / k; every α_i ≥ c / k."""
        return (1.0 - self.floor) * self.q + self.floor / self.k

    @staticmethod
    def estimates(excess_over_prob: Sequence[float], n_slots: float) -> np.ndarray:
        """ê_i = (1/B) Σ_{slots j of task i} e_j / α_{i,j}: EXP3's one-slot importance-weighted estimate
        averaged over a step's slots (an unbiased estimate of task i's mean excess loss when B is the expected
        number of slots per step; 0 for a task not sampled). `excess_over_prob[i]` = Σ_j e_j / α_{i,j} over
        the step's task-i rows."""
        if n_slots <= 0:
            raise ValueError("a step with no sampled rows gives no loss estimate")
        return np.asarray(excess_over_prob, dtype=np.float64) / float(n_slots)

    def update(self, estimates: Sequence[float]) -> np.ndarray:
        """q_i ← q_i exp(η ê_i), renormalised; returns the new sampling probabilities α."""
        log_q = self.log_q + self.eta * _check_estimates(estimates, self.k)
        self.log_q = log_q - log_q.max()
        return self.probs

    def config(self) -> dict[str, Any]:
        """The optimiser's settings (part of the training run's key)."""
        return {"kind": "exp3", "k": self.k, "eta": self.eta, "floor": self.floor}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue (the log-weights)."""
        return {"log_q": self.log_q.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`."""
        self.log_q = np.asarray(state["log_q"], dtype=np.float64)
