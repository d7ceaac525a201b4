"""Embedding throughput: the engine (index.embed) against bare sentence-transformers, same texts, same run.

Measures, interleaved over several repeats (medians reported):
  bare-fp32    SentenceTransformer(path).encode(texts, batch_size=B)
  engine-fp32  Encoder.load(path, dtype="float32") + embed_to_shards into a fresh temp dir
  engine-bf16  the same with dtype="bfloat16"
  bare-bf16    SentenceTransformer(path, model_kwargs={"dtype": bfloat16}).encode(...)
and the cosine of engine-bf16 vectors to engine-fp32 vectors (mean, min).

Run: flock /tmp/curate-bench.lock .venv/bin/python bench/embed_throughput.py [--n 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO = ROOT / "data" / "demo" / "bigbench_demo.jsonl"


def _content(x: object) -> str:
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        return "\n".join(_content(i) for i in x)
    if isinstance(x, dict):
        return _content(x.get("content", ""))
    return str(x)


def record_text(rec: dict) -> str:
    """The text the embed stage would build: prompt and response joined by a newline."""
    if "messages" in rec:
        return "\n".join(_content(m) for m in rec["messages"])
    for p, r in (("prompt", "response"), ("prompt", "completion"), ("inputs", "targets"), ("input", "target"),
                 ("instruction", "output"), ("question", "answer")):
        if p in rec:
            return f"{_content(rec[p])}\n{_content(rec.get(r))}".strip()
    raise ValueError(f"cannot find text fields in record with keys {sorted(rec)}")


def load_texts(path: Path, n: int) -> list[str]:
    if not path.exists():
        raise SystemExit(f"{path} is missing: the benchmark needs the BIG-bench demo texts")
    with open(path) as fh:
        texts = [t for line in fh if line.strip() for t in [record_text(json.loads(line))] if t]
    if n < len(texts):  # a fixed spread over the whole file (it is ordered by task)
        keep = sorted(random.Random(0).sample(range(len(texts)), n))
        texts = [texts[i] for i in keep]
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEMO)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from index.embed import Encoder, default_model_path, embed_to_shards, load_shards

    texts = load_texts(args.data, args.n)
    path = default_model_path()
    B = args.batch_size
    bare32 = SentenceTransformer(str(path), device="cpu")
    bare16 = SentenceTransformer(str(path), device="cpu", model_kwargs={"dtype": torch.bfloat16})
    eng32 = Encoder.load(path, device="cpu", dtype="float32", batch_size=B)
    eng16 = Encoder.load(path, device="cpu", dtype="bfloat16", batch_size=B)
    lens = [len(ids) for ids in bare32.tokenizer(texts, truncation=True, max_length=bare32.max_seq_length)["input_ids"]]

    warm = texts[:B]
    for m in (bare32, bare16):
        m.encode(warm, batch_size=B)
    for e in (eng32, eng16):
        e.encode(warm)

    tmp = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    results: dict[str, list[float]] = {"bare-fp32": [], "engine-fp32": [], "engine-bf16": [], "bare-bf16": []}
    vecs: dict[str, np.ndarray] = {}

    def run_engine(e: Encoder, tag: str, r: int) -> float:
        out = tmp / f"{tag}-{r}"
        t0 = time.perf_counter()
        embed_to_shards(texts, out, e, shard_size=args.shard_size, progress=False)
        dt = time.perf_counter() - t0
        vecs[tag] = np.array(load_shards(out))
        return dt

    def run_bare(m: SentenceTransformer) -> float:
        t0 = time.perf_counter()
        m.encode(texts, batch_size=B)
        return time.perf_counter() - t0

    for r in range(args.repeats):
        results["bare-fp32"].append(run_bare(bare32))
        results["engine-fp32"].append(run_engine(eng32, "engine-fp32", r))
        results["engine-bf16"].append(run_engine(eng16, "engine-bf16", r))
        results["bare-bf16"].append(run_bare(bare16))
        print(f"repeat {r}: " + ", ".join(f"{k} {len(texts) / v[-1]:.1f} rows/s" for k, v in results.items()), flush=True)

    rate = {k: len(texts) / statistics.median(v) for k, v in results.items()}
    cos = (vecs["engine-fp32"] * vecs["engine-bf16"]).sum(1)
    summary = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "n_texts": len(texts),
        "mean_tokens": float(np.mean(lens)),
        "batch_size": B,
        "repeats": args.repeats,
        "median_rows_per_s": {k: round(v, 1) for k, v in rate.items()},
        "engine_fp32_over_bare_fp32": round(rate["engine-fp32"] / rate["bare-fp32"], 3),
        "engine_bf16_over_bare_bf16": round(rate["engine-bf16"] / rate["bare-bf16"], 3),
        "engine_bf16_over_bare_fp32": round(rate["engine-bf16"] / rate["bare-fp32"], 3),
        # paired per-repeat ratios resist load drift on a shared machine better than ratios of medians
        "paired_median_ratios": {
            name: round(statistics.median(results[b][r] / results[a][r] for r in range(args.repeats)), 3)
            for name, a, b in (
                ("engine_fp32_over_bare_fp32", "engine-fp32", "bare-fp32"),
                ("engine_bf16_over_bare_bf16", "engine-bf16", "bare-bf16"),
                ("engine_bf16_over_bare_fp32", "engine-bf16", "bare-fp32"),
            )
        },
        "cosine_bf16_vs_fp32": {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)},
    }
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
