"""LM-based signals: response loss, perplexity, IFD, and ILA depth / relative depth.

All of them read per-row (NLL sum, token count) tables computed once per model and format, cached under
`<run>/signals/_lm/<model fingerprint>-<params>/<variant>/` in resumable shards, so `loss`, `perplexity`
and `ifd` share one pass of the model, and a killed run resumes without recomputing finished shards.

Scored tokens: the response tokens only by default; `score_eot=True` adds the chat template's end-of-turn
tokens (see curate.signals.lm). The cache holds both parts, so switching the option costs no model pass;
each signal's sidecar says which it scored (`stats.scored_tokens`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.run import RunDir
from curate.signals.base import ScoreContext, short_hash, signal
from curate.signals.lm import ScorerJob
from curate.signals.rowcache import cached_job, write_columns

LM_PARAMS = {"max_length": 2048, "score_eot": False}


def score_eot(ctx: ScoreContext) -> bool:
    """Whether LM signals score the end-of-turn tokens too (parameter `score_eot`, default False)."""
    value = ctx.param("score_eot", False)
    if isinstance(value, str):
        value = value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def scored_tokens(ctx: ScoreContext) -> dict:
    """The sidecar note of an LM signal: which labelled tokens it scored."""
    eot = score_eot(ctx)
    return {"scored_tokens": "response+end_of_turn" if eot else "response", "score_eot": eot}


@dataclass
class LMNllJob(ScorerJob):
    """Per-row (NLL, token count) parts of pool rows under one causal LM, one shard at a time: a picklable
    shard job (`index.io.ShardJob`), so a Ray actor loads the model once and reads its rows from the run.
    In process, `local` (never pickled) hands over the scorer the score call already holds."""

    root: str
    variant: str
    n_rows: int
    shard_rows: int
    progress: bool = False

    def run(self, scorer: Any, i: int, tmp: Path, progress: Callable[[int], None] | None = None) -> int:
        lo, hi = i * self.shard_rows, min(self.n_rows, (i + 1) * self.shard_rows)
        rows = RunDir(self.root).scan_pool().slice(lo, hi - lo).select("id", "messages").collect()
        ids, convs = rows["id"].to_list(), rows["messages"].to_list()
        enc = scorer.encode_alone if self.variant == "alone" else scorer.encode
        # prompt-only rows (kind "prompt") have no response to score: 0 tokens, so their signal is NaN
        scored = [k for k, m in enumerate(convs) if m and m[-1]["role"] == "assistant"]
        seqs = [enc(convs[k], where=f"pool row {lo + k} (id {ids[k]})") for k in scored]
        parts = scorer.nll_parts(seqs, progress=self.progress, desc=f"{self.variant} nll [{lo}:{hi}]")
        cols = {"nll_sum": parts.resp_sum, "n_tokens": parts.resp_n, "eot_nll_sum": parts.eot_sum,
                "eot_n_tokens": parts.eot_n}
        out = {k: np.zeros(len(convs), dtype=np.asarray(v).dtype) for k, v in cols.items()}
        for k, v in cols.items():
            out[k][scored] = v
        out["truncated"] = np.zeros(len(convs), dtype=bool)
        out["truncated"][scored] = [s.truncated for s in seqs]
        write_columns(tmp, out)
        return hi - lo


def lm_stats(ctx: ScoreContext, role: str, variant: str, eot: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(nll_sum, n_tokens) of every pool row under the model of `role`; variant 'cond' or 'alone'.

    Response tokens only, plus the end-of-turn tokens when `eot` (default: the `score_eot` parameter).
    The shards run on the score call's executor (in process by default; Ray with `executor="ray"`).
    """
    from curate.signals.lm import default_device, resolve_dtype

    eot = score_eot(ctx) if eot is None else eot
    fp = ctx.fingerprint(role)
    params = {"max_length": int(ctx.param("max_length", 2048)), "variant": variant, "parts": "response,eot"}
    if variant == "alone":  # cut to the conditioned pass's response tokens since 2026-12-02 (encode_alone)
        params["alone_cut"] = "cond"
    folder = ctx.rd.lm_cache_dir / f"{fp}-{short_hash(params)}" / variant
    shard_rows = int(ctx.param("shard_rows", 2048))
    job = LMNllJob(model=ctx.model_path(role), dtype=resolve_dtype(ctx.dtype, ctx.device or default_device()),
                   device=ctx.device, max_length=params["max_length"], batch_tokens=ctx.batch_tokens,
                   root=str(ctx.rd.root.resolve()), variant=variant, n_rows=ctx.n, shard_rows=shard_rows,
                   progress=ctx.progress, local=lambda: ctx.scorer(role))
    key = {"model": fp, "params": params, "pool": ctx.key_pool()}
    cols, _ = cached_job(folder, ctx.n, shard_rows, key, job, ctx.executor)
    sums, counts = cols["nll_sum"].astype(np.float64), cols["n_tokens"].astype(np.int64)
    if eot:
        sums, counts = sums + cols["eot_nll_sum"], counts + cols["eot_n_tokens"].astype(np.int64)
    return sums, counts


def mean_nll(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-token mean NLL; NaN for rows with no scored token."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@signal("loss", params=LM_PARAMS, roles=("model",))
def _loss(ctx: ScoreContext) -> np.ndarray:
    """Mean response NLL (nats/token) given the prompt, under `model` (end-of-turn tokens with score_eot)."""
    ctx.extra["loss"] = scored_tokens(ctx)
    return mean_nll(*lm_stats(ctx, "model", "cond"))


@signal("perplexity", params=LM_PARAMS, roles=("model",))
def _ppl(ctx: ScoreContext) -> np.ndarray:
    """exp(mean response NLL given the prompt) under `model` (end-of-turn tokens with score_eot)."""
    ctx.extra["perplexity"] = scored_tokens(ctx)
    return np.exp(mean_nll(*lm_stats(ctx, "model", "cond")))


# "alone" is cut to the conditioned side's response tokens since 2026-12-02: stored values from before recompute
@signal("ifd", params=LM_PARAMS, roles=("model",), key_extra=lambda ctx: {"alone": "cut to cond"})
def _ifd(ctx: ScoreContext) -> np.ndarray:
    """Instruction-following difficulty: mean NLL of the response given the prompt / of the response alone.

    "Alone" is the same format with an empty user turn (see LMScorer.encode_alone), as in Cherry /
    Superfiltering's conditioned vs direct answer score; > 1 means the prompt does not help. Both scores
    count the response tokens only (with the end-of-turn tokens when score_eot).
    """
    ctx.extra["ifd"] = scored_tokens(ctx)
    cond = mean_nll(*lm_stats(ctx, "model", "cond"))
    alone = mean_nll(*lm_stats(ctx, "model", "alone"))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cond / alone


def tag_counts(ctx: ScoreContext) -> np.ndarray:
    """Number of distinct skill tags per row, or 1 everywhere when no tags exist (see `depth`)."""
    tags_signal = ctx.param("tags_signal")
    if tags_signal:
        return np.asarray(ctx.signal(tags_signal), dtype=np.float64)
    field = ctx.param("tags_field", "tags")
    if ("tags", field) not in ctx.memo:  # depth's key and depth itself read them: parse every meta once
        ctx.memo[("tags", field)] = _meta_tag_counts(ctx, field)
    return ctx.memo[("tags", field)]


def _meta_tag_counts(ctx: ScoreContext, field: str) -> np.ndarray:
    counts = np.ones(ctx.n, dtype=np.float64)
    if not field:
        return counts
    seen = False
    for i, raw in enumerate(ctx.pool["meta"].to_list()):
        try:
            meta = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"pool row {i}: meta is not JSON ({exc})") from None
        value = meta.get(field) if isinstance(meta, dict) else None
        if value is None:
            continue
        seen = True
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        if not isinstance(value, list):
            raise ValueError(f"pool row {i}: meta field {field!r} must be a list of tags or a comma string")
        counts[i] = max(1, len({str(v) for v in value}))
    return counts if seen else np.ones(ctx.n)


def _tags_dep(ctx: ScoreContext) -> list[str]:
    return [ctx.param("tags_signal")] if ctx.param("tags_signal") else []


def _tags_read(ctx: ScoreContext) -> dict[str, str]:
    """The tag counts `depth` multiplies by (from meta, or the `tags_signal` dependency's key)."""
    return {} if ctx.param("tags_signal") else {"tags": short_hash(tag_counts(ctx).tolist(), 16)}


@signal(
    "depth",
    params={**LM_PARAMS, "tags_field": "tags", "tags_signal": None},
    roles=("base_model", "ref_model"),
    deps=_tags_dep,
    key_extra=_tags_read,
)
def _depth(ctx: ScoreContext) -> np.ndarray:
    """ILA information depth: (mean NLL under base_model - mean NLL under ref_model) x #tags.

    The drop of the response's per-token loss from the base model to the reference (SFT) model
    (length-normalised: each model's summed NLL divided by its own token count), multiplied by the
    number of distinct skill tags: from meta[tags_field] (a list or comma string; rows without the field
    count 1; if no row has it the multiplier is 1 everywhere) or from a stored signal `tags_signal`.
    Response tokens only (with the end-of-turn tokens when score_eot).
    """
    check_depth_models(ctx)
    ctx.extra["depth"] = scored_tokens(ctx)
    base = mean_nll(*lm_stats(ctx, "base_model", "cond"))
    ref = mean_nll(*lm_stats(ctx, "ref_model", "cond"))
    return (base - ref) * tag_counts(ctx)


def check_depth_models(ctx: ScoreContext) -> None:
    """Depth compares two models on the same text: they must differ, and render conversations alike."""
    if ctx.fingerprint("base_model") == ctx.fingerprint("ref_model"):
        raise ValueError(
            f"depth needs two different models, but base_model and ref_model are the same weights "
            f"({ctx.model_path('base_model')} and {ctx.model_path('ref_model')}); make a reference model "
            "with `curate train --run RUN --reference N` and pass its model folder as --ref-model"
        )
    probe = [{"role": "user", "content": "2 + 2 ?"}, {"role": "assistant", "content": "4"}]
    base, ref = ctx.scorer("base_model"), ctx.scorer("ref_model")
    if base.render(probe, generation_prompt=False) != ref.render(probe, generation_prompt=False):
        raise ValueError(
            f"depth: {ctx.model_path('base_model')} and {ctx.model_path('ref_model')} format conversations "
            "differently (chat templates differ), so their losses are not comparable"
        )


def group_labels(ctx: ScoreContext, group: str | None) -> list | None:
    """Per-row group labels: 'domain', 'cluster' (<run>/map/clusters.parquet) or None (global); read once per
    score call (relative_depth's key and relative_depth itself use them)."""
    if group in (None, "none", "global"):
        return None
    if ("groups", group) not in ctx.memo:
        ctx.memo[("groups", group)] = _group_labels(ctx, group)
    return ctx.memo[("groups", group)]


def _group_labels(ctx: ScoreContext, group: str) -> list:
    if group == "domain":
        return ctx.pool["domain"].to_list()
    if group == "cluster":
        import polars as pl

        from curate.pool.ids import align

        path = ctx.rd.require(ctx.rd.map_dir / "clusters.parquet", "map")
        cl = pl.read_parquet(path, columns=["id", "cluster"])
        joined = align(ctx.pool["id"], cl)
        if joined["cluster"].null_count():
            raise ValueError(f"{path} lacks {joined['cluster'].null_count()} pool rows: re-run `curate map`")
        return joined["cluster"].to_list()
    raise ValueError(f"relative_depth group must be 'domain', 'cluster' or 'none', got {group!r}")


@signal(
    "relative_depth",
    params={**LM_PARAMS, "tags_field": "tags", "tags_signal": None, "depth_group": "domain"},
    roles=("base_model", "ref_model"),
    deps=("depth",),
    key_extra=lambda ctx: {"groups": short_hash(group_labels(ctx, ctx.param("depth_group", "domain")), 16)},
)
def _relative_depth(ctx: ScoreContext) -> np.ndarray:
    """ILA relative depth: percentile rank in [0, 1] of `depth` within its domain (or k-means cluster
    with depth_group='cluster', or globally with 'none'); ties get their average rank."""
    from curate.signals.rank import percentile_rank

    depth = ctx.signal("depth")
    ctx.extra["relative_depth"] = scored_tokens(ctx)
    return percentile_rank(depth, group_labels(ctx, ctx.param("depth_group", "domain")))
