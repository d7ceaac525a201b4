"""RDS+ (Ivison et al. 2025, "Large-scale data selection for instruction tuning", arXiv 2503.01807).

Each row is embedded by the position-weighted mean of the base model's last hidden states (SGPT pooling: the
i-th token of n weighs i / sum_j j; the states are the last decoder layer's output after the model's final
norm, `index.features`), the row rendered as the model reads it (its chat template when the tokenizer has
one, else "prompt\\n\\nresponse"). The validation rows (the target task's few examples, question and gold
answer) are embedded the same way. A row's score for target task t is its highest cosine to any validation
row of t; tasks are the validation rows' `domain` (one task when none has a domain). Selection is
round-robin over the tasks in sorted order: each turn, the task takes its highest-scoring row not yet taken
(ties to the lower pool position), so every task gets an equal share of any prefix.

Pool features are cached in <run>/features/<fingerprint>/ (resumable shards, keyed by the model, layer, max
length and pooling), computed by the selector's executor (in process by default; `executor="ray"` runs the
shards on Ray workers, each loading the model once and rendering its rows from the run's pool); validation
features are recomputed (a few rows). Rows that copy a validation row are
left out by the select stage (`curate.signals.decontam`), which drops them from the ranking before the
budget is taken.

Deviations: the paper embeds with the base model it fine-tunes (Llama-2/3 and Tulu formats); here any local
causal LM (default the bundled SmolLM2) in its own chat format. Rows longer than `max_length` tokens are cut.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from curate.errors import CurateError, ParameterError
from curate.select.budget import Budget
from curate.select.selector import Ranking, Selector, register_selector
from curate.view import PoolView

ONE_TASK = "(none)"  # the task of validation rows without a domain


class RDSError(CurateError):
    """RDS+ cannot run as asked (no validation set, no run directory for the feature cache)."""


def task_scores(row_feats: np.ndarray, val_feats: np.ndarray, val_tasks: Sequence[str | None],
                chunk: int = 65536) -> tuple[list[str], np.ndarray]:
    """(task names, scores [N, T]): a row's score for task t is its highest cosine to a validation row of t."""
    tasks = [ONE_TASK if t is None else str(t) for t in val_tasks]
    if len(tasks) != len(val_feats):
        raise ValueError(f"{len(tasks)} task labels for {len(val_feats)} validation rows")
    names = sorted(set(tasks))
    val = _unit(np.asarray(val_feats, dtype=np.float32))
    out = np.empty((len(row_feats), len(names)), dtype=np.float64)
    members = [np.flatnonzero(np.asarray(tasks, dtype=object) == t) for t in names]
    for lo in range(0, len(row_feats), chunk):
        sims = _unit(np.asarray(row_feats[lo : lo + chunk], dtype=np.float32)) @ val.T
        for j, m in enumerate(members):
            out[lo : lo + chunk, j] = sims[:, m].max(axis=1)
    return names, out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def round_robin(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `k` row positions chosen round-robin over the task columns of `scores` [N, T], and each pick's task.

    Each turn, task t (in column order) takes its highest-scoring row not yet taken; ties to the lower position.
    """
    n, n_tasks = scores.shape
    k = min(int(k), n)
    order = [np.lexsort((np.arange(n), -scores[:, t])) for t in range(n_tasks)]
    ptr = [0] * n_tasks
    taken = np.zeros(n, dtype=bool)
    picks, task_of = [], []
    while len(picks) < k:
        for t in range(n_tasks):
            if len(picks) >= k:
                break
            while taken[order[t][ptr[t]]]:
                ptr[t] += 1
            p = int(order[t][ptr[t]])
            taken[p] = True
            picks.append(p)
            task_of.append(t)
    return np.asarray(picks, dtype=np.int64), np.asarray(task_of, dtype=np.int64)


def conversation_texts(tokenizer: Any, conversations: Sequence[Sequence[dict]]) -> list[str]:
    """Rows as the model reads them: its chat template (leading BOS text dropped: the tokenizer adds it), or
    the user turns and the answer separated by blank lines when the tokenizer has no template."""
    bos = getattr(tokenizer, "bos_token", None)
    out = []
    for conv in conversations:
        msgs = [{"role": m["role"], "content": m["content"]} for m in conv]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(msgs, tokenize=False)
            if bos and text.startswith(bos):
                text = text[len(bos):]
        else:
            text = "\n\n".join(m["content"] for m in msgs)
        out.append(text)
    return out


class PoolChatTexts:
    """Pool rows [start, stop) rendered as the model reads them (`conversation_texts`), read from the run on
    demand: the text source of a worker computing feature shards (picklable; the tokenizer loads on first use)."""

    def __init__(self, root: str | os.PathLike, model_path: str | os.PathLike) -> None:
        self.root, self.model_path = str(root), str(model_path)
        self._tok: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    def __call__(self, start: int, stop: int) -> list[str]:
        from curate.run import RunDir

        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.model_path)
        rows = RunDir(self.root).scan_pool().slice(start, stop - start).select("messages").collect()
        return conversation_texts(self._tok, rows["messages"].to_list())


@register_selector
class RDSSelector(Selector):
    """RDS+: rows closest to the target task's validation rows in the base LM's position-weighted-mean
    last hidden states, round-robin over the validation rows' tasks (domains).

    paper: Ivison et al., Large-scale data selection for instruction tuning (arXiv 2503.01807), RDS+.
    deviations: any local causal LM in its own chat format (default SmolLM2); rows cut at `max_length` tokens.
    Parameters: `validation` the validation file (jsonl/json, as `curate score --validation`; also given by
    `curate select --validation`), `model` a causal LM folder or alias, `max_length`, `batch_size`, `device`;
    `executor` ("local", "ray", "ray:ADDRESS") and `executor_options` (see `curate.executors.get_executor`):
    where the pool features are computed; the features do not depend on it.
    """

    name = "rds"
    stratify_scope = "pool"  # features and tasks are the pool's; each stratum takes its rows in the pool order
    paper = "RDS+: Ivison et al., Large-scale data selection for instruction tuning (arXiv 2503.01807)"
    deviations = "any local causal LM in its own chat format (default SmolLM2); rows cut at max_length tokens"

    def __init__(self, validation: str | None = None, model: str = "smollm2", max_length: int = 2048,
                 batch_size: int = 8, device: str = "cpu", executor: Any = None,
                 executor_options: dict[str, Any] | None = None) -> None:
        from curate.executors import get_executor

        if validation is None:
            raise ParameterError("rds needs the target task's validation set",
                                 "pass --validation FILE.jsonl (Python: validation=PATH)")
        if int(max_length) < 1 or int(batch_size) < 1:
            raise ParameterError(f"rds: max_length and batch_size must be >= 1, got {max_length}, {batch_size}")
        self.validation = str(validation)
        self.model = model
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.device = device
        get_executor(executor, executor_options)  # bad names fail before any work
        self.executor, self.executor_options = executor, executor_options

    def _conversations(self, view: PoolView) -> list[list[dict]]:
        if view.run is not None and type(view) is PoolView:
            return view.columns(["messages"])["messages"].to_list()
        f = view.frame
        return [[{"role": "user", "content": p or ""}, {"role": "assistant", "content": r or ""}]
                for p, r in zip(f["prompt"].to_list(), f["response"].to_list(), strict=True)]

    def features(self, view: PoolView) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """(pool features [N, d], validation features [V, d], validation tasks), as the module doc says."""
        from transformers import AutoConfig

        from curate.executors import get_executor, run_job
        from curate.models import resolve_model
        from curate.signals.validation import read_validation
        from index.features import (
            cached_features,
            feature_fingerprint,
            load_truncated_lm,
            masked_mean_features,
        )

        if view.run is None:
            raise RDSError("rds caches its features in a run directory; this PoolView is in memory")
        path = str(resolve_model(self.model))
        layers = int(AutoConfig.from_pretrained(path).num_hidden_layers)
        tok, base = load_truncated_lm(path, layers, device=self.device, dtype="float32")
        items = read_validation(self.validation)
        val_conv = [[*it.question, {"role": "assistant", "content": it.answer}] for it in items]
        val_feats = masked_mean_features(tok, base, conversation_texts(tok, val_conv), max_length=self.max_length,
                                         batch_size=self.batch_size, pooling="weighted_mean")
        texts = conversation_texts(tok, self._conversations(view))
        fp = feature_fingerprint(path, kind="truncated", layer=layers, max_length=self.max_length,
                                 pooling="weighted_mean")
        executor = get_executor(self.executor, self.executor_options)
        remote = executor is not run_job and type(view) is PoolView  # workers render their rows from the pool themselves
        feats = cached_features(texts, view.run.features_dir / fp, path, kind="truncated", layer=layers,
                                max_length=self.max_length, batch_size=self.batch_size, device=self.device,
                                dtype="float32", progress=view.n > 1000, pooling="weighted_mean",
                                executor=executor, model=(tok, base),
                                source=PoolChatTexts(view.run.root, path) if remote else None)
        return feats, val_feats, [it.domain for it in items]

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        feats, val_feats, tasks = self.features(view)
        names, scores = task_scores(feats, val_feats, tasks)
        picks, task_of = round_robin(scores, view.n if budget.kind == "tokens" else k)
        cos = scores[picks, task_of]
        reasons = [f"rds: task {names[t]}, cosine={c:.4g}" for t, c in zip(task_of.tolist(), cos.tolist(), strict=True)]
        labels = [ONE_TASK if t is None else str(t) for t in tasks]
        stats = {
            "tasks": {n: labels.count(n) for n in names},
            "pooling": "position-weighted mean of the last hidden states (SGPT)",
            "model": str(self.model),
            "mean_cosine": float(cos[:k].mean()) if picks.size else None,
        }
        return Ranking(picks, reasons=reasons, stats=stats)
