"""IDEAL rounds (Ming et al., ICLR 2026; docs/methods.md): train -> EK-FAC influence -> new domain volumes.

Round t trains on the volumes of round t (round 0: the selection as it is), fits EK-FAC on a σ-sample of its
training rows, takes the mean gradient of each domain (σ-sample; in both, each row weighs what training weighs
its loss by: multiplicity x selection weight) and of each of the reference set's domains (the
whole set's row is their size-weighted mean: s is linear in the gradient), and computes the influence matrix s[r][j] = g_refᵀ H⁻¹ g_j. The whole-reference row gives
β_j = m s_j / max|s|, and n_j' = round(n_j (1 + β_j)) rows of domain j, by seeded subsampling (β < 0) or
duplication (β > 0) of the current rows. Volumes are stored as a selection whose weights are multiplicities
(a row kept twice has weight 2: the same summed loss as two copies), `selections/<name>-r<t>`, and the
per-domain shares in `mixtures/<name>.json` with each round's β, influence, reference and held-out losses.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.pool.ids import positions
from curate.pool.schema import NO_DOMAIN
from curate.run import RunDir
from curate.stage import stage
from curate.train.model import model_key
from index.io import read_json, write_json

SCALINGS = ("mean", "sum")


def step_sizes(s: dict[str, float], m: float) -> dict[str, float]:
    """β_j = m s_j / max_k |s_k| (the largest move is exactly ±m; all 0 when every influence is 0)."""
    top = max((abs(v) for v in s.values()), default=0.0)
    return {d: (m * v / top if top > 0 else 0.0) for d, v in s.items()}


def new_volumes(
    ids: Sequence[str], counts: np.ndarray, domains: Sequence[str], beta: dict[str, float], seed: int
) -> np.ndarray:
    """New multiplicity of each row: per domain, n' = round(n (1 + β)) instances drawn from the current
    instances (without replacement when shrinking; the current ones plus seeded duplicates when growing). A
    domain keeps at least one instance: the next round needs its gradient (m >= 0.5 could round a one-row
    domain to none)."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros_like(counts)
    rng = np.random.default_rng(seed)
    dom = np.asarray(domains)
    for d in sorted(set(domains)):
        rows = np.flatnonzero(dom == d)
        inst = np.repeat(rows, counts[rows])  # one entry per current instance
        n_new = max(int(round(inst.size * (1.0 + beta.get(d, 0.0)))), min(1, inst.size))
        if n_new <= inst.size:
            keep = rng.choice(inst, size=n_new, replace=False)
        else:
            keep = np.concatenate([inst, rng.choice(inst, size=n_new - inst.size, replace=True)])
        np.add.at(out, keep, 1)
    return out


def _save_volumes(rd: RunDir, name: str, rows: pl.DataFrame, counts: np.ndarray, info: dict) -> None:
    from curate.select.selection import Selection

    keep = np.flatnonzero(counts > 0)
    ids = [rows["id"][int(i)] for i in keep]
    Selection(
        positions=positions(ids, rd.read_pool(["id"])["id"]),
        ids=ids,
        weights=counts[keep].astype(np.float64) * rows["weight"].to_numpy()[keep],
        reasons=[f"ideal volume x{int(counts[i])}" for i in keep],
        method="ideal",
        params=info,
        stats={"domains": _domain_counts(rows, counts)},
    ).save(rd, name)


def _domain_counts(rows: pl.DataFrame, counts: np.ndarray) -> dict[str, int]:
    dom = rows["domain"].fill_null(NO_DOMAIN).to_list()
    out: dict[str, int] = {}
    for d, c in zip(dom, counts, strict=True):
        out[d] = out.get(d, 0) + int(c)
    return dict(sorted(out.items()))


def influence_round(
    model_dir: Path,
    rows,
    counts: np.ndarray,
    reference,
    *,
    layers: str | Sequence[str],
    sample_rate: float,
    damping: float,
    correct: bool,
    scaling: str,
    batch_tokens: int,
    max_length: int,
    seed: int,
    cache: Path | None = None,
    key: str = "",
) -> dict[str, Any]:
    """EK-FAC fit and the influence matrix of one trained model; returns {influence, timings, ...}.
    `cache`: factors saved there and reused only when they were fitted under the same `key`."""
    from curate.mix.ideal import lm
    from curate.mix.ideal.ekfac import EKFAC, influence_matrix, mean_gradient
    from curate.models import model_fingerprint
    from curate.signals.lm import LMScorer
    from curate.train.data import encode_rows
    from curate.train.model import unwrap
    from curate.train.stage import evaluate_rows

    timings: dict[str, float] = {}
    model, tok = _load(model_dir, layers)
    scorer = LMScorer.from_model(unwrap(model), tok, path=model_dir, dtype="float32", device="cpu",
                                 fingerprint=model_fingerprint(model_dir, "float32"),
                                 max_length=max_length)
    modules = lm.pick_modules(model, layers)
    lm.only_these_require_grad(model, modules)
    model.eval()
    feats = encode_rows(scorer, rows, preference=False)
    ref_feats = encode_rows(scorer, reference, preference=False)
    rng = np.random.default_rng(seed)
    dom = np.asarray(rows.domains())
    # what training weighs each row's loss by: its multiplicity times its selection weight; the samples below
    # draw rows uniformly and weigh each by it, so the Fisher and the domain gradients are the trained loss's
    row_w = np.asarray(counts, dtype=np.float64) * rows.frame["weight"].to_numpy().astype(np.float64)
    live = np.flatnonzero(row_w > 0)
    if live.size == 0:
        raise ValueError("IDEAL: every training row has weight 0")
    fit_rows = np.sort(rng.choice(live, size=max(1, int(round(sample_rate * live.size))), replace=False))

    t = time.perf_counter()
    ek = EKFAC(modules, damping=damping, correct=correct)
    if cache is not None and EKFAC.stored_key(cache) == key:
        ek.load(cache)
    else:
        ek.fit(model, lm.seeded(lm.row_batches(feats, fit_rows, scorer.pad_id, batch_tokens, row_w), seed),
               lm.sampled_loss, lm.token_mask, lm.example_weights)
        if cache is not None:
            ek.save(cache, key)
    timings["ekfac_fit_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ref_dom = np.asarray(reference.domains())
    ref_sets = {d: np.flatnonzero(ref_dom == d) for d in sorted(set(ref_dom))}
    ref_grads = (
        (r, mean_gradient(model, modules, lm.row_batches(ref_feats, idx, scorer.pad_id, batch_tokens),
                          lm.true_losses)[0])
        for r, idx in ref_sets.items()
    )
    # a domain's training weight (its instances when every selection weight is 1); one with none has no gradient
    totals = {d: float(row_w[dom == d].sum()) for d in sorted(set(dom))}
    sizes = {d: t for d, t in totals.items() if t > 0}

    def domain_gradients():  # one at a time: each is as large as the chosen layers' weights
        for d in sizes:
            pos = np.flatnonzero((dom == d) & (row_w > 0))
            take = np.sort(rng.choice(pos, size=max(1, int(round(sample_rate * pos.size))), replace=False))
            yield d, mean_gradient(model, modules, lm.row_batches(feats, take, scorer.pad_id, batch_tokens, row_w),
                                   lm.true_losses, lm.example_weights)[0]

    by_ref = influence_matrix(ek, ref_grads, domain_gradients())
    # the whole reference set's mean gradient is the size-weighted mean of its domains' (and s is linear in it)
    share = {r: idx.size / len(ref_dom) for r, idx in ref_sets.items()}
    matrix = {"all": {d: sum(share[r] * by_ref[r][d] for r in by_ref) for d in sizes}} | by_ref
    if scaling == "sum":
        total = sum(sizes.values())
        matrix = {r: {d: s * (sizes[d] / total) for d, s in row.items()} for r, row in matrix.items()}
    timings["influence_s"] = time.perf_counter() - t
    ref_loss = evaluate_rows(scorer, reference)  # under inference_mode, in LMScorer.nll
    return {"influence": matrix, "timings": timings, "reference_loss": ref_loss, "ekfac": ek.stats,
            "modules": len(modules)}


def _load(model_dir: Path, layers):
    """The trained model in float32 (a LoRA adapter folder loads with its base when layers='lora')."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), tok
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True), tok


def _ideal_inputs(run: RunDir, a: dict[str, Any]) -> list[str]:
    given = [a["reference"], a["heldout"]]
    return [f"selections/{a['selection']}.parquet", *(str(Path(g).resolve()) for g in given if g is not None)]


@stage(lambda a: f"mix-ideal-{a['name']}", inputs=_ideal_inputs, key=model_key,
       outputs=lambda run, a: [f"mixtures/{a['name']}.json", f"selections/{a['name']}-r{a['rounds']}.parquet"],
       load=lambda run, a: read_json(run.mixture_path(a["name"])))
def ideal(
    run: RunDir | str | os.PathLike,
    selection: str,
    reference: str | os.PathLike,
    *,
    model: str = "smollm2",
    name: str = "ideal",
    rounds: int = 2,
    m: float = 0.15,
    sample_rate: float = 0.5,
    damping: float = 0.1,
    layers: str | list[str] = "mlp",
    influence_scaling: str = "mean",
    correct: bool = True,
    train_final: bool = True,
    keep_factors: bool = False,
    heldout: str | os.PathLike | None = None,
    seed: int = 0,
    batch_tokens: int = 2048,
    max_length: int = 1024,
    **train_params: Any,
) -> dict[str, Any]:
    """Run IDEAL on a run's selection with a reference set (a file with a `domain` column); write
    `mixtures/<name>.json` and the volume selections; return the mixture document.

    `layers`: 'mlp' (default; LoRA training is merged first), 'lora' (LoRA parameters: train with lora=True),
    or module names. A stage (`curate.stage`): a finished run of the same arguments, selection, reference and
    model is returned as stored. Each round's training and influence are kept, so a killed run resumes; the EK-FAC
    factors (2.5 GB a round on SmolLM2's MLPs) are deleted once the round's influence is stored, unless
    `keep_factors`.
    """
    from curate.train import from_files, from_selection, train

    if influence_scaling not in SCALINGS:
        raise ValueError(f"influence_scaling must be one of {SCALINGS}, got {influence_scaling!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not m > 0:  # a negative m would move every domain against its influence
        raise ValueError(f"m (the largest relative volume change) must be > 0, got {m}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if not damping > 0:  # the released code's 0 divides by EK-FAC's zero eigenvalues (dead units): NaN influence
        raise ValueError(f"damping must be > 0 (a share of the mean eigenvalue), got {damping}")
    rd = run if isinstance(run, RunDir) else RunDir(run)
    ref_rows = from_files(reference)
    if ref_rows.frame["domain"].null_count() == ref_rows.frame.height:
        raise ValueError(f"{reference}: the reference set needs a `domain` column (one per capability)")
    # the influence depends on the reference rows' text and domains, not only their ids (a file may carry ids)
    ref_key = hashlib.blake2b(ref_rows.frame.select("id", "domain", "messages", "rejected", "weight").write_json()
                              .encode(), digest_size=8).hexdigest()
    base = from_selection(rd, selection)
    work = rd.mix_dir(name)
    work.mkdir(parents=True, exist_ok=True)
    counts = np.ones(base.frame.height, dtype=np.int64)
    domains = base.domains()
    doc: dict[str, Any] = {"method": "ideal", "name": name, "selection": selection, "domains": sorted(set(domains)),
                           "params": {"m": m, "sample_rate": sample_rate, "damping": damping, "layers": layers,
                                      "influence_scaling": influence_scaling, "correct": correct, "seed": seed},
                           "rounds": []}
    train_kw = dict(train_params)
    if layers == "lora":
        train_kw["lora"] = True
    elif train_kw.get("lora"):
        train_kw["merge"] = True
    for t in range(rounds + (1 if train_final else 0)):
        sel_name = selection if t == 0 else f"{name}-r{t}"
        if t > 0:  # always: a stored one may come from other parameters (training keys its data by content)
            _save_volumes(rd, sel_name, base.frame, counts, {"round": t, **doc["params"]})
        t0 = time.perf_counter()
        res = train(rd, sel_name, model=model, name=f"{name}-r{t}", heldout=heldout, seed=seed,
                    batch_tokens=batch_tokens, max_length=max_length, **train_kw)
        entry = {"round": t, "selection": sel_name, "counts": _domain_counts(base.frame, counts),
                 "weights": _shares(base.frame, counts), "train": str(res.out),
                 "heldout": res.metrics.get("heldout"), "timings": {"train_s": time.perf_counter() - t0}}
        if t < rounds:
            # what this round's influence depends on: the trained model (its key) and IDEAL's parameters
            key = hashlib.blake2b(json.dumps([read_json(res.out / "config.json")["key"], doc["params"], ref_key,
                                              batch_tokens, max_length], sort_keys=True, default=str).encode(),
                                  digest_size=8).hexdigest()
            cached, factors = work / f"round-{t}.json", work / f"ekfac-r{t}.safetensors"
            inf = read_json(cached) if cached.exists() else {}
            if inf.get("key") != key:
                model_dir = res.out / ("adapter" if layers == "lora" else "model")
                inf = influence_round(model_dir, base, counts, ref_rows, layers=layers, sample_rate=sample_rate,
                                      damping=damping, correct=correct, scaling=influence_scaling,
                                      batch_tokens=batch_tokens, max_length=max_length, seed=seed + t,
                                      cache=factors, key=key) | {"key": key}
                bad = sorted(d for d, v in inf["influence"]["all"].items() if not math.isfinite(v))
                if bad:  # not cached: a re-run with other settings must not find it
                    raise ValueError(f"ideal round {t}: the influence of {bad} is not finite; raise `damping` "
                                     f"(now {damping})")
                write_json(cached, inf)
            if not keep_factors:
                factors.unlink(missing_ok=True)
            beta = step_sizes(inf["influence"]["all"], m)
            entry.update({"influence": inf["influence"], "beta": beta, "reference_loss": inf["reference_loss"],
                          "timings": {**entry["timings"], **inf["timings"]}})
            counts = new_volumes(base.frame["id"].to_list(), counts, domains, beta, seed + 1000 + t)
        doc["rounds"].append(entry)
        write_json(rd.mixture_path(name), doc)
    if not train_final:
        _save_volumes(rd, f"{name}-r{rounds}", base.frame, counts, {"round": rounds, **doc["params"]})
        doc["rounds"].append({"round": rounds, "selection": f"{name}-r{rounds}",
                              "counts": _domain_counts(base.frame, counts), "weights": _shares(base.frame, counts)})
    doc["final_selection"] = f"{name}-r{rounds}"
    write_json(rd.mixture_path(name), doc)
    return doc


def _shares(rows: pl.DataFrame, counts: np.ndarray) -> dict[str, float]:
    c = _domain_counts(rows, counts)
    total = sum(c.values())
    return {d: v / total for d, v in c.items()}
