"""The `miw_score` signal: MIW-style learned weights over indicators, scored with the ICL proxy.

Steps: (1) compute/load the indicator signals (`miw_indicators`), normalise each by percentile rank over
the pool; (2) draw `miw_candidates` pool rows (seeded) and compute their per-row ICL proxy once
(curate.signals.icl, cached in resumable shards); (3) `learn_weights` over the candidates: the top-r%
(`miw_ratio`) of the candidates by s_w, P(w) = mean ICL value of `miw_k` demos per draw over `miw_draws`
seeded draws; (4) save the weights and the whole search history to <run>/signals/miw_weights.json and
return s_w* for every pool row.
"""

from __future__ import annotations

import numpy as np

from curate.signals.base import ScoreContext, signal
from curate.signals.icl import icl_for_positions
from curate.signals.miw import learn_weights, normalise_indicators, weighted_score
from index.io import write_json

DEFAULT_INDICATORS = ("response_tokens", "reasoning_steps", "mtld", "ifd")


def _indicators(ctx: ScoreContext) -> list[str]:
    names = ctx.param("miw_indicators", list(DEFAULT_INDICATORS))
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if "miw_score" in names:
        raise ValueError("miw_indicators cannot include miw_score itself")
    return list(names)


@signal(
    "miw_score",
    params={
        "miw_indicators": list(DEFAULT_INDICATORS),
        "miw_ratio": 0.3,
        "miw_candidates": 256,
        "miw_k": 4,
        "miw_draws": 64,
        "miw_random": 64,
        "miw_refine": 64,
        "miw_seed": 0,
        "icl_k": 1,
        "icl_seed": 0,
        "n_val": 32,
        "max_length": 2048,
    },
    roles=("model", "validation"),
    deps=_indicators,
)
def _miw_score(ctx: ScoreContext) -> np.ndarray:
    """MIW-style score: rank-normalised indicators weighted by weights learned with the ICL proxy."""
    names = _indicators(ctx)
    raw = np.column_stack([ctx.signal(n) for n in names])
    norm = normalise_indicators(raw)
    seed = int(ctx.param("miw_seed", 0))
    n_cand = min(ctx.n, int(ctx.param("miw_candidates", 256)))
    cand = np.sort(np.random.default_rng(seed).choice(ctx.n, size=n_cand, replace=False))
    icl, toks = icl_for_positions(ctx, cand, "miw")
    res = learn_weights(
        {n: norm[cand, j] for j, n in enumerate(names)},
        icl,
        ratio=float(ctx.param("miw_ratio", 0.3)),
        k=int(ctx.param("miw_k", 4)),
        draws=int(ctx.param("miw_draws", 64)),
        n_random=int(ctx.param("miw_random", 64)),
        n_refine=int(ctx.param("miw_refine", 64)),
        seed=seed,
        normalise=False,
    )
    out = res.as_dict()
    out.update(
        {
            "method": "MIW-style (methods.md 5.3 reconstruction)",
            "candidates": int(n_cand),
            "icl_forward_tokens_per_row": toks,
            "params": {k: ctx.param(k, v) for k, v in _miw_score_def().params.items()},
        }
    )
    write_json(ctx.rd.root / "signals" / "miw_weights.json", out)
    ctx.extra["miw_score"] = {"weights": out["weights"], "proxy_best": res.best, "proxy_uniform": res.uniform}
    return weighted_score(norm, res.weights, normalise=False)


def _miw_score_def():
    from curate.signals.base import SIGNALS

    return SIGNALS.get("miw_score")
