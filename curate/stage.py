"""One stage protocol: a stage has a name, a key (its parameters and the fingerprints of the files it reads),
its outputs in the run directory and a run function; `run_stage` does for every stage the lock, the
up-to-date check, the removal of temporary files killed runs left, and the sidecar `<run>/stages/<name>.json`.

Stage functions (`curate.select.select`, `curate.map.build_index`, ...) are declared with `@stage(...)`: a
call builds the `Stage` from its arguments and goes through `run_stage`, so the CLI, recipes and notebooks
share one check. A current stage is not run at all: its stored value is loaded (`load`). `fn.run_stage(...)`
takes the same arguments and returns the `StageResult` (value, skipped, seconds), which recipes log. Every
stage takes `force=True` (rerun even when current).

Files and folders are fingerprinted by relative path, size and modification time (a relative input is read
inside the run directory: a stage names a file outside it, e.g. a validation file, by its resolved path); names
starting with
'_' or '.' (caches, temporary files, locks) are left out. Stages write their outputs atomically themselves
(index.io.atomic_path); shard-level resume inside a stage (index.io.missing_shards) is finer than this check.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from curate.run import RunDir
from index.io import read_json, write_json

F = TypeVar("F", bound=Callable[..., Any])

#: arguments that never change a stage's result (where and how visibly it runs), left out of every key
NOT_IN_KEY = ("run", "force", "progress", "executor", "executor_options", "log", "verbose")


@dataclass
class Stage:
    """One unit of work on a run directory (see the module docstring)."""

    name: str  # the sidecar's name: <run>/stages/<name>.json
    run: Callable[[RunDir], Any]  # does the work and writes the outputs; returns the stage's value
    params: dict[str, Any] = field(default_factory=dict)  # what the result depends on, besides the inputs
    inputs: Sequence[str | os.PathLike] = ()  # files or folders read (relative to the run, or absolute)
    outputs: Sequence[str | os.PathLike] = ()  # files or folders written; a changed or missing one reruns
    load: Callable[[RunDir], Any] | None = None  # the stored value of a current stage (default: None)
    lock: str | None = None  # the run lock held while checking and running (default: `name`)
    writes_inputs: Sequence[str] = ()  # inputs the stage itself may update (e.g. select's decontam records)
    creates_run: bool = False  # the stage makes the run directory (ingest); others need it to exist
    lock_error: type[Exception] | None = None  # raised when another process holds the lock (RunBusyError)
    scratch: Sequence[str | os.PathLike] = ()  # caches it writes besides `outputs` (temporary files swept too)


@dataclass
class StageResult:
    """What `run_stage` returns for every stage."""

    stage: str
    value: Any
    skipped: bool  # True when the stored outputs were current and nothing ran
    seconds: float  # this call's time
    key: dict[str, Any]


def fingerprint(run: RunDir, paths: Sequence[str | os.PathLike]) -> dict[str, list[int] | None]:
    """{path: [size, mtime_ns]} of every file under `paths` (None for a missing path); names starting with
    '_' or '.' are skipped. Relative paths are taken in the run directory and keyed as given."""
    out: dict[str, list[int] | None] = {}
    for p in paths:
        top = Path(p) if os.path.isabs(p) else run.root / p
        label = str(p)
        if top.is_file():
            st = top.stat()
            out[label] = [st.st_size, st.st_mtime_ns]
        elif top.is_dir():
            found = False
            for f in sorted(top.rglob("*")):
                rel = f.relative_to(top).parts
                if f.is_file() and not any(x.startswith(("_", ".")) for x in rel):
                    st = f.stat()
                    out["/".join((label, *rel))] = [st.st_size, st.st_mtime_ns]
                    found = True
            if not found:
                out[label] = [0, 0]
        else:
            out[label] = None
    return out


def jsonable(obj: Any) -> Any:
    """`obj` as plain JSON types (paths and other objects as strings), so keys compare after a round trip."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def run_stage(stage: Stage, run: RunDir | str | os.PathLike, *, force: bool = False) -> StageResult:
    """Run `stage` on `run` unless its sidecar says the same key produced outputs that are still there,
    unchanged; hold the run's lock for it meanwhile. `force` reruns it."""
    rd = run if isinstance(run, RunDir) else RunDir(run)
    t0 = time.perf_counter()
    created = stage.creates_run and not rd.root.exists()
    if stage.creates_run:
        rd.root.mkdir(parents=True, exist_ok=True)
    try:
        return _run_locked(stage, rd, force, t0)
    except BaseException:
        if created and rd.root.is_dir() and all(p.name.startswith(".") and p.name.endswith(".lock")
                                                 for p in rd.root.iterdir()):
            shutil.rmtree(rd.root, ignore_errors=True)  # a failed first stage leaves no empty run directory behind
        raise


def _run_locked(stage: Stage, rd: RunDir, force: bool, t0: float) -> StageResult:
    """`run_stage`'s work under the run's lock for the stage."""
    with rd.lock(stage.lock or stage.name, *(() if stage.lock_error is None else (stage.lock_error,))):
        rd.remove_stale_temp([*stage.outputs, *stage.scratch])  # what killed runs of it left
        side = rd.stage_path(stage.name)
        key = {"params": jsonable(stage.params), "inputs": fingerprint(rd, stage.inputs)}
        if not force and side.exists():
            stored = read_json(side)
            if stored.get("key") == key and stored.get("outputs") == fingerprint(rd, stage.outputs):
                value = stage.load(rd) if stage.load is not None else None
                return StageResult(stage.name, value, True, time.perf_counter() - t0, key)
        value = stage.run(rd)
        after = fingerprint(rd, stage.inputs)
        changed = {p for p in set(after) | set(key["inputs"]) if after.get(p) != key["inputs"].get(p)}
        if all(any(p == w or p.startswith(f"{w}/") for w in stage.writes_inputs) for p in changed):
            key["inputs"] = after  # only its own side records moved: the outputs match the inputs as they are
        # otherwise another process changed an input meanwhile: keep the key read before, so the next call reruns
        seconds = time.perf_counter() - t0
        write_json(side, {"stage": stage.name, "key": key, "outputs": fingerprint(rd, stage.outputs),
                          "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return StageResult(stage.name, value, False, seconds, key)


def stage(
    name: str | Callable[[dict[str, Any]], str],
    *,
    inputs: Callable[[RunDir, dict[str, Any]], Sequence[str | os.PathLike]],
    outputs: Callable[[RunDir, dict[str, Any]], Sequence[str | os.PathLike]],
    load: Callable[[RunDir, dict[str, Any]], Any] | None = None,
    lock: str | None = None,
    writes_inputs: Sequence[str] = (),
    key: Callable[[RunDir, dict[str, Any]], dict[str, Any]] | None = None,
    creates_run: bool = False,
    lock_error: type[Exception] | None = None,
    scratch: Sequence[str] = (),
) -> Callable[[F], F]:
    """Declare `fn(..., run, ...)` (an argument named `run`) a stage: each call goes through `run_stage`, keyed by the call's arguments (all
    of them, defaults filled in, less `NOT_IN_KEY`), by `key(run, args)` when given (fingerprints that are not
    files, e.g. the current embedding model's) and by the files `inputs(run, args)` names. `fn.run_stage`
    takes the same arguments (and `force`) and returns the `StageResult`; the function returns its value."""

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        def build(args: tuple, kwargs: dict) -> tuple[Stage, RunDir, bool]:
            own_force = "force" in sig.parameters  # a stage without its own `force` takes it here
            forced = bool(kwargs.pop("force", False)) if not own_force else False
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = dict(bound.arguments)
            rd = a["run"] if isinstance(a["run"], RunDir) else RunDir(a["run"])
            for p in sig.parameters.values():  # flatten **params into the arguments
                if p.kind is inspect.Parameter.VAR_KEYWORD:
                    a.update(a.pop(p.name, {}))
            force = bool(a.get("force", False)) or forced
            st = Stage(
                name=name(a) if callable(name) else name,
                run=lambda r: fn(*args, **kwargs),
                params={k: v for k, v in a.items() if k not in NOT_IN_KEY} | (key(rd, a) if key else {}),
                inputs=inputs(rd, a),
                outputs=outputs(rd, a),
                load=None if load is None else (lambda r: load(r, a)),
                lock=lock,
                writes_inputs=writes_inputs,
                creates_run=creates_run,
                lock_error=lock_error,
                scratch=scratch,
            )
            return st, rd, force

        @functools.wraps(fn)
        def staged(*args: Any, **kwargs: Any) -> StageResult:
            st, rd, force = build(args, kwargs)
            return run_stage(st, rd, force=force)

        return returning_value(staged)  # type: ignore[return-value]

    return wrap


def returning_value(staged: Callable[..., StageResult], returns: Any = None) -> Callable[..., Any]:
    """A function with `staged`'s parameters that returns its result's value (of type `returns`, for the
    signature, when given); `.run_stage` is `staged` (what recipes call, for the whole `StageResult`)."""

    @functools.wraps(staged)
    def call(*args: Any, **kwargs: Any) -> Any:
        return staged(*args, **kwargs).value

    if returns is not None:
        call.__signature__ = inspect.signature(staged).replace(return_annotation=returns)  # type: ignore[attr-defined]
    call.run_stage = staged  # type: ignore[attr-defined]
    return call
