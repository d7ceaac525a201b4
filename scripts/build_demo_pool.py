"""Build the committed demo pool data/demo/bigbench_demo.jsonl from the BIG-bench archive.

Twelve real BIG-bench tasks from twelve different domains, 250 rows each (a seeded sample), rows
longer than 1,500 characters (prompt + response) skipped so the demo stays fast on a laptop CPU.

    .venv/bin/python scripts/build_demo_pool.py            # downloads the archive once (~358 MB)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curate.pool.bigbench import ConversionStats, fetch_archive, iter_rows  # noqa: E402
from index.io import atomic_path  # noqa: E402

# task -> the domain the converter is expected to give it (checked, so a rule change is noticed).
DEMO_TASKS: dict[str, str] = {
    "chinese_remainder_theorem": "mathematics",
    "geometric_shapes": "computer code",
    "semantic_parsing_spider": "semantic parsing",
    "formal_fallacies_syllogisms_negation": "logical reasoning",
    "winowhy": "common sense",
    "disfl_qa": "reading comprehension",
    "salient_translation_error_detection": "translation",
    "multiemo/all_sentence_en": "emotional understanding",
    "goal_step_wikihow/goal_inference": "social reasoning",
    "social_iqa": "theory of mind",
    "periodic_elements/subtask_1": "chemistry",
    "fact_checker/fever": "truthfulness",
}
CAP_PER_TASK = 250
MAX_CHARS = 1500
SEED = 0


def main(argv: list[str] | None = None) -> int:
    """Write the demo jsonl and print its counts."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", type=Path, help="bigbench-1.0.0.tar.gz (default: fetch into the cache)")
    ap.add_argument("--cache-dir", type=Path, help="download cache (default ~/.cache/curate/bigbench)")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "demo" / "bigbench_demo.jsonl")
    ap.add_argument("--cap-per-task", type=int, default=CAP_PER_TASK)
    ap.add_argument("--max-chars", type=int, default=MAX_CHARS)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)

    archive = args.archive or fetch_archive(args.cache_dir)
    stats = ConversionStats()
    rows = list(iter_rows(archive, tasks=DEMO_TASKS, cap_per_task=args.cap_per_task, seed=args.seed,
                          max_chars=args.max_chars, stats=stats))
    for row in rows:
        want = DEMO_TASKS[row["task"]]
        if row["domain"] != want:
            raise SystemExit(f"{row['task']}: domain {row['domain']!r}, expected {want!r}")
    short = {t: n for t, n in stats.rows_per_task.items() if n < args.cap_per_task}
    if short:
        raise SystemExit(f"tasks with fewer than {args.cap_per_task} usable rows: {short}")
    with atomic_path(args.out, suffix=".jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.chmod(0o644)
    print(f"wrote {len(rows)} rows to {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    print(json.dumps(stats.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
