"""The transformers `Trainer` subclass that trains on curated rows: our loss, our batch sampler, our logs.

What it adds to `Trainer` (everything else — optimiser, warm-up and decay schedules, gradient accumulation
and clipping, bf16, checkpoints, resumption, DDP through accelerate/torchrun — is Trainer's own):
- the weighted SFT and DPO losses of `curate.train.loss`, normalised per optimiser step (the step's weighted
  token count is gathered over micro-batches and processes in `_get_num_items_in_batch`);
- the length-grouped token-budget / mixture batch sampler, whose state (and the count of tokens trained on so
  far) is saved in every checkpoint;
- per-domain training loss in `log.jsonl`, and a `COMPLETE` marker written last in each checkpoint so a
  resumed run never starts from a half-written one;
- an optional `RowObjective` that replaces the weighted loss (e.g. AutoMixAlign's clipped excess loss over
  per-row specialist losses): it sees the per-row losses and the batch, sets the step's normaliser, and its
  state is saved in every checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from curate.train.loss import IGNORE, dpo_losses, row_nll, sft_denominator, weighted_sft_numerator
from index.io import write_json

COMPLETE = "COMPLETE"
SAMPLER_STATE = "sampler.json"
OBJECTIVE_STATE = "objective.json"


class RowObjective(Protocol):
    """A replacement for the weighted SFT / DPO loss, computed from per-row losses.

    `values` are the rows' summed response NLL (SFT; `counts` their labelled-token counts) or their DPO losses
    (`counts` ones). `step_total(batch)` is a micro-batch's share of the optimiser step's normaliser (any
    float64 tensor shape; summed over the step's micro-batches and processes); `loss(values, counts, batch,
    total)` returns the micro-batch's part of the step loss given that total.
    """

    def key(self) -> dict:
        """What identifies the objective (part of the training run's key)."""

    def prepare(self, ids: list[str], domain_names: list[str]) -> np.ndarray | None:
        """Called once with the training rows' ids and the domain names (the order of the batches' domain
        codes); returns per-row floats carried in every batch as `ref_loss`, or None."""

    def step_total(self, batch: dict) -> torch.Tensor:
        """A micro-batch's share of the step's normaliser."""

    def loss(self, values: torch.Tensor, counts: torch.Tensor, batch: dict, total: torch.Tensor) -> torch.Tensor:
        """The micro-batch's part of the step loss."""

    def state_dict(self) -> dict[str, Any]:
        """State saved in every checkpoint (restored on resume)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""


class EncodedRows(torch.utils.data.Dataset):
    """Encoded rows indexed by (row, factor[, sampling probability]) keys from the batch sampler (or a plain
    row index). `row_ref`: optional per-row floats (e.g. a specialist's loss), carried as `ref_loss`."""

    def __init__(self, features, weights: np.ndarray, domains: np.ndarray, ref=None,
                 row_ref: np.ndarray | None = None) -> None:
        self.f, self.weights, self.domains, self.ref = features, weights, domains, ref
        self.row_ref = row_ref

    def __len__(self) -> int:
        return len(self.f.ids)

    def __getitem__(self, key) -> dict:
        i, factor, *prob = key if isinstance(key, tuple) else (int(key), 1.0)
        item = {
            "input_ids": self.f.ids[i],
            "n_prompt": int(self.f.n_prompt[i]),
            "weight": float(self.weights[i]) * float(factor),
            "domain": int(self.domains[i]),
        }
        if self.f.rejected_ids is not None:
            item["rej_input_ids"] = self.f.rejected_ids[i]
            item["rej_n_prompt"] = int(self.f.rejected_n_prompt[i])
            item["ref_chosen"], item["ref_rejected"] = float(self.ref[0][i]), float(self.ref[1][i])
        if self.row_ref is not None:
            item["ref_loss"] = float(self.row_ref[i])
        if prob:
            item["sample_prob"] = float(prob[0])
        return item


def _pad(seqs: list[list[int]], n_prompt: list[int], pad_id: int) -> tuple[torch.Tensor, ...]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    labels = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    for b, (s, p) in enumerate(zip(seqs, n_prompt, strict=True)):
        t = torch.tensor(s, dtype=torch.long)
        ids[b, : len(s)] = t
        mask[b, : len(s)] = 1
        start = max(p, 1)  # as curate.signals.lm.labels_for: position 0 has no context to predict it
        labels[b, start : len(s)] = t[start:]
    return ids, mask, labels


class Collator:
    """Right-pads a batch; labels are -100 on prompt and padding positions. Preference batches stack the
    chosen sequences then the rejected ones, so one forward pass scores both."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        seqs = [it["input_ids"] for it in items]
        n_p = [it["n_prompt"] for it in items]
        out = {
            "weight": torch.tensor([it["weight"] for it in items], dtype=torch.float64),
            "domain": torch.tensor([it["domain"] for it in items], dtype=torch.long),
        }
        if "rej_input_ids" in items[0]:
            seqs = seqs + [it["rej_input_ids"] for it in items]
            n_p = n_p + [it["rej_n_prompt"] for it in items]
            out["ref_chosen"] = torch.tensor([it["ref_chosen"] for it in items], dtype=torch.float64)
            out["ref_rejected"] = torch.tensor([it["ref_rejected"] for it in items], dtype=torch.float64)
        for name in ("ref_loss", "sample_prob"):  # optional per-row floats (a row objective's inputs)
            if name in items[0]:
                out[name] = torch.tensor([it[name] for it in items], dtype=torch.float64)
        out["input_ids"], out["attention_mask"], out["labels"] = _pad(seqs, n_p, self.pad_id)
        return out


class CurateTrainer(Trainer):
    """Trainer with curate's weighted losses, batch sampler, per-domain logs and complete-marked checkpoints."""

    def __init__(
        self,
        *args,
        batch_sampler,
        objective: str,
        domain_names: list[str],
        log_path: Path | None,
        beta: float = 0.1,
        split=None,
        row_objective: RowObjective | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batch_sampler = batch_sampler
        self.row_objective = row_objective
        self.objective = objective
        self.beta = float(beta)
        self.domain_names = list(domain_names)
        self.log_path = log_path
        self.split = split
        self.loss_is_scaled_for_ga = True  # our loss is already divided by the whole step's denominator
        self.tokens_seen = 0  # non-padding tokens through the model (throughput figures)
        k = len(self.domain_names)
        self._dom_nll, self._dom_tok = np.zeros(k), np.zeros(k)  # since the last log
        self.step_domain_nll, self.step_domain_tok = np.zeros(k), np.zeros(k)  # this optimiser step

    # data -------------------------------------------------------------------------------------
    def get_train_dataloader(self):
        dl = torch.utils.data.DataLoader(
            self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator, num_workers=0
        )
        return self.accelerator.prepare(dl)

    def _get_num_items_in_batch(self, batch_samples: list, device):
        """The step's loss denominator: sum w_i n_i (SFT) or sum w_i (DPO) over its micro-batches and processes
        (or the row objective's `step_total`, summed the same way)."""
        if self.row_objective is not None:
            total = sum(self.row_objective.step_total(b).to(torch.float64) for b in batch_samples)
            total = torch.as_tensor(total, dtype=torch.float64, device=device)
            if self.args.world_size > 1:
                total = self.accelerator.gather(total.reshape(1, -1)).sum(0).reshape(total.shape)
            return total
        if self.objective == "dpo":
            total = sum(b["weight"].sum() for b in batch_samples)
        else:
            total = sum(sft_denominator(b["labels"], b["weight"]) for b in batch_samples)
        total = torch.as_tensor(total, dtype=torch.float64, device=device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    # loss -------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        split = self.split if self.accelerator.num_processes == 1 else None
        with self.accelerator.autocast():  # the split path bypasses the wrapper's autocast forward
            sums, counts = row_nll(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"], split)
        self.tokens_seen += int(inputs["attention_mask"].sum())
        w = inputs["weight"]
        if self.objective == "dpo":
            B = w.shape[0]
            losses = dpo_losses(-sums[:B], -sums[B:], inputs["ref_chosen"], inputs["ref_rejected"], self.beta)
            numerator = (w.to(losses.dtype) * losses).sum()
            local = w.sum()
            self._track(inputs["domain"], losses.detach(), torch.ones_like(losses))
        else:
            numerator = weighted_sft_numerator(sums, w)
            local = sft_denominator(inputs["labels"], w)
            self._track(inputs["domain"], sums.detach(), counts)
        if self.row_objective is not None:
            values, counts = (losses, torch.ones_like(losses)) if self.objective == "dpo" else (sums, counts)
            total = num_items_in_batch if num_items_in_batch is not None else self.row_objective.step_total(inputs)
            total = torch.as_tensor(total, dtype=torch.float64, device=values.device)
            loss = self.row_objective.loss(values, counts, inputs, total) * self.accelerator.num_processes
            return (loss, {"row_nll": sums}) if return_outputs else loss
        denom = num_items_in_batch if num_items_in_batch is not None else local
        denom = torch.clamp(torch.as_tensor(denom, dtype=torch.float64, device=numerator.device), min=1e-12)
        loss = numerator / denom.to(numerator.dtype) * self.accelerator.num_processes
        return (loss, {"row_nll": sums}) if return_outputs else loss

    def _track(self, domains: torch.Tensor, values: torch.Tensor, counts: torch.Tensor) -> None:
        d = domains.cpu().numpy()
        v = values[: d.size].double().cpu().numpy()
        c = counts[: d.size].double().cpu().numpy()
        for arr, src in ((self._dom_nll, v), (self.step_domain_nll, v), (self._dom_tok, c), (self.step_domain_tok, c)):
            np.add.at(arr, d, src)

    def _summed(self, nll: np.ndarray, tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-domain sums over all processes (a collective: every process calls it at the same point)."""
        if self.args.world_size == 1:
            return nll, tok
        both = torch.tensor(np.concatenate([nll, tok]), device=self.args.device)
        both = self.accelerator.reduce(both, reduction="sum").cpu().numpy()
        return both[: nll.size], both[nll.size :]

    def step_domain_loss(self) -> dict[str, float]:
        """Per-domain mean training loss of the optimiser step just taken, over all processes (then reset)."""
        nll, tok = self._summed(self.step_domain_nll, self.step_domain_tok)  # the hook sees the same figures everywhere
        out = {self.domain_names[d]: float(nll[d] / tok[d]) for d in range(len(self.domain_names)) if tok[d] > 0}
        self.step_domain_nll[:] = 0
        self.step_domain_tok[:] = 0
        return out

    # logs and checkpoints ---------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Trainer logs on every process (after its own collectives), so the domains' sums are reduced here too:
        # under DDP each process has seen only its own batches
        nll, tok = self._summed(self._dom_nll, self._dom_tok) if "loss" in logs else (self._dom_nll, self._dom_tok)
        if tok.sum() > 0:
            logs = dict(logs)
            for d, name in enumerate(self.domain_names):
                if tok[d] > 0:
                    logs[f"loss/{name}"] = float(nll[d] / tok[d])
            self._dom_nll[:] = 0
            self._dom_tok[:] = 0
        super().log(logs, start_time)
        if self.log_path is not None and self.is_world_process_zero():
            append_jsonl(self.log_path, {"step": self.state.global_step, "epoch": self.state.epoch, **logs})

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.is_world_process_zero():
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            # the token count rides along, so a resumed run's `train_tokens` covers the steps before the kill too
            write_json(folder / SAMPLER_STATE, {**self.batch_sampler.state_dict(), "tokens_seen": int(self.tokens_seen)})
            if self.row_objective is not None:
                write_json(folder / OBJECTIVE_STATE, self.row_objective.state_dict())
            write_json(folder / COMPLETE, {"step": self.state.global_step})


def append_jsonl(path: Path, obj: dict) -> None:
    """Append one JSON line (flushed and fsynced: a killed run keeps every line logged before). A last line a
    kill cut short is ended first, so the new line stays whole (readers skip the cut one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        cut = False
        if fh.seek(0, os.SEEK_END) > 0:
            fh.seek(-1, os.SEEK_END)
            cut = fh.read(1) != b"\n"
        fh.write((b"\n" if cut else b"") + (json.dumps(obj, sort_keys=True, default=float) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint-N folder carrying the COMPLETE marker (incomplete ones are ignored)."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).exists() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


class StepHooks(TrainerCallback):
    """After every optimiser step: call the mixture hook with the step's per-domain losses (it may return
    new proportions for the sampler), and evaluate held-out rows every `eval_every` steps."""

    def __init__(self, trainer: CurateTrainer, *, mixture_hook: Callable | None, evaluate: Callable | None,
                 eval_every: int) -> None:
        self.trainer, self.mixture_hook, self.evaluate, self.eval_every = trainer, mixture_hook, evaluate, eval_every

    def on_step_end(self, args, state, control, **kwargs):
        losses = self.trainer.step_domain_loss()
        if self.mixture_hook is not None:
            new = self.mixture_hook(state.global_step, losses)
            if new is not None:
                self.trainer.batch_sampler.set_proportions(new)
        if self.evaluate is not None and self.eval_every > 0 and state.global_step % self.eval_every == 0:
            self.evaluate(state.global_step)
        return control
