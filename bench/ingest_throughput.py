"""Ingest throughput and peak memory: curate.pool.ingest against a bare polars read + parquet write.

Data: N synthetic rows mixing alpaca, OpenAI messages, sharegpt, prompt/response and preference layouts,
~2% exact duplicates, as one JSON-lines file and the same rows as parquet. Each measurement runs in a fresh
subprocess (peak RSS from /proc VmHWM, which unlike getrusage is not inherited across exec); repeats are interleaved and medians reported.
  curate-jsonl    ingest(jsonl) with defaults (chunk_rows=50_000, shard_rows=100_000)
  curate-json     ingest of the same rows as one JSON array (streamed record by record)
  curate-jsonl-gz ingest(jsonl.gz): the JSON-lines file gzip-compressed (level 6), decompressed as it is read
  curate-parquet  ingest(parquet) with defaults
  polars-floor    pl.read_ndjson(jsonl).write_parquet(...): reading and writing only, no layout
                  normalisation, ids, dedup or quarantine -- a floor, not an equivalent tool

Run: flock /tmp/curate-bench.lock .venv/bin/python bench/ingest_throughput.py [--n 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
what, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
if what == "polars":
    import polars as pl
    pl.read_ndjson(src, infer_schema_length=None).write_parquet(out + "/floor.parquet")
    n = None
else:
    from curate.pool import ingest
    n = ingest(src, out, progress=False).n_unique
dt = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]  # peak RSS of this process
print(json.dumps({{"s": dt, "rss_mb": int(hwm) / 1024, "unique": n}}))
"""


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    rows: list[dict] = []
    for i in range(n):
        if rows and rng.random() < 0.02:
            rows.append(dict(rows[rng.randrange(len(rows))]))
            continue
        r = rng.random()
        q, a = f"{i} {text(30)}", text(60)
        if r < 0.3:
            rows.append({"instruction": q, "input": text(5) if i % 2 else "", "output": a, "domain": f"d{i % 8}"})
        elif r < 0.55:
            rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "task": "t"})
        elif r < 0.7:
            rows.append({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
        elif r < 0.9:
            rows.append({"prompt": q, "response": a, "domain": f"d{i % 8}"})
        else:
            rows.append({"prompt": q, "chosen": a, "rejected": text(40)})
    return rows


def measure(what: str, src: Path, work: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=work))
    code = CHILD.format(root=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code, what, str(src), str(out)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import polars as pl

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = make_rows(args.n)
        jsonl = work / "pool.jsonl"
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        parquet = work / "pool.parquet"
        pl.read_ndjson(jsonl, infer_schema_length=None).write_parquet(parquet)
        array = work / "pool.json"
        array.write_text(json.dumps(rows))
        gz = work / "pool.jsonl.gz"
        import gzip

        with gzip.open(gz, "wb", compresslevel=6) as fh:
            fh.write(jsonl.read_bytes())
        del rows
        cases = {
            "curate-jsonl": ("curate", jsonl),
            "curate-json": ("curate", array),
            "curate-jsonl-gz": ("curate", gz),
            "curate-parquet": ("curate", parquet),
            "polars-floor": ("polars", jsonl),
        }
        results: dict[str, list[dict]] = {k: [] for k in cases}
        for _ in range(args.repeats):
            for name, (what, src) in cases.items():
                results[name].append(measure(what, src, work))
        print(f"machine: {platform.machine()}, {platform.python_version()}; n={args.n:,} rows, "
              f"jsonl {jsonl.stat().st_size / 1e6:.0f} MB; repeats={args.repeats}")
        floor = statistics.median(r["s"] for r in results["polars-floor"])
        for name, rs in results.items():
            s = statistics.median(r["s"] for r in rs)
            rss = statistics.median(r["rss_mb"] for r in rs)
            print(f"{name:16s} median {s:6.2f} s  {args.n / s:9,.0f} rows/s  peak RSS {rss:6.0f} MB  "
                  f"x{s / floor:4.1f} of polars floor  unique={rs[0]['unique']}")


if __name__ == "__main__":
    main()
