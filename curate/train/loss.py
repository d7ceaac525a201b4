"""Losses of the training module, as plain functions over a batch (so tests can check them by hand).

Conventions (also in docs/methods.md):
- SFT, per optimiser step S (all micro-batches accumulated into one update, on all processes):
      L = sum_{i in S} w_i * nll_i / sum_{i in S} w_i * n_i
  nll_i: summed NLL of row i's labelled tokens (the response and its end-of-turn marker, as
  `LMScorer.encode` labels them), n_i: their count, w_i: the row's selection weight times the mixture
  sampler's importance factor. Uniform weights give the ordinary token-mean loss; w_i = 0 removes row i.
- DPO, per step: L = sum_i w_i * -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) / sum_i w_i, with
  pi / ref the summed log-probabilities of the chosen (c) and rejected (r) responses under the policy and
  the (frozen, cached) reference model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def row_nll(model, input_ids, attention_mask, labels, split=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, labelled-token count) of every row; labels are -100 where not trained.

    Position t's label is predicted from position t-1. Only labelled positions go through the output head
    when `split` = (backbone, head) is given; otherwise the model's full logits are used (needed under DDP,
    whose gradient hooks run only through the wrapper's forward).
    """
    rows, pos = (labels != IGNORE).nonzero(as_tuple=True)
    targets = labels[rows, pos]
    if split is not None:
        base, head = split
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = head(hidden[rows, pos - 1])
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, pos - 1]
    tok = F.cross_entropy(logits.float(), targets, reduction="none")
    sums = torch.zeros(labels.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)
    counts = torch.zeros(labels.shape[0], dtype=torch.long, device=tok.device).index_add(
        0, rows, torch.ones_like(rows)
    )
    return sums, counts


def weighted_sft_numerator(sums: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i * nll_i of one micro-batch (divided by the step's sum_i w_i * n_i by the caller)."""
    return (weights.to(sums.dtype) * sums).sum()


def sft_denominator(labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i * n_i of one micro-batch."""
    n = (labels != IGNORE).sum(dim=1).to(torch.float64)
    return (weights.to(torch.float64) * n).sum()


def dpo_losses(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair DPO loss -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) from summed log-probs."""
    margin = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected.to(pi_rejected.dtype))
    return -F.logsigmoid(beta * margin)
