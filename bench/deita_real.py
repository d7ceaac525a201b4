"""Deita-style filter on real sentence embeddings: BIG-bench rows embedded with all-MiniLM-L6-v2, every
screen against the naive per-row loop (same run, output equality checked).

The synthetic 1M-row figures (bench/select_scale.py) fix the scale; this run checks that the speed-up and the
exactness hold on real embeddings, where templated tasks put many pairs near the threshold.

    .venv/bin/python scripts/build_bigbench_pool.py /work/bigbench_pool      # once (about a minute)
    flock /tmp/curate-bench.lock .venv/bin/python bench/deita_real.py --pool /work/bigbench_pool
        [--n 40000] [--budget 10000] [--threshold 0.9] [--repeats 5] [--out bench/out/deita_real.json]

Rows: a seeded uniform sample of the pool; text = prompt + "\\n" + response (as `curate embed` builds it);
bf16 MiniLM, vectors cached under /tmp/curate-bench/. Score: seeded uniform random (Deita's LLM scorers are
not bundled; the score only fixes the walk order).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import polars as pl
from common import timed


def sample_texts(pool: Path, n: int, seed: int) -> list[str]:
    shards = sorted(pool.glob("shard-*.parquet"))
    if not shards:
        raise SystemExit(f"{pool}: no shard-*.parquet (build it with scripts/build_bigbench_pool.py)")
    df = pl.concat([pl.read_parquet(s, columns=["prompt", "response"]) for s in shards])
    rows = np.sort(np.random.default_rng(seed).choice(df.height, size=min(n, df.height), replace=False))
    df = df[rows]
    return df.select(pl.concat_str(["prompt", "response"], separator="\n", ignore_nulls=True)).to_series().to_list()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=Path, required=True)
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/out/deita_real.json")
    args = ap.parse_args()

    from curate.select.deita import deita_filter, deita_filter_reference, score_order
    from index.cpu import native_bf16
    from index.embed import Encoder, default_model_path

    cache = Path("/tmp/curate-bench") / f"deita_real_{args.n}_{args.seed}.npy"
    t0 = time.perf_counter()
    if cache.exists():
        vec = np.load(cache)
        embed_s = None
    else:
        texts = sample_texts(args.pool, args.n, args.seed)
        enc = Encoder.load(default_model_path(), dtype="bfloat16", batch_size=64)
        from tqdm import tqdm

        vec = np.concatenate([enc.encode(texts[i : i + 4096]) for i in tqdm(range(0, len(texts), 4096), desc="embed")])
        embed_s = time.perf_counter() - t0
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vec)
    order = score_order(np.random.default_rng(args.seed).random(len(vec)))
    b, tau, R = args.budget, args.threshold, args.repeats

    deita_filter(vec, order, b, threshold=tau, screen="bf16")  # builds oneDNN's bf16 kernels once
    runs = {s: timed(lambda s=s: deita_filter(vec, order, b, threshold=tau, screen=s), R) for s in ("bf16", "fp32", "faiss")}
    med_ref, ts_ref, ref = timed(lambda: deita_filter_reference(vec, order, b, threshold=tau), R)
    walked = int(np.flatnonzero(order == ref[-1])[0]) + 1
    # how many (walked row, kept row) pairs fall within the bf16 screen's margin: the rows the recheck decides
    sims = vec[order[:walked]] @ vec[ref].T
    near = int((np.abs(sims - tau) < 0.0126).sum())
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "bf16_units": native_bf16()},
        "n": int(len(vec)), "dim": int(vec.shape[1]), "budget": b, "threshold": tau, "embed_s": embed_s,
        "kept": int(ref.size), "rows_walked": walked, "pairs_within_bf16_margin": near,
        "runs": {f"{s} screen": {"median_s": m, "times_s": t, "equal_to_naive": bool(np.array_equal(o, ref)),
                                 "naive_over_this": med_ref / m} for s, (m, t, o) in runs.items()},
        "naive": {"median_s": med_ref, "times_s": ts_ref},
    }
    for name, r in result["runs"].items():
        print(f"{name:14s} median {r['median_s']:.3f}s  naive/this {r['naive_over_this']:.1f}x  equal {r['equal_to_naive']}")
    print(f"naive          median {med_ref:.3f}s; kept {ref.size}, walked {walked}, near-margin pairs {near}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
