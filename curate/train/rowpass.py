"""The training module's per-row model passes as shard jobs, so any executor runs them (in process, or Ray).

One pass: the summed NLL and labelled-token count of each row's response (and, for preference rows, of its
rejected response) under one causal LM, encoded as training encodes it. DPO's reference log-probabilities
(`reference_logps`, cached per (model, max_length) in one parquet keyed by row id) and AutoMixAlign's
specialist losses (`curate.mix.ama.specialists.row_losses`) are read from it.

The rows to score are written once to `<folder>/rows.parquet`, and each worker reads its slice of them (the
folder must be on a filesystem every worker sees, as for every shard job); the shards, `<folder>/shards/`,
are resumable parquet files of per-row columns. The folder is removed once the caller has stored the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.signals.lm import ScorerJob
from curate.signals.rowcache import cached_job, write_columns
from curate.train import data as tdata
from index.io import atomic_path, run_job

#: rows per shard: large enough that a training set of a few thousand rows is one batch plan, as before shards
SHARD_ROWS = 4096


@dataclass
class RowNllJob(ScorerJob):
    """Per-row (NLL sum, token count) of the response, and of the rejected response with `preference`, under
    one causal LM: a picklable shard job (`index.io.ShardJob`), so a Ray actor loads the model once and reads
    its rows from `rows_path`. In process, `local` (never pickled) hands over a scorer already loaded."""

    rows_path: str
    preference: bool
    n_rows: int
    shard_rows: int

    def run(self, scorer: Any, i: int, tmp: Path, progress: Callable[[int], None] | None = None) -> int:
        """Shard `i`'s columns into `tmp`: nll_sum, n_tokens (and rejected_nll_sum, rejected_n_tokens)."""
        from curate.signals.lm import Encoded

        lo, hi = i * self.shard_rows, min(self.n_rows, (i + 1) * self.shard_rows)
        frame = pl.scan_parquet(self.rows_path).slice(lo, hi - lo).collect()
        feats = tdata.encode_rows(scorer, tdata.TrainRows(frame, f"rows {lo}:{hi} of {self.rows_path}"),
                                  preference=self.preference)
        sums, counts = scorer.nll([Encoded(x, int(p)) for x, p in zip(feats.ids, feats.n_prompt, strict=True)])
        cols = {"nll_sum": sums, "n_tokens": counts}
        if self.preference:
            rej = zip(feats.rejected_ids, feats.rejected_n_prompt, strict=True)
            cols["rejected_nll_sum"], cols["rejected_n_tokens"] = scorer.nll([Encoded(x, int(p)) for x, p in rej])
        write_columns(tmp, cols)
        if progress is not None:
            progress(hi - lo)
        return hi - lo


def row_nll(
    rows: tdata.TrainRows,
    folder: Path,
    *,
    model: str,
    key: dict[str, Any],
    preference: bool,
    max_length: int,
    batch_tokens: int,
    device: str | None,
    dtype: str = "float32",
    executor: Callable[..., list[int]] | None = None,
    local: Callable[[], Any] | None = None,
    shard_rows: int | None = None,
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Per-row columns of `RowNllJob` for `rows` (in their order), computed by `executor` (default: in this
    process, with `local`'s scorer when given) in resumable shards under `folder`, which is removed once
    they are read. `key` names what the numbers depend on (the model's fingerprint, the rows, the settings):
    a killed call's shards are reused only under the same key. `shard_rows`: rows per shard (default
    `SHARD_ROWS`). Also returns the shards computed."""
    folder = Path(folder)
    shard_rows = int(shard_rows or SHARD_ROWS)
    folder.mkdir(parents=True, exist_ok=True)
    rows_path = folder / "rows.parquet"
    if executor is not None and executor is not run_job and not (device or "").startswith("cpu"):
        device = None  # a remote worker scores on its own device (its GPU when it has one)
    with atomic_path(rows_path, suffix=".parquet") as tmp:
        rows.frame.write_parquet(tmp)
    job = RowNllJob(model=str(model), dtype=dtype, device=device, max_length=int(max_length),
                    batch_tokens=int(batch_tokens), rows_path=str(rows_path), preference=preference,
                    n_rows=rows.frame.height, shard_rows=int(shard_rows), local=local)
    cols, done = cached_job(folder / "shards", rows.frame.height, int(shard_rows), key, job, executor)
    shutil.rmtree(folder, ignore_errors=True)
    return cols, done


def digest(obj: Any) -> str:
    """16-hex digest of a JSON-able object (the name of a pass's shard folder)."""
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def read_reference_cache(path: Path) -> dict[str, tuple[float, float]]:
    """{row id: (chosen, rejected) summed log-probs} of a reference cache file (empty when there is none)."""
    if not path.exists():
        return {}
    cache = pl.read_parquet(path)
    return dict(zip(cache["id"].to_list(), zip(cache["chosen"].to_list(), cache["rejected"].to_list(), strict=True),
                    strict=True))


def reference_logps(
    rows: tdata.TrainRows,
    path: Path,
    *,
    model: str,
    max_length: int,
    batch_tokens: int,
    device: str | None,
    executor: Callable[..., list[int]] | None = None,
    local: Callable[[], Any] | None = None,
    store: bool = True,
    tag: str = "",
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Summed log-probs of each row's chosen and rejected responses under `model` (float32), read from the
    cache file `path` (id, chosen, rejected) where it holds the row; the other rows are computed by `executor`
    (shards under `<path's folder>/_parts/`) and, with `store`, added to the cache. Also whether any was
    computed. The cache's name must key the model and max_length (the training stage's does). `tag` keeps the
    shard folders of concurrent callers on the same rows apart (each process of a distributed launch)."""
    path = Path(path)
    ids = rows.frame["id"].to_list()
    have = read_reference_cache(path)
    todo = [i for i, x in enumerate(ids) if x not in have]
    if todo:
        sub = tdata.TrainRows(rows.frame[todo], rows.source)
        key = {"cache": path.name, "rows": digest([ids[i] for i in todo]), "batch_tokens": int(batch_tokens)}
        cols, _ = row_nll(sub, path.parent / "_parts" / f"{path.stem}-{digest(key)}{tag}", model=model, key=key,
                          preference=True, max_length=max_length, batch_tokens=batch_tokens, device=device,
                          executor=executor, local=local)
        c_sum, r_sum = cols["nll_sum"].astype(np.float64), cols["rejected_nll_sum"].astype(np.float64)
        if store:
            old = pl.read_parquet(path) if path.exists() else pl.DataFrame(
                schema={"id": pl.String, "chosen": pl.Float64, "rejected": pl.Float64})
            new = pl.DataFrame({"id": [ids[i] for i in todo], "chosen": -c_sum, "rejected": -r_sum})
            with atomic_path(path, suffix=".parquet") as tmp:
                pl.concat([old, new]).write_parquet(tmp)
        have.update({ids[i]: (float(-c_sum[k]), float(-r_sum[k])) for k, i in enumerate(todo)})
        parts = path.parent / "_parts"
        with contextlib.suppress(OSError):  # another process may be using it
            parts.rmdir()
    chosen = np.array([have[x][0] for x in ids], dtype=np.float64)
    rejected = np.array([have[x][1] for x in ids], dtype=np.float64)
    return chosen, rejected, bool(todo)
