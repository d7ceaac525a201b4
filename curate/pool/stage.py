"""The ingest stage: read input files, normalise rows, give them content ids, fold exact duplicates and
quarantine unusable rows, and write the pool of a run directory.

Memory stays bounded: only the set of ids seen (16-byte digests), the current chunk of input records and the
current pool shard buffer are held; the pool, duplicates and quarantine tables are written as they grow.
The new pool is built in a temporary folder inside the run directory and swapped in at the end, so a
killed ingest never leaves a half pool; `ingest.json` is written last and marks a complete ingest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.pool.errors import IngestError, RowError
from curate.pool.ids import content_digest
from curate.pool.layouts import check_columns, check_layout_name, check_role_map, normalise
from curate.pool.readers import iter_chunks, resolve_inputs
from curate.pool.schema import (
    DUPLICATES_SCHEMA,
    NO_DOMAIN,
    POOL_SCHEMA,
    QUARANTINE_SCHEMA,
    RAW_MAX_CHARS,
)
from curate.run import RunDir
from curate.stage import jsonable, stage
from index.io import fsync, read_json, shard_name, write_json

_SIDE_FLUSH_ROWS = 10_000  # duplicates / quarantine rows buffered before a write


@dataclass
class IngestReport:
    """What one ingest read and wrote; `n_unique + n_duplicate + n_quarantined == n_read` (rows), and every
    input file is ok, partial (read up to an error) or failed (nothing read), with its reason in `file_errors`."""

    run: Path
    inputs: list[str]
    n_read: int = 0
    n_unique: int = 0
    n_duplicate: int = 0
    n_quarantined: int = 0
    per_domain: dict[str, int] = field(default_factory=dict)
    per_kind: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)
    n_shards: int = 0
    pool_fingerprint: str = ""
    file_errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def stored(cls, run: RunDir) -> IngestReport:
        """The report of the run's last ingest, read back from ingest.json."""
        d = read_json(run.require(run.ingest_path, "ingest"))
        c = d["counts"]
        return cls(run=run.root, inputs=d["inputs"], n_read=c["read"], n_unique=c["unique"],
                   n_duplicate=c["duplicate"], n_quarantined=c["quarantined"], per_domain=d["per_domain"],
                   per_kind=d["per_kind"], reasons=d["reasons"], per_source=d["per_source"],
                   n_shards=d["n_shards"], pool_fingerprint=d["pool_fingerprint"], file_errors=d["file_errors"])

    @property
    def file_counts(self) -> dict[str, int]:
        """Input files by outcome: total, ok, partial, failed."""
        states = Counter(s.get("status", "ok") for s in self.per_source.values())
        return {"total": len(self.per_source), **{k: states[k] for k in ("ok", "partial", "failed")}}

    def summary(self) -> str:
        """A few lines for a terminal: counts, domains and quarantine reasons."""
        fc = self.file_counts
        bad = f" ({fc['partial']} partial, {fc['failed']} unreadable: see quarantine)" if self.file_errors else ""
        lines = [
            f"ingest -> {self.run}: {len(self.inputs)} file(s){bad}, {self.n_read:,} rows read",
            f"  unique {self.n_unique:,} | duplicate {self.n_duplicate:,} | quarantined {self.n_quarantined:,}"
            f" | {self.n_shards} pool shard(s)",
        ]
        if self.per_kind:
            lines.append("  kinds: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.per_kind.items())))
        if self.per_domain:
            top = sorted(self.per_domain.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{k} {v:,}" for k, v in top[:12])
            more = f" (+{len(top) - 12} more)" if len(top) > 12 else ""
            lines.append(f"  domains ({len(top)}): {shown}{more}")
        if self.reasons:
            lines.append("  quarantine: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.reasons.items()))
                         + f" (each row and why: {RunDir(self.run).quarantine_path})")
        for src, why in self.file_errors.items():
            lines.append(f"  file {self.per_source[src].get('status')}: {why}")
        return "\n".join(lines)


class _TableWriter:
    """Append rows to one parquet file in batches (pyarrow writer); always leaves a file with the schema."""

    def __init__(self, path: Path, schema: pl.Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows: dict[str, list] = {c: [] for c in schema}
        self.n = 0
        self._writer = None

    def add(self, *values: Any) -> None:
        for col, v in zip(self.rows.values(), values, strict=True):
            col.append(v)
        self.n += 1
        if len(next(iter(self.rows.values()))) >= _SIDE_FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow.parquet as pq

        table = pl.DataFrame(self.rows, schema=self.schema).to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, _arrow_schema(self.schema))
        self._writer.write_table(table)
        self.rows = {c: [] for c in self.schema}

    def close(self) -> None:
        if self._writer is None or next(iter(self.rows.values())):
            self.flush()
        self._writer.close()


class _PoolWriter:
    """Write unique rows as `shard-XXXXX.parquet` files of `shard_rows` rows, one row group per input chunk,
    so only the current chunk's rows are held as Python objects."""

    def __init__(self, folder: Path, shard_rows: int) -> None:
        self.folder = folder
        self.shard_rows = shard_rows
        self.n_shards = 0
        self.in_shard = 0
        self._writer = None
        self._schema = _arrow_schema(POOL_SCHEMA)
        self._reset()

    def _reset(self) -> None:
        self.rows: dict[str, list] = {c: [] for c in POOL_SCHEMA}

    def add(self, row: dict[str, Any]) -> None:
        for c, col in self.rows.items():
            col.append(row[c])
        if self.in_shard + len(self.rows["id"]) >= self.shard_rows:
            self.flush()
            self._close_shard()

    def flush(self) -> None:
        """Write the buffered rows as one row group of the current shard."""
        if not self.rows["id"]:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        # pyarrow converts nested python lists of dicts far faster than polars' per-row Series path
        schema = self._schema
        table = pa.table(
            {c: pa.array(self.rows[c], type=schema.field(c).type) for c in POOL_SCHEMA}, schema=schema
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.folder / shard_name(self.n_shards, "parquet"), schema)
        self._writer.write_table(table)
        self.in_shard += table.num_rows
        self._reset()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.n_shards += 1
            self.in_shard = 0

    def close(self) -> None:
        """Finish the last shard; an empty pool still gets one empty shard, so readers see the schema."""
        self.flush()
        if self.n_shards == 0 and self._writer is None:
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self.folder / shard_name(0, "parquet"), self._schema)
        self._close_shard()


def _arrow_schema(schema: pl.Schema):
    """The arrow schema polars writes for `schema` (large strings), so every table file reads back alike."""
    return pl.DataFrame(schema=schema).to_arrow().schema


def _raw_text(rec_raw: str | None, value: Any) -> str:
    if rec_raw is None:
        rec_raw = json.dumps(value, ensure_ascii=False, default=str)
    return rec_raw[:RAW_MAX_CHARS]


def _finalise_pool(staged: Path, final: Path, n_shards: int, dup_counts: dict[str, int]) -> None:
    """Move staged shards into `final`, writing n_duplicates into the shards that hold duplicated rows
    (row group by row group, so memory stays at one chunk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    final.mkdir()
    for i in range(n_shards):
        name = shard_name(i, "parquet")
        src = staged / name
        if dup_counts:
            pf = pq.ParquetFile(src)
            ids = pf.read(columns=["id"]).column("id").to_pylist()
            if any(x in dup_counts for x in ids):
                col = pf.schema_arrow.get_field_index("n_duplicates")
                with pq.ParquetWriter(final / name, pf.schema_arrow) as writer:
                    for g in range(pf.num_row_groups):
                        table = pf.read_row_group(g)
                        counts = [dup_counts.get(x, 0) for x in table.column("id").to_pylist()]
                        table = table.set_column(col, "n_duplicates", pa.array(counts, type=pa.int64()))
                        writer.write_table(table)
                pf.close()
                continue
            pf.close()
        os.replace(src, final / name)


def _record_path(records: str | Sequence[str] | None) -> tuple[str, ...]:
    """A key path from "data.train" or ["data", "train"] (empty: the records are the top-level array)."""
    if records is None or records == "":
        return ()
    parts = records.split(".") if isinstance(records, str) else [str(r) for r in records]
    if any(not p for p in parts):
        raise IngestError(f"records: empty key in path {records!r}", "give keys joined by dots, e.g. data.train")
    return tuple(parts)


def _clean_stale(run: RunDir) -> None:
    """Remove work folders of ingests that were killed (safe: the run lock is held)."""
    for p in run.root.glob(".ingest-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in run.root.glob(".pool.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def _unchanged(run: RunDir, new_pool: Path, work: Path) -> bool:
    """Whether a finished ingest produced byte-identical files to those already in the run."""
    import filecmp

    if not run.ingest_path.exists() or not run.pool_dir.is_dir():
        return False
    new = sorted(p.name for p in new_pool.iterdir())
    if new != sorted(p.name for p in run.pool_dir.iterdir()):
        return False
    pairs = [(new_pool / n, run.pool_dir / n) for n in new]
    pairs += [(work / "duplicates.parquet", run.duplicates_path), (work / "quarantine.parquet", run.quarantine_path)]
    return all(b.exists() and filecmp.cmp(a, b, shallow=False) for a, b in pairs)


def _input_files(run: RunDir, a: dict) -> list[str]:
    return [str(p) for p, _ in resolve_inputs(a["inputs"], exclude=run.root)]


def _key_inputs(run: RunDir, a: dict) -> dict[str, list[str]]:
    """The key holds the files the inputs resolve to, in order, not the paths as typed: the same files named
    another way (relative, absolute, a glob or their folder) are the same ingest."""
    return {"inputs": _input_files(run, a)}


@stage("ingest", inputs=_input_files, outputs=lambda run, a: ["pool", "ingest.json", "quarantine.parquet",
                                                              "duplicates.parquet"],
       key=_key_inputs, load=lambda run, a: IngestReport.stored(run), creates_run=True, lock_error=IngestError)
def ingest(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    run: RunDir | str | os.PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    records: str | Sequence[str] | None = None,
    layout: str | None = None,
    role_map: Mapping[str, str] | None = None,
    strict: bool = False,
    chunk_rows: int = 50_000,
    shard_rows: int = 100_000,
    max_row_bytes: int = 1_000_000,
    progress: bool = True,
) -> IngestReport:
    """Ingest files, directories or globs of jsonl/json/parquet/csv (optionally .gz/.bz2/.xz/.zst) into
    `<run>/pool/` (see contracts, Pool).

    Rows are normalised per record (alpaca, sharegpt, messages, prompt/response, preference, turns, prompt-only);
    `columns` maps canonical names (prompt, response, domain, ...) to the input's column names and wins over
    detection, `layout` forces one layout, `role_map` renames roles ({"usr": "user"}), `records` is the dotted
    key path of the records inside `.json` documents ("data" for {"data": [...]} or {"data": {id: record}}).
    Exact duplicates (same id) are kept once and listed in duplicates.parquet; unusable rows go to
    quarantine.parquet with a reason. Every format is streamed `chunk_rows` records at a time. A file that
    cannot be read (or fails part way) becomes a file-level quarantine entry (row null) and the other files are
    ingested; `strict` stops at the first such file instead. Raises IngestError naming an input that does not
    exist, or when no file could be read; the previous pool of the run is replaced only when the ingest succeeds.
    """
    from tqdm.auto import tqdm

    run = run if isinstance(run, RunDir) else RunDir(run)
    columns = check_columns(columns)
    layout = check_layout_name(layout)
    role_map = check_role_map(role_map)
    record_path = _record_path(records)
    for name, v in (("chunk_rows", chunk_rows), ("shard_rows", shard_rows), ("max_row_bytes", max_row_bytes)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    given = [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else [os.fspath(i) for i in inputs]
    files = resolve_inputs(inputs, exclude=run.root)
    _clean_stale(run)

    report = IngestReport(run=run.root, inputs=[str(p) for p, _ in files])
    seen: set[bytes] = set()
    dup_counts: Counter[str] = Counter()
    per_domain: Counter[str] = Counter()
    per_kind: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    fingerprint = hashlib.blake2b(digest_size=16)

    work = Path(tempfile.mkdtemp(prefix=".ingest-", dir=run.root))
    try:
        staged = work / "staged"
        staged.mkdir()
        pool = _PoolWriter(staged, shard_rows)
        dups = _TableWriter(work / "duplicates.parquet", DUPLICATES_SCHEMA)
        quarantine = _TableWriter(work / "quarantine.parquet", QUARANTINE_SCHEMA)
        with tqdm(total=None, unit="rows", unit_scale=True, desc="ingest", disable=not progress) as bar:
            for path, fmt in files:
                src = str(path)
                counts = Counter()
                bar.set_postfix_str(path.name, refresh=False)
                chunks = iter_chunks(path, fmt, chunk_rows, max_row_bytes, record_path if fmt == "json" else ())
                status = "ok"
                while True:
                    try:
                        chunk = next(chunks, None)
                    except IngestError as e:
                        if strict:
                            raise
                        status = "partial" if counts["read"] else "failed"
                        report.file_errors[src] = str(e)
                        quarantine.add(src, None, f"unreadable_file: {e}", "")
                        break
                    if chunk is None:
                        break
                    for rec in chunk:
                        if rec.error is not None:
                            quarantine.add(src, rec.row, rec.error, _raw_text(rec.raw, None))
                            reasons[rec.error.split(":", 1)[0]] += 1
                            counts["quarantined"] += 1
                            continue
                        try:
                            extra = {"source_id": rec.key} if rec.key is not None else None
                            norm = normalise(
                                rec.value, columns, layout=layout, role_map=role_map, extra_meta=extra
                            )
                        except RowError as e:
                            quarantine.add(src, rec.row, e.reason, _raw_text(rec.raw, rec.value))
                            reasons[e.reason.split(":", 1)[0]] += 1
                            counts["quarantined"] += 1
                            continue
                        digest = content_digest(norm.kind, norm.messages, norm.rejected)
                        if digest in seen:
                            hex_id = digest.hex()
                            dups.add(src, rec.row, hex_id)
                            dup_counts[hex_id] += 1
                            counts["duplicate"] += 1
                            continue
                        seen.add(digest)
                        fingerprint.update(digest)
                        pool.add(
                            {
                                "id": digest.hex(),
                                "source": src,
                                "row": rec.row,
                                "kind": norm.kind,
                                "domain": norm.domain,
                                "messages": norm.messages,
                                "prompt": norm.prompt,
                                "response": norm.response,
                                "rejected": norm.rejected,
                                "meta": norm.meta,
                                "n_duplicates": 0,
                            }
                        )
                        per_domain[norm.domain if norm.domain is not None else NO_DOMAIN] += 1
                        per_kind[norm.kind] += 1
                        counts["unique"] += 1
                    pool.flush()
                    counts["read"] += len(chunk)
                    bar.update(len(chunk))
                report.per_source[src] = {
                    **{k: counts[k] for k in ("read", "unique", "duplicate", "quarantined")},
                    "status": status,
                }
        if report.file_errors and not any(s["status"] != "failed" for s in report.per_source.values()):
            raise IngestError(
                "no input could be read: " + "; ".join(report.file_errors.values()),
                "check the files, or --records / --map for the layout they hold",
            )
        pool.close()
        dups.close()
        quarantine.close()
        final = work / "pool"
        _finalise_pool(staged, final, pool.n_shards, dict(dup_counts))

        report.n_read = sum(s["read"] for s in report.per_source.values())
        report.n_unique = sum(s["unique"] for s in report.per_source.values())
        report.n_duplicate = dups.n
        report.n_quarantined = quarantine.n - len(report.file_errors)
        report.per_domain = dict(sorted(per_domain.items()))
        report.per_kind = dict(sorted(per_kind.items()))
        report.reasons = dict(sorted(reasons.items()))
        report.n_shards = pool.n_shards
        report.pool_fingerprint = fingerprint.hexdigest()
        assert report.n_unique + report.n_duplicate + report.n_quarantined == report.n_read

        doc = {
            "inputs": report.inputs,
            "inputs_given": given,
            "counts": {
                "read": report.n_read,
                "unique": report.n_unique,
                "duplicate": report.n_duplicate,
                "quarantined": report.n_quarantined,
            },
            "files": report.file_counts,
            "file_errors": report.file_errors,
            "per_domain": report.per_domain,
            "per_kind": report.per_kind,
            "reasons": report.reasons,
            "per_source": report.per_source,
            "columns": columns,
            "records": list(record_path),
            "layout": layout,
            "role_map": role_map,
            "params": {
                "chunk_rows": chunk_rows,
                "shard_rows": shard_rows,
                "max_row_bytes": max_row_bytes,
            },
            "n_shards": report.n_shards,
            "pool_fingerprint": report.pool_fingerprint,
        }
        if _unchanged(run, final, work):  # same pool, duplicates and quarantine: keep the files (and
            if read_json(run.ingest_path) != jsonable(doc):  # their mtimes, which keys of later
                write_json(run.ingest_path, doc)  # stages read) as they are; the record says what was read
            return report
        # swap in: ingest.json goes first (a pool without it is incomplete) and comes back last
        run.ingest_path.unlink(missing_ok=True)
        fsync(work, tree=True)  # the new pool on disk before it takes the final names
        old = None
        if run.pool_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=".pool.old-", dir=run.root))
            os.replace(run.pool_dir, old / "pool")
        os.replace(final, run.pool_dir)
        os.replace(work / "duplicates.parquet", run.duplicates_path)
        os.replace(work / "quarantine.parquet", run.quarantine_path)
        fsync(run.root)
        write_json(run.ingest_path, doc)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report
