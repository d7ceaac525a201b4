"""Mixture files: `<run>/mixtures/<name>.json` = {"domains": [...], "rounds": [{"round", "weights": {domain: w}},
...], "objective": {domain: w} (optional)}. The last round's weights are the mixture.

Read by training (`curate.train.sampler` re-exports `load_mixture`) and by stratified selection
(`curate.select.stratify`), so it lives below both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from curate.run import RunDir


def load_mixture(path: str | Path) -> dict:
    """Read a mixture file: {"domains": [...], "rounds": [{"round", "weights": {domain: w}}, ...],
    "objective": {domain: w} (optional)}. Returns {"weights": the last round's, "objective": ... or None}."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"mixture file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"mixture file {path} is not JSON: {exc}") from None
    rounds = doc.get("rounds") if isinstance(doc, dict) else None
    if not rounds or not isinstance(rounds[-1], dict) or not isinstance(rounds[-1].get("weights"), dict):
        raise ValueError(f"mixture file {path}: expected 'rounds': [{{'weights': {{domain: w}}}}, ...]")
    weights = {str(k): float(v) for k, v in rounds[-1]["weights"].items()}
    objective = doc.get("objective")
    if objective is not None and not isinstance(objective, dict):
        raise ValueError(f"mixture file {path}: 'objective' must map domains to weights")
    return {"weights": weights, "objective": {str(k): float(v) for k, v in objective.items()} if objective else None}


def mixture_file(spec: str | os.PathLike, run: RunDir | None = None) -> Path:
    """The file a mixture spec names: a path as given (a name ending in `.json` or holding a path separator),
    or a bare name -> <run>/mixtures/<name>.json. A name may hold dots (`ama-eta0.1`); such a name that is not a
    mixture of the run but an existing file is taken as that file."""
    text = os.fspath(spec)
    path = Path(text)
    seps = {os.sep, os.altsep} - {None}
    if run is None or text.endswith(".json") or any(s in text for s in seps):
        return path
    named = run.mixture_path(text)
    if path.suffix and not named.exists() and path.is_file():
        return path
    return named
