"""Helpers for the signals tests: a tiny pool written straight in the pool schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

ROWS = [
    ("math", "what is two plus three ?", "the answer is five .", ["arithmetic", "math"]),
    ("math", "x = 3 * 4 + 2 so what is x ?", "x equals 14 .", ["math"]),
    ("code", "write a function that returns the sum of a list of numbers", "def add ( a , b ) : return a + b", None),
    ("code", "sort these words : banana apple cherry", "apple banana cherry", ["code", "sorting", "code"]),
    ("general", "explain why the sky is blue in one sentence", "first the light then the sky . finally blue", None),
    ("general", "translate hello world into french", "bonjour le monde", ["translation"]),
    ("general", "the capital of france is ?", "paris", None),
    ("math", "step 1 : read the question . step 2 : solve it", "step 3 : answer five", ["math"]),
    (None, "a cat sat on the mat", "and a dog sat on the log and a cat sat on the mat again and again", None),
    ("code", "def add ( a , b ) :", "return a + b", ["code"]),
]


def make_pool(run: Path, rows=ROWS, system: bool = False) -> Path:
    """Write `rows` (domain, prompt, response, tags) as a one-shard pool under run/pool."""
    from curate.pool.schema import POOL_SCHEMA

    recs = []
    for i, (domain, prompt, response, tags) in enumerate(rows):
        msgs = ([{"role": "system", "content": "be brief ."}] if system and i % 2 else []) + [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
        ]
        meta = {"task": "t"} if tags is None else {"task": "t", "tags": tags}
        recs.append(
            {
                "id": hashlib.blake2b(f"{i}{prompt}{response}".encode(), digest_size=16).hexdigest(),
                "source": "mem.jsonl",
                "row": i,
                "kind": "sft",
                "domain": domain,
                "messages": msgs,
                "prompt": prompt,
                "response": response,
                "rejected": None,
                "meta": json.dumps(meta),
                "n_duplicates": 0,
            }
        )
    (run / "pool").mkdir(parents=True, exist_ok=True)
    pl.DataFrame(recs, schema=POOL_SCHEMA).write_parquet(run / "pool" / "shard-00000.parquet")
    return run


def write_validation(path: Path) -> Path:
    rows = [
        {"question": "what is two plus three ?", "answer": "five"},
        {"instruction": "translate hello into french", "input": "hello", "output": "bonjour"},
        {"messages": [{"role": "user", "content": "sort : cherry apple"}, {"role": "assistant", "content": "apple cherry"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
