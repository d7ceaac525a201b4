"""DaaR's view of a pool: one text per row, and the LM or sentence features it clusters and probes.

One text format, "Instruction: {prompt}\\nOutput: {response}", for seeds, probe training and inference (the
released code mixes two). LM features are the masked mean of a truncated LM's last kept state ("truncated") or
of its input embeddings ("input_embeddings", the paper's e(x)), cached under <run>/features/<fingerprint>/ by
`index.features`; "embeddings" are the pool's sentence vectors (`curate embed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curate.view import PoolView

TEMPLATE = "Instruction: {prompt}\nOutput: {response}"
FEATURE_KINDS = ("truncated", "input_embeddings", "embeddings")


def row_texts(prompts: Sequence[str | None], responses: Sequence[str | None]) -> list[str]:
    """DaaR's text of each row, the same at training and inference time."""
    return [
        TEMPLATE.format(prompt=p or "", response=r or "") for p, r in zip(prompts, responses, strict=True)
    ]


@dataclass(frozen=True)
class PoolRowTexts:
    """DaaR's texts of pool rows [start, stop), read from the run on demand: what a worker computing feature
    shards reads itself (picklable), so a remote executor is not sent every text."""

    root: str

    def __call__(self, start: int, stop: int) -> list[str]:
        from curate.run import RunDir

        rows = RunDir(self.root).scan_pool().slice(start, stop - start).select("prompt", "response").collect()
        return row_texts(rows["prompt"].to_list(), rows["response"].to_list())


def resolve_lm(model: str | None) -> str:
    """The LM directory: `model` may be a folder or a bundled alias such as "smollm2"."""
    from curate.models import resolve_model

    if model is None:
        raise ValueError("daar: LM features need `model` (a causal LM folder or 'smollm2'), "
                         "or set cluster_features/probe_features='embeddings'")
    return str(resolve_model(model))


def pool_features(
    view: PoolView,
    kind: str,
    *,
    model: str | None,
    layer: int,
    max_length: int,
    batch_size: int,
    device: str,
    executor: Any = None,
) -> np.ndarray:
    """Features [N, d] of every pool row, pool order: the pool's sentence vectors (`kind` "embeddings") or the
    LM features of its DaaR texts ("truncated" after decoder layer `layer`, or "input_embeddings"), cached.
    `executor` computes the missing feature shards (in process by default; Ray workers read their rows)."""
    if kind == "embeddings":
        return view.vectors()
    from index.cpu import auto_dtype
    from index.features import cached_features, feature_fingerprint
    from index.io import run_job

    if view.run is None:
        raise ValueError("daar: LM features are cached in a run directory; this PoolView is in memory")
    texts = row_texts(view.frame["prompt"].to_list(), view.frame["response"].to_list())
    path = resolve_lm(model)
    dtype = auto_dtype(device)  # the truncated LM's pass: bf16 on a GPU or a CPU with bf16 units, else float32
    fp = feature_fingerprint(path, kind=kind, layer=layer, max_length=max_length, dtype=dtype)
    return cached_features(
        texts,
        view.run.features_dir / fp,
        path,
        kind=kind,
        layer=layer,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        progress=view.n > 1000,
        executor=executor,
        source=PoolRowTexts(str(view.run.root.resolve())) if executor is not None and executor is not run_job else None,
    )


def pool_encoder(view: PoolView) -> Any:
    """The sentence encoder (and settings) that embedded the pool."""
    from curate.embed import embedding_meta
    from index.embed import Encoder

    if view.run is None:
        raise ValueError("daar: embedding seed files needs a run directory")
    meta = embedding_meta(view.run.root)
    return Encoder.load(meta.get("model_path"), dtype=meta.get("dtype", "float32"), device="cpu")


def encode_like_pool(view: PoolView, texts: list[str]) -> np.ndarray:
    """Embed seed texts with the model (and settings) that embedded the pool."""
    return pool_encoder(view).encode(texts)


def input_embedding_features(
    model_path: str, texts: Sequence[str], *, max_length: int, device: str, batch_size: int
) -> np.ndarray:
    """e(x) of `texts`: the masked mean of the LM's input token embeddings [n, d] (seeds' clustering space)."""
    from index.features import load_truncated_lm, masked_mean_features

    tok, base = load_truncated_lm(model_path, 0, device=device)
    return masked_mean_features(
        tok, base, texts, kind="input_embeddings", max_length=max_length, batch_size=batch_size
    )
