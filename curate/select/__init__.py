"""Selectors and the `select` stage: choose a subset of a pool within a budget, save it as selections/<name>.

Every method shares one interface (see `curate.select.selector`): `SELECTORS.get(name)(**params).select(view,
budget, seed)`. This module imports every selector module so they register themselves.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import ParameterError
from curate.run import RunDir

# importing the selector modules registers them in SELECTORS
from curate.select import baselines, daar, daar_band, deita, ila, miw, rds  # noqa: E402, F401
from curate.select.budget import Budget
from curate.select.selection import Selection, list_selections
from curate.select.selector import SELECTORS, Ranking, Selector, register_selector
from curate.stage import stage
from curate.view import PoolView

__all__ = [
    "SELECTORS",
    "Budget",
    "PoolView",
    "Ranking",
    "Selection",
    "Selector",
    "list_selections",
    "load_selection",
    "make_selector",
    "parse_stratify",
    "register_selector",
    "select",
]


def make_selector(method: str, **params: Any) -> Selector:
    """Instantiate the selector registered as `method` with `params` (clear error on unknown names)."""
    cls = SELECTORS.get(method)
    try:
        return cls(**params)
    except ParameterError:
        raise
    except TypeError as e:
        raise ParameterError(f"selector {method!r}: bad parameters {sorted(params)}: {e}") from None


#: what a selection can read in a run directory (its stage key covers them)
SELECTION_INPUTS = ("pool", "signals", "embeddings/current.json", "index", "map", "projection.parquet",
                    "projection.json", "reference.json", "decontam", "mixtures", "duplicates.parquet")


def _selection_inputs(run: RunDir, a: dict[str, Any]) -> list[str]:
    from curate.mixtures import mixture_file

    _, mix = parse_stratify(a.get("stratify"), a.get("mixture"))  # a mixture given as stratify="domain:FILE" too
    given = [a.get("validation"), None if mix is None else mixture_file(mix, run)]
    given += _param_files(a)
    # resolved: a relative path in a stage's inputs is read inside the run directory (curate.stage.fingerprint)
    files = dict.fromkeys(str(Path(str(g)).resolve()) for g in given if g is not None and os.path.isfile(str(g)))
    return [*SELECTION_INPUTS, *files]


def _param_files(a: dict[str, Any]) -> list[str]:
    """The files the selector's own parameters name (DaaR's `seeds=PATH.jsonl` or a list of them,
    `domain_descriptions=FILE`): a value, or an item of a list value, that is the path of an existing file.
    Folders (a model directory) are not fingerprinted: their identity is the path."""
    own = inspect.signature(select).parameters
    out = []
    for name, value in a.items():
        if name in own:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, (str, os.PathLike)) and os.path.isfile(v):
                out.append(str(v))
    return out


def _selection_files(run: RunDir, a: dict[str, Any]) -> list[Path]:
    path = run.selection_path(a["name"] or a["method"])
    return [path, path.with_suffix(".json")]


def _model_fingerprints(run: RunDir, a: dict[str, Any]) -> dict[str, Any]:
    """Stage-key part: the weights fingerprint of every model a selector parameter names (DaaR's and RDS+'s
    `model`, DaaR's `generator_model`), so a model rewritten in place reruns the selection; {} without one
    (other selections keep their key)."""
    from curate.models import model_fingerprint, resolve_model

    out = {}
    for name, value in sorted(a.items()):
        if (name == "model" or name.endswith("_model")) and isinstance(value, (str, os.PathLike)):
            try:
                path = resolve_model(value)
            except FileNotFoundError:  # not a local model folder: the selector says so when it runs
                continue
            if any(path.glob("*.safetensors")):
                out[name] = model_fingerprint(path, "float32")
    return {"model_fingerprints": out} if out else {}


@stage(lambda a: f"select-{a['name'] or a['method']}", inputs=_selection_inputs, outputs=_selection_files,
       key=_model_fingerprints, load=lambda run, a: Selection.load(run, a["name"] or a["method"]),
       writes_inputs=("decontam",))
def select(
    run: RunDir | str | os.PathLike,
    method: str,
    budget: Budget | int | float | str,
    *,
    seed: int = 0,
    name: str | None = None,
    exclude_reference: bool = True,
    stratify: str | None = None,
    mixture: str | os.PathLike | None = None,
    validation: str | os.PathLike | None = None,
    decontaminate: bool = True,
    decontam_threshold: float | None = None,
    force: bool = False,
    executor: Any = None,
    executor_options: dict[str, Any] | None = None,
    **params: Any,
) -> Selection:
    """Run selector `method` on the pool of `run` within `budget`; save and return the selection.

    `budget`: a `Budget`, a row count, a fraction, or a string ("1000", "20%", "50000tok").
    The selection is saved as selections/<name>.parquet (+ .json); `name` defaults to `method`.
    With `exclude_reference` (default), the rows ILA's reference model was trained on (`reference.json`,
    written by `curate train --reference`) cannot be selected: their depth is measured on training data.
    `stratify`: "none", "domain" or "cluster" (default: the selector's `default_stratify`, "domain" for the
    selectors that won that way on held-out loss; "none" when the pool has neither domains nor map
    clusters): the selector runs within each stratum, quotas in
    proportion to the strata's eligible rows, or to `mixture` (a mixture name under <run>/mixtures/ or a
    path; its last round's domain weights); "domain:NAME" is short for stratify="domain", mixture=NAME.
    See `curate.select.stratify`.
    `validation`: the target task's validation file; selectors that score against it (`rds`) read it, and
    the pool rows that copy its rows are found (`curate.signals.decontam`: exact copies, and cosine >= `decontam_threshold`,
    default 0.95, with half the validation row's own word 8-grams). With `decontaminate` (default) every row recorded as a copy of a validation row, by this
    call or by `curate score --validation`, cannot be selected; the sidecar's `stats.decontamination` lists
    them with their reason. `decontaminate=False` keeps them eligible and counts how many were selected.
    `executor` / `executor_options`: where a selector's per-row model passes run (DaaR's and RDS+'s LM
    features; "local", "ray", "ray:ADDRESS"); the selection does not depend on it.
    A stage (curate.stage): a saved selection of the same name whose arguments and input files (pool, signals,
    embeddings, index, map, reference, decontamination records, mixtures, the validation file, files named by the
    selector's parameters such as DaaR's seed files) are unchanged is returned as stored, without running the
    selector again (`force=True` reruns it).
    """
    from curate.signals import decontam

    run = run if isinstance(run, RunDir) else RunDir(run)
    budget = Budget.parse(budget)
    if not (budget.rows or budget.tokens or budget.fraction):
        raise ParameterError(f"budget {str(budget)!r} selects nothing",
                             "give a positive budget: rows (1000), a fraction (20%) or tokens (50000tok)")
    takes = inspect.signature(SELECTORS.get(method).__init__).parameters
    if validation is not None and "validation" in takes:
        params["validation"] = str(validation)
    if executor is not None and "executor" in takes:  # where the selector's per-row model passes run
        params.update(executor=executor, executor_options=executor_options)
    selector = make_selector(method, **params)
    view = PoolView.from_run(run)
    if budget.fraction is not None and view.n and budget.resolve(view.n) == 0:  # 2% of 20 rows: 0.4 -> 0
        least = -(-5000 // view.n) / 100  # the smallest percentage (2 decimals) that gives 1 row: 2.5% of 20
        raise ParameterError(
            f"budget {str(budget)!r} selects nothing: the pool holds {view.n} rows, and {budget} of them rounds "
            "to 0 rows",
            f"give at least {least:g}% or a row count (-b 1)",
        )
    if validation is None and isinstance(getattr(selector, "validation", None), (str, os.PathLike)):
        validation = selector.validation
    threshold = decontam.DEFAULT_THRESHOLD if decontam_threshold is None else float(decontam_threshold)
    if validation is not None:
        decontam.decontaminate(run, validation, threshold=threshold)
    name = name or method
    default_note = None
    if stratify is None:
        stratify = type(selector).default_stratify
        if stratify == "domain" and mixture is None and not _has_strata(run):
            stratify, default_note = "none", "default stratify=domain not applied: no domains and no map clusters"
    by, mixture = parse_stratify(stratify, mixture)
    weights = None
    if mixture is not None:
        from curate.mixtures import load_mixture, mixture_file

        mix_path = mixture_file(mixture, run)
        weights = load_mixture(mix_path)["weights"]
    exclude = reference_positions(run, view.ids) if exclude_reference else None
    n_reference = None if exclude is None else int(len(exclude))
    records = decontam.contamination(run)
    leaked = decontam.contaminated_positions(view.ids, records)
    if decontaminate and leaked.size:
        exclude = leaked if exclude is None else np.union1d(exclude, leaked)
    selection = selector.select(view, budget, seed=seed, exclude=exclude, stratify=by, mixture=weights)
    if budget.rows is not None and len(selection.ids) < budget.rows:
        selection.stats["budget_note"] = (f"budget {budget.rows} rows, {len(selection.ids)} selected: no more rows "
                                          f"were eligible")
    if records:
        selection.stats["decontamination"] = {
            "excluded": bool(decontaminate),
            **decontam.summary(records, view.ids, selection.positions),
        }
    if mixture is not None:
        selection.stats["stratify"]["mixture"] = str(mix_path)
    if n_reference is not None:
        selection.stats["excluded_reference_rows"] = n_reference
    if default_note:
        selection.stats["stratify_note"] = default_note
    selection.stats.update(_coverage_stats(run, selection))
    selection.save(run, name)
    return selection



def _has_strata(run: RunDir) -> bool:
    """Whether domain strata exist: some pool row has a domain, or the map's k-means clusters are built."""
    import polars as pl

    has_domain = run.scan_pool().select(pl.col("domain").is_not_null().any()).collect().item()
    return bool(has_domain) or (run.map_dir / "clusters.parquet").exists()


def parse_stratify(stratify: str | None, mixture: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """Read a stratify spec: "none" | "domain" | "cluster" | "domain:MIXTURE"; returns (by, mixture)."""
    from curate.select.stratify import STRATIFY

    spec = "none" if stratify is None else str(stratify).strip()
    by, _, mix = spec.partition(":")
    if by not in STRATIFY:
        raise ParameterError(
            f"stratify must be one of {', '.join(STRATIFY)} (or domain:MIXTURE), got {stratify!r}",
            "e.g. --stratify domain, or --stratify domain:ideal for the quotas of mixtures/ideal.json",
        )
    if mix:
        if by != "domain":
            raise ParameterError(f"stratify {spec!r}: a mixture weighs domains; write domain:{mix}")
        if mixture is not None and str(mixture) != mix:
            raise ParameterError(f"two mixtures given: stratify={spec!r} and mixture={str(mixture)!r}")
        mixture = mix
    if mixture is not None and by == "none":
        by = "domain"
    if mixture is not None and by != "domain":
        raise ParameterError(f"stratify={by}: a mixture weighs domains; use stratify=domain with it")
    return by, None if mixture is None else str(mixture)


def reference_positions(run: RunDir, ids) -> np.ndarray | None:
    """Pool positions of the rows the run's ILA reference model was trained on (None without one)."""
    ref = run.reference_ids()
    if ref is None:
        return None
    return np.flatnonzero(np.isin(np.asarray(ids), np.asarray(list(ref))))


def load_selection(run: RunDir | str | os.PathLike, name: str) -> Selection:
    """Read selections/<name> back (positions recovered from the pool)."""
    return Selection.load(run, name)


def _coverage_stats(run: RunDir, selection: Selection) -> dict[str, Any]:
    """Coverage and diversity of the subset when the map has been built (else a note saying so)."""
    from curate.export.manifest import coverage

    rep = coverage(run, selection.positions)
    out: dict[str, Any] = {"coverage": rep["report"]}
    if "note" in rep:
        out["coverage_note"] = rep["note"]
    return out
