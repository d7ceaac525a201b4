"""Training rows: where they come from (a run's selection, an exported folder, a file), held-out rows, and
their token encoding through the scoring layer's encoder (`curate.signals.lm.LMScorer.encode`).

Every source becomes one frame with the columns of `ROW_COLUMNS`: id, kind (sft / preference), domain,
messages (the conversation, its last turn the response or the chosen answer), rejected (preference only) and
weight (the selection's per-row weight, 1.0 when the source has none).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.pool.schema import NO_DOMAIN
from curate.run import RunDir

ROW_COLUMNS = ["id", "kind", "domain", "messages", "rejected", "weight"]


class TrainDataError(CurateError):
    """Training input that cannot be used as given (names the file, row or selection and the problem)."""


@dataclass
class TrainRows:
    """Rows to train or evaluate on, and a one-line description of where they came from."""

    frame: pl.DataFrame
    source: str

    @property
    def kinds(self) -> set[str]:
        return set(self.frame["kind"].unique().to_list())

    def domains(self) -> list[str]:
        """Per-row domain labels, with rows lacking one under NO_DOMAIN."""
        return self.frame["domain"].fill_null(NO_DOMAIN).to_list()

    def messages(self) -> list[list[dict]]:
        return self.frame["messages"].to_list()

    def key(self) -> str:
        """A digest of the rows' ids and weights: what a stage trained or scored on these rows is keyed by."""
        h = hashlib.blake2b(digest_size=8)
        for i, w in zip(self.frame["id"].to_list(), self.frame["weight"].to_list(), strict=True):
            h.update(f"{i}:{w!r};".encode())
        return h.hexdigest()

    def content_key(self) -> str:
        """A digest of what the rows hold besides their ids and weights (`key`): kind, domain, messages and
        rejected answer. A training run is keyed by both, so relabelled domains or edited text of rows whose
        ids are given explicitly (files with an `id` column) retrain."""
        h = hashlib.blake2b(digest_size=8)
        cols = [self.frame[c].to_list() for c in ("id", "kind", "domain", "messages", "rejected")]
        for row in zip(*cols, strict=True):
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
            h.update(b"\n")
        return h.hexdigest()


def _finish(frame: pl.DataFrame, source: str) -> TrainRows:
    if frame.height == 0:
        raise TrainDataError(f"{source}: no rows to train on (empty selection or file)")
    if frame["id"].n_unique() != frame.height:
        dup = frame.filter(pl.col("id").is_duplicated())["id"][0]
        raise TrainDataError(f"{source}: id {dup} appears more than once")
    w = frame["weight"].to_numpy()
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        bad = int(np.flatnonzero(~np.isfinite(w) | (w < 0))[0])
        raise TrainDataError(f"{source}: row {bad} (id {frame['id'][bad]}) has weight {w[bad]}; weights must be >= 0")
    if float(w.sum()) <= 0:
        raise TrainDataError(f"{source}: every row has weight 0; nothing to train on")
    return TrainRows(frame.select(ROW_COLUMNS), source)


def from_selection(run: RunDir | str | os.PathLike, selection: str) -> TrainRows:
    """The rows of selections/<selection> of a run, with their weights (errors if ids are not in the pool)."""
    from curate.export import selected_rows

    run = run if isinstance(run, RunDir) else RunDir(run)
    try:
        rows = selected_rows(run, selection)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainDataError(str(exc)) from None
    return _finish(rows.with_columns(pl.col("weight").cast(pl.Float64)), str(run.selections_dir / selection))


def from_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> TrainRows:
    """Rows of files in any export (or ingest) layout: a file, an exported folder, or a glob.

    An exported folder holds the same rows as jsonl and parquet: only its `data-*` shards are read then (the
    parquet ones, or the jsonl ones of a jsonl-only export), not ids.parquet or manifest.json.
    `weight` and `id` columns are used when present (else weight 1 and the pool's content id). A row that
    cannot be read raises, naming the file and row: training input must be whole.
    """
    from curate.pool.ids import content_id
    from curate.pool.layouts import normalise
    from curate.pool.readers import iter_chunks, resolve_inputs

    if isinstance(inputs, (str, os.PathLike)) and Path(inputs).is_dir():
        inputs = _export_layout_folder(Path(inputs))
    files = resolve_inputs(inputs)
    if isinstance(inputs, (str, os.PathLike)) and Path(inputs).is_dir():
        files = _export_shards(files)
    files = [(p, f) for p, f in files if p.name != "ids.parquet"]
    out: dict[str, list] = {c: [] for c in ROW_COLUMNS}
    for path, fmt in files:
        for chunk in iter_chunks(path, fmt, 4096, 64 << 20):
            for rec in chunk:
                where = f"{path} row {rec.row}"
                if rec.error:
                    raise TrainDataError(f"{where}: {rec.error}")
                value = dict(rec.value)
                weight = value.pop("weight", 1.0)
                row_id = value.pop("id", None)
                try:
                    norm = normalise(value)
                    weight = float(1.0 if weight is None else weight)
                except (ValueError, TypeError) as exc:
                    raise TrainDataError(f"{where}: {exc}") from None
                out["id"].append(str(row_id) if row_id else content_id(norm.kind, norm.messages, norm.rejected))
                out["kind"].append(norm.kind)
                out["domain"].append(norm.domain)
                out["messages"].append(norm.messages)
                out["rejected"].append(norm.rejected)
                out["weight"].append(weight)
    frame = pl.DataFrame(
        out,
        schema={
            "id": pl.String, "kind": pl.String, "domain": pl.String,
            "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
            "rejected": pl.String, "weight": pl.Float64,
        },
    )  # fmt: skip
    return _finish(frame, ", ".join(str(p) for p, _ in files))


def _export_shards(files: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """The files of a folder to read. An export folder (one holding `data-*` shards) holds the same rows as
    parquet and/or jsonl shards beside ids.parquet and manifest.json: only its parquet shards are read, or its
    jsonl ones when it has no parquet. Any other folder: every file."""
    shards = [(p, f) for p, f in files if p.name.startswith("data-")]
    if not shards:
        return files
    for fmt in ("parquet", "jsonl"):
        chosen = [(p, f) for p, f in shards if f == fmt]
        if chosen:
            return chosen
    return shards


def _export_layout_folder(folder: Path) -> Path:
    """An export folder `export/<selection>/` holds one sub-folder per layout: take `messages` (else
    `preference`, else the only one). Any other folder is returned as it is."""
    layouts = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("data-*")))
    if not layouts:
        return folder
    for name in ("messages", "preference"):
        if folder / name in layouts:
            return folder / name
    if len(layouts) == 1:
        return layouts[0]
    raise TrainDataError(f"{folder} holds several export layouts ({', '.join(p.name for p in layouts)}): pass one")


def heldout_split(
    run: RunDir | str | os.PathLike, exclude_ids: Sequence[str], size: int | float, seed: int,
    kind: str | None = None,
) -> TrainRows:
    """A seeded held-out sample of pool rows not in `exclude_ids`, the same share of every domain.

    `size`: a row count, or a fraction (< 1) of the eligible rows. Rows are drawn per domain in proportion to
    the domain's eligible rows (largest remainders), so each domain gets its share. `kind` ("sft" or
    "preference"): draw only rows of that kind, the ones the run can score (default: both).
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    pool = run.read_pool(["id", "kind", "domain", "messages", "rejected"])
    ok = pl.col("kind") != "prompt" if kind is None else pl.col("kind") == kind
    pool = pool.filter(~pl.col("id").is_in(list(exclude_ids)) & ok)
    if pool.height == 0:
        raise TrainDataError(f"{run.root}: no pool rows left outside the training rows for a held-out split")
    n = int(round(size * pool.height)) if isinstance(size, float) and size < 1 else int(size)
    n = max(1, min(n, pool.height))
    dom = pool["domain"].fill_null(NO_DOMAIN).to_numpy()
    names, counts = np.unique(dom, return_counts=True)
    quota = counts * n / counts.sum()
    take = np.floor(quota).astype(int)
    rest = n - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:rest]] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for name, k in zip(names, take, strict=True):
        pos = np.flatnonzero(dom == name)
        chosen.append(np.sort(rng.choice(pos, size=int(k), replace=False)))
    idx = np.sort(np.concatenate(chosen))
    frame = pool[idx].with_columns(pl.lit(1.0).alias("weight"))
    return _finish(frame, f"{run.root} held-out split ({n} rows, seed {seed})")


def check_disjoint(train: TrainRows, heldout: TrainRows) -> None:
    """A held-out row that is also a training row (same id, or the same conversation under another id, as rows
    of files with their own `id` column can be) makes the held-out loss meaningless: error."""
    both = set(train.frame["id"].to_list()) & set(heldout.frame["id"].to_list())
    if not both:
        def text(frame: pl.DataFrame) -> list[str]:
            return [json.dumps(m, sort_keys=True, ensure_ascii=False) for m in frame["messages"].to_list()]

        seen = set(text(train.frame))
        both = {i for i, t in zip(heldout.frame["id"].to_list(), text(heldout.frame), strict=True) if t in seen}
    if both:
        raise TrainDataError(
            f"{len(both)} held-out rows are also training rows (e.g. id {sorted(both)[0]}); "
            f"held-out: {heldout.source}; training: {train.source}"
        )


@dataclass
class Features:
    """Encoded rows: token ids, prompt lengths (labels start there) and, for preference rows, the rejected
    sequence too. `lengths` is what batching packs (the longer sequence of a pair)."""

    ids: list[list[int]]
    n_prompt: np.ndarray
    rejected_ids: list[list[int]] | None
    rejected_n_prompt: np.ndarray | None
    lengths: np.ndarray


def encode_rows(scorer, rows: TrainRows, *, preference: bool) -> Features:
    """Encode every row with the scorer's encoder: the labelled tokens are the ones its loss signals score."""
    ids, n_prompt, rej_ids, rej_np = [], [], [], []
    msgs = rows.messages()
    rejected = rows.frame["rejected"].to_list()
    row_ids = rows.frame["id"].to_list()
    for i, m in enumerate(msgs):
        where = f"{rows.source}: row {i} (id {row_ids[i]})"
        try:
            enc = scorer.encode(m, where=where)
            ids.append(enc.ids)
            n_prompt.append(enc.n_prompt)
            if preference:
                alt = scorer.encode(list(m[:-1]) + [{"role": "assistant", "content": rejected[i]}], where=where)
                rej_ids.append(alt.ids)
                rej_np.append(alt.n_prompt)
        except ValueError as exc:
            raise TrainDataError(str(exc)) from None
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    if preference:
        lengths = np.maximum(lengths, np.array([len(x) for x in rej_ids], dtype=np.int64))
    return Features(
        ids=ids,
        n_prompt=np.array(n_prompt, dtype=np.int64),
        rejected_ids=rej_ids if preference else None,
        rejected_n_prompt=np.array(rej_np, dtype=np.int64) if preference else None,
        lengths=lengths,
    )
