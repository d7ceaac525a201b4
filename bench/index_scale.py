"""Scale benchmark of the map/index layer on clustered synthetic embeddings (384-d, L2-normalised).

One size per invocation (a fresh process gives a clean peak RSS); run every invocation under the lock:

    flock /tmp/curate-bench.lock .venv/bin/python bench/index_scale.py --n 10000
    flock /tmp/curate-bench.lock .venv/bin/python bench/index_scale.py --n 1000000
    flock /tmp/curate-bench.lock .venv/bin/python bench/index_scale.py --n 100000 --steps umap_compare
    flock /tmp/curate-bench.lock .venv/bin/python bench/index_scale.py --n 20000 --steps apricot

Steps (default "pca,umap,grid,kmeans,knn,kcenter"): PCA 2-D; UMAP fit-on-sample + placement (JIT warmed
first, untimed); grid coverage (target sqrt(N) cells + a coverage curve); k-means k=1,000; kNN graph k=10 with
recall@10 vs exact on 10,000 queries; k-center greedy to 10,000 rows (its covering radius from the same run).
`umap_compare`: our UMAP path vs plain umap-learn on the full set (time, trustworthiness, kNN overlap).
`apricot`: our facility location vs apricot-select's FacilityLocationSelection, same data, same budget.
Writes bench/out/index_scale_<n>_<steps>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")


def synthetic(n: int, d: int = 384, n_clusters: int = 3_000, seed: int = 0) -> np.ndarray:
    """`n` unit rows around `n_clusters` centres: Pareto-distributed sizes, widths varied 0.4-1.6 x (chunked)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.pareto(1.2, n_clusters) + 1.0
    weights /= weights.sum()
    widths = (0.8 * rng.uniform(0.5, 2.0, n_clusters)).astype(np.float32)
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


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def warm_umap() -> float:
    """Pay umap-learn's numba JIT once (untimed in the results), with both of our placement paths.

    Two fits: one under 4,096 rows (umap-learn's brute-force neighbour path) and one above it (NN-descent, whose
    compilation alone takes ~25 s and would otherwise land in whichever timed fit comes first).
    """
    from index.project import project

    x = synthetic(6_000, d=64, n_clusters=20, seed=1)
    _, s1 = timed(project, x[:3_000], method="umap", fit_sample=1_000, progress=False)
    _, s2 = timed(project, x, method="umap", fit_sample=5_000, progress=False)
    return s1 + s2


def knn_overlap(high: np.ndarray, low: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Mean share of each query's k nearest neighbours (exact, full set) kept in the low-dimensional map."""
    import faiss

    def neigh(x: np.ndarray, metric_ip: bool) -> np.ndarray:
        idx = faiss.IndexFlatIP(x.shape[1]) if metric_ip else faiss.IndexFlatL2(x.shape[1])
        idx.add(np.ascontiguousarray(x, dtype=np.float32))
        _, nn = idx.search(np.ascontiguousarray(x[queries], dtype=np.float32), k + 1)
        return nn[:, 1:]

    a, b = neigh(high, True), neigh(low, False)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(a, b, strict=True)]))


def trust(high: np.ndarray, low: np.ndarray, sample: np.ndarray, k: int = 10) -> float:
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(high[sample], low[sample], n_neighbors=k))


def run_core(x: np.ndarray, steps: list[str], res: dict) -> None:
    n = x.shape[0]
    if "pca" in steps:
        from index.project import project

        p, s = timed(project, x, method="pca", dims=2, progress=False)
        res["pca"] = {"seconds": s, "fitted_on": p.info["fitted_on"], "rss_gb": rss_gb()}
        res["_coords"] = p.coords
    if "umap" in steps:
        from index.project import project

        res["umap_jit_warmup_seconds"] = warm_umap()
        p, s = timed(project, x, method="umap", dims=2, progress=False)
        res["umap"] = {"seconds": s, "fit_seconds": p.info["fit_seconds"], "fitted_on": p.info["fitted_on"],
                       "transformed": p.info["transformed"], "rss_gb": rss_gb()}
        res["_coords"] = p.coords
    if "grid" in steps and "_coords" in res:
        from index.grid import assign_cells, coverage_curve

        target = int(round(math.sqrt(n)))
        g, s1 = timed(assign_cells, res["_coords"], target_cells=target)
        order = np.random.default_rng(0).permutation(n)
        budgets = np.unique(np.linspace(0, n, 21).astype(np.int64))
        curve, s2 = timed(coverage_curve, g, order, budgets)
        res["grid"] = {"assign_seconds": s1, "curve_seconds": s2, "target_cells": target,
                       "n_nonempty": g.n_nonempty, "random_order_coverage_at_10pct": float(curve[2]),
                       "rss_gb": rss_gb()}
    if "kmeans" in steps:
        from index.cluster import kmeans

        k = min(1_000, n // 10)
        r, s = timed(kmeans, x, k, seed=0, progress=False)
        res["kmeans"] = {"seconds": s, "k": k, "inertia": float(r.inertia), "rss_gb": rss_gb()}
    if "knn" in steps:
        from index.knn import knn_graph, recall_at_k

        g, s = timed(knn_graph, x, k=10, progress=False)
        rec, s2 = timed(recall_at_k, g, x, sample=min(10_000, n), seed=0)
        res["knn"] = {"seconds": s, "k": 10, "recall_at_10": rec, "recall_queries": min(10_000, n),
                      "recall_seconds": s2, "params": g.info, "rss_gb": rss_gb()}
    if "kcenter" in steps:
        from index.kcenter import k_center_greedy

        b = min(10_000, n // 10)
        work: dict = {}
        (order, radii), s = timed(k_center_greedy, x, b, seed=0, progress=False, stats=work)
        # the covering radius comes with the selection (one more exact greedy step); spot-check its row in float64
        far = x[work["farthest"]].astype(np.float64)
        check = float(1.0 - (x[order].astype(np.float64) @ far).max())
        res["kcenter"] = {"seconds": s, "budget": b, "final_radius": float(radii[-1]),
                          "covering_radius": work["covering_radius"], "covering_radius_check": check,
                          "refreshes": work["refreshes"], "refresh_pairs": work["refresh_pairs"], "rss_gb": rss_gb()}


def run_umap_compare(x: np.ndarray, res: dict) -> None:
    import umap

    from index.project import project

    n = x.shape[0]
    res["umap_jit_warmup_seconds"] = warm_umap()
    rng = np.random.default_rng(0)
    tsample = np.sort(rng.choice(n, size=min(5_000, n), replace=False))
    queries = np.sort(rng.choice(n, size=min(2_000, n), replace=False))
    ours, s_ours = timed(project, x, method="umap", dims=2, progress=False)
    ref, s_ref = timed(umap.UMAP(n_components=2, n_neighbors=15).fit_transform, x)
    q = {
        "ours": {"seconds": s_ours, "fit_seconds": ours.info["fit_seconds"], "fitted_on": ours.info["fitted_on"],
                 "trustworthiness": trust(x, ours.coords, tsample), "knn_overlap": knn_overlap(x, ours.coords, queries)},
        "umap_learn": {"seconds": s_ref, "trustworthiness": trust(x, ref, tsample),
                       "knn_overlap": knn_overlap(x, ref, queries)},
    }
    q["speedup"] = s_ref / s_ours
    q["trustworthiness_ratio"] = q["ours"]["trustworthiness"] / q["umap_learn"]["trustworthiness"]
    q["knn_overlap_ratio"] = q["ours"]["knn_overlap"] / q["umap_learn"]["knn_overlap"]
    q["note"] = ("ours: PCA-50 + UMAP (200 epochs) fit on a 10k seeded sample (random_state set: single-threaded) + kNN "
                 "placement of the rest; umap-learn: UMAP on all rows in 384-d, default settings (no random_state,"
                 " so it may use both cores); trustworthiness on a 5k-row sample, kNN overlap@10 on 2k queries")
    res["umap_compare"] = q


def run_apricot(x: np.ndarray, res: dict, budget: int, repeats: int = 3, dense_max: int = 50_000) -> None:
    from apricot import FacilityLocationSelection

    from index.facility import facility_location, facility_location_value, similarity_matrix
    from index.knn import knn_graph

    n = x.shape[0]
    graph, s_graph = timed(knn_graph, x, k=10, progress=False)
    csr = similarity_matrix(graph)  # W = max(G, G^T) + I, rows are candidates (apricot's convention too)
    ours_times, sparse_times = [], []
    for _ in range(repeats):  # interleaved repeats, medians reported
        (order, _), s = timed(facility_location, csr, budget, progress=False)  # the same W apricot gets
        ours_times.append(s)
        sel, s = timed(FacilityLocationSelection(budget, metric="precomputed", optimizer="lazy").fit, csr)
        sparse_times.append(s)
    s_ours, s_sparse = float(np.median(ours_times)), float(np.median(sparse_times))
    out: dict = {"n": n, "budget": budget, "knn_k": 10, "graph_seconds": s_graph, "ours_seconds": s_ours,
                 "ours_seconds_all": ours_times, "ours_value": float(facility_location_value(graph, order))}
    # (a) apricot on the same sparse kNN similarity graph: same objective, time and value compared directly
    a_order = np.asarray(sel.ranking, dtype=np.int64)
    out["apricot_sparse"] = {"seconds": s_sparse, "seconds_all": sparse_times,
                             "value": float(facility_location_value(graph, a_order))}
    out["sparse_speedup"] = s_sparse / s_ours
    out["sparse_value_ratio"] = out["ours_value"] / out["apricot_sparse"]["value"]
    out["sparse_speedup_incl_graph"] = s_sparse / (s_ours + s_graph)
    if n > dense_max:  # an N x N float32 matrix past this size does not fit beside the rest in 24 GB
        out["apricot_dense"] = {"skipped": f"n > {dense_max}: dense {n}x{n} matrix too large here"}
        out["rss_gb"] = rss_gb()
        res["apricot"] = out
        return
    # (b) apricot's usual dense use: the full N x N cosine matrix (clipped at 0), its own objective
    sims = np.clip(x @ x.T, 0.0, None)
    t = time.perf_counter()
    sel = FacilityLocationSelection(budget, metric="precomputed", optimizer="lazy").fit(sims)
    s_dense = time.perf_counter() - t
    d_order = np.asarray(sel.ranking, dtype=np.int64)

    def dense_value(idx: np.ndarray) -> float:
        return float(sims[:, idx].max(axis=1).sum())

    out["apricot_dense"] = {"seconds": s_dense, "dense_value": dense_value(d_order)}
    out["ours_dense_value"] = dense_value(order)
    out["dense_speedup_incl_graph"] = s_dense / (s_ours + s_graph)
    out["dense_value_ratio"] = out["ours_dense_value"] / out["apricot_dense"]["dense_value"]
    out["rss_gb"] = rss_gb()
    res["apricot"] = out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, required=True, help="rows (e.g. 10000, 100000, 1000000)")
    ap.add_argument("--steps", default="pca,umap,grid,kmeans,knn,kcenter")
    ap.add_argument("--budget", type=int, default=1_000, help="facility-location budget for --steps apricot")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the timed facility-location runs")
    ap.add_argument("--dense-max", type=int, default=50_000, help="largest n for apricot on the dense matrix")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    steps = args.steps.split(",")
    res: dict = {"n": args.n, "d": 384, "steps": steps, "machine": f"{platform.machine()} {os.cpu_count()} cores",
                 "python": platform.python_version()}
    t0 = time.perf_counter()
    x, res["generate_seconds"] = timed(synthetic, args.n)
    res["rss_after_data_gb"] = rss_gb()
    t_core = time.perf_counter()
    run_core(x, steps, res)
    core_steps = [s for s in steps if s in ("pca", "umap", "grid", "kmeans", "knn", "kcenter")]
    if core_steps:
        res["core_total_seconds"] = time.perf_counter() - t_core - res.get("umap_jit_warmup_seconds", 0.0)
    if "umap_compare" in steps:
        run_umap_compare(x, res)
    if "apricot" in steps:
        run_apricot(x, res, args.budget, args.repeats, args.dense_max)
    res.pop("_coords", None)
    res["total_seconds"] = time.perf_counter() - t0
    res["peak_rss_gb"] = rss_gb()
    out = Path(args.out or Path(__file__).parent / "out" / f"index_scale_{args.n}_{'-'.join(steps)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    print(json.dumps(res, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
