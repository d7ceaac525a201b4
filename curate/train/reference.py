"""ILA's reference model: the base model fine-tuned on a seeded, per-domain balanced reference subset.

ILA's depth is the drop in a row's response loss from the base model to a model fine-tuned on a reference
set. `train_reference` draws that set (balanced random, recorded as the selection `reference`), fine-tunes
(LoRA merged into a full model directory by default, so `curate score --ref-model` loads it), and records
both in `<run>/reference.json`; later selections exclude those rows by default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from curate.run import RunDir
from curate.stage import stage
from curate.train.model import model_key
from curate.train.stage import TrainResult, train
from index.io import read_json, write_json


def _stored(run: RunDir, a: dict[str, Any]) -> TrainResult:
    out = Path(read_json(run.reference_path)["train"])
    return TrainResult(out, read_json(out / "metrics.json"))


@stage("reference", inputs=lambda run, a: ["pool"], outputs=lambda run, a: ["reference.json"], key=model_key,
       load=_stored)
def train_reference(
    run: RunDir | str | os.PathLike,
    n: int | str = 300,
    *,
    model: str = "smollm2",
    name: str = "reference",
    seed: int = 0,
    lora: bool = True,
    force: bool = False,
    **train_params: Any,
) -> TrainResult:
    """Select `n` rows (balanced random, seeded) as `selections/<name>`, fine-tune `model` on them, record it.
    `force` retrains the reference model (not only this stage's bookkeeping)."""
    from curate.models import resolve_model
    from curate.select import select

    rd = run if isinstance(run, RunDir) else RunDir(run)
    sel = select(rd, "balanced-random", n, seed=seed, name=name, exclude_reference=False)
    res = train(rd, name, model=model, name=name, seed=seed, lora=lora, merge=True, force=force, **train_params)
    write_json(
        rd.reference_path,
        {
            "selection": name,
            "n_rows": len(sel.ids),
            "seed": seed,
            "method": "balanced-random",
            "base_model": str(resolve_model(model).resolve()),
            "model": str(res.out / "model"),
            "train": str(res.out),
        },
    )
    return res
