"""Row features from a local causal LM: truncated-LM masked mean pooling (DaaR probes) and input-embedding means.

DaaR (methods.md 2.4 step 5) cuts the base LM after decoder layer L (default 3) and mean-pools the last kept
hidden state. Like the released code, the pooled tensor is layer L's output passed through the model's final
norm (the last `hidden_states` entry of an HF decoder is normed). Unlike the released code, pooling is MASKED:
padding positions are excluded, so a row's feature does not depend on the batch it was padded with
(methods.md 2.5). `input_embedding_features` is the cheaper e(x) of methods.md 2.2: the masked mean of the input
token embeddings (DaaR's clustering space). `pooling="weighted_mean"` is the position-weighted mean of SGPT
(Muennighoff 2022) that RDS+ uses (Ivison et al. 2025): the i-th real token (1-based) weighs i / sum_j j, so
later tokens, which have seen more of the text, count more.

Features are cached as float32 shards `<out_dir>/shard-*.npy` (+ `meta.json`), written atomically and resumed
shard by shard by an executor (`FeatureJob`, a picklable `index.io.ShardJob`; in process by default).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.cpu import auto_dtype
from index.io import missing_shards, read_json, run_job, shard_name, write_json

KINDS = ("truncated", "input_embeddings")
POOLINGS = ("mean", "weighted_mean")
DTYPES = ("float32", "bfloat16", "float16")


def _model_digest(model_path: Path) -> str:
    """Digest of a model directory's config and weight file sizes/names (cheap; weights are not re-read)."""
    h = hashlib.blake2b(digest_size=8)
    for f in sorted(model_path.iterdir()):
        if f.is_file() and (f.suffix in {".json", ".safetensors", ".bin"}):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix == ".json" and f.stat().st_size < 1_000_000:
                h.update(f.read_bytes())
    return h.hexdigest()


def feature_fingerprint(
    model_path: str | os.PathLike, *, kind: str, layer: int, max_length: int, pooling: str = "mean",
    dtype: str = "float32",
) -> str:
    """Key of a feature cache: model directory digest + kind + layer + max length (+ pooling unless mean, + the
    pass's dtype unless float32, so a run folder moved to a machine where "auto" means another dtype does not
    reuse or resume features of the other precision; float32 caches keep their earlier key)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} (resolve 'auto' with index.cpu.auto_dtype), got {dtype!r}")
    p = Path(model_path)
    if not p.is_dir():
        raise FileNotFoundError(f"model directory {p} does not exist")
    tag = f"{p.name}-{_model_digest(p)}-{kind}"
    fp = f"{tag}-L{layer}-len{max_length}" if kind == "truncated" else f"{tag}-len{max_length}"
    fp = fp if pooling == "mean" else f"{fp}-{pooling}"
    return fp if dtype == "float32" else f"{fp}-{dtype}"


def load_truncated_lm(
    model_path: str | os.PathLike, layer: int = 3, *, device: str = "cpu", dtype: str = "auto"
):
    """Load a local HF causal LM (safetensors, no remote code) and keep its first `layer` decoder layers.

    Returns (tokenizer, base decoder module) ready for `masked_mean_features`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {
        "auto": None,
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }
    if dtype not in torch_dtype:
        raise ValueError(f"dtype must be one of {sorted(torch_dtype)}, got {dtype!r}")
    td = torch_dtype[dtype] or torch_dtype[auto_dtype(device)]
    tok = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=td, use_safetensors=True)
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "layers"):
        raise ValueError(
            f"{model_path}: expected a decoder-only LM with `model.layers` (Llama/Qwen/Mistral-like)"
        )
    n = len(base.layers)
    if layer < 0 or layer > n:
        raise ValueError(f"layer must be in [0, {n}] for {model_path} ({n} decoder layers), got {layer}")
    base.layers = base.layers[:layer]
    base.config.num_hidden_layers = layer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # position ids run from 0 for every row, so padding never shifts them
    return tok, base.to(device).eval()


def masked_mean(hidden, mask):
    """Mean over the positions where `mask` is 1: [B, T, d], [B, T] -> [B, d] (float32)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    s = (hidden * m).sum(dim=1).float()
    return s / m.sum(dim=1).float().clamp_min(1.0)


def position_weighted_mean(hidden, mask):
    """SGPT / RDS+ pooling: sum_i w_i h_i with w_i = i / sum_j j over the real tokens i = 1..n (padding 0)."""
    m = mask.to(hidden.dtype)
    pos = m.cumsum(dim=1) * m  # 1, 2, ..., n on real tokens (right padding), 0 on padding
    w = (pos / pos.sum(dim=1, keepdim=True).clamp_min(1.0)).unsqueeze(-1)
    return (hidden * w).sum(dim=1).float()


def masked_mean_features(
    tokenizer: Any,
    base: Any,
    texts: Sequence[str],
    *,
    kind: str = "truncated",
    max_length: int = 1024,
    batch_size: int = 16,
    pooling: str = "mean",
) -> np.ndarray:
    """Features of `texts` [n, d] float32: masked (or position-weighted) mean of the truncated LM's last state,
    or of the input embeddings. Rows are batched in order of token length, so a batch pads to about its own
    rows' length rather than to the longest row that happens to share it (returned in the input order)."""
    import torch

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    pool = masked_mean if pooling == "mean" else position_weighted_mean
    device = next(base.parameters()).device
    texts = list(texts)
    out = np.zeros((len(texts), base.config.hidden_size), dtype=np.float32)
    if not texts:
        return out
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]  # once; padded per batch below
    order = np.argsort([len(r) for r in ids], kind="stable")
    for i in range(0, len(texts), batch_size):
        rows = order[i : i + batch_size]
        enc = tokenizer.pad({"input_ids": [ids[r] for r in rows]}, return_tensors="pt").to(device)
        with torch.no_grad():
            if kind == "input_embeddings":
                h = base.get_input_embeddings()(enc["input_ids"])
            else:
                h = base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        out[rows] = pool(h, enc["attention_mask"]).cpu().numpy()
    return out


#: the rows' texts: a sequence, or a picklable `(start, stop) -> texts` that a worker calls for its shard
TextSource = Sequence[str] | Callable[[int, int], Sequence[str]]


@dataclass
class FeatureJob:
    """Feature extraction as a shard job (`index.io.ShardJob`): picklable, so a Ray actor loads the truncated LM
    once (`setup`) and computes whole shards; in process, `setup` returns the model the caller already holds."""

    texts: TextSource
    n_rows: int
    shard_size: int
    model_path: str
    kind: str
    layer: int
    max_length: int
    batch_size: int
    device: str
    dtype: str
    pooling: str
    local: Any = None  # the caller's loaded (tokenizer, base); never pickled

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "local": None}

    def setup(self) -> Any:
        """(tokenizer, truncated LM): the caller's, or loaded in this worker."""
        if self.local is not None:
            return self.local
        return load_truncated_lm(self.model_path, self.layer if self.kind == "truncated" else 0, device=self.device,
                                 dtype=self.dtype)

    def run(self, model: Any, i: int, tmp: Path, progress: Callable[[int], None] | None = None) -> int:
        """Features of shard `i`'s rows into `tmp` (.npy float32 [rows, d])."""
        tok, base = model
        lo, hi = i * self.shard_size, min((i + 1) * self.shard_size, self.n_rows)
        chunk = list(self.texts(lo, hi)) if callable(self.texts) else self.texts[lo:hi]
        if len(chunk) != hi - lo:
            raise ValueError(f"text source gave {len(chunk)} texts for rows {lo}:{hi}")
        feats = masked_mean_features(tok, base, chunk, kind=self.kind, max_length=self.max_length,
                                     batch_size=self.batch_size, pooling=self.pooling)
        with open(tmp, "wb") as fh:
            np.save(fh, feats)
        if progress is not None:
            progress(len(chunk))
        return len(chunk)


def cached_features(
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    *,
    kind: str = "truncated",
    layer: int = 3,
    max_length: int = 1024,
    batch_size: int = 16,
    shard_size: int = 4096,
    device: str = "cpu",
    dtype: str = "auto",
    progress: bool = True,
    pooling: str = "mean",
    executor: Callable[..., list[int]] | None = None,
    source: TextSource | None = None,
    model: Any = None,
) -> np.ndarray:
    """Compute (or resume) features of `texts` into `out_dir/shard-*.npy` and return them [n, d] float32.

    `out_dir` should be keyed by `feature_fingerprint(...)`; a `meta.json` records model, kind, layer, n and dtype,
    and a mismatch with an existing cache raises instead of mixing features. `executor` computes the missing
    shards (default: in this process, `index.io.run_job`; a Ray executor from `curate.executors` runs them on
    its workers, each loading the model once). `source`: the same texts as the workers read them (a picklable
    `(start, stop) -> texts`, e.g. from the run's pool), so a remote executor is not sent every text; default
    `texts`. `model`: the (tokenizer, truncated LM) already loaded in this process, used in process instead of
    loading it again.
    """
    out_dir = Path(out_dir)
    n = len(texts)
    if dtype == "auto":
        dtype = auto_dtype(device)
    meta = {
        "model_path": str(model_path),
        "kind": kind,
        "layer": layer if kind == "truncated" else None,
        "max_length": max_length,
        "n_rows": n,
        "shard_size": shard_size,
        "pooling": "masked_mean" if pooling == "mean" else pooling,
        "text_digest": hashlib.blake2b("\x00".join(texts).encode(), digest_size=8).hexdigest(),
    }
    if dtype != "float32":  # float32 caches written before the dtype was recorded keep a matching meta.json
        meta["dtype"] = dtype
    meta_path = out_dir / "meta.json"
    if meta_path.exists():
        old = read_json(meta_path)
        if old != json.loads(json.dumps(meta)):
            raise ValueError(f"{meta_path} was written for other inputs ({old}); use another folder")
    else:
        write_json(meta_path, meta)
    n_shards = max(1, -(-n // shard_size))
    if executor is not None and executor is not run_job and device.startswith("cuda:"):
        device = "cuda"  # a worker's GPUs are its own, numbered from 0
    job = FeatureJob(texts if source is None else source, n, shard_size, str(model_path), kind, layer, max_length,
                     batch_size, device, dtype, pooling, local=model)
    bar = None
    if progress and missing_shards(out_dir, n_shards, "npy"):
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"{kind} features", unit="row")
    try:
        (executor or run_job)(job, out_dir, n_shards, "npy", None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    return np.concatenate([np.load(out_dir / shard_name(i, "npy")) for i in range(n_shards)])
