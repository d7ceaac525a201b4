"""AutoMixAlign's generalist objective: the clipped excess loss over per-row specialist losses, as a
`curate.train.trainer.RowObjective`, and the per-step task-weight update as the training module's mixture hook.

Per row j of task i (its domain): ℓ_j is the generalist's loss (SFT: the response's per-token mean NLL; DPO:
the pair's DPO loss), s_j the cached loss of task i's specialist on row j, and e_j = max(ℓ_j − s_j, 0) (zero
gradient once the generalist matches its specialist). With w_j the row's selection weight, one optimiser step S:
- AMA-S (`Exp3`, sampling): L = Σ_S w_j e_j / Σ_S w_j; the sampler draws tasks by α, which implements the
  weighting. After the step, ê_i = Σ_{S∩i} w_j e_j / π_j / W̄ (π_j: the probability row j's task was drawn
  with; W̄: the mean of Σ_S w_j over the steps so far) and q ← q exp(η ê), α = (1 − c) q + c / k goes to the
  sampler. W̄ rather than this step's Σ_S w_j: length-grouped batches hold more rows of short-response tasks, and
  dividing by the step's own row count would favour tasks with long responses.
- AMA-R and DoReMi (`ExpGrad`, reweighting): over a stratified sampler, L = Σ_i α_i Σ_{S∩i} w_j e_j / W̄_i, with
  W̄_i the mean of Σ_{S∩i} w_j per step over the steps so far, this one included. After the step,
  ê_i = c_i + Σ_{S∩i} w_j (e_j − c_i) / W̄_i and α ← α exp(η ê) (smoothed), where c_i is task i's weighted mean
  excess over the earlier steps (0 before its first): a baseline that leaves the expectation alone (c_i is fixed
  before the step) and removes the noise of how many task-i rows the step happens to hold; a task absent from
  S gets ê_i = c_i. Over the steps E[ê_i] is task i's weighted mean excess Σ_i w e / Σ_i w, and every task-i row
  gets the same share α_i / W̄_i of the θ-gradient whichever batch it lands in. The step's own mean (0 when the
  task is absent) would not do: a length-grouped step holds one task or few, short-response tasks pack into few
  large batches and so appear in few steps, and E[ê_i] = P(i in S)·ē_i pushes α toward tasks with long
  responses (and gave their rows more of the θ-gradient). W̄_i rather than AMA-S's q_i W̄: the loss normalises
  per task, so tasks whose rows carry larger selection weights must not look worse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curate.mix.ama.optim import Exp3, ExpGrad
from curate.train.trainer import append_jsonl


def losses_key(ref_losses: Mapping[str, float]) -> str:
    """A short fingerprint of per-row reference losses (part of the generalist's training key)."""
    h = hashlib.blake2b(digest_size=8)
    for i in sorted(ref_losses):
        h.update(f"{i}:{float(ref_losses[i])!r};".encode())
    return h.hexdigest()


def _distributed():
    """torch.distributed when a process group is up (DDP runs), else None."""
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


class ExcessObjective:
    """The clipped excess loss as the generalist's training loss, with AMA-S / AMA-R / DoReMi task weights."""

    def __init__(
        self,
        tasks: Sequence[str],
        ref_losses: Mapping[str, float],
        optimiser: Exp3 | ExpGrad,
        *,
        method: str,
        log_path: str | Path | None = None,
    ) -> None:
        self.tasks = list(tasks)
        if optimiser.k != len(self.tasks):
            raise ValueError(f"optimiser has {optimiser.k} tasks, the objective {len(self.tasks)}")
        self.ref_losses = {str(k): float(v) for k, v in ref_losses.items()}
        self.optimiser = optimiser
        self.sampling = isinstance(optimiser, Exp3)
        self.method = method
        self.log_path = Path(log_path) if log_path is not None else None
        self.history: list[dict[str, Any]] = []
        self.initial = self.weights.tolist()
        self.code_task = torch.arange(len(self.tasks))  # replaced by `prepare` (trainer domain code -> task)
        self._draws, self._steps = 0.0, 0  # Σ_S w_j summed over the steps so far, and their number
        self._task_draws = np.zeros(len(self.tasks))  # Σ_{S∩i} w_j per task, summed over the steps so far
        self._task_excess = np.zeros(len(self.tasks))  # Σ_{S∩i} w_j e_j per task, summed over the steps so far
        self._reset()

    # the RowObjective interface --------------------------------------------------------------
    def key(self) -> dict:
        """Method, optimiser settings, tasks, the specialist losses' fingerprint and (reweighting) the estimate's
        rule (runs trained with the earlier per-step task means are not reused)."""
        key = {"kind": "clipped_excess", "method": self.method, "optimiser": self.optimiser.config(),
               "tasks": self.tasks, "reference_losses": losses_key(self.ref_losses)}
        if not self.sampling:
            key["estimate"] = "running_task_weight+baseline"
        return key

    def prepare(self, ids: list[str], domain_names: list[str]) -> np.ndarray:
        """Map the trainer's domain codes to tasks; return each training row's specialist loss."""
        missing = [i for i in ids if i not in self.ref_losses]
        if missing:
            raise ValueError(f"{len(missing)} training rows have no specialist loss (e.g. id {missing[0]})")
        self.code_task = torch.tensor([self.tasks.index(n) if n in self.tasks else -1 for n in domain_names])
        return np.array([self.ref_losses[i] for i in ids], dtype=np.float64)

    def _task_of(self, batch: dict) -> torch.Tensor:
        t = self.code_task.to(batch["domain"].device)[batch["domain"]]
        if bool((t < 0).any()):
            raise ValueError("a training row's domain is not one of the mixture's tasks")
        return t

    def step_total(self, batch: dict) -> torch.Tensor:
        """Σ w_j per task over the micro-batch (summed over the step: its per-task weight totals)."""
        w = batch["weight"].to(torch.float64)
        return torch.zeros(len(self.tasks), dtype=torch.float64, device=w.device).index_add(0, self._task_of(batch), w)

    def excess(self, values: torch.Tensor, counts: torch.Tensor, batch: dict) -> torch.Tensor:
        """e_j = max(ℓ_j − s_j, 0), ℓ_j = values / counts (per-token mean NLL, or the DPO loss)."""
        per_row = values / counts.clamp(min=1).to(values.dtype)
        return torch.relu(per_row - batch["ref_loss"].to(per_row.dtype))

    def loss(self, values: torch.Tensor, counts: torch.Tensor, batch: dict, total: torch.Tensor) -> torch.Tensor:
        """The micro-batch's part of the step loss: the plain weighted mean for AMA-S; for AMA-R / DoReMi
        Σ_i α_i Σ_{S∩i} w e / W̄_i, W̄_i the running mean of task i's weight per step (`total`: this step's)."""
        e = self.excess(values, counts, batch)
        t = self._task_of(batch)
        w = batch["weight"].to(e.dtype)
        if self.sampling:
            loss = (w * e).sum() / total.sum().clamp(min=1e-12).to(e.dtype)
        else:
            alpha = torch.as_tensor(self.weights, dtype=torch.float64, device=e.device)
            coef = (alpha / self._task_norm(total).clamp(min=1e-12))[t].to(e.dtype)
            loss = (coef * w * e).sum()
        self._accumulate(t, w.detach().double(), e.detach().double(), batch)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's state and every update so far."""
        return {"optimiser": self.optimiser.state_dict(), "history": self.history, "draws": self._draws,
                "steps": self._steps, "task_draws": self._task_draws.tolist(),
                "task_excess": self._task_excess.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` (a resumed run continues with the same weights and history)."""
        self.optimiser.load_state_dict(state["optimiser"])
        self.history = list(state["history"])
        self._draws, self._steps = float(state.get("draws", 0.0)), int(state.get("steps", 0))
        if "task_draws" not in state and self._steps and not self.sampling:
            raise ValueError("the checkpoint's AMA-R / DoReMi state predates the running per-task estimate")
        zero = [0.0] * len(self.tasks)
        self._task_draws = np.asarray(state.get("task_draws", zero), dtype=np.float64)
        self._task_excess = np.asarray(state.get("task_excess", zero), dtype=np.float64)
        self._reset()

    # the per-step update -----------------------------------------------------------------------
    @property
    def weights(self) -> np.ndarray:
        """Current task weights: AMA-S's sampling probabilities α, or AMA-R's / DoReMi's loss weights α."""
        return self.optimiser.probs if self.sampling else self.optimiser.weights

    def _task_norm(self, total: torch.Tensor) -> torch.Tensor:
        """W̄_i: the mean per-task weight per step over the steps so far and this one (`total`, its Σ_{S∩i} w)."""
        done = torch.as_tensor(self._task_draws, dtype=torch.float64, device=total.device)
        return (done + total.to(torch.float64)) / (self._steps + 1)

    def _reset(self) -> None:
        k = len(self.tasks)
        self._we, self._w, self._we_prob = np.zeros(k), np.zeros(k), np.zeros(k)

    def _accumulate(self, t: torch.Tensor, w: torch.Tensor, e: torch.Tensor, batch: dict) -> None:
        idx = t.cpu().numpy()
        we = (w * e).cpu().numpy()
        np.add.at(self._we, idx, we)
        np.add.at(self._w, idx, w.cpu().numpy())
        if self.sampling:
            if "sample_prob" not in batch:
                raise ValueError("AMA-S needs each row's sampling probability: train with the mixture sampler")
            np.add.at(self._we_prob, idx, we / batch["sample_prob"].double().cpu().numpy())

    def _step_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stats = np.stack([self._we, self._w, self._we_prob])
        dist = _distributed()
        if dist is not None:  # every process must take the same update (the samplers must agree)
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            t = torch.as_tensor(stats, dtype=torch.float64, device=device)
            dist.all_reduce(t)
            stats = t.cpu().numpy()
        self._reset()
        return stats[0], stats[1], stats[2]

    def after_step(self, step: int, domain_losses: Mapping[str, float] | None = None) -> dict[str, float] | None:
        """The mixture hook: update the task weights from the step's excess losses and log them; returns
        AMA-S's new sampling proportions (None for the reweighting methods, whose weights act in the loss)."""
        we, w, we_prob = self._step_stats()
        if w.sum() <= 0:  # every row of the step weighs 0: no evidence, no update, but the step is logged
            none = [None] * len(self.tasks)
            current = list(self.history[-1]["weights"] if self.history else self.initial)
            rec = {"step": int(step), "weights": current, "excess": none, "estimate": none}
            self.history.append(rec)
            self._log(rec)
            return None
        mean = np.divide(we, w, out=np.zeros_like(we), where=w > 0)
        self._draws, self._steps = self._draws + float(w.sum()), self._steps + 1
        base = np.divide(self._task_excess, self._task_draws, out=np.zeros_like(we), where=self._task_draws > 0)
        self._task_draws, self._task_excess = self._task_draws + w, self._task_excess + we
        if self.sampling:
            est = Exp3.estimates(we_prob, self._draws / self._steps)
        else:  # c_i + Σ w (e − c_i) / W̄_i, W̄_i the θ-loss's normaliser (see `_task_norm`) with this step counted
            norm = self._task_draws / self._steps
            est = base + np.divide(we - base * w, norm, out=np.zeros_like(we), where=norm > 0)
        new = self.optimiser.update(est).tolist()
        excess = [float(m) if n > 0 else None for m, n in zip(mean, w, strict=True)]  # None: task not in the step
        rec = {"step": int(step), "weights": new, "excess": excess, "estimate": est.tolist()}
        self.history.append(rec)
        self._log(rec)
        return dict(zip(self.tasks, new, strict=True)) if self.sampling else None

    def _log(self, rec: dict) -> None:
        dist = _distributed()
        if self.log_path is None or (dist is not None and dist.get_rank() != 0):
            return
        named = {key: dict(zip(self.tasks, rec[key], strict=True)) for key in ("weights", "excess", "estimate")}
        append_jsonl(self.log_path, {"step": rec["step"], "ama": {"method": self.method, **named}})

    def average_weights(self) -> list[float]:
        """The weights in force at each step so far, averaged (the initial ones for step 1)."""
        used = [self.initial] + [h["weights"] for h in self.history[:-1]]
        return np.mean(np.asarray(used, dtype=np.float64), axis=0).tolist()
