"""Cost of the ICL proxy against a loss pass, with and without the shared-prefix cache (SmolLM2, CPU).

For `--rows` real BIG-bench demo rows (seeded sample, as bench/score_throughput.py), in one process:
  loss    LMScorer.nll over the rows (the row's own loss pass: what `loss` / `perplexity` cost);
  cached  icl_gains(cache=True): each row's demo forwarded once, its keys/values extended by the n_val
          validation rows (LMScorer.nll_shared_prefix);
  plain   icl_gains(cache=False): every (demo + question + answer) sequence forwarded whole.
Two validation sets of n_val rows: `bigbench` (other demo-pool rows, as long as the pool rows: the setting of
the issue's 19x figure) and `short` (one-line questions with one- or two-word answers, "capital of France?
-> Paris" style). Reported: seconds per row, the ratio to the loss pass, forward tokens per row, and the
largest |gain difference| between cached and plain (equal within float rounding).
Loss and cached passes alternate over `--repeats` (medians); the plain pass runs once (it is the slow one).
Times are wall seconds and process CPU seconds; `--threads 1` (default) keeps the CPU figure a measure of
work on a shared machine (with 2 threads, a descheduled worker stalls the other and inflates both).

Run: nice -n 15 .venv/bin/python bench/icl_cost.py [--rows 8 --n-val 8 --repeats 2 --val bigbench,short]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from score_throughput import load_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SHORT_VAL = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is 7 times 8?", "56"),
    ("Translate 'cat' into French.", "chat"),
    ("What is the opposite of 'hot'?", "cold"),
    ("Which planet is known as the red planet?", "Mars"),
    ("How many legs does a spider have?", "Eight"),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare"),
]


def clock(fn):
    """(wall seconds, process CPU seconds, result) of fn()."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--n-val", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--val", default="bigbench,short", help="comma list of bigbench, short")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "icl_cost.json"))
    args = ap.parse_args()

    import torch

    from curate.models import ensure_smollm2
    from curate.signals.icl import icl_gains
    from curate.signals.lm import LMScorer
    from curate.signals.validation import ValItem

    torch.set_num_threads(args.threads)
    sc = LMScorer(ensure_smollm2(), dtype=args.dtype, device="cpu", batch_tokens=args.batch_tokens, max_length=1024)
    convs = load_rows(args.rows, args.seed)
    seqs = [sc.encode(c) for c in convs]
    row_tokens = float(np.mean([len(s.ids) for s in seqs]))
    sets = {
        "bigbench": [ValItem(c[:1], c[1]["content"]) for c in load_rows(args.n_val, args.seed + 1)],
        "short": [ValItem([{"role": "user", "content": q}], a) for q, a in SHORT_VAL[: args.n_val]],
    }
    sc.nll(seqs[:2])  # warm-up
    report: dict = {"rows": args.rows, "n_val": args.n_val, "k": 1, "dtype": args.dtype, "repeats": args.repeats,
                    "threads": torch.get_num_threads(), "batch_tokens": args.batch_tokens,
                    "row_tokens_mean": row_tokens, "sets": {}}
    for name in args.val.split(","):
        val = sets[name]
        val_tokens = float(np.mean([len(sc.encode(list(v.question) + [{"role": "assistant", "content": v.answer}]).ids)
                                    for v in val]))
        t_loss, t_cached = [], []
        for _ in range(args.repeats):  # alternate, so that load on the machine hits both alike
            t_loss.append(clock(lambda: sc.nll(seqs))[:2])
            *dt, (cached, cached_tok) = clock(lambda val=val: icl_gains(sc, convs, val, cache=True))
            t_cached.append(tuple(dt))
        *t_plain, (plain, plain_tok) = clock(lambda val=val: icl_gains(sc, convs, val, cache=False))
        rec = {"val_tokens_mean": val_tokens,
               "forward_tokens_per_row": {"loss": row_tokens, "cached": cached_tok, "plain": plain_tok},
               "max_abs_gain_diff": float(np.max(np.abs(np.asarray(cached) - np.asarray(plain))))}
        for j, kind in enumerate(("wall", "cpu")):
            loss_s = statistics.median(t[j] for t in t_loss)
            cached_s = statistics.median(t[j] for t in t_cached)
            rec[kind] = {"loss_s_per_row": loss_s / args.rows, "cached_s_per_row": cached_s / args.rows,
                         "plain_s_per_row": t_plain[j] / args.rows, "cached_vs_loss": cached_s / loss_s,
                         "plain_vs_loss": t_plain[j] / loss_s, "plain_vs_cached": t_plain[j] / cached_s}
        rec["times"] = {"loss": t_loss, "cached": t_cached, "plain": t_plain}
        report["sets"][name] = rec
        print(json.dumps({name: rec}, indent=1), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
