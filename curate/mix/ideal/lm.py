"""EK-FAC and gradients on a causal LM: which layers, batches of encoded rows, sampled-label and true losses.

Rows are encoded by the training module's encoder (`curate.train.data.encode_rows`), so influence is measured
on exactly the tokens training uses (the prompt masked by its real length, not by position).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from curate.train.loss import IGNORE, row_nll

MLP_PATTERN = re.compile(r"(^|\.)(mlp|ffn|feed_forward)\.")


def pick_modules(model: nn.Module, layers: str | Sequence[str] = "mlp") -> dict[str, nn.Linear]:
    """The linear modules EK-FAC covers: 'mlp' (every MLP projection; no attention, no lm_head), 'lora'
    (every LoRA A/B matrix of a peft model), or a list of module names / regular expressions."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if layers == "mlp":
        out = {n: m for n, m in linears.items() if MLP_PATTERN.search(n) and ".lora_" not in n}
    elif layers == "lora":
        out = {n: m for n, m in linears.items() if re.search(r"\.lora_[AB]\.", n + ".")}
    else:
        pats = [re.compile(p) for p in ([layers] if isinstance(layers, str) else layers)]
        out = {n: m for n, m in linears.items() if any(p.fullmatch(n) or p.search(n) for p in pats)}
    if not out:
        raise ValueError(f"no linear modules match layers={layers!r} (e.g. {list(linears)[:4]})")
    return out


def only_these_require_grad(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Gradients are needed for the chosen weights only (backward still flows through every layer)."""
    chosen = {id(m.weight) for m in modules.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)


def row_batches(feats, rows: np.ndarray, pad_id: int, batch_tokens: int,
                weights: np.ndarray | None = None) -> list[dict]:
    """Collated length-grouped batches (within `batch_tokens`) of the encoded rows at positions `rows`; each
    example's `weight` is `weights[row]` (default 1), read by `example_weights`."""
    from curate.train.sampler import length_sorted, pack
    from curate.train.trainer import Collator

    collate = Collator(pad_id)
    order = length_sorted(np.asarray(rows, dtype=np.int64), feats.lengths, np.random.default_rng(0))
    out = []
    for b in pack(order, feats.lengths, batch_tokens):
        out.append(collate([{"input_ids": feats.ids[i], "n_prompt": int(feats.n_prompt[i]),
                             "weight": 1.0 if weights is None else float(weights[i]), "domain": 0} for i in b]))
    return out


def sampled_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Summed NLL of labels drawn from the model's own predictions at the labelled positions (true Fisher)."""
    labels = batch["labels"]
    rows, pos = (labels != IGNORE).nonzero(as_tuple=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[rows, pos - 1]
    drawn = torch.distributions.Categorical(logits=logits.detach().float()).sample()
    return nn.functional.cross_entropy(logits.float(), drawn, reduction="sum")


def true_losses(model: nn.Module, batch: dict) -> torch.Tensor:
    """Per-example summed NLL of the real labels."""
    return row_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]


def token_mask(batch: dict) -> torch.Tensor:
    return batch["attention_mask"].bool()


def example_weights(batch: dict) -> torch.Tensor:
    """Each example's weight in the batch (the `weights` given to `row_batches`)."""
    return batch["weight"]


def seeded(batches: list[dict], seed: int):
    """A `batches()` callable for EKFAC.fit: the same batches each pass, label draws seeded per pass."""

    def gen() -> Iterator[dict]:
        torch.manual_seed(seed)
        yield from batches

    return gen
