"""Every selector on a synthetic 1M-row pool at a 10,000-row budget, against the naive implementation each
replaces (same run, output equality checked).

Data (seeded): 1M x 384 float32 unit vectors around 2,000 centres (per-centre spread 0.2-0.6, so tight
clusters hold many rows above cosine 0.9) with 10% near-duplicate rows (a copy of an
earlier row + small noise, so Deita's filter really drops rows); 2-D coordinates -> grid cells
(index.grid.assign_cells, ~2,000 cells); synthetic signals (relative depth, quality, complexity, 4 MIW
indicators, tokens); domains on 1% of rows (DaaR seeds). DaaR runs on the vectors as precomputed features
(cluster_features = probe_features = "embeddings"), so the k-means, probe training and 1M-row prediction are
timed, not an LLM.

    flock /tmp/curate-bench.lock .venv/bin/python bench/select_scale.py [--n 1000000] [--budget 10000]
        [--repeats 3] [--graph] [--only ila,deita,...] [--out bench/select_scale.json]

Stratified against unstratified (issue 15: at most 1.2x): `--stratified` also times every selector with
`stratify="cluster"` over the 50 synthetic clusters (`lab % 50`, about 20,000 rows each) and records
"selector NAME stratified" with `ratio_vs_unstratified` and `within_1.2x`:

    flock /tmp/curate-bench.lock .venv/bin/python bench/select_scale.py --stratified --graph \
        --out bench/out/select_scale_stratified.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from common import timed


def make_data(n: int, d: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_centres = 2000
    centres = rng.standard_normal((n_centres, d), dtype=np.float32)
    spread = rng.uniform(0.2, 0.6, n_centres).astype(np.float32)  # tight clusters: many rows above cos 0.9
    lab = rng.integers(0, n_centres, n)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        noise = rng.standard_normal((e - s, d), dtype=np.float32)
        x[s:e] = centres[lab[s:e]] + spread[lab[s:e], None] * noise
    dup = np.flatnonzero(rng.random(n) < 0.1)
    src = rng.integers(0, n, dup.size)
    x[dup] = x[src] + 0.02 * rng.standard_normal((dup.size, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    coords = rng.standard_normal((n_centres, 2))[lab] * 4 + rng.standard_normal((n, 2))
    domains = np.array([None] * n, dtype=object)
    lab_rows = np.flatnonzero(rng.random(n) < 0.01)
    domains[lab_rows] = np.array([f"d{c % 4}" for c in lab[lab_rows]], dtype=object)
    signals = {
        "relative_depth": rng.random(n),
        "quality": rng.random(n),
        "complexity": rng.random(n),
        "tokens": rng.integers(20, 2000, n).astype(np.float64),
        **{f"ind{j}": rng.standard_normal(n) for j in range(4)},
    }
    return {"vectors": x, "coords": coords, "domains": domains, "signals": signals, "clusters": lab % 50}



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--graph", action="store_true", help="also build the kNN graph and run facility location")
    ap.add_argument("--only", default="", help="comma-separated subset of the runs")
    ap.add_argument("--out", default="bench/select_scale.json")
    ap.add_argument("--stratified", action="store_true",
                    help="also time each selector with stratify=cluster (50 strata) against its unstratified run")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}

    from curate.select import PoolView, make_selector
    from curate.select.deita import deita_filter, deita_filter_reference, score_order
    from curate.select.ila import ila_select, ila_select_reference
    from index.cpu import native_bf16
    from index.grid import assign_cells

    t = time.perf_counter()
    data = make_data(args.n, args.d)
    cells = assign_cells(data["coords"], target_cells=2000).cells
    gen_s = time.perf_counter() - t
    n, b = args.n, args.budget
    print(f"data: {n} x {args.d}, {np.unique(cells).size} cells, generated in {gen_s:.1f}s", flush=True)
    view = PoolView.from_arrays(
        [f"{i:032x}" for i in range(n)],
        domains=data["domains"],
        vectors=data["vectors"],
        signals=data["signals"],
        cells=cells,
        clusters=data["clusters"],
    )
    results: dict = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "n": n,
        "d": args.d,
        "budget": b,
        "runs": {},
    }

    def record(name: str, med: float, times: list[float], **extra) -> None:
        results["runs"][name] = {"median_s": med, "times_s": times, **extra}
        print(f"{name:28s} median {med:8.3f}s  {[round(x, 3) for x in times]} {extra}", flush=True)

    def want(name: str) -> bool:
        return not only or name in only

    def stratified(label: str, make, plain_s: float, reps: int, pool=None) -> None:
        """Time `make().select(..., stratify="cluster")` and record it against the unstratified median."""
        if not args.stratified:
            return
        v = view if pool is None else pool
        med, ts, sel = timed(lambda: make().select(v, b, seed=0, stratify="cluster"), reps)
        st = sel.stats["stratify"]
        record(f"selector {label} stratified", med, ts, ratio_vs_unstratified=med / plain_s,
               **{"within_1.2x": med <= 1.2 * plain_s}, strata=len(st["strata"]), passed_on=st["passed_on"],
               rounds=st["rounds"], mix_tv=sel.stats["mix"]["total_variation"])

    R = args.repeats
    # ---- ILA: vectorised core vs naive Python round-robin ------------------------------------------------
    if want("ila"):
        depth = data["signals"]["relative_depth"]
        med, ts, fast = timed(lambda: ila_select(cells, depth, b, seed=0), R)
        med_ref, ts_ref, ref = timed(lambda: ila_select_reference(cells, depth, b, seed=0), max(1, R - 2))
        same = bool(np.array_equal(fast.positions, ref.positions))
        record("ila core (vectorised)", med, ts, equal_to_naive=same, stats=fast.stats)
        record("ila naive (python loop)", med_ref, ts_ref, ratio=med_ref / med)
        med, ts, sel = timed(lambda: make_selector("ila").select(view, b, seed=0), R)
        record("selector ila", med, ts, grid_coverage=sel.stats["grid_coverage"])
        stratified("ila", lambda: make_selector("ila"), med, R)
        med, ts, _ = timed(
            lambda: make_selector("ila", tau=0.5, cell_order="best").select(view, b, seed=0), R
        )
        record("selector ila tau=0.5 best", med, ts)
    # ---- Deita: blocked vs naive sequential ---------------------------------------------------------------
    if want("deita"):
        sc = data["signals"]["quality"] * data["signals"]["complexity"]
        order = score_order(sc)
        vec = data["vectors"]
        import torch  # noqa: F401  (imported by every real run before selection; its import is not the filter's)

        t0 = time.perf_counter()
        deita_filter(vec, order, b, threshold=0.9, screen="bf16")
        first = time.perf_counter() - t0  # includes building oneDNN's bf16 kernels, once per process
        runs = {}
        for screen in ("bf16", "fp32", "faiss"):
            runs[screen] = timed(lambda s=screen: deita_filter(vec, order, b, threshold=0.9, screen=s), R)
        med_ref, ts_ref, ref = timed(lambda: deita_filter_reference(vec, order, b, threshold=0.9), R)
        walked = int(np.flatnonzero(order == ref[-1])[0]) + 1
        for screen, (med, ts, out) in runs.items():
            extra = {"rows_walked": walked, "bf16_units": native_bf16(), "first_call_s": first}
            record(f"deita core ({screen} screen)", med, ts, equal_to_naive=bool(np.array_equal(out, ref)),
                   ratio_naive_over_this=med_ref / med, **(extra if screen == "bf16" else {}))
        record("deita naive (per-row dense)", med_ref, ts_ref)
        med, ts, _ = timed(lambda: make_selector("deita", signal="quality,complexity").select(view, b), R)
        record("selector deita", med, ts)
        stratified("deita", lambda: make_selector("deita", signal="quality,complexity"), med, R)
    # ---- MIW ------------------------------------------------------------------------------------------------
    if want("miw"):
        w = {"ind0": 0.4, "ind1": 0.3, "ind2": 0.2, "ind3": 0.1}
        med, ts, sel = timed(lambda: make_selector("miw", weights=w).select(view, b), R)
        from curate.signals import weighted_score

        ref = np.argsort(-weighted_score({k: data["signals"][k] for k in w}, w), kind="stable")[:b]
        record("selector miw", med, ts, equal_to_argsort=bool(np.array_equal(sel.positions, ref)))
        stratified("miw", lambda: make_selector("miw", weights=w), med, R)
    # ---- DaaR -----------------------------------------------------------------------------------------------
    if want("daar"):
        kw = {"cluster_features": "embeddings", "probe_features": "embeddings", "probe_size": 5000}
        med, ts, sel = timed(lambda: make_selector("daar", **kw).select(view, b, seed=0), 1)
        st = sel.stats
        record(
            "selector daar (5k probe)",
            med,
            ts,
            oof_accuracy=st["domain_probe"]["oof_accuracy"],
            div_holdout_r2=st["diversity_probe"].get("holdout_r2"),
        )
        stratified("daar (5k probe)", lambda: make_selector("daar", **kw), med, 1)
        band = {"metric": "inter", "band": [80, 100], "descending": False, "labels": "cluster"}
        med, ts, _ = timed(lambda: make_selector("daar_band", **band).select(view, b), R)
        record("selector daar_band", med, ts)
        stratified("daar_band", lambda: make_selector("daar_band", **band), med, R)
    # ---- baselines ------------------------------------------------------------------------------------------
    for name, params in (
        ("random", {}),
        ("balanced-random", {}),
        ("longest", {}),
        ("top-signal", {"signal": "quality"}),
        ("k-center", {}),
    ):
        if want(name):
            reps = 1 if name == "k-center" else R
            med, ts, _ = timed(
                lambda name=name, params=params: make_selector(name, **params).select(view, b), reps
            )
            record(f"selector {name}", med, ts)
            stratified(name, lambda name=name, params=params: make_selector(name, **params), med, reps)
    if args.graph and want("facility-location"):
        from index.knn import knn_graph

        med, ts, g = timed(lambda: knn_graph(data["vectors"], k=10, progress=True), 1)
        record("knn graph k=10", med, ts)
        gview = PoolView.from_arrays([f"{i:032x}" for i in range(n)], knn=g, clusters=data["clusters"])
        med, ts, _ = timed(lambda: make_selector("facility-location").select(gview, b), 1)
        record("selector facility-location", med, ts)
        stratified("facility-location", lambda: make_selector("facility-location"), med, 1, pool=gview)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
