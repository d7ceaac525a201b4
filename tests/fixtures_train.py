"""A two-domain run of tiny-LM sentences with a weighted selection, for the training-module tests."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from fixtures_lm import SENTENCES

from curate.pool.ids import content_id
from curate.pool.schema import POOL_SCHEMA


def train_pool_run(run: Path, n: int = 32, *, preference: bool = False) -> Path:
    """A run directory whose pool holds n rows in domains 'math' (even rows) and 'text' (odd rows), and a
    selection 'sel' of the first n // 2 rows with weights 0.5, 1, 1.5, 2 in turn."""
    rows = []
    for i in range(n):
        prompt, response = SENTENCES[i % 12], SENTENCES[(i * 5 + i // 12) % 12]
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        rejected = SENTENCES[(i * 7 + 3) % 12] if preference else None
        kind = "preference" if preference else "sft"
        rows.append({
            "id": "",
            "source": "in.jsonl", "row": i, "kind": kind, "domain": "math" if i % 2 == 0 else "text",
            "messages": messages, "prompt": prompt, "response": response,
            "rejected": rejected,
            "meta": "{}", "n_duplicates": 0,
        })  # fmt: skip
    # make ids unique whatever the sentence cycle: suffix the response with the row number
    for i, r in enumerate(rows):
        r["response"] = f"{r['response']} {i % 10}"
        r["messages"][-1]["content"] = r["response"]
        r["id"] = content_id(r["kind"], r["messages"], r["rejected"])
    (run / "pool").mkdir(parents=True)
    pl.DataFrame(rows, schema=POOL_SCHEMA).write_parquet(run / "pool" / "shard-00000.parquet")
    half = n // 2
    (run / "selections").mkdir()
    pl.DataFrame({
        "id": [r["id"] for r in rows[:half]],
        "weight": [0.5 * (1 + i % 4) for i in range(half)],
        "rank": list(range(half)),
        "reason": ["test"] * half,
    }).write_parquet(run / "selections" / "sel.parquet")  # fmt: skip
    return run


def run_until_killed(statement: str, step: int = 4) -> None:
    """Run Python `statement` in a fresh process where `Kill()` is a Trainer callback that SIGKILLs the process
    right after the checkpoint of `step` is saved; the process must die by that signal."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import os, signal
        from transformers import TrainerCallback

        class Kill(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                if state.global_step == {step}:
                    os.kill(os.getpid(), signal.SIGKILL)
        """
    ) + statement
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
