"""The score stage: compute the requested signals once per key and store them under <run>/signals/."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curate.errors import ParameterError
from curate.run import RunDir
from curate.signals.base import SIGNALS, ScoreContext, short_hash
from curate.signals.store import load_signal, stored_key, write_signal
from curate.stage import stage


def _deps(ctx: ScoreContext, name: str) -> list[str]:
    defn = SIGNALS.get(name)
    return list(defn.deps(ctx) if callable(defn.deps) else defn.deps)


def signal_key(ctx: ScoreContext, name: str) -> dict:
    """The full key of a signal: its own key plus the keys of the signals it reads."""
    key = ctx.key(SIGNALS.get(name))
    deps = _deps(ctx, name)
    if deps:
        key["deps"] = {d: short_hash(signal_key(ctx, d), 16) for d in deps}
    return key


def ensure_signal(ctx: ScoreContext, name: str) -> tuple[Path, bool]:
    """Compute and store signal `name` unless a copy with the same key exists; (path, computed?)."""
    defn = SIGNALS.get(name)
    for d in _deps(ctx, name):
        ensure_signal(ctx, d)
    key = signal_key(ctx, name)
    path = ctx.rd.signal_path(name)
    if stored_key(ctx.rd.root, name) == _roundtrip(key):
        return path, False
    values = defn.compute(ctx)
    stats = ctx.extra.pop(name, None)
    write_signal(ctx.rd.root, name, ctx.ids, values, key, extra={"stats": stats} if stats else None)
    return path, True


def _roundtrip(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _score_name(a: dict) -> str:
    names = "+".join(a["names"])
    return f"score-{names}" if len(names) <= 80 else f"score-{short_hash(sorted(a['names']), 16)}"


def _score_inputs(run: RunDir, a: dict) -> list[str]:
    """The pool, the embeddings, ILA's reference record, the kNN graph and clusters, the stored signals the
    requested ones read, and the validation file and model folders given: a change to any of them runs the
    stage, whose per-signal keys then decide what is recomputed."""
    given = [a["validation"], a["model"], a["base_model"], a["ref_model"]]
    deps = _dependencies(run, a)
    return ["pool", "embeddings/current.json", "reference.json", "index/knn.npz", "map/clusters.parquet",
            *(f"signals/{d}.parquet" for d in deps),
            *(str(Path(g).resolve()) for g in given if g is not None and os.path.exists(str(g)))]


def _dependencies(run: RunDir, a: dict) -> list[str]:
    """Signals the requested ones read, recursively (from their parameters; the pool is not read)."""
    ctx = ScoreContext(run.root, models={}, validation=None, dtype=None, batch_tokens=1, progress=False, params=a)
    known, out = set(SIGNALS.names()), []

    def walk(name: str) -> None:
        for d in _deps(ctx, name) if name in known else ():
            if d not in out:
                out.append(d)
                walk(d)

    for n in a["names"]:
        walk(n)
    return out


#: parameters of a score call that no signal declares: how the work is cut and cached, not what it computes
RUN_PARAMS = ("shard_rows", "icl_shard_rows", "icl_cache")


def known_params() -> set[str]:
    """Every keyword parameter `score` takes beyond its named ones: the signals' declared parameters and RUN_PARAMS."""
    return {p for n in SIGNALS.names() for p in SIGNALS.get(n).params} | set(RUN_PARAMS)


def _score_outputs(run: RunDir, a: dict) -> list[str]:
    out = [f"signals/{n}.{ext}" for n in a["names"] for ext in ("parquet", "json")]
    return [*out, "decontam"] if a["validation"] is not None else out


@stage(_score_name, inputs=_score_inputs, outputs=_score_outputs, lock="score", scratch=["signals"],
       writes_inputs=("signals",),
       load=lambda run, a: {n: run.signal_path(n) for n in a["names"]})
def score(
    run: str | os.PathLike,
    names: Sequence[str],
    *,
    model: str | None = None,
    base_model: str | None = None,
    ref_model: str | None = None,
    validation: str | os.PathLike | None = None,
    dtype: str | None = "auto",
    batch_tokens: int = 8192,
    progress: bool = True,
    device: str | None = None,
    executor: Any = None,
    executor_options: dict[str, Any] | None = None,
    **params: Any,
) -> dict[str, Path]:
    """Compute signals `names` for every pool row of `run`; return {name: parquet path}.

    model: causal LM (directory or "smollm2") for loss, perplexity, ifd, icl, miw_score and token counts;
    base_model / ref_model: the two LMs of ILA depth (base defaults to `model`); validation: tiny
    validation set (jsonl) for icl, relevance, miw_score; the pool rows that copy its rows (exact, or cosine
    >= `decontam_threshold`, default 0.95, with half the row's own 8-grams) are recorded under <run>/decontam/ (curate.signals.decontam) and
    left out of selections by default. dtype "auto" = bf16 on GPU or a CPU with native bf16, else float32 (resolved on this machine:
    Ray workers compute in the same dtype). `executor` ("local", "ray", "ray:ADDRESS", with `executor_options`)
    runs the LM passes (loss, perplexity, IFD, depth, ICL and MIW's ICL gains) shard by shard; results do not
    depend on it.
    Other keyword parameters (max_length, tags_field, depth_group, icl_k, n_val, miw_*, ...) are the
    signals' parameters; they enter the cache key of the signals that use them. A stage (curate.stage): nothing
    runs when the arguments, pool, embeddings, models and outputs are unchanged. Within a run, a stored signal
    whose own key (model fingerprints + its parameters + pool + the keys of the signals it reads) equals the
    request is reused, so signals shared by several calls (loss for ifd and loss) are computed once.
    """
    from curate.executors import get_executor

    for n in names:
        SIGNALS.get(n)  # unknown names fail before any work
    unknown = sorted(set(params) - known_params())
    if unknown:
        raise ParameterError(f"score: unknown parameter(s) {', '.join(unknown)}",
                             f"the signals' parameters are {', '.join(sorted(known_params()))}")
    ctx = ScoreContext(
        run,
        executor=get_executor(executor, executor_options),
        models={"model": model, "base_model": base_model, "ref_model": ref_model},
        validation=validation,
        dtype=dtype,
        batch_tokens=batch_tokens,
        progress=progress,
        params=params,
        device=device,
    )
    if validation is not None:  # the validation step: record the pool rows that copy validation rows
        from curate.signals.decontam import DEFAULT_THRESHOLD, decontaminate

        decontaminate(run, validation, threshold=float(params.get("decontam_threshold", DEFAULT_THRESHOLD)),
                      device=device)
    return {n: ensure_signal(ctx, n)[0] for n in names}


__all__ = ["score", "load_signal", "ensure_signal", "signal_key"]
