"""Scoring throughput of curate.signals.lm.LMScorer on CPU with the packaged SmolLM2-135M-Instruct.

Compared in the same run, on the same pre-tokenised rows (real BIG-bench demo rows, seeded sample
across all tasks, so lengths are mixed), tokens/s = real (non-pad) tokens / wall time, median of repeats:
  ours   LMScorer.nll: length-sorted batches under a token budget, head only on labelled positions;
  bare   a bare transformers forward loop over exactly the same batches (same rows, padding, precision):
         model(input_ids, attention_mask).logits -> float32 log_softmax -> gather of the labelled tokens;
  naive  fixed batches of `--naive-batch` rows in input order, padded to the batch max, full logits.
Also bf16 on CPU (ours vs bare), and the ICL proxy's forward tokens per row and rows/s.

Run: flock /tmp/curate-bench.lock .venv/bin/python bench/score_throughput.py [--rows 160 --repeats 3]
     (--dtypes bfloat16 --repeats 5 for the bf16 comparison alone)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from common import timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_rows(n: int, seed: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in (ROOT / "data/demo/bigbench_demo.jsonl").read_text().splitlines() if line]
    pick = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return [[{"role": "user", "content": rows[i]["prompt"]}, {"role": "assistant", "content": rows[i]["response"]}]
            for i in pick]


def bare_loop(model, batches, pad_id):
    """Reference: plain HF forward on the given batches; per-row summed NLL of the labelled tokens."""
    import torch

    out = []
    with torch.inference_mode():
        for batch in batches:
            T = max(len(s.ids) for s in batch)
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, s in enumerate(batch):
                ids[b, : len(s.ids)] = torch.tensor(s.ids)
                mask[b, : len(s.ids)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            for b, s in enumerate(batch):
                out.append(-tok[b, s.n_prompt - 1 : len(s.ids) - 1].double().sum().item())
    return np.array(out)



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--naive-batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--icl-rows", type=int, default=8)
    ap.add_argument("--n-val", type=int, default=8)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma list of float32, bfloat16")
    ap.add_argument("--out", default=str(ROOT / "bench" / "score_throughput.json"))
    args = ap.parse_args()

    import torch

    from curate.models import ensure_smollm2
    from curate.signals.icl import icl_gains
    from curate.signals.lm import LMScorer, _budget_batches
    from curate.signals.validation import ValItem

    torch.set_num_threads(os.cpu_count() or 2)
    path = ensure_smollm2()
    convs = load_rows(args.rows, args.seed)
    report: dict = {"rows": args.rows, "repeats": args.repeats, "batch_tokens": args.batch_tokens,
                    "naive_batch": args.naive_batch, "threads": torch.get_num_threads()}
    for dtype in args.dtypes.split(","):
        sc = LMScorer(path, dtype=dtype, device="cpu", batch_tokens=args.batch_tokens, max_length=1024)
        seqs = [sc.encode(c) for c in convs]
        n_tok = sum(len(s.ids) for s in seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].ids))
        same_batches = [[seqs[i] for i in order[lo:hi]]
                        for lo, hi in _budget_batches([len(seqs[i].ids) for i in order], args.batch_tokens)]
        sc.nll(seqs[:4])  # warm-up
        t_ours, all_ours, (ours, _) = timed(lambda sc=sc, seqs=seqs: sc.nll(seqs), args.repeats)
        t_bare, all_bare, bare = timed(lambda sc=sc, b=same_batches: bare_loop(sc.model, b, sc.pad_id), args.repeats)
        bare = bare[np.argsort(order)]  # back to input order
        rec = {
            "tokens": n_tok,
            "ours_tok_s": n_tok / t_ours, "bare_tok_s": n_tok / t_bare, "ours_vs_bare": t_bare / t_ours,
            "times": {"ours": all_ours, "bare": all_bare},
            "max_abs_diff_vs_bare": float(np.max(np.abs(ours - bare))),
            "n_batches_ours": len(same_batches),
        }
        if dtype == "float32":
            naive_batches = [seqs[i : i + args.naive_batch] for i in range(0, len(seqs), args.naive_batch)]
            t_naive, all_naive, naive = timed(lambda sc=sc, b=naive_batches: bare_loop(sc.model, b, sc.pad_id),
                                              args.repeats)
            padded = sum(len(b) * max(len(s.ids) for s in b) for b in naive_batches)
            padded_ours = sum(len(b) * max(len(s.ids) for s in b) for b in same_batches)
            rec.update({"naive_tok_s": n_tok / t_naive, "ours_vs_naive": t_naive / t_ours,
                        "times_naive": all_naive, "pad_fraction_naive": 1 - n_tok / padded,
                        "pad_fraction_ours": 1 - n_tok / padded_ours,
                        "max_abs_diff_vs_naive": float(np.max(np.abs(ours - naive)))})
            # ICL proxy cost: one-shot, n_val validation rows from other demo rows
            val_convs = load_rows(args.n_val, args.seed + 1)
            val = [ValItem(c[:1], c[1]["content"]) for c in val_convs]
            t0 = time.perf_counter()
            _, toks_per_row = icl_gains(sc, convs[: args.icl_rows], val)
            dt = time.perf_counter() - t0
            rec["icl"] = {"rows": args.icl_rows, "n_val": args.n_val, "k": 1,
                          "forward_tokens_per_row": toks_per_row, "rows_per_s": args.icl_rows / dt,
                          "seconds": dt}
        report[dtype] = rec
        print(json.dumps({dtype: rec}, indent=1), flush=True)
        del sc
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
