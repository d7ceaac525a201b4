"""A tiny validation set of the target task: (question turns, answer) pairs read from jsonl / json.

Accepted records: {"messages": [..., {"role": "assistant", ...}]} (the last turn is the answer), or a
question field (prompt | instruction | question | input | inputs; "instruction" + "input" are joined by
a newline) with an answer field (response | output | answer | target | targets | completion | chosen;
a list takes its first element). An optional `domain` (or `task`) names the target task of the row.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.io import iter_jsonl

_Q = ("prompt", "question", "inputs")
_A = ("response", "output", "answer", "target", "targets", "completion", "chosen")


@dataclass
class ValItem:
    """One validation row: the question turns and the gold answer text."""

    question: list[dict]
    answer: str
    domain: str | None = None  # the record's `domain` (or `task`): the target task it belongs to (rds)

    @property
    def question_text(self) -> str:
        return "\n".join(m["content"] for m in self.question if m["role"] != "system")


def _record(rec: dict, where: str) -> ValItem:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object")
    domain = rec.get("domain", rec.get("task"))
    domain = None if domain is None or str(domain).strip() == "" else str(domain)
    if "messages" in rec:
        msgs = rec["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError(f"{where}: messages must end with an assistant turn (the answer)")
        return ValItem([{"role": m["role"], "content": str(m["content"])} for m in msgs[:-1]], str(msgs[-1]["content"]),
                       domain)
    question = None
    if "instruction" in rec:
        question = str(rec["instruction"])
        if rec.get("input"):
            question += "\n" + str(rec["input"])
    else:
        for k in (*_Q, "input"):
            if rec.get(k) is not None:
                question = str(rec[k])
                break
    answer = None
    for k in _A:
        if rec.get(k) is not None:
            answer = rec[k]
            break
    if isinstance(answer, list):
        answer = answer[0] if answer else None
    if question is None or answer is None or str(answer) == "":
        raise ValueError(f"{where}: needs messages, or a question field {_Q + ('instruction', 'input')} "
                         f"and a non-empty answer field {_A}")
    return ValItem([{"role": "user", "content": question}], str(answer), domain)


def read_validation(path: str | os.PathLike, n_val: int | None = None, seed: int = 0) -> list[ValItem]:
    """Read a validation file; keep a seeded sample of `n_val` rows when it holds more."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"validation file {path} does not exist")
    if path.suffix == ".json":
        records = json.loads(path.read_text())
        items = [_record(r, f"{path} item {i}") for i, r in enumerate(records)]
    else:
        items = [_record(rec, f"{path} line {i}") for i, rec in iter_jsonl(path, "validation file")]
    if not items:
        raise ValueError(f"validation file {path} holds no rows")
    if n_val is not None and len(items) > n_val:
        keep = np.sort(np.random.default_rng(seed).choice(len(items), size=n_val, replace=False))
        items = [items[i] for i in keep]
    return items
