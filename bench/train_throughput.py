"""Training throughput of `curate train` against a bare transformers Trainer, on CPU with SmolLM2-135M-Instruct.

Same rows (a seeded sample of the demo pool, mixed lengths), same model, LoRA settings, precision, optimiser
and schedule; tokens/s = real (non-pad) tokens trained / Trainer's train_runtime, median of repeats, each
measurement in a fresh process (so its peak RSS is its own):
  ours    curate.train.train: token-budget length-grouped batches, weighted loss, head on labelled positions;
  bare    a bare `Trainer` (model's own loss on full logits) over exactly our batches (only its dataloader
          is replaced, to feed the same batch composition);
  naive   a bare `Trainer` with fixed batches of the same mean size in random order (padding to each
          batch's longest row), Trainer's default sampler.

Run: flock /tmp/curate-bench.lock .venv/bin/python bench/train_throughput.py [--rows 96 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"}
BATCH_TOKENS = 2048
MAX_LENGTH = 384


def sample_rows(n: int, path: Path) -> Path:
    """A seeded sample of n demo rows, written as jsonl."""
    import numpy as np

    lines = (ROOT / "data" / "demo" / "bigbench_demo.jsonl").read_text().splitlines()
    pick = np.random.default_rng(0).choice(len(lines), size=n, replace=False)
    path.write_text("\n".join(lines[i] for i in sorted(pick)) + "\n")
    return path


def run_ours(data: Path, dtype: str) -> dict:
    from curate.train import train

    with tempfile.TemporaryDirectory() as out:
        res = train(data=data, model="smollm2", out=Path(out) / "t", lora=True, lora_r=LORA["r"],
                    lora_alpha=LORA["alpha"], epochs=1, lr=1e-3, batch_tokens=BATCH_TOKENS, max_length=MAX_LENGTH,
                    dtype=dtype, progress=False, log_every=1000, save_every=100000)
    m = res.metrics
    return {"tokens": m["train_tokens"], "runtime": m["train_runtime_s"], "steps": m["steps"]}


def run_bare(data: Path, dtype: str, same_batches: bool) -> dict:
    import numpy as np
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from curate.models import resolve_model
    from curate.signals.lm import LMScorer, labels_for
    from curate.train import from_files
    from curate.train.data import encode_rows
    from curate.train.model import load_for_training, unwrap
    from curate.train.sampler import TokenBudgetBatchSampler

    set_seed(0)
    net, tok, fp = load_for_training(resolve_model("smollm2"), lora=LORA)
    scorer = LMScorer.from_model(unwrap(net), tok, path=resolve_model("smollm2"), dtype="float32", device="cpu",
                                 fingerprint=fp, max_length=MAX_LENGTH)
    feats = encode_rows(scorer, from_files(data), preference=False)
    from curate.signals.lm import Encoded

    items = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels_for(Encoded(ids, int(p)))}
             for ids, p in zip(feats.ids, feats.n_prompt, strict=True)]
    batches = TokenBudgetBatchSampler(feats.lengths, BATCH_TOKENS, seed=0)
    mean_rows = max(1, round(len(items) / len(batches)))
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

    class SameBatches(Trainer):
        def get_train_dataloader(self):
            plain = [[i for i, _ in b] for b in batches]
            dl = torch.utils.data.DataLoader(items, batch_sampler=plain, collate_fn=collate)
            return self.accelerator.prepare(dl)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=mean_rows, num_train_epochs=1,
                                 learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.05, use_cpu=True,
                                 bf16=dtype == "bfloat16", report_to=[], save_strategy="no", logging_steps=1000,
                                 disable_tqdm=True, seed=0, remove_unused_columns=False)
        cls = SameBatches if same_batches else Trainer
        res = cls(model=net, args=args, train_dataset=items, data_collator=collate).train()
    return {"tokens": int(np.sum(feats.lengths)), "runtime": res.metrics["train_runtime"], "steps": res.global_step,
            "batch_rows": mean_rows}


def one(kind: str, data: Path, dtype: str) -> None:
    out = run_ours(data, dtype) if kind == "ours" else run_bare(data, dtype, same_batches=kind == "bare")
    out["tokens_per_s"] = out["tokens"] / out["runtime"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--one", choices=["ours", "bare", "naive"])
    ap.add_argument("--data", type=Path)
    args = ap.parse_args(argv)
    if args.one:
        one(args.one, args.data, args.dtype)
        return 0
    data = sample_rows(args.rows, Path(tempfile.mkdtemp()) / "rows.jsonl")
    runs: dict[str, list[dict]] = {"ours": [], "bare": [], "naive": []}
    for _ in range(args.repeats):
        for kind in runs:  # interleaved, so a slow spell of the machine hits every variant alike
            proc = subprocess.run([sys.executable, __file__, "--one", kind, "--data", str(data), "--dtype", args.dtype],
                                  capture_output=True, text=True, check=True)
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            runs[kind].append(json.loads(line[7:]))
            print(kind, runs[kind][-1], flush=True)
    med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    summary = {
        "rows": args.rows, "dtype": args.dtype, "batch_tokens": BATCH_TOKENS, "lora": LORA, "cpu_count": os.cpu_count(),
        "median_tokens_per_s": med, "ours_vs_bare": med["ours"] / med["bare"], "ours_vs_naive": med["ours"] / med["naive"],
        "peak_rss_mb": {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items()}, "runs": runs,
    }  # fmt: skip
    out = ROOT / "bench" / "out" / "train_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("median_tokens_per_s", "ours_vs_bare", "ours_vs_naive", "peak_rss_mb")},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
