"""The Ray executor's overhead against the in-process executor on the embedding stage, same texts, same
machine, same run: MiniLM (bf16) over `--n` BIG-bench demo texts in shards of `--shard-size`.

    flock /tmp/curate-bench.lock .venv/bin/python bench/executor_overhead.py [--n 8000] [--repeats 3]

in-process: `embed_to_shards` in this process (torch on all cores). ray: a local Ray with `--workers` actors of
`cpus` = cores / workers each (torch threads per actor set to match), started before timing; each repeat
creates its actors (one model load each) and embeds every shard, so the figure includes actor start-up.
Reports medians, the ratio (target: Ray at most 1.10x) and the largest difference between the two vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from embed_throughput import DEMO, load_texts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "executor_overhead.json")
    args = ap.parse_args()

    import numpy as np
    import ray

    from curate.executors.ray import RayExecutor
    from index.embed import Encoder, embed_to_shards, load_shards

    texts = load_texts(DEMO, args.n)
    while len(texts) < args.n:  # the demo file holds ~3k rows: repeat it (each copy is embedded again)
        texts += texts[: args.n - len(texts)]
    cores = os.cpu_count() or 1
    enc = Encoder.load(dtype="bfloat16", device="cpu")
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, cores // args.workers))}})
    ex = RayExecutor(workers=args.workers, cpus_per_worker=max(1, cores // args.workers))
    times: dict[str, list[float]] = {"in-process": [], "ray": []}
    out: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):  # interleaved
        for name, executor in (("in-process", None), ("ray", ex)):
            tmp = Path(tempfile.mkdtemp(prefix="exec-bench-"))
            t = time.perf_counter()
            embed_to_shards(texts, tmp / "v", enc, shard_size=args.shard_size, progress=False, executor=executor)
            times[name].append(time.perf_counter() - t)
            out[name] = np.array(load_shards(tmp / "v"))
            shutil.rmtree(tmp)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"machine": f"{platform.machine()} {platform.processor()}, {cores} cores", "n": len(texts),
           "shard_size": args.shard_size, "workers": args.workers, "times_s": times, "median_s": med,
           "ratio_ray_vs_in_process": med["ray"] / med["in-process"],
           "max_abs_diff": float(np.abs(out["ray"] - out["in-process"]).max()),
           "rows_per_s": {k: len(texts) / v for k, v in med.items()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
