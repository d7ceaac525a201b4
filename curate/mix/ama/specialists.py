"""AutoMixAlign's specialists: one model per task (domain) trained on that task's rows alone, with the training
module and the generalist's settings, and each specialist's loss on every row of its task, cached.

    <run>/mix/ama/specialists/<task>-<key>/train/         the specialist's training run (resumable; with LoRA
                                                          the adapter, its merged copy deleted once scored)
    <run>/mix/ama/specialists/<task>-<key>/losses.parquet  id, loss (SFT: per-token mean NLL; DPO: DPO loss)

`<key>` fingerprints the base model's weights, the objective, the training settings and the task's rows (ids
and weights), so a changed setting trains a new specialist and an unchanged one is reused. The DoReMi-style
baseline's single reference model (trained on every row) is cached the same way, as task `_all`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.run import RunDir
from curate.train import data as tdata

ALL = "_all"
# train() parameters that do not change what a specialist learns (left out of its cache key)
NOT_KEYED = ("device", "log_every", "save_every", "keep_checkpoints", "eval_dtype", "merge", "progress")


def _slug(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)[:40] or "_"


def cache_key(fingerprint: str, objective: str, settings: Mapping[str, Any], rows: tdata.TrainRows) -> str:
    """Fingerprint of (base model weights, objective, training settings, the rows and their weights)."""
    keyed = {k: v for k, v in settings.items() if k not in NOT_KEYED}
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps({"model": fingerprint, "objective": objective, "settings": keyed},
                        sort_keys=True, default=str).encode())
    for i, w in zip(rows.frame["id"].to_list(), rows.frame["weight"].to_list(), strict=True):
        h.update(f"{i}:{w!r};".encode())
    return h.hexdigest()


def specialist_dir(rd: RunDir, task: str, key: str) -> Path:
    """Where a specialist (or the DoReMi reference, task `_all`) and its per-row losses live."""
    return rd.ama_specialists_dir / f"{_slug(task)}-{key}"


def row_losses(model_dir: Path, rows: tdata.TrainRows, *, objective: str, base_model: Path, rd: RunDir,
               settings: Mapping[str, Any], device: str, executor: Any = None,
               executor_options: dict[str, Any] | None = None) -> np.ndarray:
    """Each row's loss under a trained model, as the generalist's objective sees it: the per-token mean NLL of
    the response (SFT), or the DPO loss against the base model's log-probabilities (DPO). The model passes are
    shard jobs (`curate.train.rowpass`) run by `executor` ("local", default; "ray"; "ray:ADDRESS"; with
    `executor_options`, see `curate.executors.get_executor`); the losses do not depend on it."""
    import torch

    from curate.executors import get_executor
    from curate.models import model_fingerprint
    from curate.train.loss import dpo_losses
    from curate.train.rowpass import digest, row_nll

    run_on = get_executor(executor, executor_options)
    max_length, batch_tokens = int(settings["max_length"]), int(settings["batch_tokens"])
    preference = objective == "dpo"
    key = {"model": model_fingerprint(model_dir, "float32"), "rows": rows.key(), "preference": preference,
           "max_length": max_length, "batch_tokens": batch_tokens}
    cols, _ = row_nll(rows, rd.ama_row_nll_dir / digest(key), model=str(model_dir), key=key,
                      preference=preference, max_length=max_length, batch_tokens=batch_tokens, device=device,
                      executor=run_on)
    sums, counts = cols["nll_sum"].astype(np.float64), cols["n_tokens"]
    if objective == "sft":
        return sums / np.maximum(counts, 1)
    ref_c, ref_r = _reference_logps(base_model, rows, rd, max_length, batch_tokens, device, run_on)
    t = torch.as_tensor
    return dpo_losses(t(-sums), t(-cols["rejected_nll_sum"].astype(np.float64)), t(ref_c), t(ref_r),
                      float(settings["beta"])).numpy()


def _reference_logps(base_model: Path, rows: tdata.TrainRows, rd: RunDir, max_length: int, batch_tokens: int,
                     device: str, executor: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The base (reference) model's summed log-probs of chosen and rejected responses: from the training
    module's cache `<run>/train/_ref_logps/` when it holds every row, else computed (by `executor`)."""
    from curate.models import model_fingerprint
    from curate.train.rowpass import digest, read_reference_cache, row_nll

    ids = rows.frame["id"].to_list()
    fp = model_fingerprint(base_model, "float32")
    have = read_reference_cache(rd.ref_logps_dir / f"{fp}-{max_length}.parquet")
    if all(i in have for i in ids):
        return (np.array([have[i][0] for i in ids]), np.array([have[i][1] for i in ids]))
    key = {"model": fp, "rows": rows.key(), "preference": True, "max_length": max_length,
           "batch_tokens": batch_tokens}
    cols, _ = row_nll(rows, rd.ama_row_nll_dir / digest(key), model=str(base_model), key=key,
                      preference=True, max_length=max_length, batch_tokens=batch_tokens, device=device,
                      executor=executor)
    return -cols["nll_sum"].astype(np.float64), -cols["rejected_nll_sum"].astype(np.float64)


def trained_losses(rd: RunDir, rows: tdata.TrainRows, task: str, *, model: str, objective: str,
                   settings: dict[str, Any], progress: bool = True, executor: Any = None,
                   executor_options: dict[str, Any] | None = None) -> dict[str, float]:
    """Train a model on `rows` alone (or reuse the cached one) and return its loss on each of them (scored by
    `executor`, see `row_losses`; training itself runs in this process)."""
    from curate.models import model_fingerprint
    from curate.signals.lm import default_device
    from curate.train import train
    from curate.train.model import check_model_dir
    from index.io import atomic_path

    base = check_model_dir(model)
    key = cache_key(model_fingerprint(base, "float32"), objective, settings, rows)
    folder = specialist_dir(rd, task, key)
    path = folder / "losses.parquet"
    if not path.exists():
        kwargs = dict(settings)
        if kwargs.get("lora"):
            kwargs["merge"] = True  # the losses are scored on a full model directory
        res = train(rd, data=rows, model=model, out=folder / "train", name=f"ama-specialist-{_slug(task)}-{key}",
                    objective=objective, progress=progress, **kwargs)
        device = settings.get("device") or default_device()
        losses = row_losses(folder / "train" / "model", rows, objective=objective, base_model=base, rd=rd,
                            settings=settings, device=device, executor=executor,
                            executor_options=executor_options)
        if not np.all(np.isfinite(losses)):
            raise ValueError(f"specialist {task!r} ({res.out}) gave non-finite losses")
        with atomic_path(path, suffix=".parquet") as tmp:
            pl.DataFrame({"id": rows.frame["id"], "loss": losses}).write_parquet(tmp)
        if kwargs.get("lora"):  # the merged copy was only for scoring (0.5 GB each on SmolLM2); the adapter stays
            shutil.rmtree(folder / "train" / "model", ignore_errors=True)
    frame = pl.read_parquet(path)
    return dict(zip(frame["id"].to_list(), frame["loss"].to_list(), strict=True))


def specialist_losses(rd: RunDir, rows: tdata.TrainRows, tasks: list[str], *, model: str, objective: str,
                      settings: dict[str, Any], progress: bool = True, executor: Any = None,
                      executor_options: dict[str, Any] | None = None) -> dict[str, float]:
    """Per-row specialist losses: task i's specialist (trained on task i's rows) scored on task i's rows (the
    scoring passes run by `executor`, see `row_losses`)."""
    out: dict[str, float] = {}
    doms = np.asarray(rows.domains())
    for task in tasks:
        sub = tdata.TrainRows(rows.frame.filter(pl.Series(doms == task)), f"{rows.source} [task {task}]")
        out.update(trained_losses(rd, sub, task, model=model, objective=objective, settings=settings,
                                  progress=progress, executor=executor, executor_options=executor_options))
    return out
