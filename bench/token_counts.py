"""Token counting (the `tokens` signals) on the fast tokenizer's own threads against one thread.

Same texts (prompts and responses of real BIG-bench rows), same tokenizer (the embedder's, MiniLM), same
1,024-text batches; `ours` is `curate.signals.heuristics.token_counts` (threads allowed inside the call),
`one thread` calls the tokenizer the same way with TOKENIZERS_PARALLELISM=false. Medians of `--repeats`.

Run: flock /tmp/curate-bench.lock .venv/bin/python bench/token_counts.py [--pool DIR --rows 60000]
     (DIR: a pool built by scripts/build_bigbench_pool.py; without it the 3,000 demo rows)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as the Makefile sets it

import numpy as np  # noqa: E402
from common import timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_texts(pool: str | None, rows: int) -> list[str]:
    import polars as pl

    if pool:
        shards = sorted(Path(pool).glob("shard-*.parquet"))
        if not shards:
            raise SystemExit(f"{pool}: no shard-*.parquet files (build one with scripts/build_bigbench_pool.py)")
        df = pl.scan_parquet(shards).select("prompt", "response").head(rows).collect()
    else:
        df = pl.read_ndjson(ROOT / "data/demo/bigbench_demo.jsonl").select("prompt", "response").head(rows)
    return [t or "" for t in df["prompt"].to_list()] + [t or "" for t in df["response"].to_list()]


def one_thread(tok, texts: list[str], chunk: int = 1024) -> np.ndarray:
    out = np.zeros(len(texts), dtype=np.float64)
    for lo in range(0, len(texts), chunk):
        out[lo : lo + chunk] = [len(e) for e in tok(texts[lo : lo + chunk], add_special_tokens=False)["input_ids"]]
    return out


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from curate.signals.heuristics import token_counts
    from index.embed import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default=None)
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    texts = load_texts(args.pool, args.rows)
    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    one_thread(tok, texts[:2_000])  # warm the tokenizer
    s_one, all_one, c_one = timed(lambda: one_thread(tok, texts), args.repeats)
    s_ours, all_ours, c_ours = timed(lambda: token_counts(tok, texts), args.repeats)
    assert np.array_equal(c_one, c_ours), "threaded counts differ from one thread's"
    res = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "texts": len(texts),
           "tokens": float(c_ours.sum()), "one_thread_seconds": s_one, "one_thread_all": all_one,
           "ours_seconds": s_ours, "ours_all": all_ours, "speedup": s_one / s_ours,
           "source": args.pool or "data/demo/bigbench_demo.jsonl"}
    print(json.dumps(res, indent=1))
    out = ROOT / "bench" / "out" / "token_counts.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
