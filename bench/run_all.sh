#!/usr/bin/env bash
# Every benchmark, one after another (never two at once: timings would be wrong), with the sizes recorded in
# bench/RESULTS.md. Takes about an hour on 2 cores; JSON results land in bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p bench/out
run() { echo "=== $*"; flock /tmp/curate-bench.lock "$PY" "$@"; }
run bench/ingest_throughput.py --n 200000
run bench/embed_throughput.py --n 2000 --repeats 3 --json bench/out/embed_throughput.json
run bench/score_throughput.py --rows 160 --repeats 3
for n in 10000 100000 1000000; do run bench/index_scale.py --n "$n"; done
run bench/index_scale.py --n 20000 --steps apricot
run bench/index_scale.py --n 100000 --steps umap_compare
run bench/select_scale.py --n 1000000 --budget 10000 --graph
POOL=${BIGBENCH_POOL:-/tmp/curate-bench/bigbench_pool}
[ -d "$POOL" ] || run scripts/build_bigbench_pool.py "$POOL"
run bench/deita_real.py --pool "$POOL"
