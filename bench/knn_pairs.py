"""The kNN graph's pairs-once scoring against two-way scoring, on stored embeddings (real ones by default).

    flock /tmp/curate-bench.lock .venv/bin/python bench/knn_pairs.py --vectors RUN/embeddings/FP/vectors.npy --rows 300000

`--vectors`: a float32 [N, d] .npy of L2-normalised rows, e.g. the embed stage's output of `bench/pipeline_1m.py`;
`--rows` draws a seeded sample of them. Each method runs once in this process, one after the other:
`knn_graph(pairs_once=False)` (each cell's own probe lists, scored from both sides) and the default
(symmetric lists, each pair of cells multiplied once). Records time, the tuned settings and recall@10 on
2,000 queries (ties count). Writes bench/out/knn_pairs_<rows>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from index.knn import knn_graph, recall_at_k

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", required=True, help="float32 [N, d] .npy of L2-normalised rows")
    ap.add_argument("--rows", type=int, default=300_000, help="seeded sample of that many rows (all if larger)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    v = np.load(a.vectors, mmap_mode="r")
    take = np.sort(np.random.default_rng(0).choice(v.shape[0], min(a.rows, v.shape[0]), replace=False))
    x = np.ascontiguousarray(v[take], dtype=np.float32)
    res: dict = {"vectors": a.vectors, "rows": int(x.shape[0]), "d": int(x.shape[1])}
    for name, pairs_once in (("two_way", False), ("pairs_once", None)):
        t = time.perf_counter()
        g = knn_graph(x, k=10, kind="cells", progress=False, pairs_once=pairs_once)
        s = time.perf_counter() - t
        res[name] = {"seconds": s, "params": g.info, "recall_at_10": recall_at_k(g, x, sample=2_000)}
        print(name, f"{s:.1f} s", res[name]["recall_at_10"], g.info, flush=True)
    res["speedup"] = res["two_way"]["seconds"] / res["pairs_once"]["seconds"]
    out = Path(a.out or Path(__file__).parent / "out" / f"knn_pairs_{x.shape[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
