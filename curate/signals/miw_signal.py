"""The `miw_score` signal: MIW-style learned weights over indicators, scored with the ICL proxy.

Steps: (1) compute/load the indicator signals (`miw_indicators`), normalise each by percentile rank over
the pool; (2) draw `miw_candidates` pool rows (seeded), leaving out the rows that copy a validation row
(`curate.signals.decontam`: their ICL gain is the validation answer itself), and split them (seeded) into a
search part and a held-out part (`miw_holdout`, default half); (3) `learn_weights` on the search part: the
top-r% (`miw_ratio`) of the search rows by s_w, P(w) from k-shot prompts of `miw_k` demos drawn from them
over `miw_draws` seeded draws: with `miw_proxy="icl"` (default) the mean of the demos' per-row one-shot ICL
gains (computed once per search row, curate.signals.icl, cached in resumable shards: cheap enough for the
~130 weight vectors of the search), with `miw_proxy="kshot"` the real k-shot prompts (`KShotProxy`);
(4) the chosen weights and uniform weights are scored on the held-out part with real k-shot prompts
(`miw_eval_draws` draws of `miw_k` demos from the held-out top-r%, gold-answer log-likelihood gain over
zero-shot), the figure to trust; (5) save the weights, the held-out comparison and the search history to
<run>/signals/miw_weights.json and return s_w* for every pool row.
"""

from __future__ import annotations

import numpy as np

from curate.signals.base import ScoreContext, short_hash, signal
from curate.signals.icl import icl_for_positions
from curate.signals.lm_signals import score_eot
from curate.signals.miw import (
    KShotProxy,
    heldout_proxy,
    learn_weights,
    normalise_indicators,
    split_candidates,
    weighted_score,
)
from curate.signals.validation import read_validation
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
        "miw_holdout": 0.5,
        "miw_proxy": "icl",
        "miw_eval_draws": 16,
        "decontam_threshold": 0.95,
        "icl_k": 1,
        "icl_seed": 0,
        "n_val": 32,
        "max_length": 2048,
        "score_eot": False,
    },
    roles=("model", "validation"),
    deps=_indicators,
    key_extra=lambda ctx: {"left_out": short_hash(_contaminated(ctx).tolist(), 16)},  # decontamination records
)
def _miw_score(ctx: ScoreContext) -> np.ndarray:
    """MIW-style score: rank-normalised indicators weighted by weights learned with the ICL proxy."""
    names = _indicators(ctx)
    raw = np.column_stack([ctx.signal(n) for n in names])
    norm = normalise_indicators(raw)
    seed = int(ctx.param("miw_seed", 0))
    ratio, k = float(ctx.param("miw_ratio", 0.3)), int(ctx.param("miw_k", 4))
    proxy_kind = str(ctx.param("miw_proxy", "icl"))
    if proxy_kind not in ("icl", "kshot"):
        raise ValueError(f"miw_proxy must be 'icl' or 'kshot', got {proxy_kind!r}")
    allowed = np.setdiff1d(np.arange(ctx.n), _contaminated(ctx))
    n_cand = min(allowed.size, int(ctx.param("miw_candidates", 256)))
    cand = np.sort(np.random.default_rng(seed).choice(allowed, size=n_cand, replace=False))
    search_i, held_i = split_candidates(n_cand, float(ctx.param("miw_holdout", 0.5)), seed)
    search, held = cand[search_i], cand[held_i]
    n_val = ctx.param("n_val", 32)
    val = read_validation(ctx.validation, None if n_val is None else int(n_val), int(ctx.param("icl_seed", 0)))

    def kshot(rows: np.ndarray, draws: int, progress: bool = False) -> KShotProxy:
        convs = [ctx.messages(int(p), int(p) + 1)[0] for p in rows]
        n_top = max(1, int(round(ratio * rows.size)))
        eot = score_eot(ctx)  # the answer's tokens only by default, as the other LM signals
        return KShotProxy(lambda c: ctx.scorer("model").conversation_nll(c, eot=eot, progress=progress)[0], convs,
                          val, k=k, draws=draws, seed=seed, n_top=n_top)

    toks = None
    if proxy_kind == "icl":
        proxy, toks = icl_for_positions(ctx, search, "miw")
    else:
        proxy = kshot(search, int(ctx.param("miw_draws", 64)))
    res = learn_weights(
        {n: norm[search, j] for j, n in enumerate(names)},
        proxy,
        ratio=ratio,
        k=k,
        draws=int(ctx.param("miw_draws", 64)),
        n_random=int(ctx.param("miw_random", 64)),
        n_refine=int(ctx.param("miw_refine", 64)),
        seed=seed,
        normalise=False,
    )
    held_proxy = kshot(held, int(ctx.param("miw_eval_draws", 16)), progress=ctx.progress)  # a bar per weighting
    heldout = heldout_proxy(norm[held], res.weights, held_proxy, ratio)
    out = res.as_dict()
    out["search_proxy_best"], out["search_proxy_uniform"] = out.pop("proxy_best"), out.pop("proxy_uniform")
    out.update(
        {
            "method": "MIW-style (methods.md 5.3 reconstruction)",
            "heldout": {
                **heldout,
                "proxy": "k-shot prompts: mean gain of the validation answers' log-likelihood over zero-shot",
                "rows": [str(ctx.ids[int(p)]) for p in held],
                "k": held_proxy.k,
                "draws": int(ctx.param("miw_eval_draws", 16)),
            },
            "search": {"proxy": proxy_kind, "rows": [str(ctx.ids[int(p)]) for p in search]},
            "candidates": int(n_cand),
            "candidates_left_out_as_contaminated": int(ctx.n - allowed.size),
            "icl_forward_tokens_per_row": toks,
            "params": {p: ctx.param(p, v) for p, v in _miw_score_def().params.items()},
        }
    )
    write_json(ctx.rd.miw_weights_path, out)
    ctx.extra["miw_score"] = {"weights": out["weights"], "heldout_best": heldout["best"],
                              "heldout_uniform": heldout["uniform"], "search_best": res.best,
                              "search_uniform": res.uniform}
    return weighted_score(norm, res.weights, normalise=False)


def _contaminated(ctx: ScoreContext) -> np.ndarray:
    """Pool positions recorded as copies of a validation row (by the score stage, before the signals run)."""
    from curate.signals.decontam import contaminated_positions, contamination

    return contaminated_positions(ctx.ids, contamination(ctx.rd, refresh=False))


def _miw_score_def():
    from curate.signals.base import SIGNALS

    return SIGNALS.get("miw_score")
