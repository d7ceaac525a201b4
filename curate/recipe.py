"""Recipes: a YAML file naming a run directory and a list of stages, each a Python stage function.

    run: runs/demo              # the run directory (relative paths are relative to the current directory)
    seed: 0                     # passed to every stage that takes a `seed`
    executor: ray               # optional: where per-row model work runs, for every stage that takes one
    executor_options: {workers: 4, gpus_per_worker: 1}
    stages:
      - ingest: {inputs: [data/demo/bigbench_demo.jsonl]}
      - embed: {dtype: bfloat16}
      - select: {method: k-center, budget: 500, name: kcenter}
      - export: {selection: kcenter}

Each stage's parameters are the keyword arguments of its function (see `STAGES`), so a recipe and a
Python call read the same. Stages run in order; every stage skips work whose artefacts are already current,
so re-running a recipe after an interruption resumes it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from curate.errors import CurateError
from curate.run import RunDir
from curate.stage import StageResult

# stage name -> "module:function"; imported lazily so a recipe pays only for the stages it uses.
STAGES: dict[str, str] = {
    "ingest": "curate.pool:ingest",
    "embed": "curate.embed:embed",
    "index": "curate.map:build_index",
    "map": "curate.map:map_pool",
    "score": "curate.signals:score",
    "select": "curate.select:select",
    "export": "curate.export:export",
    "compare": "curate.compare:compare",
    "report": "curate.report:write_report",
    "train": "curate.train:train",
    "reference": "curate.train.reference:train_reference",
    "mix-ideal": "curate.mix.ideal:ideal",
}


class RecipeError(CurateError):
    """A recipe file that cannot be run as written."""


#: the top-level keys of a recipe file
RECIPE_KEYS = ("run", "seed", "executor", "executor_options", "stages")


def _closest(word: str, choices: Any) -> str | None:
    """The closest of `choices` to a misspelt `word` (difflib), or None when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return close[0] if close else None


def stage_function(name: str) -> Callable[..., Any]:
    """Import and return the function behind a stage name."""
    if name not in STAGES:
        raise RecipeError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


@dataclass
class Recipe:
    """A parsed recipe: the run directory, a seed, and (stage name, parameters) pairs."""

    run: Path
    seed: int = 0
    stages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    source: Path | None = None
    executor: dict[str, Any] = field(default_factory=dict)  # {"executor": ..., "executor_options": ...}

    @classmethod
    def load(cls, path: str | os.PathLike, run: str | os.PathLike | None = None) -> Recipe:
        """Read and validate a recipe file; `run` overrides the file's run directory."""
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise RecipeError(f"recipe {path} does not exist") from None
        except IsADirectoryError:
            raise RecipeError(f"recipe {path} is a directory, not a recipe file",
                              "name a recipe YAML file, e.g. recipes/demo.yaml") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"recipe {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict) or "stages" not in doc:
            raise RecipeError(f"recipe {path}: expected a mapping with a 'stages' list")
        for key in doc:
            if key not in RECIPE_KEYS:
                close = _closest(key, RECIPE_KEYS)
                hint = f" (did you mean {close!r}?)" if close else ""
                raise RecipeError(f"recipe {path}: unknown key {key!r}{hint}; a recipe takes: {', '.join(RECIPE_KEYS)}")
        if doc.get("run") is not None and not (isinstance(doc["run"], str) and doc["run"].strip()):
            raise RecipeError(f"recipe {path}: key 'run' must be a directory path, got {doc['run']!r}",
                              "e.g. run: runs/demo")
        seed = doc.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            got = "nothing (an empty value)" if seed is None else repr(seed)
            raise RecipeError(f"recipe {path}: key 'seed' must be an integer, got {got}",
                              "e.g. seed: 0, or leave the key out")
        if doc.get("executor") is not None and not isinstance(doc["executor"], str):
            raise RecipeError(f"recipe {path}: key 'executor' must be local, ray or ray:ADDRESS, "
                              f"got {doc['executor']!r}")
        if doc.get("executor_options") is not None and not isinstance(doc["executor_options"], dict):
            raise RecipeError(f"recipe {path}: key 'executor_options' must be a mapping, "
                              f"got {doc['executor_options']!r}", "e.g. executor_options: {workers: 4}")
        if doc["stages"] is not None and not isinstance(doc["stages"], list):
            raise RecipeError(f"recipe {path}: key 'stages' must be a list of stages, got a "
                              f"{type(doc['stages']).__name__}", "write each stage on its own line starting with '- ', "
                              "e.g. '  - embed: {}'")
        run_dir = run or doc.get("run")
        if not run_dir:
            raise RecipeError(f"recipe {path}: no 'run' directory given (set `run:` or pass --run)")
        stages = []
        for i, item in enumerate(doc["stages"] or []):
            if isinstance(item, str):
                item = {item: {}}
            if not isinstance(item, dict) or len(item) != 1:
                raise RecipeError(f"recipe {path}: stage {i + 1} must be a one-key mapping like '- embed: {{}}'")
            (name, params), = item.items()
            if name not in STAGES:
                raise RecipeError(f"recipe {path}: stage {i + 1}: unknown stage {name!r}; known: {', '.join(STAGES)}")
            if params is not None and not isinstance(params, dict):
                raise RecipeError(f"recipe {path}: stage {i + 1} ({name}): parameters must be a mapping")
            try:  # every stage's parameters checked before any stage runs
                check_params(name, dict(params or {}))
            except RecipeError as exc:
                raise RecipeError(f"recipe {path}: stage {i + 1}: {exc}") from None
            stages.append((name, dict(params or {})))
        executor = {k: doc[k] for k in ("executor", "executor_options") if doc.get(k) is not None}
        return cls(run=Path(run_dir), seed=seed, stages=stages, source=path, executor=executor)


def call_stage(
    name: str, run: RunDir, params: dict[str, Any], seed: int | None = None, defaults: dict[str, Any] | None = None
) -> StageResult:
    """Call one stage with `run` and its parameters through `curate.stage.run_stage`; fill in `seed` and the
    recipe-wide `defaults` (the executor) where the stage takes them and does not set them itself."""
    fn = stage_function(name)
    sig = inspect.signature(fn)
    kwargs = dict(params)
    if name == "select" and "budget" in kwargs:
        kwargs["budget"] = canonical_budget(kwargs["budget"])
    if seed is not None and "seed" in sig.parameters and "seed" not in kwargs:
        kwargs["seed"] = seed
    for key, value in (defaults or {}).items():
        if key in sig.parameters and key not in kwargs:
            kwargs[key] = value
    check_params(name, kwargs)
    return fn.run_stage(run=run, **kwargs)


def canonical_budget(budget: Any) -> Any:
    """The select stage's budget in one form however it was written, so its stage key does not depend on it:
    rows as an int (5, "5", 5.0), a fraction as a float ("20%" -> 0.2; all of it as "100%"), tokens as
    "<N>tok". Rows and fractions keep the form a recipe's `budget: 500` / `budget: 0.2` always had (so their
    stored keys stay current); a budget that does not parse is left for the stage to report."""
    from curate.select.budget import Budget

    try:
        b = Budget.parse(budget)
    except (ValueError, TypeError):
        return budget
    if b.rows is not None:
        return int(b.rows)
    if b.tokens is not None:
        return f"{int(b.tokens)}tok"
    return float(b.fraction) if b.fraction < 1 else "100%"  # 1.0 would read as one row


def check_params(name: str, params: dict[str, Any]) -> None:
    """Raise RecipeError naming the first parameter stage `name` does not take (for stages with **params, what
    those reach: the selector's, the signals', the training module's), with the closest known name, or else the
    first one it needs and is not given. `run` is never a parameter: it is the recipe's (or --run)."""
    if "run" in params:
        raise RecipeError(f"stage {name!r}: 'run' is not a stage parameter",
                          "set `run:` at the top level of the recipe, or use --run")
    sig = inspect.signature(stage_function(name))
    fixed = [p for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    extra = _extra_params(name, params) if len(fixed) < len(sig.parameters) else set()  # what **params reach
    if extra is not None:
        unknown = [k for k in params if k not in sig.parameters and k not in extra and k != "force"]  # every stage
        if unknown:
            own = [p.name for p in fixed if p.name != "run"]
            allowed = own + sorted(extra - set(own) - {"run"})
            close = _closest(unknown[0], [*allowed, "force"])
            raise RecipeError(f"stage {name!r} has no parameter {unknown[0]!r}; it takes: {', '.join(allowed)}"
                              + (f"; did you mean {close!r}?" if close else ""))
    missing = [p.name for p in fixed if p.default is p.empty and p.name != "run" and p.name not in params]
    if missing:
        raise RecipeError(f"stage {name!r} needs parameter {missing[0]!r}")


def _extra_params(name: str, params: dict[str, Any]) -> set[str] | None:
    """What a stage's **params may hold (None: not checked here)."""
    if name == "select":
        from curate.select import SELECTORS

        try:
            cls = SELECTORS.get(str(params["method"]))
        except Exception:  # noqa: BLE001 - an unknown method is reported by the stage itself, with the list
            return None
        return {p for p in inspect.signature(cls.__init__).parameters if p != "self"}
    if name == "score":
        from curate.signals.stage import known_params

        return known_params()
    if name in ("reference", "mix-ideal"):  # the rest goes to the training module
        return set(inspect.signature(stage_function("train")).parameters)
    return None


def run_recipe(recipe: Recipe, *, log: Callable[[str], None] = print) -> list[tuple[str, StageResult]]:
    """Run every stage in order; return (stage name, result) pairs. A stage whose outputs are current is
    skipped (result.skipped), so a re-run of a finished recipe does no work."""
    run = RunDir(recipe.run)
    run.root.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (name, params) in enumerate(recipe.stages, 1):
        log(f"[{i}/{len(recipe.stages)}] {name} {params if params else ''}".rstrip())
        result = call_stage(name, run, params, recipe.seed, recipe.executor)
        if result.skipped:
            log(f"      current: {result.stage} skipped")
        results.append((name, result))
    return results
