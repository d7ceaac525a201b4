"""Write the whole BIG-bench archive as a sharded parquet pool for million-row benchmarks.

Columns: prompt, response, domain, task (str) and keywords (list of str), the same rows as
``curate.pool.bigbench.iter_rows``. By default each task file gives at most 20,000 rows (a seeded
sample) so the 57k-row multiemo subtasks and mnist_ascii (70k) do not swamp the pool; pass
``--cap-per-task 0`` for no cap. Rows are streamed to ``shard-XXXXX.parquet`` files of
``--shard-rows`` rows, each written atomically; a re-run with the same settings keeps the shards that
already exist. ``pool.json`` records the settings and the counts (per domain, per task).

    flock /tmp/curate-bench.lock .venv/bin/python scripts/build_bigbench_pool.py /work/bigbench_pool
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curate.pool.bigbench import ARCHIVE_NAME, ConversionStats, fetch_archive, iter_rows  # noqa: E402
from index.io import atomic_path, read_json, shard_name, write_json  # noqa: E402

DEFAULT_CAP = 20_000
DEFAULT_SHARD_ROWS = 100_000


def _write_shard(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("domain", pa.string()),
            ("task", pa.string()),
            ("keywords", pa.list_(pa.string())),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def build(
    out_dir: Path,
    archive: Path,
    cap_per_task: int | None = DEFAULT_CAP,
    seed: int = 0,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    tasks: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Stream the archive's rows into parquet shards under ``out_dir``; return the summary written to pool.json."""
    from tqdm import tqdm

    if shard_rows <= 0:
        raise ValueError(f"shard_rows must be > 0, got {shard_rows}")
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"archive": Path(archive).name, "cap_per_task": cap_per_task, "seed": seed,
              "shard_rows": shard_rows, "tasks": tasks}
    params_path = out_dir / "params.json"
    if params_path.exists():
        old = read_json(params_path)
        if old != params:
            raise SystemExit(f"{out_dir} holds a pool built with {old}, not {params}: use another folder")
    else:
        write_json(params_path, params)

    stats = ConversionStats()
    t0 = time.perf_counter()
    buf: list[dict] = []
    shard = 0
    written = skipped = 0
    bar = tqdm(unit=" rows", unit_scale=True, desc="bigbench", disable=not progress, mininterval=1.0)

    def flush() -> None:
        nonlocal shard, written, skipped, buf
        final = out_dir / shard_name(shard, "parquet")
        if final.exists():
            skipped += 1
        else:
            _write_shard(final, buf)
            written += 1
        shard += 1
        buf = []

    for row in iter_rows(archive, tasks=tasks, cap_per_task=cap_per_task, seed=seed, stats=stats):
        buf.append(row)
        bar.update(1)
        if len(buf) >= shard_rows:
            flush()
            bar.set_postfix(shards=shard, tasks=stats.tasks_used)
    if buf:
        flush()
    bar.close()
    # Shards left over from an earlier, larger build with the same params cannot exist (same params ->
    # same rows), but stale higher-numbered files would be misread as part of the pool: refuse them.
    extra = sorted(p.name for p in out_dir.glob("shard-*.parquet") if int(p.stem.split("-")[1]) >= shard)
    if extra:
        raise SystemExit(f"{out_dir}: unexpected shards beyond the {shard} built: {extra[:5]}")
    summary = {
        "params": params,
        "n_rows": stats.rows,
        "n_shards": shard,
        "shards_written": written,
        "shards_kept": skipped,
        "seconds": round(time.perf_counter() - t0, 1),
        "stats": stats.as_dict(),
    }
    write_json(out_dir / "pool.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry: build the pool and print counts per domain."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path, help="folder for shard-*.parquet, params.json, pool.json")
    ap.add_argument("--archive", type=Path, help=f"{ARCHIVE_NAME} (default: fetch into the cache)")
    ap.add_argument("--cache-dir", type=Path, help="download cache (default ~/.cache/curate/bigbench)")
    ap.add_argument("--cap-per-task", type=int, default=DEFAULT_CAP, help="0 = no cap (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS)
    ap.add_argument("--tasks", nargs="*", help="only these tasks (task, task/subtask or a top-level task)")
    args = ap.parse_args(argv)

    archive = args.archive or fetch_archive(args.cache_dir)
    cap = args.cap_per_task if args.cap_per_task > 0 else None
    summary = build(args.out_dir, archive, cap_per_task=cap, seed=args.seed, shard_rows=args.shard_rows,
                    tasks=args.tasks)
    st = summary["stats"]
    print(f"{summary['n_rows']:,} rows in {summary['n_shards']} shards ({summary['shards_written']} written, "
          f"{summary['shards_kept']} kept) in {summary['seconds']} s -> {args.out_dir}")
    print(f"task files {st['task_files']:,}, without examples {st['tasks_without_examples']:,}, "
          f"examples {st['examples']:,}, skipped empty {st['skipped_empty']:,}, over cap {st['skipped_over_cap']:,}")
    print("rows per domain:")
    for dom, n in sorted(st["rows_per_domain"].items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {n:>10,}  {dom}")
    print(json.dumps({"n_rows": summary["n_rows"], "domains": len(st["rows_per_domain"])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
