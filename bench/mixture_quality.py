"""Mixture quality, measured: IDEAL (2 rounds of EK-FAC influence) and AMA-S against uniform and stratified
mixtures at equal training tokens, on the demo pool's 12 domains with SmolLM2-135M-Instruct (LoRA).

    flock /tmp/curate-bench.lock .venv/bin/python bench/mixture_quality.py [--seeds 3]

For each seed s the training pool is the random selection `q-random-s<s>` of `bench/selection_quality.py`
(300 rows, pool proportions, reference rows excluded), and every method trains one pass-worth of batches
(as many token-budget batches as one pass over those rows takes) through the training module's mixture
sampler, so the training-token counts match:
- uniform: proportions = the rows' domain shares (what plain SFT on the rows sees);
- stratified: equal per domain (per-domain balanced sampling, the baseline published comparisons favour);
- IDEAL: `curate mix ideal` (2 rounds: train -> EK-FAC on the MLP layers -> influence of each domain on a
  reference set -> volumes), then the final volumes' domain shares as the mixture;
- AMA-S: `curate mix ama --method ama-s` (one LoRA specialist per domain, then EXP3 task sampling of the
  generalist on the clipped excess loss); the generalist is the measured model.
IDEAL's reference set is `--reference-per-task` BIG-bench rows per demo task drawn outside the demo pool, the
held-out file and the validation file. Held-out NLL per domain (the 240-row file of selection_quality), the
macro mean and the worst domain go to bench/out/mixture_quality.json, with the cost of each EK-FAC fit,
influence pass, training round and AMA's specialists; the markdown tables are printed for bench/RESULTS.md.
Every step resumes: finished trainings, EK-FAC factors and specialists are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from selection_quality import OUT, REPO, TRAIN, ensure_demo, heldout_files, log

from curate.run import RunDir

RESULT = OUT / "mixture_quality.json"
METHODS = ("uniform", "stratified", "ideal", "ama-s")
AMA_TRAIN = {k: v for k, v in TRAIN.items() if k != "progress"}


def reference_file(run: Path, held: Path, val: Path, per_task: int) -> Path:
    """IDEAL's reference set: rows of each demo task outside the pool, the held-out and the validation files."""
    path = OUT / f"mixture_reference_{per_task}.jsonl"
    if path.exists():
        return path
    from build_demo_pool import DEMO_TASKS, MAX_CHARS

    from curate.pool.bigbench import fetch_archive, iter_rows

    pool = RunDir(run).read_pool(["prompt", "response"])
    seen = set(zip(pool["prompt"].to_list(), pool["response"].to_list(), strict=True))
    for f in (held, val):
        seen |= {(r["prompt"], r["response"]) for r in map(json.loads, f.read_text().splitlines())}
    by_task: dict[str, list[dict]] = {}
    for row in iter_rows(fetch_archive(), tasks=DEMO_TASKS, cap_per_task=250 + 20 + 40 + per_task, seed=2,
                         max_chars=MAX_CHARS):
        if (row["prompt"], row["response"]) not in seen and len(by_task.get(row["task"], [])) < per_task:
            seen.add((row["prompt"], row["response"]))
            by_task.setdefault(row["task"], []).append(row)
    short = {t: len(r) for t, r in by_task.items() if len(r) < per_task}
    if short or len(by_task) != len(DEMO_TASKS):
        raise SystemExit(f"too few reference rows outside the pool: {short or sorted(by_task)}")
    with open(path, "w") as fh:
        for task in sorted(by_task):
            for r in by_task[task]:
                fh.write(json.dumps({"prompt": r["prompt"], "response": r["response"], "domain": r["domain"],
                                     "task": task}) + "\n")
    return path


def run_seed(run: Path, seed: int, held: Path, reference: Path, results: dict, sample_rate: float,
             result: Path) -> None:
    """The four methods on the seed's training pool; each result is stored as soon as it exists."""
    from curate.mix.ama import ama
    from curate.mix.ideal import ideal
    from curate.train import train

    sel = f"q-random-s{seed}"

    def record(method: str, res, extra: dict) -> None:
        held_nll = res.metrics["heldout"]
        results[f"{method}-s{seed}"] = {
            "method": method, "seed": seed, "heldout": held_nll, "worst": max(held_nll["per_domain"].values()),
            **{k: res.metrics[k] for k in ("steps", "train_tokens", "tokens_per_s", "wall_s")}, **extra}
        save(results, result)
        log(f"{method} seed {seed}: macro {held_nll['macro']:.4f}, worst {results[f'{method}-s{seed}']['worst']:.4f}")

    for method in ("uniform", "stratified"):
        if f"{method}-s{seed}" not in results:
            log(f"{method} seed {seed}")
            out = ama(run, sel, method=method, name=f"mq-{method}-s{seed}", heldout=held, seed=seed,
                      progress=False, **AMA_TRAIN)
            record(method, out.train, {"mixture": out.weights})

    if f"ideal-s{seed}" not in results:
        log(f"IDEAL seed {seed}: 2 rounds")
        doc = ideal(run, sel, reference, model="smollm2", name=f"mq-ideal-s{seed}", rounds=2, train_final=False,
                    sample_rate=sample_rate, heldout=held, seed=seed, **TRAIN)
        log(f"IDEAL seed {seed}: training on the final mixture")
        res = train(run, sel, model="smollm2", name=f"mq-ideal-s{seed}-final", mixture=f"mq-ideal-s{seed}",
                    heldout=held, seed=seed, **TRAIN)
        rounds = [{k: r.get(k) for k in ("round", "weights", "beta", "timings", "reference_loss")}
                  | {"heldout_macro": (r.get("heldout") or {}).get("macro")} for r in doc["rounds"]]
        record("ideal", res, {"mixture": doc["rounds"][-1]["weights"], "rounds": rounds, "sample_rate": sample_rate})

    if f"ama-s-s{seed}" not in results:
        log(f"AMA-S seed {seed}: specialists, then the generalist")
        t0 = time.perf_counter()
        out = ama(run, sel, method="ama-s", name=f"mq-ama-s-s{seed}", specialist={"epochs": 2}, heldout=held,
                  seed=seed, progress=False, **AMA_TRAIN)
        total = time.perf_counter() - t0
        record("ama-s", out.train, {"mixture": out.weights, "final_weights": json.loads(
            out.mixture.read_text())["rounds"][-1].get("final"), "specialists_and_generalist_s": total})


def save(results: dict, result: Path) -> None:
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--reference-per-task", type=int, default=5)
    ap.add_argument("--sample-rate", type=float, default=0.25,
                    help="IDEAL's σ: the share of training rows EK-FAC is fitted on and each domain's gradient is "
                         "taken over (0.25 here, IDEAL's default 0.5, to fit 3 seeds in 2 h on 2 CPU cores)")
    ap.add_argument("--result", type=Path, default=RESULT,
                    help="results JSON; methods already in it are not rerun (a fresh file and a copy of the demo "
                         "run without train/ and mix/ time the whole benchmark)")
    args = ap.parse_args(argv)

    t0 = time.time()
    ensure_demo(args.run)
    rd = RunDir(args.run)
    missing = [s for s in range(args.seeds) if not rd.selection_path(f"q-random-s{s}").exists()]
    if missing:
        raise SystemExit(f"run bench/selection_quality.py --seeds {args.seeds} first (it makes q-random-s*)")
    held, val = heldout_files(args.run, 20)
    reference = reference_file(args.run, held, val, args.reference_per_task)
    results = json.loads(args.result.read_text()) if args.result.exists() else {}
    seed_s = {}
    for seed in range(args.seeds):
        t_seed = time.time()
        run_seed(args.run, seed, held, reference, results, args.sample_rate, args.result)
        seed_s[seed] = round(time.time() - t_seed, 1)
        log(f"seed {seed} done in {seed_s[seed]:.0f} s")
    results["_meta"] = {"machine": f"{platform.machine()} {platform.processor()}, {os.cpu_count()} cores",
                        "train": TRAIN, "heldout": str(held.relative_to(REPO)),
                        "reference": str(reference.relative_to(REPO)), "elapsed_s": time.time() - t0,
                        "seed_s": seed_s, "run": str(args.run)}
    save(results, args.result)
    print(table(results))
    return 0


def table(results: dict) -> str:
    """Markdown: macro and worst-domain held-out NLL per method (mean ± sd over seeds), per-domain means,
    and the costs of IDEAL's parts and AMA's specialists."""
    runs = {m: [r for k, r in sorted(results.items()) if not k.startswith("_") and r["method"] == m] for m in METHODS}
    runs = {m: r for m, r in runs.items() if r}

    def cell(vals: list[float]) -> str:
        v = np.array(vals)
        return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if v.size > 1 else f"{v.mean():.4f}"

    base = {m: np.mean([r["heldout"]["macro"] for r in rs]) for m, rs in runs.items()}
    lines = ["| mixture | seeds | held-out NLL (macro) | vs uniform | vs stratified | worst domain | train tokens |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m, rs in runs.items():
        lines.append(f"| {m} | {len(rs)} | {cell([r['heldout']['macro'] for r in rs])} | "
                     f"{base[m] / base.get('uniform', np.nan) - 1:+.1%} | {base[m] / base.get('stratified', np.nan) - 1:+.1%} | "
                     f"{cell([r['worst'] for r in rs])} | {np.mean([r['train_tokens'] for r in rs]):,.0f} |")
    domains = sorted(next(iter(runs.values()))[0]["heldout"]["per_domain"])
    lines += ["", "| mixture | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains)]
    for m, rs in runs.items():
        lines.append(f"| {m} | " + " | ".join(f"{np.mean([r['heldout']['per_domain'][d] for r in rs]):.3f}"
                                              for d in domains) + " |")
    lines += ["", "| mixture | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains)]
    for m, rs in runs.items():
        lines.append(f"| {m} (share, seed 0) | " + " | ".join(f"{rs[0]['mixture'].get(d, 0):.3f}" for d in domains) + " |")
    ideal_runs = runs.get("ideal", [])
    if ideal_runs:
        t = [x["timings"] for r in ideal_runs for x in r["rounds"] if x.get("timings") and "ekfac_fit_s" in x["timings"]]
        lines += ["", "| IDEAL cost per round (median over rounds and seeds) | seconds |", "|---|---:|",
                  f"| training (LoRA, merged) | {np.median([x['train_s'] for x in t]):.0f} |",
                  f"| EK-FAC fit | {np.median([x['ekfac_fit_s'] for x in t]):.0f} |",
                  f"| influence pass | {np.median([x['influence_s'] for x in t]):.0f} |"]
    if "ama-s" in runs:
        lines.append(f"| AMA-S: 12 specialists + generalist (median over seeds) | "
                     f"{np.median([r['specialists_and_generalist_s'] for r in runs['ama-s']]):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
