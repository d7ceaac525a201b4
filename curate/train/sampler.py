"""Batch samplers for training: length-grouped batches within a token budget, and a per-domain mixture sampler.

Both yield batches of `(row, factor)` pairs: `factor` multiplies the row's loss weight (1 unless the mixture
sampler applies the importance correction w/q). Both are deterministic functions of (seed, epoch, the
proportion changes so far), so every process draws the same stream and a resumed run that replays an epoch
from its start (accelerate's `skip_first_batches`) sees exactly the batches it would have seen.
`__len__` is exact and the same every epoch, as the Trainer's step count needs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from curate.mixtures import load_mixture  # noqa: F401  (re-exported: curate.train.load_mixture)
from curate.signals.lm import _budget_batches


class _Epoch:
    """The `sampler` of a batch sampler: accelerate calls `batch_sampler.sampler.set_epoch` even after
    wrapping ours for a resumed epoch, so the epoch reaches us through it."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


def pack(order: np.ndarray, lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Cut rows (already sorted longest first) into batches whose padded size rows x longest <= batch_tokens."""
    spans = _budget_batches([int(lengths[i]) for i in order], batch_tokens)
    return [order[lo:hi] for lo, hi in spans]


def length_sorted(rows: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`rows` sorted longest first; rows of equal length in random order (so batches differ between rows)."""
    noise = rng.random(rows.size)
    return rows[np.lexsort((noise, -lengths[rows]))]


class TokenBudgetBatchSampler:
    """Every row once per epoch, in length-grouped batches within `batch_tokens` padded tokens.

    Batches are cut once (rows sorted by length, equal lengths shuffled by the seed) and their order is
    shuffled every epoch, with the batch of most padded tokens first so memory limits show at step 0.
    """

    def __init__(self, lengths: Sequence[int], batch_tokens: int, seed: int = 0) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_tokens = int(batch_tokens)
        self.seed = int(seed)
        self.sampler = _Epoch()
        order = length_sorted(np.arange(self.lengths.size), self.lengths, np.random.default_rng([self.seed, 7]))
        self.batches = pack(order, self.lengths, self.batch_tokens)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        rng = np.random.default_rng([self.seed, self.sampler.epoch])
        order = list(rng.permutation(len(self.batches)))
        biggest = max(range(len(self.batches)), key=lambda b: (len(self.batches[b]) * self.lengths[self.batches[b]].max(), -b))
        order.remove(biggest)
        for b in [biggest, *order]:
            yield [(int(i), 1.0) for i in self.batches[b]]

    def state_dict(self) -> dict:
        return {"kind": "token_budget", "epoch": self.sampler.epoch}

    def load_state_dict(self, state: Mapping) -> None:
        self.sampler.set_epoch(int(state.get("epoch", 0)))


def unsampled_objective_domains(names: Sequence[str], proportions: Sequence[float],
                                objective: Sequence[float]) -> list[str]:
    """The domains with objective weight > 0 that `proportions` never draw: their rows carry the w/q correction,
    and a domain never drawn would drop out of the objective silently."""
    return [n for n, q, w in zip(names, proportions, objective, strict=True) if w > 0 and q <= 0]


class MixtureBatchSampler:
    """Rows drawn by domain proportions, in length-grouped batches within a token budget.

    Each megabatch of `megabatch_rows` rows draws its domain counts from a multinomial over the current
    proportions q, takes rows from a per-domain shuffled queue (reshuffled when a domain runs out, so small
    domains repeat), sorts them by length and cuts budget batches, yielded in random order. An epoch is
    `num_batches` batches (default: as many as one pass over all rows takes).

    `set_proportions(q)` is the hook an online mixture optimiser (AMA-S, DoReMi) calls: the change is
    recorded with the sampler's position and applies from the next batch (the rest of the megabatch is
    dropped and a new one drawn); the record is part of `state_dict()`, so a resumed run replays the same
    changes at the same places.

    With `objective` weights w (per domain), each row's loss weight is multiplied by w_d / q_d: training on
    proportions q then estimates the loss of the w-weighted mixture (importance correction).
    With `with_probs`, batches hold `(row, factor, q_d)` triples: the probability with which the row's domain
    was drawn (what a bandit's importance-weighted estimate divides by; AMA-S).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        domains: Sequence[int],
        proportions: Sequence[float],
        batch_tokens: int,
        *,
        seed: int = 0,
        objective: Sequence[float] | None = None,
        num_batches: int | None = None,
        megabatch_rows: int = 256,
        domain_names: Sequence[str] | None = None,
        with_probs: bool = False,
    ) -> None:
        self.with_probs = bool(with_probs)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.domains = np.asarray(domains, dtype=np.int64)
        self.n_domains = int(self.domains.max()) + 1 if self.domains.size else 0
        self.names = list(domain_names) if domain_names is not None else [str(d) for d in range(self.n_domains)]
        self.members = [np.flatnonzero(self.domains == d) for d in range(len(self.names))]
        self.batch_tokens = int(batch_tokens)
        self.seed = int(seed)
        self.megabatch_rows = int(megabatch_rows)
        self.initial = self._check(proportions)
        self.objective = None if objective is None else self._check(objective, what="objective weights")
        self._check_support(self.initial)
        self.schedule: list[tuple[int, int, list[float]]] = []
        self.sampler = _Epoch()
        self._yielded = 0
        if num_batches is None:
            num_batches = len(TokenBudgetBatchSampler(self.lengths, self.batch_tokens, seed=self.seed))
        self.num_batches = int(num_batches)

    def _check(self, values: Sequence[float], what: str = "proportions") -> np.ndarray:
        q = np.asarray(values, dtype=np.float64)
        if q.shape != (len(self.names),):
            raise ValueError(f"mixture {what}: expected {len(self.names)} values (one per domain), got {q.shape}")
        if not np.all(np.isfinite(q)) or np.any(q < 0) or q.sum() <= 0:
            raise ValueError(f"mixture {what} must be finite, >= 0 and not all 0: {q.tolist()}")
        empty = [self.names[d] for d in range(len(q)) if q[d] > 0 and self.members[d].size == 0]
        if empty:
            raise ValueError(f"mixture {what} give weight to domains with no training rows: {empty}")
        return q / q.sum()

    def _check_support(self, q: np.ndarray) -> None:
        """Every domain with objective weight > 0 must be drawn (`unsampled_objective_domains`)."""
        if self.objective is None:
            return
        missing = unsampled_objective_domains(self.names, q, self.objective)
        if missing:
            raise ValueError(f"mixture proportions give 0 to domains with objective weight > 0: {missing}; "
                             "the importance correction needs every such domain sampled")

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_proportions(self, proportions: Sequence[float] | Mapping[str, float]) -> None:
        """Change the sampling proportions from the next megabatch on (recorded for replay on resume)."""
        if isinstance(proportions, Mapping):
            unknown = set(proportions) - set(self.names)
            if unknown:
                raise ValueError(f"unknown domains in proportions: {sorted(unknown)}")
            proportions = [float(proportions.get(n, 0.0)) for n in self.names]
        q = self._check(proportions)
        self._check_support(q)
        self.schedule.append((self.sampler.epoch, self._yielded, q.tolist()))

    def proportions_at(self, epoch: int, position: int) -> tuple[int, np.ndarray]:
        """(number of changes applied, proportions) in force at batch `position` of `epoch`.

        Changes are recorded in stream order, so a binary search finds the last one at or before the place."""
        k = bisect.bisect_right(self.schedule, (epoch, position, [np.inf]))
        return k, (np.asarray(self.schedule[k - 1][2]) if k else self.initial)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        epoch = self.sampler.epoch
        rng = np.random.default_rng([self.seed, epoch, 1])
        queues = [rng.permutation(m) for m in self.members]
        cursor = [0] * len(self.members)
        self._yielded = 0
        while self._yielded < self.num_batches:
            version, q = self.proportions_at(epoch, self._yielded)
            factor = np.ones_like(q) if self.objective is None else np.divide(
                self.objective, q, out=np.zeros_like(q), where=q > 0
            )
            counts = rng.multinomial(self.megabatch_rows, q)
            rows = []
            for d, c in enumerate(counts):
                for _ in range(int(c)):
                    if cursor[d] >= queues[d].size:
                        queues[d], cursor[d] = rng.permutation(self.members[d]), 0
                    rows.append(queues[d][cursor[d]])
                    cursor[d] += 1
            batches = pack(length_sorted(np.asarray(rows, dtype=np.int64), self.lengths, rng), self.lengths,
                           self.batch_tokens)
            for b in rng.permutation(len(batches)):
                if self._yielded >= self.num_batches:
                    return
                if self.proportions_at(epoch, self._yielded)[0] != version:
                    break  # proportions changed: drop the rest of this megabatch, draw with the new ones
                self._yielded += 1
                if self.with_probs:
                    yield [(int(i), float(factor[self.domains[i]]), float(q[self.domains[i]])) for i in batches[b]]
                else:
                    yield [(int(i), float(factor[self.domains[i]])) for i in batches[b]]

    def state_dict(self) -> dict:
        return {"kind": "mixture", "epoch": self.sampler.epoch, "schedule": self.schedule}

    def load_state_dict(self, state: Mapping) -> None:
        self.sampler.set_epoch(int(state.get("epoch", 0)))
        self.schedule = [(int(e), int(b), list(map(float, p))) for e, b, p in state.get("schedule", [])]
