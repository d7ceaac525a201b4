"""MIW-style multi-indicator weights (methods.md 5.3; our reconstruction, not the paper's exact method).

Indicators are normalised by percentile rank to [0, 1] (NaN -> 0.5). A weight vector w on the simplex
scores rows s_w = I_norm @ w and selects the top-r% (ties broken by pool position). The proxy P(w):

- with per-row ICL values (`proxy` an array, computed ONCE for the candidate rows so the search never
  re-runs the LM): R = `draws` seeded draws of k demos each, taken as rank positions in the top-r% set
  (the same positions for every w: common random numbers, so P differences come from w, not sampling
  noise); P(w) = mean ICL value of the demos at those positions, over all draws;
- or any callable proxy(selected_positions) -> float.

`KShotProxy` is the proxy of methods.md 5.3 step 3 itself: each of `draws` draws takes k demos from the
selected rows (the same rank positions for every w), builds the k-shot prompt for every validation question
and scores the gold answer's log-likelihood with the LM, against the zero-shot prompt; P = the mean gain over
draws and questions. Each demo tuple is scored once (cached), so re-evaluating a set costs nothing.

`split_candidates` splits the candidate rows in two: the search runs on one part and the chosen weights are
reported on the other (`heldout_proxy`), against uniform weights, so the reported improvement is not
in-sample (on the search part "best >= uniform" holds by construction).

Search: the simplex centre, then `n_random` Dirichlet(1) samples; then `n_refine` local steps from the
best so far, alternating a Dirichlet around it (concentration growing from 20 to 2000) and a coordinate
move (mass moved from one indicator to another, step shrinking from 0.2 to 0.01); a step is kept only
if it improves P. Every evaluated (w, P) is returned in `history`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from curate.signals.rank import percentile_rank


def normalise_indicators(indicators: np.ndarray) -> np.ndarray:
    """Column-wise percentile rank in [0, 1]; NaN becomes 0.5."""
    m = np.asarray(indicators, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"indicators must be a 2-D (rows x indicators) array, got shape {m.shape}")
    out = np.column_stack([percentile_rank(m[:, j]) for j in range(m.shape[1])]) if m.shape[1] else m
    return np.where(np.isnan(out), 0.5, out)


def _as_matrix(indicators: np.ndarray | Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    if isinstance(indicators, Mapping):
        names = list(indicators)
        return np.column_stack([np.asarray(indicators[k], dtype=np.float64) for k in names]), names
    m = np.asarray(indicators, dtype=np.float64)
    return m, [f"i{j}" for j in range(m.shape[1])]


def weighted_score(
    indicators: np.ndarray | Mapping[str, np.ndarray],
    weights: np.ndarray | Sequence[float] | Mapping[str, float],
    *,
    normalise: bool = True,
) -> np.ndarray:
    """s_w = percentile-normalised indicators @ w (pass normalise=False if already in [0, 1])."""
    m, names = _as_matrix(indicators)
    if isinstance(weights, Mapping):
        missing = [n for n in names if n not in weights]
        if missing:
            raise KeyError(f"no weight for indicator(s) {missing}")
        w = np.array([weights[n] for n in names], dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
    if w.shape != (m.shape[1],):
        raise ValueError(f"{w.shape[0]} weights for {m.shape[1]} indicators")
    return (normalise_indicators(m) if normalise else m) @ w


def top_positions(score: np.ndarray, ratio: float) -> np.ndarray:
    """Positions of the top `ratio` share of rows by score (descending; ties by position)."""
    n_top = max(1, int(round(ratio * len(score))))
    return np.argsort(-score, kind="stable")[:n_top]


@dataclass
class MIWResult:
    """Best weights found, their proxy value, the uniform-weights baseline and the search history."""

    names: list[str]
    weights: np.ndarray
    best: float
    uniform: float
    history: list[tuple[list[float], float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "indicators": self.names,
            "weights": {n: float(w) for n, w in zip(self.names, self.weights, strict=True)},
            "proxy_best": self.best,
            "proxy_uniform": self.uniform,
            "history": [{"w": w, "proxy": p} for w, p in self.history],
        }


def learn_weights(
    indicators: np.ndarray | Mapping[str, np.ndarray],
    proxy: np.ndarray | Callable[[np.ndarray], float],
    *,
    ratio: float = 0.3,
    k: int = 4,
    draws: int = 64,
    n_random: int = 64,
    n_refine: int = 64,
    seed: int = 0,
    normalise: bool = True,
) -> MIWResult:
    """Search simplex weights maximising the proxy of the top-`ratio` rows (see the module doc)."""
    m, names = _as_matrix(indicators)
    if m.shape[1] < 1:
        raise ValueError("learn_weights needs at least one indicator")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    x = normalise_indicators(m) if normalise else m
    n, d = x.shape
    rng = np.random.default_rng(seed)
    if callable(proxy):
        def evaluate(w: np.ndarray) -> float:
            return float(proxy(top_positions(x @ w, ratio)))
    else:
        values = np.asarray(proxy, dtype=np.float64)
        if values.shape != (n,):
            raise ValueError(f"proxy has {values.shape} values for {n} rows")
        if np.isnan(values).any():
            raise ValueError("proxy values contain NaN")
        n_top = max(1, int(round(ratio * n)))
        kk = min(k, n_top)
        pos = np.argsort(rng.random((draws, n_top)), axis=1)[:, :kk]  # same demo ranks for every w

        def evaluate(w: np.ndarray) -> float:
            top = top_positions(x @ w, ratio)
            return float(values[top[pos]].mean())

    history: list[tuple[list[float], float]] = []

    def record(w: np.ndarray) -> float:
        w = np.clip(w, 0, None)
        w = w / w.sum()
        p = evaluate(w)
        history.append(([float(v) for v in w], p))
        return p

    centre = np.full(d, 1.0 / d)
    uniform = record(centre)
    best_w, best_p = centre, uniform
    for _ in range(n_random):
        w = rng.dirichlet(np.ones(d))
        p = record(w)
        if p > best_p:
            best_w, best_p = w / w.sum(), p
    for t in range(n_refine):
        frac = t / max(1, n_refine - 1)
        if t % 2 == 0 or d < 2:
            conc = 20.0 * (100.0 ** frac)
            w = rng.dirichlet(best_w * conc + 1e-3)
        else:
            step = 0.2 * (0.05 ** frac)
            i, j = rng.choice(d, size=2, replace=False)
            move = min(step, best_w[i])
            w = best_w.copy()
            w[i] -= move
            w[j] += move
        p = record(w)
        if p > best_p:
            best_w, best_p = np.clip(w, 0, None) / np.clip(w, 0, None).sum(), p
    return MIWResult(names, best_w, best_p, uniform, history)


def split_candidates(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of n candidate indices into (search, held-out), each sorted; `holdout` is the held-out share."""
    if not 0 < holdout < 1:
        raise ValueError(f"miw_holdout must lie in (0, 1), got {holdout}")
    n_held = int(round(holdout * n))
    if n_held < 1 or n - n_held < 1:
        raise ValueError(f"cannot split {n} candidate rows into a search and a held-out part (holdout={holdout})")
    perm = np.random.default_rng([int(seed), 1]).permutation(n)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


class KShotProxy:
    """P(S): mean gain in the validation answers' log-likelihood from k-shot prompts of demos drawn from S.

    `nll(conversations) -> summed answer NLL per conversation` scores with the target LM; `rows[i]` is
    candidate i's conversation; `val` the validation items. For a selected set S (candidate indices, best first),
    draw r takes the rows at the fixed rank positions `ranks[r]` of S (common random numbers across sets,
    drawn once with `seed`), placed in that order before the question:

        P(S) = mean_r mean_v [ log p(a_v | demos_r, q_v) - log p(a_v | q_v) ]
    """

    def __init__(self, nll: Callable[[list[list[dict]]], np.ndarray], rows: Sequence[Sequence[dict]],
                 val: Sequence, *, k: int, draws: int, seed: int, n_top: int) -> None:
        from curate.signals.icl import icl_conversation

        if k < 1 or draws < 1:
            raise ValueError(f"k-shot proxy needs k >= 1 and draws >= 1, got k={k}, draws={draws}")
        self._conv = icl_conversation
        self.nll, self.rows, self.val = nll, rows, list(val)
        self.k = min(int(k), int(n_top))
        rng = np.random.default_rng([int(seed), 2])
        self.ranks = np.argsort(rng.random((int(draws), int(n_top))), axis=1)[:, : self.k]
        self.base = np.asarray(self.nll([self._conv([], item) for item in self.val]), dtype=np.float64)
        self.cache: dict[tuple[int, ...], float] = {}

    def gains(self, demo_sets: Sequence[tuple[int, ...]]) -> list[float]:
        """Mean log-likelihood gain over the validation rows of each demo tuple (scored once, then cached)."""
        todo = sorted({d for d in demo_sets if d not in self.cache})
        if todo:
            convs = [self._conv([self.rows[i] for i in d], item) for d in todo for item in self.val]
            s = np.asarray(self.nll(convs), dtype=np.float64).reshape(len(todo), len(self.val))
            for d, row in zip(todo, s, strict=True):
                self.cache[d] = float((self.base - row).mean())
        return [self.cache[d] for d in demo_sets]

    def __call__(self, selected: np.ndarray) -> float:
        selected = np.asarray(selected, dtype=np.int64)
        if selected.size < self.ranks.max() + 1:
            raise ValueError(f"k-shot proxy: {selected.size} selected rows, the draws need {self.ranks.max() + 1}")
        return float(np.mean(self.gains([tuple(int(x) for x in selected[r]) for r in self.ranks])))


def heldout_proxy(
    normalised: np.ndarray, weights: np.ndarray, proxy: Callable[[np.ndarray], float], ratio: float
) -> dict[str, float]:
    """Proxy of the top-`ratio` held-out rows under `weights` and under uniform weights, and their difference."""
    d = normalised.shape[1]
    best = float(proxy(top_positions(normalised @ np.asarray(weights, dtype=np.float64), ratio)))
    uniform = float(proxy(top_positions(normalised @ np.full(d, 1.0 / d), ratio)))
    return {"best": best, "uniform": uniform, "improvement": best - uniform}
