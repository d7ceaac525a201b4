"""The embed stage: one float32, L2-normalised vector per pool row, stored per model fingerprint.

    <run>/embeddings/<fingerprint>/vectors.npy   (N, d) float32 in pool order (shards while unfinished)
    <run>/embeddings/<fingerprint>/meta.json     model path, dim, dtype, fields, n_rows, shard_size, ids hash
    <run>/embeddings/current.json                the fingerprint written last

The fingerprint covers the model, precision, max_seq_length, normalisation and text fields, so vectors of
different settings live in different folders. meta.json keeps a hash of the pool's id list: vectors are
refused (clear error) once the pool has changed, and re-running the stage recomputes them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.errors import MissingArtefactError
from curate.executors import get_executor
from curate.run import RunDir
from curate.stage import stage
from index.embed import (
    DEFAULT_SHARD_SIZE,
    META_NAME,
    VECTORS_NAME,
    Encoder,
    embed_to_shards,
    load_shards,
    model_fingerprint,
    resolve_dtype,
    resolve_model_path,
)
from index.io import read_json, write_json

DEFAULT_FIELDS = ("prompt", "response")


def _current_path(rd: RunDir) -> Path:
    return rd.current_embeddings_path


def ids_hash(ids: Sequence[str]) -> str:
    """Hash of the ordered id list: equal iff the pool holds the same rows in the same order."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{len(ids)}\n".encode())
    h.update("\n".join(ids).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class PoolTexts:
    """The texts to embed, rows [start, stop) read from the pool on demand: the chosen fields joined by
    newlines (null fields skipped). Picklable, so a worker on another process or node reads its own shard."""

    root: str
    fields: tuple[str, ...]

    def __call__(self, start: int, stop: int) -> list[str]:
        text = pl.concat_str([pl.col(f) for f in self.fields], separator="\n", ignore_nulls=True).fill_null("")
        return RunDir(self.root).scan_pool().slice(start, stop - start).select(text).collect().to_series().to_list()


def _pool_ids(rd: RunDir, fields: Sequence[str]) -> list[str]:
    """Pool ids, after checking that the text fields exist and are strings."""
    schema = rd.scan_pool().collect_schema()
    missing = [f for f in fields if f not in schema]
    if missing:
        raise ValueError(f"pool of {rd.root} has no column(s) {missing}; available: {list(schema.names())}")
    bad = [f for f in fields if schema[f] != pl.String]
    if bad:
        raise ValueError(f"text field(s) {bad} of the pool of {rd.root} are not strings ({[str(schema[f]) for f in bad]})")
    return rd.read_pool(["id"])["id"].to_list()


def _model_key(run: RunDir, a: dict) -> dict:
    """The embedding model's fingerprint (from its files; no torch import)."""
    path = resolve_model_path(a["model"])
    return {"model": model_fingerprint(path, dtype=a["dtype"], max_seq_length=a["max_seq_length"],
                                       extra={"fields": list(a["fields"])})}


@stage("embed", inputs=lambda run, a: ["pool"], outputs=lambda run, a: ["embeddings"],
       load=lambda run, a: current_fingerprint(run), key=_model_key)
def embed(
    run: str | os.PathLike,
    *,
    model: str | None = None,
    fields: Sequence[str] = DEFAULT_FIELDS,
    dtype: str = "float32",
    batch_size: int = 64,
    shard_size: int = DEFAULT_SHARD_SIZE,
    device: str = "auto",
    max_seq_length: int | None = None,
    progress: bool = True,
    executor: Any = None,
    executor_options: dict[str, Any] | None = None,
) -> str:
    """Embed every pool row of `run` (resuming finished shards) and return the model fingerprint. A stage
    (curate.stage): nothing runs when the pool, model and parameters are those of the stored embeddings.

    `executor`: where the shards are computed ("local", default; "ray"; "ray:ADDRESS"; see
    `curate.executors.get_executor`, which also takes `executor_options`). The vectors do not depend on it."""
    run_on = get_executor(executor, executor_options)  # bad names fail before any work
    rd = RunDir(run)
    fields = tuple(fields)
    if not fields:
        raise ValueError("fields must name at least one text column")
    model_path = resolve_model_path(model)
    dtype = resolve_dtype(dtype, device)  # "auto" is keyed as what it resolves to on this machine
    ids = _pool_ids(rd, fields)
    extra = {"fields": list(fields)}
    meta = {"fields": list(fields), "ids_hash": ids_hash(ids), "model_path": str(model_path)}

    # Finished already? Decide without loading torch (the key is computed from the model files).
    fp = model_fingerprint(model_path, dtype=dtype, max_seq_length=max_seq_length, extra=extra)
    if not _finished(rd.embeddings_dir(fp), meta, len(ids)):
        encoder = Encoder.load(
            model_path, device=device, dtype=dtype, batch_size=batch_size, max_seq_length=max_seq_length
        )
        fp = encoder.fingerprint_with(extra)
        meta["fingerprint"] = fp
        embed_to_shards(
            PoolTexts(str(rd.root.resolve()), fields),  # one shard's strings at a time
            rd.embeddings_dir(fp),
            encoder,
            n_rows=len(ids),
            shard_size=shard_size,
            progress=progress,
            meta=meta,
            executor=run_on,
        )
    current = {"fingerprint": fp, "fields": list(fields), "model_path": str(model_path), "dtype": dtype}
    path = _current_path(rd)
    if not path.exists() or read_json(path) != current:  # unchanged: leave it (later stages key on its mtime)
        write_json(path, current)
    return fp


def _finished(out: Path, meta: dict, n_rows: int) -> bool:
    if not (out / VECTORS_NAME).exists() or not (out / META_NAME).exists():
        return False
    stored = read_json(out / META_NAME)
    m = stored.get("meta", {})
    return (
        stored.get("complete") is True
        and stored.get("n_rows") == n_rows
        and m.get("ids_hash") == meta["ids_hash"]
        and m.get("fields") == meta["fields"]
    )


def current_fingerprint(run: str | os.PathLike) -> str:
    """The fingerprint the embed stage wrote last in `run`."""
    rd = RunDir(run)
    path = rd.require(_current_path(rd), "embed")
    return str(read_json(path)["fingerprint"])


def embedding_meta(run: str | os.PathLike, fingerprint: str | None = None) -> dict:
    """meta.json of one embedding folder (model path, dim, dtype, fields, n_rows, ...)."""
    rd = RunDir(run)
    fp = fingerprint or current_fingerprint(run)
    return read_json(rd.require(rd.embeddings_dir(fp) / META_NAME, "embed"))


def load_vectors(run: str | os.PathLike, fingerprint: str | None = None, *, check_pool: bool = True) -> np.ndarray:
    """(N, d) float32 unit vectors in pool order, memory-mapped; clear error if the pool changed since."""
    rd = RunDir(run)
    fp = fingerprint or current_fingerprint(run)
    out = rd.embeddings_dir(fp)
    if not out.exists():
        raise MissingArtefactError(f"no embeddings with fingerprint {fp} in {rd.root}: run `curate embed` first")
    meta = read_json(rd.require(out / META_NAME, "embed"))
    if not meta.get("complete"):
        raise MissingArtefactError(f"embeddings {out} are unfinished: re-run `curate embed` on {rd.root} to resume")
    vectors = load_shards(out, mmap=True)
    if check_pool:
        ids = rd.read_pool(["id"])["id"].to_list()
        if len(ids) != meta["n_rows"] or ids_hash(ids) != meta["meta"].get("ids_hash"):
            raise MissingArtefactError(
                f"the pool of {rd.root} changed since embedding {fp} ({meta['n_rows']} rows embedded, "
                f"{len(ids)} rows now, or different ids/order): re-run `curate embed`"
            )
    if vectors.shape != (meta["n_rows"], meta["dim"]):
        raise RuntimeError(f"{out / VECTORS_NAME} has shape {vectors.shape}, meta.json says ({meta['n_rows']}, {meta['dim']})")
    return vectors
