"""`curate mix ama`: AutoMixAlign end to end on a run's selection: specialists, then the generalist trained on
the clipped excess loss with AMA-S (EXP3 task sampling) or AMA-R (task reweighting); and the DoReMi-style,
uniform and stratified baselines through the same code.

    <run>/mix/ama/specialists/...      specialists and their per-row losses (see `specialists`)
    <run>/mix/ama/<name>/init-<method>.json   the sampler's starting mixture
    <run>/train/<name>/                the generalist (the training module's layout; log.jsonl has an
                                       {"step", "ama": {method, weights, excess, estimate}} line per update)
    <run>/mixtures/<name>.json         {"method", "domains", "rounds": [{"round": 0, "weights": initial},
                                       {"round": 1, "weights": time-averaged, "final": last, "steps": T}],
                                       "updates": [{"step", "weights", "excess", "estimate"}, ...], ...}

`curate train --mixture <name>` then samples by the time-averaged weights (round 1).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.mix.ama.objective import ExcessObjective
from curate.mix.ama.optim import Exp3, ExpGrad
from curate.mix.ama.specialists import ALL, specialist_losses, trained_losses
from curate.run import RunDir
from curate.train import data as tdata
from index.io import write_json

METHODS = ("ama-s", "ama-r", "doremi", "uniform", "stratified")
DEFAULT_NAMES = {"ama-s": "ama", "ama-r": "ama-r", "doremi": "ama-doremi", "uniform": "ama-uniform",
                 "stratified": "ama-stratified"}
DEFAULT_ETA = {"ama-s": 0.01, "ama-r": 0.01, "doremi": 1.0}
DEFAULT_SMOOTHING = {"ama-r": 0.0, "doremi": 1e-3}
# train() parameters the driver sets itself
RESERVED = ("selection", "data", "name", "out", "mixture", "mixture_hook", "row_objective", "model", "objective",
            "heldout", "heldout_split", "eval_every", "progress", "callbacks")


@dataclass
class AmaResult:
    """The mixture file and the generalist's training run."""

    method: str
    mixture: Path
    weights: dict[str, float]
    train: Any

    def summary(self) -> str:
        """One line: method, mixture weights, where the artefacts are."""
        w = ", ".join(f"{d} {v:.3f}" for d, v in self.weights.items())
        return f"{self.method}: mixture {w} -> {self.mixture}; generalist {self.train.out}"


def _settings(train_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every training setting the specialists and the generalist share, defaults filled in from train()."""
    from curate.train import train

    params = inspect.signature(train).parameters
    bad = sorted(set(train_kwargs) & set(RESERVED))
    if bad:
        raise ValueError(f"AMA sets these training parameters itself: {', '.join(bad)}")
    unknown = sorted(set(train_kwargs) - set(params))
    if unknown:
        raise ValueError(f"unknown training parameters for AMA: {', '.join(unknown)}")
    return {k: train_kwargs.get(k, p.default) for k, p in params.items()
            if k not in RESERVED and k != "run" and p.kind == p.KEYWORD_ONLY}


def _objective_kind(rows: tdata.TrainRows, objective: str) -> str:
    if objective in ("sft", "dpo"):
        return objective
    if objective != "auto":
        raise ValueError(f"objective must be auto, sft or dpo, got {objective!r}")
    return "dpo" if rows.kinds == {"preference"} else "sft"


def initial_weights(method: str, rows: tdata.TrainRows, tasks: list[str]) -> dict[str, float]:
    """The sampler's starting proportions: row shares (uniform over all rows) for `uniform`, equal per task
    (stratified) otherwise (AMA-S's EXP3 starts from q uniform, so α is equal too)."""
    if method == "uniform":
        doms = rows.domains()
        return {t: doms.count(t) / len(doms) for t in tasks}
    return {t: 1.0 / len(tasks) for t in tasks}


def ama(
    run: RunDir | str | os.PathLike,
    selection: str,
    *,
    method: str = "ama-s",
    name: str | None = None,
    model: str = "smollm2",
    objective: str = "auto",
    eta: float | None = None,
    floor: float = 0.05,
    smoothing: float | None = None,
    specialist: dict[str, Any] | None = None,
    heldout: str | os.PathLike | None = None,
    heldout_split: int | float | None = None,
    eval_every: int = 0,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    executor: Any = None,
    executor_options: dict[str, Any] | None = None,
    **train_kwargs: Any,
) -> AmaResult:
    """Run AutoMixAlign (`ama-s`, `ama-r`) or a baseline (`doremi`, `uniform`, `stratified`) on a selection.

    Specialists train with the same settings as the generalist (`train_kwargs`, passed to `curate.train.train`),
    overridden by `specialist` (e.g. {"max_steps": 200}). `eta`: step size of the task weights (default 0.01 for
    AMA, 1 for DoReMi); `floor`: AMA-S's exploration floor c; `smoothing`: toward uniform (AMA-R 0, DoReMi
    1e-3). `callbacks` go to the generalist's Trainer only. `executor` / `executor_options` ("local", "ray", ...):
    where the per-row specialist-loss and DPO reference passes run. Every part resumes after an interruption.
    """
    from curate.train import train

    if method not in METHODS:
        raise ValueError(f"unknown AMA method {method!r}; choose one of {', '.join(METHODS)}")
    rd = run if isinstance(run, RunDir) else RunDir(run)
    name = name or DEFAULT_NAMES[method]
    settings = _settings(train_kwargs)
    rows = tdata.from_selection(rd, selection)
    kind = _objective_kind(rows, objective)
    tasks = sorted(set(rows.domains()))
    if len(tasks) < 2:
        raise ValueError(f"AMA mixes tasks (domains): selection {selection!r} has only {tasks}; "
                         "it needs rows of at least 2 domains")
    init = initial_weights(method, rows, tasks)
    init_path = rd.ama_dir(name) / f"init-{method}.json"
    write_json(init_path, {"method": method, "domains": tasks, "rounds": [{"round": 0, "weights": init}]})

    unknown = sorted(set(specialist or {}) - set(settings))
    if unknown:
        raise ValueError(f"unknown specialist training parameters: {', '.join(unknown)}")
    spec_settings = {**settings, **(specialist or {})}
    row_objective = None
    out = rd.train_dir(name)
    if method in ("ama-s", "ama-r", "doremi"):
        common = dict(model=model, objective=kind, settings=spec_settings, progress=progress, executor=executor,
                      executor_options=executor_options)
        if method == "doremi":  # one reference model on every row instead of a specialist per task
            ref = trained_losses(rd, rows, ALL, **common)
        else:
            ref = specialist_losses(rd, rows, tasks, **common)
        step = float(eta if eta is not None else DEFAULT_ETA[method])
        opt = Exp3(len(tasks), eta=step, floor=floor) if method == "ama-s" else ExpGrad(
            len(tasks), eta=step, smoothing=float(smoothing if smoothing is not None else DEFAULT_SMOOTHING[method]))
        row_objective = ExcessObjective(tasks, ref, opt, method=method, log_path=out / "log.jsonl")

    res = train(rd, selection, name=name, model=model, objective=kind, mixture=str(init_path),
                row_objective=row_objective, mixture_hook=row_objective.after_step if row_objective else None,
                heldout=heldout, heldout_split=heldout_split, eval_every=eval_every, progress=progress,
                callbacks=callbacks, executor=executor, executor_options=executor_options,
                **{k: v for k, v in settings.items() if k in train_kwargs})
    path = rd.mixture_path(name)
    if not res.metrics:  # a non-main process of a multi-process run: the main one writes the mixture
        return AmaResult(method, path, {}, res)
    doc = _mixture_doc(method, tasks, init, row_objective, res, selection=selection, model=model, kind=kind,
                       settings=settings, specialist=specialist)
    write_json(path, doc)
    return AmaResult(method, path, doc["rounds"][-1]["weights"], res)


def history_from_log(path: Path) -> list[dict[str, Any]]:
    """The task-weight updates logged in a generalist's log.jsonl (the last line of each step: a resumed run
    logs the steps it replays again, with the same values)."""
    by_step: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:  # a line a kill cut short (append_jsonl ends it before the next)
                continue
            if "ama" in obj:
                by_step[int(obj["step"])] = {"step": int(obj["step"]), **{k: obj["ama"][k] for k in
                                                                          ("weights", "excess", "estimate")}}
    return [by_step[s] for s in sorted(by_step)]


def _mixture_doc(method, tasks, init, objective, res, **params) -> dict[str, Any]:
    doc: dict[str, Any] = {"method": method, "domains": tasks, "train": str(res.out),
                           "params": {k: v for k, v in params.items() if v is not None},
                           "rounds": [{"round": 0, "weights": init}], "updates": []}
    if objective is None:
        return doc
    doc["params"]["optimiser"] = objective.optimiser.config()
    steps = int(res.metrics["steps"])
    if len(objective.history) == steps:
        updates = [{"step": h["step"], **{k: dict(zip(tasks, h[k], strict=True))
                                          for k in ("weights", "excess", "estimate")}} for h in objective.history]
    else:  # a finished run returned as stored: its updates are in its log
        updates = history_from_log(Path(res.out) / "log.jsonl")
    if len(updates) != steps:
        raise ValueError(f"{res.out}: {len(updates)} task-weight updates logged for {steps} steps; "
                         "the generalist's log is incomplete (delete the folder to retrain)")
    used = [init] + [u["weights"] for u in updates[:-1]]
    average = {t: float(np.mean([w[t] for w in used])) for t in tasks}
    final = updates[-1]["weights"] if updates else init
    doc["rounds"].append({"round": 1, "weights": average, "final": final, "steps": steps})
    doc["updates"] = updates
    return doc
