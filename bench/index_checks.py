"""What k-center's covering radius and the saved search index cost, each new way against the old, in one process.

    flock /tmp/curate-bench.lock .venv/bin/python bench/index_checks.py --n 1000000

On `bench/index_scale.py`'s synthetic rows (or `--vectors`, a float32 [N, d] .npy of L2-normalised rows):
- k-center to 10,000 with its covering radius in `stats` (one more greedy step) against k-center followed by
  the separate exact pass `index.diversity.covering_radius`;
- the index stage's saved search index past 200k rows: IVF lists from the graph's cells (`ivf_from_cells`)
  against `build_index("auto")` (its own k-means, nlist ~4 sqrt(N)), both with nprobe tuned; then the time of
  2,000 searches in each.
Writes bench/out/index_checks_<n>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from bench.index_scale import synthetic, timed
    from index.diversity import covering_radius
    from index.faiss_index import build_index, ivf_from_cells
    from index.kcenter import k_center_greedy
    from index.knn import knn_graph

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic rows (ignored with --vectors)")
    ap.add_argument("--vectors", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    x = synthetic(a.n) if a.vectors is None else np.ascontiguousarray(np.load(a.vectors), dtype=np.float32)
    n = x.shape[0]
    res: dict = {"n": n, "source": a.vectors or "synthetic"}
    g, res["knn_seconds"] = timed(knn_graph, x, k=10, progress=False)

    b = min(10_000, n // 10)
    stats: dict = {}
    (order, _), s_kc = timed(k_center_greedy, x, b, seed=0, progress=False, stats=stats)
    _, s_plain = timed(k_center_greedy, x, b, seed=0, progress=False)
    r_sep, s_sep = timed(covering_radius, x, order)
    res["kcenter"] = {"budget": b, "with_radius_seconds": s_kc, "radius": stats["covering_radius"],
                      "without_radius_seconds": s_plain, "separate_pass_seconds": s_sep, "separate_radius": r_sep}

    if g.cells is not None:
        cells_ivf, s_cells = timed(ivf_from_cells, x, *g.cells, seed=0)
        own_ivf, s_own = timed(build_index, x, "ivf", seed=0)
        q = x[np.random.default_rng(5).choice(n, 2_000, replace=False)]
        res["search_index"] = {name: {"build_seconds": s, "nlist": int(idx.nlist), "nprobe": int(idx.nprobe),
                                      "search_2000_seconds": timed(idx.search, q, 10)[1]}
                               for name, idx, s in (("from_cells", cells_ivf, s_cells), ("own_kmeans", own_ivf, s_own))}
    out = Path(a.out or Path(__file__).parent / "out" / f"index_checks_{n}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
