"""ICL proxy: how much a row helps the target model answer a tiny validation set as a demonstration.

    icl(x) = mean_v [ log p(a_v | D_x, x, q_v) - log p(a_v | D_x, q_v) ]

with log p the summed log-likelihood of the answer tokens of validation row v (exact masking, see
curate.signals.lm), x given as a user/assistant exchange before the question (chat format, system turns
of demos dropped), and D_x the other k-1 demonstrations for k-shot (k = `icl_k`), drawn uniformly
without x from the pool with a generator seeded by (icl_seed, x's pool position), placed before x. For
k = 1 the baseline log p(a_v | q_v) is shared by all rows.

Scored tokens: the answer's tokens only by default; `score_eot=True` adds the chat template's end-of-turn
tokens after it (see curate.signals.lm). With them, a one-word demo teaches the model to stop after one
word and gains on the end-of-turn token whatever its content; the sidecar says which was scored.

Cost per row: the n_val sequences of a row share the demonstration as a token prefix. With `icl_cache`
(default) its keys and values are computed once and each sequence forwards only its question and answer
behind them (`LMScorer.nll_shared_prefix`): demo + n_val x (question + answer) tokens for k = 1 (the
n_val baselines are shared), twice that (with and without the row) for k > 1. Without the cache every
sequence is forwarded whole (n_val x (demo + question + answer)); the gains are equal within float
rounding. `forward_tokens_per_row` (all tokens forwarded / rows, shared baselines amortised) is recorded
in the signal's sidecar.

The rows are scored in resumable shards (`ICLJob`, a picklable shard job) by the score call's executor: in
process by default, or on Ray workers that each load the model once and read their rows from the run's pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.signals.base import ScoreContext, short_hash, signal
from curate.signals.lm import ScorerJob
from curate.signals.lm_signals import score_eot, scored_tokens
from curate.signals.rowcache import cached_job, write_columns
from curate.signals.validation import ValItem, read_validation


def demo_turns(conv: Sequence[dict]) -> list[dict]:
    """A pool conversation as demonstration turns (system turns dropped)."""
    return [{"role": m["role"], "content": m["content"]} for m in conv if m["role"] != "system"]


def icl_conversation(demos: Sequence[Sequence[dict]], item: ValItem) -> list[dict]:
    """The conversation scored for one validation row: demos, then the question, then the answer."""
    turns = [t for d in demos for t in demo_turns(d)]
    return turns + list(item.question) + [{"role": "assistant", "content": item.answer}]


def icl_gains(
    scorer,
    rows: Sequence[Sequence[dict]],
    val: Sequence[ValItem],
    *,
    others: Sequence[Sequence[Sequence[dict]]] | None = None,
    eot: bool = False,
    cache: bool = True,
    progress: bool = False,
    names: Sequence[str] | None = None,
) -> tuple[np.ndarray, float]:
    """ICL gain of each row (mean over validation rows) and the forward tokens spent per row.

    `others[i]` are the extra demonstrations placed before row i (k-1 of them); None means one-shot.
    `eot`: score the end-of-turn tokens after each answer too. `cache`: forward each shared demo prefix
    once (`LMScorer.nll_shared_prefix`) instead of once per validation row. `names[i]` names row i in errors
    (default "row i").
    """
    n, V = len(rows), len(val)
    names = names if names is not None else [f"row {i}" for i in range(n)]
    with_groups, base_groups = [], []
    for i, conv in enumerate(rows):
        extra = list(others[i]) if others is not None else []
        with_groups.append([scorer.encode(icl_conversation([*extra, conv], item),
                                          where=f"icl: {names[i]} before validation row {v}")
                            for v, item in enumerate(val)])
        if others is not None:
            base_groups.append([scorer.encode(icl_conversation(extra, item),
                                              where=f"icl: the demonstrations of {names[i]} before validation row {v}")
                                for v, item in enumerate(val)])
    if others is None:
        base_groups = [[scorer.encode(icl_conversation([], item), where=f"icl base val {v}")
                        for v, item in enumerate(val)]]
    if cache:
        parts, total = scorer.nll_shared_prefix(with_groups + base_groups, progress=progress, desc="icl")
        s_all = parts.sums(eot)
        s_with, s_base = s_all[: n * V], s_all[n * V :]
    else:
        s_with = scorer.nll_parts([s for g in with_groups for s in g], progress=progress, desc="icl").sums(eot)
        s_base = scorer.nll_parts([s for g in base_groups for s in g]).sums(eot)
        total = sum(len(s.ids) for g in with_groups + base_groups for s in g)
    s_with = s_with.reshape(n, V)
    s_base = s_base.reshape(n, V) if others is not None else np.broadcast_to(s_base, (n, V))
    gains = (s_base - s_with).mean(axis=1)  # log p(with) - log p(without) = nll(without) - nll(with)
    return gains, total / max(n, 1)  # shared k=1 baselines amortised over the rows


class PoolMessages:
    """Pool conversations by position, from a messages column already in memory or read from the run once (on
    first use): what a worker scoring ICL shards reads its rows and their extra demonstrations from."""

    def __init__(self, root: str, column: Any = None) -> None:
        self.root, self._column = root, column

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_column": None}

    @property
    def column(self) -> Any:
        if self._column is None:
            from curate.run import RunDir

            self._column = RunDir(self.root).read_pool(["messages"])["messages"]
        return self._column

    @property
    def n(self) -> int:
        return len(self.column)

    def messages(self, lo: int = 0, hi: int | None = None) -> list[list[dict]]:
        """Conversations of pool rows [lo, hi), as `ScoreContext.messages`."""
        return self.column.slice(lo, (hi if hi is not None else self.n) - lo).to_list()


def other_demos(ctx: ScoreContext | PoolMessages, positions: np.ndarray, k: int,
                seed: int) -> list[list[list[dict]]] | None:
    """For k > 1: k-1 pool conversations per row, drawn without the row, seeded by (seed, position)."""
    if k <= 1:
        return None
    if ctx.n < k:
        raise ValueError(f"icl_k={k} needs at least {k} pool rows")
    out = []
    for p in positions:
        rng = np.random.default_rng([seed, int(p)])
        pick = rng.choice(ctx.n - 1, size=k - 1, replace=False)
        pick = pick + (pick >= p)  # skip the row itself
        out.append([ctx.messages(int(q), int(q) + 1)[0] for q in pick])
    return out


@dataclass
class ICLJob(ScorerJob):
    """ICL gains of the pool rows at `positions`, one shard of them at a time: a picklable shard job
    (`index.io.ShardJob`), so a Ray actor loads the model once and reads its rows from the run. In process,
    `local` (never pickled) hands over the scorer and pool the score call already holds."""

    root: str
    val: list[ValItem]
    positions: np.ndarray
    k: int
    seed: int
    eot: bool
    cache: bool
    shard_rows: int
    progress: bool = False

    def setup(self) -> tuple[Any, PoolMessages]:
        """(scorer, pool conversations): the score call's, or loaded in this worker."""
        if self.local is not None:
            return self.local()
        return self.load_scorer(), PoolMessages(self.root)

    def run(self, state: tuple[Any, PoolMessages], i: int, tmp: Path,
            progress: Callable[[int], None] | None = None) -> int:
        """Shard `i`'s gains and forward tokens per row into `tmp` (parquet columns icl, tokens_per_row)."""
        scorer, pool = state
        pos = self.positions[i * self.shard_rows : (i + 1) * self.shard_rows]
        rows = [pool.messages(int(p), int(p) + 1)[0] for p in pos]
        gains, toks = icl_gains(scorer, rows, self.val, others=other_demos(pool, pos, self.k, self.seed),
                                eot=self.eot, cache=self.cache, progress=self.progress,
                                names=[f"pool row {int(p)}" for p in pos])
        write_columns(tmp, {"icl": gains, "tokens_per_row": np.full(len(pos), toks)})
        return len(pos)


def icl_for_positions(ctx: ScoreContext, positions: np.ndarray, tag: str) -> tuple[np.ndarray, float]:
    """ICL gains of pool rows at `positions`, cached in resumable shards under signals/_icl/, computed by the
    score call's executor."""
    from curate.signals.lm import default_device, resolve_dtype

    if ctx.validation is None:
        raise ValueError("the ICL proxy needs a tiny validation set: pass validation=PATH (CLI --validation)")
    k = int(ctx.param("icl_k", 1))
    seed = int(ctx.param("icl_seed", 0))
    n_val = ctx.param("n_val", 32)
    eot = score_eot(ctx)
    if k > 1 and ctx.n < k:
        raise ValueError(f"icl_k={k} needs at least {k} pool rows")
    val = read_validation(ctx.validation, None if n_val is None else int(n_val), seed)
    key = {
        "model": ctx.fingerprint("model"),
        "validation": ctx.fingerprint("validation"),
        "params": {"icl_k": k, "icl_seed": seed, "n_val": n_val, "max_length": int(ctx.param("max_length", 2048)),
                   "score_eot": eot},
        "pool": ctx.key_pool(),
        "positions": short_hash(np.asarray(positions).tolist(), 16),
    }
    folder = ctx.rd.icl_cache_dir / f"{tag}-{short_hash(key)}"
    positions = np.asarray(positions, dtype=np.int64)
    shard_rows = int(ctx.param("icl_shard_rows", 256))
    job = ICLJob(model=ctx.model_path("model"), dtype=resolve_dtype(ctx.dtype, ctx.device or default_device()),
                 device=ctx.device, max_length=int(ctx.param("max_length", 2048)), batch_tokens=ctx.batch_tokens,
                 root=str(ctx.rd.root.resolve()), val=val, positions=positions, k=k, seed=seed, eot=eot,
                 cache=bool(ctx.param("icl_cache", True)), shard_rows=shard_rows, progress=ctx.progress,
                 local=lambda: (ctx.scorer("model"), PoolMessages(str(ctx.rd.root), ctx.pool["messages"])))
    cols, _ = cached_job(folder, len(positions), shard_rows, key, job, ctx.executor)
    return cols["icl"].astype(np.float64), float(np.mean(cols["tokens_per_row"])) if len(positions) else 0.0


@signal(
    "icl",
    params={"icl_k": 1, "icl_seed": 0, "n_val": 32, "max_length": 2048, "score_eot": False},
    roles=("model", "validation"),
)
def _icl(ctx: ScoreContext) -> np.ndarray:
    """ICL proxy: mean gain in the validation answers' log-likelihood when the row is a demonstration."""
    values, toks = icl_for_positions(ctx, np.arange(ctx.n), "pool")
    ctx.extra["icl"] = {"forward_tokens_per_row": toks, **scored_tokens(ctx)}
    return values
