"""The `train` stage: fine-tune a local causal LM on a selection (SFT or DPO), evaluate per domain, save.

    <out>/config.json          every parameter, the data and model fingerprints (the stage's key)
    <out>/train_ids.parquet    id, domain, weight of the training rows
    <out>/heldout_ids.parquet  id, domain of the held-out rows (a seeded split of the pool, or a file's)
    <out>/log.jsonl            training loss (overall and per domain) every `log_every` steps; evaluations
    <out>/checkpoints/         Trainer checkpoints (safetensors), each marked COMPLETE when whole
    <out>/model/               the trained model (full fine-tuning, or LoRA merged with `merge`)
    <out>/adapter/             the LoRA adapter (LoRA runs)
    <out>/metrics.json         held-out NLL per domain, macro and micro; tokens/s; peak memory

`<out>` is `<run>/train/<name>/` for a run, or `out` (taken from the current directory). A finished run with the
same key is not redone (`force` retrains it from scratch); a killed one resumes from its last complete checkpoint.
The key holds the parameters, the base model's resolved path and weights fingerprint, and the training and
held-out rows' ids, weights, domains and text; a key stored before some of these were part of it is compared
on the fields it has, so such runs stay current.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.run import RunDir
from curate.signals.lm import default_device, resolve_dtype
from curate.stage import Stage, StageResult, returning_value, run_stage
from curate.train import data as tdata
from index.io import atomic_path, read_json, write_json

OBJECTIVES = ("auto", "sft", "dpo")


@dataclass
class TrainResult:
    """Where a training run wrote its artefacts, and its final metrics."""

    out: Path
    metrics: dict[str, Any]

    @property
    def model_dir(self) -> Path | None:
        return self.out / "model" if (self.out / "model").exists() else None

    def summary(self) -> str:
        h = self.metrics.get("heldout") or {}
        macro = f"held-out NLL macro {h['macro']:.4f}" if "macro" in h else "no held-out rows"
        return f"trained {self.metrics['steps']} steps on {self.metrics['n_rows']} rows, {macro}: {self.out}"


def _objective(rows: tdata.TrainRows, objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    kinds = rows.kinds
    if "prompt" in kinds:
        n = int((rows.frame["kind"] == "prompt").sum())
        raise tdata.TrainDataError(
            f"{rows.source}: {n} prompt-only rows (no response to learn); select from rows with responses"
        )
    if len(kinds) > 1:
        raise tdata.TrainDataError(f"{rows.source}: mixes SFT and preference rows; train them separately")
    kind = kinds.pop()
    if objective == "auto":
        return "dpo" if kind == "preference" else "sft"
    if objective == "sft" and kind == "preference":
        raise tdata.TrainDataError(
            f"{rows.source}: preference rows in an SFT run; use objective 'dpo' (or 'auto')"
        )
    if objective == "dpo" and kind != "preference":
        raise tdata.TrainDataError(f"{rows.source}: SFT rows in a DPO run; DPO needs prompt/chosen/rejected rows")
    return objective



def train_stage(
    run: RunDir | str | os.PathLike | None = None,
    selection: str | None = None,
    # before the `*`: not a training setting (AutoMixAlign's specialists share every keyword-only one, keyed)
    force: bool = False,
    *,
    data: str | os.PathLike | Sequence[str | os.PathLike] | tdata.TrainRows | None = None,
    model: str = "smollm2",
    name: str | None = None,
    out: str | os.PathLike | None = None,
    objective: str = "auto",
    lora: bool = False,
    lora_r: int = 16,
    lora_alpha: float = 32.0,
    lora_dropout: float = 0.0,
    lora_targets: str | list[str] = "all-linear",
    merge: bool = False,
    epochs: float = 1.0,
    max_steps: int = -1,
    lr: float | None = None,
    schedule: str = "cosine",
    warmup: float = 0.05,
    batch_tokens: int = 4096,
    grad_accum: int = 1,
    max_grad_norm: float = 1.0,
    weight_decay: float = 0.0,
    max_length: int = 1024,
    dtype: str = "auto",
    eval_dtype: str | None = None,
    device: str | None = None,
    beta: float = 0.1,
    mixture: str | None = None,
    heldout: str | os.PathLike | None = None,
    heldout_split: int | float | None = None,
    eval_every: int = 0,
    log_every: int = 10,
    save_every: int = 50,
    keep_checkpoints: bool = False,
    seed: int = 0,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    mixture_hook: Callable[[int, dict[str, float]], Any] | None = None,
    row_objective: Any | None = None,
    executor: Any = None,
    executor_options: dict[str, Any] | None = None,
) -> StageResult:
    """Fine-tune `model` on a run's `selection` (or on `data` files), SFT or DPO, full or LoRA (`train` returns
    the `TrainResult`; `train_stage` the `StageResult` around it).

    Per-row weights follow the convention of `curate.train.loss`. `mixture` names `<run>/mixtures/<name>.json`
    (or a path): rows are then drawn by its domain proportions (with the importance correction when the file
    has `objective` weights), and `mixture_hook(step, domain_losses)` may return new proportions during
    training. `row_objective` (a `curate.train.trainer.RowObjective`) replaces the weighted loss, e.g. by
    AutoMixAlign's excess loss; `data` may also be `TrainRows` already read. Held-out rows come from `heldout`
    (a file) or a seeded `heldout_split` of the pool (rows or a fraction); they are evaluated every `eval_every` steps and at the end, under bf16 autocast when
    `eval_dtype` (default: `dtype`) is bfloat16. `executor` / `executor_options` ("local", "ray", ...): where
    DPO's reference log-probs pass runs; the result does not depend on it.

    With a run directory the run is a stage (`curate.stage.run_stage`, sidecar `stages/train-<name>.json`), keyed
    by the parameters and the content of the training and held-out rows; a finished run of the same key is
    returned as stored, and `<out>` holding a run of another key is an error rather than an overwrite. `force`
    retrains even when current: the training folder `<out>` (one holding a training run, of this key or another)
    is deleted first, checkpoints included.
    """
    from curate.executors import get_executor

    rd = RunDir(run) if run is not None else None
    if (selection is None) == (data is None):
        raise ValueError("give either a run and a selection, or `data` files (an export folder or a file)")
    if selection is not None and rd is None:
        raise ValueError("a selection needs its run directory (--run)")
    if selection is not None:
        rows = tdata.from_selection(rd, selection)
    else:
        rows = data if isinstance(data, tdata.TrainRows) else tdata.from_files(data)
    objective = _objective(rows, objective)
    name = name or selection or "data"
    if out is None:
        if rd is None:
            raise ValueError("training on files without a run directory needs `out` (the output folder)")
        out = rd.train_dir(name)
    out = Path(out).resolve()  # a relative `out` names a folder in the current directory, not in the run
    held = None
    if heldout is not None:
        held = tdata.from_files(heldout)
    elif heldout_split:
        if rd is None:
            raise ValueError("heldout_split draws from a run's pool: give --run (or a held-out file)")
        held = tdata.heldout_split(rd, rows.frame["id"].to_list(), heldout_split, seed,
                                   kind="sft" if objective == "sft" else "preference")
    if held is not None:
        tdata.check_disjoint(rows, held)
        held = tdata.TrainRows(held.frame.filter(pl.col("kind") == "sft") if objective == "sft" else held.frame,
                               held.source)
        if held.frame.height == 0:
            raise tdata.TrainDataError(f"held-out rows ({held.source}): none is an sft row, and an sft run scores "
                                       "only those; give held-out rows with a response")

    from curate.train.model import check_model_dir, model_key

    model_path = check_model_dir(model)  # absolute
    device = device or default_device()
    dtype = resolve_dtype(dtype, device)
    eval_dtype = resolve_dtype(eval_dtype or dtype, device)
    for what, value in (("dtype", dtype), ("eval_dtype", eval_dtype)):
        if value == "float16":
            raise ValueError(f"{what} float16 is not supported for training (fp16 needs loss scaling, which this "
                             "trainer does not do): use bfloat16 (or auto) or float32")
    params = {
        "model": str(model_path), "objective": objective, "lora": lora, "lora_r": lora_r,
        "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "lora_targets": lora_targets,
        "epochs": epochs, "max_steps": max_steps, "lr": lr, "schedule": schedule, "warmup": warmup,
        "batch_tokens": batch_tokens, "grad_accum": grad_accum, "max_grad_norm": max_grad_norm,
        "weight_decay": weight_decay, "max_length": max_length, "dtype": dtype, "eval_dtype": eval_dtype, "beta": beta,
        "mixture": mixture, "seed": seed, "merge": merge,
    }  # fmt: skip
    params.update(model_key(rd, {"model": model_path}))  # the weights: a model rebuilt in place retrains
    if row_objective is not None:  # only then: the keys of runs without one stay as they were
        params["row_objective"] = row_objective.key()
    if mixture:  # the mixture's contents, not its name: `curate mix` rewriting mixtures/<name>.json retrains
        from curate.mixtures import load_mixture, mixture_file

        mix_path = mixture_file(mixture, rd)
        params["mixture_weights"] = load_mixture(mix_path)
        _check_mixture(params["mixture_weights"], _domain_names(rows, held), mix_path)
    key = {
        "params": params,
        "data": rows.key(),
        "data_content": rows.content_key(),
        "heldout": held.key() if held is not None else None,
        "heldout_content": held.content_key() if held is not None else None,
    }

    def go(_: RunDir | None = None) -> TrainResult:
        if force:
            if _is_main():
                _clear_for_retraining(out)
            done = None
        else:
            done = _finished(out, key)
        if done is not None:
            return done
        with _transformers_bars(progress):
            return _train(
                out=out, key=key, rows=rows, held=held, rd=rd, model_path=model_path, objective=objective,
                lora=lora, merge=merge, params=params, device=device, dtype=dtype, lr=lr,
                eval_every=eval_every, log_every=log_every, save_every=save_every,
                keep_checkpoints=keep_checkpoints, progress=progress, callbacks=callbacks,
                mixture_hook=mixture_hook, row_objective=row_objective, fresh=force,
                executor=None if executor is None else get_executor(executor, executor_options),
            )  # fmt: skip

    # under torchrun / accelerate every process runs this; the main one holds the lock and writes the files
    if rd is None or not _is_main():
        t0 = time.perf_counter()
        return StageResult(f"train-{name}", go(), False, time.perf_counter() - t0, _jsonable(key))
    return run_stage(Stage(name=f"train-{name}", run=go, params=key, outputs=[out], lock=f"train-{name}",
                           load=lambda r: TrainResult(out, read_json(out / "metrics.json"))), rd, force=force)


@contextlib.contextmanager
def _transformers_bars(progress: bool):
    """transformers' own bars (loading and writing weights) off while a run with progress=False trains, as
    they were before afterwards: `disable_tqdm` covers only the Trainer's."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


train = returning_value(train_stage, returns=TrainResult)


def _is_main() -> bool:
    """True in a single process and in the main process of a distributed launch (RANK 0)."""
    return int(os.environ.get("RANK", "0")) == 0


#: key fields added after training runs were stored without them (top level, and in "params"): a stored key
#: that lacks one is compared on the fields it has (a legacy key), so those runs stay current
ADDED_KEY_FIELDS = ("data_content", "heldout_content")
ADDED_PARAM_FIELDS = ("model_fingerprint",)


def same_key(stored: Any, key: dict) -> bool:
    """Whether a stored training key is `key` (both as JSON). A legacy key (without some of the fields added
    since, `ADDED_KEY_FIELDS` / `ADDED_PARAM_FIELDS`) matches when the fields it has do, its model path compared
    resolved (legacy keys hold it as given)."""
    current = _jsonable(key)
    if stored == current:
        return True
    if not isinstance(stored, dict) or not isinstance(stored.get("params"), dict):
        return False
    missing = [f for f in ADDED_KEY_FIELDS if f not in stored and f in current]
    missing_params = [f for f in ADDED_PARAM_FIELDS if f not in stored["params"] and f in current["params"]]
    if not missing and not missing_params:
        return False
    current = {k: v for k, v in current.items() if k not in missing}
    current["params"] = {k: v for k, v in current["params"].items() if k not in missing_params}
    stored = dict(stored)
    if "model_fingerprint" in missing_params and isinstance(stored["params"].get("model"), str):
        stored["params"] = {**stored["params"], "model": str(Path(stored["params"]["model"]).resolve())}
    return stored == current


def _finished(out: Path, key: dict) -> TrainResult | None:
    """The stored result when `out` holds a finished run of the same key; an error when it holds another.
    A run stored under a legacy key of the same fields gets the current key written in (`same_key`)."""
    cfg = out / "config.json"
    if not cfg.exists():
        return None
    doc = read_json(cfg)
    stored = doc.get("key")
    if not same_key(stored, key):
        raise ValueError(
            f"{out} holds a training run with other data or parameters; choose another --name, delete it, "
            "or retrain it with force"
        )
    if stored != _jsonable(key) and _is_main():
        write_json(cfg, {**doc, "key": _jsonable(key)})  # the legacy key, completed with the fields it lacked
    if (out / "metrics.json").exists():
        return TrainResult(out, read_json(out / "metrics.json"))
    return None


def _clear_for_retraining(out: Path) -> None:
    """Delete a training folder before a forced retraining: moved aside (so `out` is gone at once and a kill
    leaves no half-deleted run that would resume), then removed. A folder that does not hold a training run
    (no config.json with a training key) is refused, not deleted."""
    if not out.exists():
        return
    cfg = out / "config.json"
    is_train = out.is_dir() and cfg.is_file() and isinstance(_read_key(cfg), dict)
    if not is_train and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} does not hold a training run (no config.json with a training key): not deleting "
                         "it to retrain; choose another --name or out")
    trash = out.parent / f".{out.name}.replaced-{os.getpid()}"
    shutil.rmtree(trash, ignore_errors=True)
    out.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _read_key(cfg: Path) -> Any:
    try:
        doc = read_json(cfg)
    except (OSError, ValueError):
        return None
    key = doc.get("key") if isinstance(doc, dict) else None
    return key if isinstance(key, dict) and "params" in key and "data" in key else None


def _domain_names(rows: tdata.TrainRows, held: tdata.TrainRows | None) -> list[str]:
    """The run's domain names: those of the training and held-out rows, sorted (the order of domain codes)."""
    return sorted(set(rows.domains()) | (set(held.domains()) if held is not None else set()))


def _check_mixture(mix: dict, names: list[str], path: Path) -> None:
    """A mixture's weights and objective weights name only the run's domains, and every domain with objective
    weight > 0 is sampled (weight > 0): a misspelt domain would otherwise be dropped silently."""
    from curate.train.sampler import unsampled_objective_domains

    unknown = sorted(set(mix["weights"]) - set(names))
    if unknown:
        raise ValueError(f"mixture {path} names domains with no training rows: {unknown} (the domains: {names})")
    objective = mix.get("objective") or {}
    unknown = sorted(set(objective) - set(names))
    if unknown:
        raise ValueError(f"mixture {path}: its objective names unknown domains {unknown} (the domains: {names})")
    unsampled = unsampled_objective_domains(names, [mix["weights"].get(n, 0.0) for n in names],
                                            [objective.get(n, 0.0) for n in names])
    if unsampled:
        raise ValueError(f"mixture {path}: domains {unsampled} have objective weight > 0 but sampling weight 0; "
                         "the importance correction needs every such domain sampled")


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _domain_codes(names: list[str], rows: tdata.TrainRows) -> np.ndarray:
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[d] for d in rows.domains()], dtype=np.int64)


def _train(*, out, key, rows, held, rd, model_path, objective, lora, merge, params, device, dtype, lr,
           eval_every, log_every, save_every, keep_checkpoints, progress, callbacks, mixture_hook,
           row_objective=None, executor=None, fresh=False) -> TrainResult:
    import torch
    from transformers import TrainingArguments, set_seed

    from curate.signals.lm import LMScorer, _split_head
    from curate.train.model import load_for_training, save_model_dir, unwrap
    from curate.train.sampler import MixtureBatchSampler, TokenBudgetBatchSampler
    from curate.train.trainer import (
        OBJECTIVE_STATE,
        SAMPLER_STATE,
        Collator,
        CurateTrainer,
        EncodedRows,
        StepHooks,
        append_jsonl,
        last_complete_checkpoint,
    )  # fmt: skip

    out.mkdir(parents=True, exist_ok=True)
    if _is_main():
        write_json(out / "config.json", {"key": _jsonable(key), "source": rows.source,
                                         "heldout_source": held.source if held is not None else None})
        with atomic_path(out / "train_ids.parquet") as tmp:
            rows.frame.select("id", "domain", "weight").write_parquet(tmp)
        if held is not None:
            with atomic_path(out / "heldout_ids.parquet") as tmp:
                held.frame.select("id", "domain").write_parquet(tmp)

    set_seed(int(params["seed"]))
    lora_cfg = None
    if lora:
        lora_cfg = {"r": params["lora_r"], "alpha": params["lora_alpha"], "dropout": params["lora_dropout"],
                    "targets": params["lora_targets"]}
    net, tok, fingerprint = load_for_training(model_path, lora=lora_cfg)
    net.to(device)
    base = unwrap(net)
    scorer = LMScorer.from_model(base, tok, path=model_path, dtype="float32", device=device,
                                 fingerprint=fingerprint, max_length=params["max_length"],
                                 batch_tokens=params["batch_tokens"])
    preference = objective == "dpo"
    feats = tdata.encode_rows(scorer, rows, preference=preference)
    names = _domain_names(rows, held)
    codes = _domain_codes(names, rows)
    ref = _reference_logps(scorer, rows, feats, rd, out, fingerprint, params, executor) if preference else None
    held_seqs = _held_sequences(scorer, held) if held is not None else None

    if params["mixture"]:
        mix = params["mixture_weights"]  # read once, for the key (checked there): the run trains on what it records
        sampler = MixtureBatchSampler(
            feats.lengths, codes, [mix["weights"].get(n, 0.0) for n in names], params["batch_tokens"],
            seed=params["seed"], domain_names=names,
            objective=[mix["objective"].get(n, 0.0) for n in names] if mix["objective"] else None,
            with_probs=row_objective is not None,
        )
    else:
        sampler = TokenBudgetBatchSampler(feats.lengths, params["batch_tokens"], seed=params["seed"])

    row_ref = row_objective.prepare(rows.frame["id"].to_list(), names) if row_objective is not None else None

    bf16 = dtype == "bfloat16"
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=int(params["grad_accum"]),
        learning_rate=float(lr if lr is not None else (2e-4 if lora else 2e-5)),
        num_train_epochs=float(params["epochs"]),
        max_steps=int(params["max_steps"]),
        lr_scheduler_type=params["schedule"],
        warmup_steps=float(params["warmup"]),
        max_grad_norm=float(params["max_grad_norm"]),
        weight_decay=float(params["weight_decay"]),
        logging_steps=max(1, int(log_every)),
        save_strategy="steps",
        save_steps=max(1, int(save_every)),
        save_total_limit=2,
        seed=int(params["seed"]),
        data_seed=int(params["seed"]),
        bf16=bf16,
        use_cpu=device == "cpu",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    trainer = CurateTrainer(
        model=net, args=args,
        train_dataset=EncodedRows(feats, rows.frame["weight"].to_numpy(), codes, ref, row_ref=row_ref),
        data_collator=Collator(scorer.pad_id), batch_sampler=sampler, objective=objective,
        domain_names=names, log_path=out / "log.jsonl", beta=params["beta"],
        split=_split_head(base), callbacks=list(callbacks), row_objective=row_objective,
    )  # fmt: skip
    evaluate, done_evals = None, {}
    if held_seqs is not None:
        def evaluate(step: int) -> dict:
            if step not in done_evals:
                done_evals[step] = _evaluate(scorer, held_seqs, held.domains(), params["eval_dtype"])
                if trainer.is_world_process_zero():
                    append_jsonl(out / "log.jsonl", {"step": step, "eval": done_evals[step]})
            return done_evals[step]
    trainer.add_callback(StepHooks(trainer, mixture_hook=mixture_hook, evaluate=evaluate, eval_every=eval_every))

    # `fresh` (force): never resume, also in processes of a distributed launch that may see old checkpoints
    # before the main one has deleted them
    resume = None if fresh else last_complete_checkpoint(out / "checkpoints")
    if resume is not None and (resume / SAMPLER_STATE).exists():
        sampler_state = read_json(resume / SAMPLER_STATE)
        sampler.load_state_dict(sampler_state)
        trainer.tokens_seen = int(sampler_state.get("tokens_seen", 0))  # absent in older checkpoints
    if resume is not None and row_objective is not None and (resume / OBJECTIVE_STATE).exists():
        row_objective.load_state_dict(read_json(resume / OBJECTIVE_STATE))
    t0 = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    state = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    wall = time.perf_counter() - t0
    runtime = float(state.metrics.get("train_runtime", wall))

    if not trainer.is_world_process_zero():
        return TrainResult(out, {})
    final = evaluate(trainer.state.global_step) if evaluate is not None else None
    if lora:
        save_model_dir(net, tok, out / "adapter", merge=False)
    if merge or not lora:
        save_model_dir(net, tok, out / "model", merge=True)
    metrics = {
        "objective": objective,
        "n_rows": rows.frame.height,
        "steps": int(trainer.state.global_step),
        "train_loss": float(state.training_loss),
        "train_tokens": int(trainer.tokens_seen),
        "tokens_per_s": float(trainer.tokens_seen / runtime) if resume is None else None,
        "train_runtime_s": runtime,
        "wall_s": wall,
        "resumed_from": resume.name if resume is not None else None,
        "peak_memory_mb": _peak_memory_mb(device),
        "domains": names,
        "heldout": final,
        "device": device,
        "dtype": dtype,
    }
    write_json(out / "metrics.json", metrics)
    if not keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return TrainResult(out, metrics)


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _held_sequences(scorer, held: tdata.TrainRows) -> list:
    """Held-out rows encoded once, by the same `encode_rows` as the training rows."""
    from curate.signals.lm import Encoded

    f = tdata.encode_rows(scorer, held, preference=False)
    return [Encoded(ids, int(p)) for ids, p in zip(f.ids, f.n_prompt, strict=True)]


def _evaluate(scorer, seqs: list, domains: list[str], dtype: str = "float32") -> dict[str, Any]:
    """Response NLL per token on held-out rows: per domain (token-weighted), macro over domains, micro."""
    import torch

    model = scorer.model
    was_training = model.training
    model.eval()
    try:
        device_type = "cuda" if str(scorer.device).startswith("cuda") else "cpu"
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            sums, counts = scorer.nll(seqs)
    finally:
        model.train(was_training)
    dom = np.asarray(domains)
    per = {}
    for d in sorted(set(domains)):
        m = dom == d
        per[d] = float(sums[m].sum() / max(counts[m].sum(), 1))
    return {
        "per_domain": per,
        "macro": float(np.mean(list(per.values()))),
        "micro": float(sums.sum() / max(counts.sum(), 1)),
        "n_rows": len(seqs),
        "n_tokens": int(counts.sum()),
    }


def _reference_logps(scorer, rows, feats, rd, out, fingerprint, params, executor=None) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probs of chosen and rejected responses under the reference (initial) model, computed once
    per (model, max_length) and cached: `<run>/train/_ref_logps/<key>.parquet` (or `<out>/` without a run).
    The missing rows are a shard job (`curate.train.rowpass`) run by `executor` (default: in this process,
    on `scorer`'s model; a Ray executor's workers load the initial model from its folder)."""
    from curate.train.rowpass import reference_logps

    folder = rd.ref_logps_dir if rd is not None else out

    def local():
        scorer.model.eval()
        return scorer

    chosen, rejected, computed = reference_logps(
        rows, folder / f"{fingerprint}-{params['max_length']}.parquet", model=params["model"],
        max_length=params["max_length"], batch_tokens=params["batch_tokens"], device=str(scorer.device),
        executor=executor, local=local, store=_is_main(), tag=f"-rank{os.environ.get('RANK', '0')}")
    if computed:
        scorer.model.train()
    return chosen, rejected


def evaluate_rows(scorer, rows: tdata.TrainRows, dtype: str = "float32") -> dict[str, Any]:
    """Held-out NLL of `rows` under a scorer's model, as training reports it (e.g. for the untrained model)."""
    return _evaluate(scorer, _held_sequences(scorer, rows), rows.domains(), dtype)
