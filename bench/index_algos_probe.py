"""Probe of the index-layer global steps at scale (kNN graph, k-means, k-center) on clustered synthetic vectors.

Run under the benchmark lock:  flock /tmp/curate-bench.lock .venv/bin/python bench/index_algos_probe.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def synthetic(n: int, d: int = 384, n_clusters: int = 2000, spread: float = 0.8, seed: int = 0) -> np.ndarray:
    """`n` L2-normalised rows around `n_clusters` random unit centres (gaussian noise of norm ~`spread`)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # uneven cluster sizes and widths
    weights = rng.pareto(1.5, n_clusters) + 1.0
    weights /= weights.sum()
    widths = (spread * rng.uniform(0.5, 1.5, n_clusters)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        m = min(step, n - s)
        lab = rng.choice(n_clusters, size=m, p=weights)
        block = rng.standard_normal((m, d), dtype=np.float32)
        block *= (widths[lab] / np.sqrt(d))[:, None]
        block += centres[lab]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + m] = block
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--steps", default="knn,kmeans,kcenter")
    ap.add_argument("--budget", type=int, default=10_000)
    args = ap.parse_args()
    t = time.time()
    x = synthetic(args.n)
    res: dict = {"n": args.n, "d": x.shape[1], "gen_s": round(time.time() - t, 1)}
    steps = args.steps.split(",")
    if "knn" in steps:
        from index.knn import knn_graph, recall_at_k

        t = time.time()
        g = knn_graph(x, k=10, progress=True)
        res["knn_s"] = round(time.time() - t, 1)
        t = time.time()
        res["knn_recall@10"] = round(recall_at_k(g, x, sample=2_000), 4)
        res["recall_check_s"] = round(time.time() - t, 1)
        del g
    if "kmeans" in steps:
        from index.cluster import kmeans

        t = time.time()
        km = kmeans(x, 1000, seed=0, progress=True)
        res["kmeans1000_s"] = round(time.time() - t, 1)
        res["kmeans_inertia"] = km.inertia
    if "kcenter" in steps:
        from index.kcenter import k_center_greedy

        t = time.time()
        order, radii = k_center_greedy(x, args.budget, seed=0, progress=True)
        res[f"kcenter{args.budget}_s"] = round(time.time() - t, 1)
        res["kcenter_final_radius"] = float(radii[-1])
    res["peak_rss_gb"] = round(peak_rss_gb(), 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
