"""Selection quality, measured: fine-tune SmolLM2-135M-Instruct on each selector's subset of the demo pool and
score held-out NLL per domain, against random and per-domain balanced random at the same budget.

    flock /tmp/curate-bench.lock .venv/bin/python bench/selection_quality.py [--budget 300] [--seeds 3] [--full-pool]

Steps (each resumes: finished training runs and signals are not redone):
1. the demo run (`recipes/demo.yaml`) if missing: pool, map, heuristics, SmolLM2 perplexity / IFD, DaaR;
2. held-out rows: `--heldout-per-task` BIG-bench rows from each of the demo's 12 tasks, outside the demo pool,
   drawn from the archive as scripts/build_demo_pool.py draws the pool (other seed); plus a 24-row validation
   set (2 per task) for MIW's ICL proxy, disjoint from both;
3. ILA's reference model (`train_reference`: LoRA on `--reference` balanced-random rows, merged) and real
   `depth` / `relative_depth`; every selection below excludes the reference rows;
4. selections at `--budget` rows: random and balanced-random (`--seeds` seeds each), ila (relative depth),
   daar, miw, deita (IFD), k-center, facility-location, rds (the validation rows' domains as its target tasks);
   with `--stratified` each of these also run within each domain (`stratify="domain"`); `--only NAME...` makes,
   scores for and trains only those;
5. LoRA fine-tuning (same settings for every subset) and held-out NLL per domain; the untrained model and,
   with `--full-pool`, the whole eligible pool as reference points.
Writes bench/out/selection_quality.json and prints the markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from build_demo_pool import DEMO_TASKS, MAX_CHARS  # noqa: E402

from curate.run import RunDir  # noqa: E402

OUT = REPO / "bench" / "out"
TRAIN = {"lora": True, "lora_r": 16, "lora_alpha": 32, "epochs": 1, "lr": 1e-3, "batch_tokens": 2048,
         "max_length": 384, "dtype": "float32", "eval_dtype": "bfloat16", "warmup": 0.1, "progress": False,
         "log_every": 5, "save_every": 10}  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_demo(run: Path) -> None:
    """Run the demo recipe unless its run directory already has the DaaR selection (its last selection)."""
    if (run / "selections" / "daar.parquet").exists():
        return
    from curate.recipe import Recipe, run_recipe

    log("building the demo run (recipes/demo.yaml)")
    run_recipe(Recipe.load(REPO / "recipes" / "demo.yaml", run=run), log=log)


def heldout_files(run: Path, per_task: int) -> tuple[Path, Path]:
    """Held-out and validation jsonl files of rows from the demo tasks that are not in the demo pool."""
    held, val = OUT / f"quality_heldout_{per_task}.jsonl", OUT / "quality_validation.jsonl"
    if held.exists() and val.exists() and all("domain" in json.loads(line) for line in val.open()):
        return held, val  # (validation files written before rds was measured lack the rows' domain: redrawn)
    from curate.pool.bigbench import fetch_archive, iter_rows

    log("drawing held-out rows from the BIG-bench archive")
    pool = RunDir(run).read_pool(["prompt", "response"])
    seen = set(zip(pool["prompt"].to_list(), pool["response"].to_list(), strict=True))
    by_task: dict[str, list[dict]] = {}
    for row in iter_rows(fetch_archive(), tasks=DEMO_TASKS, cap_per_task=250 + per_task + 40, seed=1,
                         max_chars=MAX_CHARS):
        if (row["prompt"], row["response"]) not in seen:
            seen.add((row["prompt"], row["response"]))
            by_task.setdefault(row["task"], []).append(row)
    rng = np.random.default_rng(1)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(held, "w") as fh_h, open(val, "w") as fh_v:
        for task in sorted(by_task):
            rows = by_task[task]
            if len(rows) < per_task + 2:
                raise SystemExit(f"{task}: only {len(rows)} rows outside the demo pool")
            order = rng.permutation(len(rows))
            for k in order[:per_task]:
                r = rows[k]
                fh_h.write(json.dumps({"prompt": r["prompt"], "response": r["response"], "domain": r["domain"],
                                       "task": task}) + "\n")
            for k in order[per_task : per_task + 2]:
                r = rows[k]
                fh_v.write(json.dumps({"prompt": r["prompt"], "response": r["response"], "domain": r["domain"],
                                       "task": task}) + "\n")  # rds's target tasks
    return held, val


def signals(run: Path, validation: Path, reference: int, methods: set[str], dtype: str = "bfloat16") -> None:
    """ILA's reference model (its rows are left out of every subset) and, where `methods` hold ila and miw, real
    depth and MIW's learned score (ICL proxy on the validation set), their LM passes in `dtype`."""
    from curate.signals import score
    from curate.train.reference import train_reference

    rd = RunDir(run)
    if not rd.reference_path.exists():
        log(f"training ILA's reference model on {reference} balanced-random rows")
        train_reference(run, reference, model="smollm2", name="reference", seed=0, **TRAIN)
    ref = json.loads(rd.reference_path.read_text())
    if "ila" in methods:
        log("scoring depth / relative_depth (base SmolLM2 vs the reference model)")
        score(run, ["depth", "relative_depth"], base_model="smollm2", ref_model=ref["model"], dtype=dtype,
              max_length=384)
    if "miw" in methods:
        log("scoring miw_score (ICL proxy on the validation set)")
        score(run, ["miw_score"], model="smollm2", validation=validation, dtype=dtype, max_length=384,
              miw_candidates=64, n_val=24)


def plan(budget: int, seeds: int, full_pool: bool, stratified: bool, validation: Path,
         only: list[str] | None) -> list[tuple[str, str, int, dict]]:
    """(selection name, method, seed, select parameters) of every subset, or of the `only` ones."""
    rows = [(f"q-random-s{s}", "random", s, {}) for s in range(seeds)]
    rows += [(f"q-balanced-s{s}", "balanced-random", s, {}) for s in range(seeds)]
    rows += [  # the papers' global versions (stratify="none"; some selectors default to per-domain now)
        ("q-ila", "ila", 0, {"signal": "relative_depth", "stratify": "none"}),
        ("q-daar", "daar", 0, {"model": "smollm2", "stratify": "none"}),
        ("q-miw", "miw", 0, {"stratify": "none"}),
        ("q-deita", "deita", 0, {"signal": "ifd", "threshold": 0.9, "stratify": "none"}),
        ("q-k-center", "k-center", 0, {"stratify": "none"}),
        ("q-facility-location", "facility-location", 0, {"stratify": "none"}),
        ("q-rds", "rds", 0, {"validation": str(validation), "stratify": "none"}),
    ]
    if stratified:  # every selector run within each domain (quotas ∝ the pool's eligible rows per domain)
        rows += [(f"{n}-strat", m, sd, {**p, "stratify": "domain"}) for n, m, sd, p in rows
                 if m not in ("random", "balanced-random")]
    if full_pool:
        rows.append(("q-full", "random", 0, {"budget": "100%"}))
    return [p for p in rows if not only or p[0] in only]


def selections(run: Path, budget: int, plan: list[tuple[str, str, int, dict]]) -> list[tuple[str, str, int]]:
    """Make each planned selection once (reused on re-runs); (selection name, table method, seed) of each."""
    from curate.select import select

    rd = RunDir(run)
    for name, method, seed, params in plan:
        if not rd.selection_path(name).exists():
            log(f"select {name}")
            params = dict(params)
            select(run, method, params.pop("budget", budget), seed=seed, name=name, **params)
    return [(n, "full-pool" if n == "q-full" else m + ("+strat" if n.endswith("-strat") else ""), s)
            for n, m, s, _ in plan]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--heldout-per-task", type=int, default=20)
    ap.add_argument("--reference", type=int, default=150)
    ap.add_argument("--full-pool", action="store_true")
    ap.add_argument("--stratified", action="store_true", help="also every selector stratified by domain")
    ap.add_argument("--only", nargs="*", help="select and train only these selection names")
    ap.add_argument("--signal-dtype", default="bfloat16", help="dtype of the depth and MIW signals' LM passes "
                    "(bfloat16 as in the table; float32 is 4-5x faster on a CPU without bf16 units)")
    args = ap.parse_args(argv)

    from curate.signals.lm import LMScorer
    from curate.train import from_files, train
    from curate.train.stage import evaluate_rows

    t0 = time.time()
    ensure_demo(args.run)
    held, val = heldout_files(args.run, args.heldout_per_task)
    todo = plan(args.budget, args.seeds, args.full_pool, args.stratified, val, args.only)
    signals(args.run, val, args.reference, {m for _, m, _, _ in todo}, args.signal_dtype)
    made = selections(args.run, args.budget, todo)
    result_path = OUT / "selection_quality.json"
    results = json.loads(result_path.read_text()) if result_path.exists() else {}
    if "untrained" not in results:
        log("evaluating the untrained model")
        scorer = LMScorer("smollm2", dtype="float32", device="cpu", max_length=TRAIN["max_length"])
        results["untrained"] = {"heldout": evaluate_rows(scorer, from_files(held), TRAIN["eval_dtype"])}
    for name, method, seed in made:
        log(f"train on {name}")
        res = train(args.run, name, model="smollm2", heldout=held, seed=0, **TRAIN)
        sel = json.loads(RunDir(args.run).selection_path(name).with_suffix(".json").read_text())
        results[name] = {"method": method, "seed": seed, "domains": sel["stats"].get("domains"),
                         **{k: res.metrics[k] for k in ("heldout", "steps", "train_tokens", "tokens_per_s", "wall_s")}}
        results["_meta"] = {"machine": f"{platform.machine()} {platform.processor()}, {__import__('os').cpu_count()} cores",
                            "budget": args.budget, "train": TRAIN, "heldout": str(held.relative_to(REPO)),
                            "reference_rows": args.reference, "elapsed_s": time.time() - t0}
        OUT.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        log(f"{name}: macro {res.metrics['heldout']['macro']:.4f}")
    print(table(results))
    return 0


def table(results: dict) -> str:
    """The markdown table: macro held-out NLL, spread over seeds, comparison with random and balanced."""
    def macro(name: str) -> float:
        return results[name]["heldout"]["macro"]

    groups: dict[str, list[float]] = {}
    for name, r in results.items():
        if name.startswith("q-"):
            groups.setdefault(r["method"], []).append(macro(name))
    rnd, bal = np.array(groups.get("random", [np.nan])), np.array(groups.get("balanced-random", [np.nan]))
    lines = ["| subset | held-out NLL (macro) | vs random | vs balanced | beats random by > 1 sd? |",
             "|---|---:|---:|---:|---|"]
    lines.append(f"| untrained SmolLM2 | {macro('untrained'):.4f} | {macro('untrained') / rnd.mean() - 1:+.1%} | | |")
    for method, vals in sorted(groups.items(), key=lambda kv: np.mean(kv[1])):
        v = np.array(vals)
        cell = f"{v.mean():.4f} ± {v.std(ddof=1):.4f} (n={v.size})" if v.size > 1 else f"{v.mean():.4f}"
        beats = "yes" if v.mean() < rnd.mean() - rnd.std(ddof=1) else "no"
        if method == "random":
            beats = ""
        lines.append(f"| {method} | {cell} | {v.mean() / rnd.mean() - 1:+.1%} | {v.mean() / bal.mean() - 1:+.1%} | {beats} |")
    domains = sorted(results["untrained"]["heldout"]["per_domain"])
    lines += ["", "| subset | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains)]
    names = ["untrained"] + sorted((n for n in results if n.startswith("q-")), key=macro)
    for name in names:
        per = results[name]["heldout"]["per_domain"]
        lines.append(f"| {name} | " + " | ".join(f"{per[d]:.3f}" for d in domains) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
