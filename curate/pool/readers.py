"""Find input files and stream their records in bounded chunks.

Formats: JSON lines (`.jsonl`, `.ndjson`), JSON (`.json`: an array of records, loaded whole, or JSON lines),
parquet (`.parquet`, read by row-group batches with pyarrow) and CSV (`.csv`, header row, read line by line).
JSON lines and CSV are read as bytes and decoded line by line, so one bad line (invalid UTF-8, broken JSON,
a row over the size limit) becomes one quarantined record and the rest of the file is still read.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from curate.pool.errors import IngestError
from curate.pool.schema import RAW_MAX_CHARS

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_GLOB_CHARS = set("*?[")


class Record(NamedTuple):
    """One input record: its 0-based index in the file, the parsed value or the reason it could not be read."""

    row: int
    value: Any  # the parsed record (normally a dict); None when `error` is set
    error: str | None  # quarantine reason when the record could not be read
    raw: str | None  # raw text for quarantine (None: serialise `value` when needed)


def format_bytes(n: int) -> str:
    """Human size for reasons: '2.3 MB', '4.1 kB', '120 B'."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MB"
    if n >= 1_000:
        return f"{n / 1e3:.1f} kB"
    return f"{n} B"


def _oversize(n: int, limit: int) -> str:
    return f"oversize_row: {format_bytes(n)} > {format_bytes(limit)}"


# input discovery ----------------------------------------------------------------------------------
def _known(path: Path) -> bool:
    return path.suffix.lower() in FORMATS


def _walk(directory: Path, exclude: Path | None) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if exclude is not None and _is_within(here, exclude):
            dirnames[:] = []
            continue
        found.extend(here / f for f in filenames if not f.startswith(".") and _known(Path(f)))
    return sorted(found, key=lambda p: p.relative_to(directory).parts)


def _is_within(path: Path, root: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(root)))
        return True
    except ValueError:
        return False


def resolve_inputs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike], exclude: Path | None = None
) -> list[tuple[Path, str]]:
    """Expand files, directories (recursive, sorted, known extensions) and globs into (file, format) pairs.

    Files are absolute, in the order given, each once. Files under `exclude` (the run directory) are skipped
    when found by a directory walk or a glob. Raises IngestError naming any input that yields nothing.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = list(inputs)
    if not items:
        raise IngestError("no inputs given")
    out: list[tuple[Path, str]] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        path = Path(os.path.abspath(path))
        if path not in seen:
            seen.add(path)
            out.append((path, FORMATS[path.suffix.lower()]))

    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files = _walk(path, exclude)
            if not files:
                raise IngestError(f"{text}: directory holds no {'/'.join(sorted(FORMATS))} files")
            for f in files:
                add(f)
        elif path.is_file():
            if not _known(path):
                raise IngestError(
                    f"{text}: unknown extension {path.suffix!r} (expected one of {', '.join(sorted(FORMATS))})"
                )
            add(path)
        elif _GLOB_CHARS & set(text):
            found: list[Path] = []
            for m in sorted(glob.glob(text, recursive=True)):
                mp = Path(m)
                if exclude is not None and _is_within(mp, exclude):
                    continue
                if mp.is_dir():
                    found.extend(_walk(mp, exclude))
                elif mp.is_file() and _known(mp):
                    found.append(mp)
            if not found:
                raise IngestError(f"{text}: glob matches no {'/'.join(sorted(FORMATS))} files")
            for f in found:
                add(f)
        else:
            raise IngestError(f"{text}: no such file or directory")
    return out


# record streams -----------------------------------------------------------------------------------
def iter_chunks(path: Path, fmt: str, chunk_rows: int, max_row_bytes: int) -> Iterator[list[Record]]:
    """Yield the records of one file in lists of at most `chunk_rows` (a `.json` array is loaded whole)."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if fmt == "parquet":
        yield from _parquet_chunks(path, chunk_rows, max_row_bytes)
        return
    if fmt == "jsonl":
        records = _jsonl_records(path, max_row_bytes)
    elif fmt == "json":
        records = _json_records(path, max_row_bytes)
    elif fmt == "csv":
        records = _csv_records(path, max_row_bytes)
    else:
        raise IngestError(f"{path}: unknown format {fmt!r}")
    chunk: list[Record] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise IngestError(f"{path}: cannot open ({e.strerror or e})") from e


def _jsonl_records(path: Path, max_row_bytes: int, fh=None, first_row: int = 0) -> Iterator[Record]:
    """JSON lines: one record per non-blank line; row = line number - 1."""
    own = fh is None
    fh = _open(path) if own else fh
    limit = max_row_bytes + 2  # room for "\r\n"
    try:
        row = first_row - 1
        while True:
            line = fh.readline(limit)
            if not line:
                break
            row += 1
            if row == 0 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.endswith(b"\n") and len(line) >= limit:
                # longer than the limit: skip the rest of the line without holding it
                total = len(line)
                while True:
                    more = fh.readline(1 << 20)
                    total += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                raw = line[: RAW_MAX_CHARS * 4].decode("utf-8", "replace")[:RAW_MAX_CHARS]
                yield Record(row, None, _oversize(total - 1, max_row_bytes), raw)
                continue
            content = line.rstrip(b"\r\n")
            if not content.strip():
                continue
            if len(content) > max_row_bytes:
                raw = content[: RAW_MAX_CHARS * 4].decode("utf-8", "replace")[:RAW_MAX_CHARS]
                yield Record(row, None, _oversize(len(content), max_row_bytes), raw)
                continue
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as e:
                raw = content.decode("utf-8", "replace")[:RAW_MAX_CHARS]
                yield Record(row, None, f"undecodable_bytes: {e}", raw)
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                yield Record(row, None, f"malformed_json: {e.msg} at col {e.colno}", text[:RAW_MAX_CHARS])
                continue
            except RecursionError:
                yield Record(row, None, "malformed_json: nested too deeply", text[:RAW_MAX_CHARS])
                continue
            yield Record(row, value, None, text)
    except OSError as e:
        raise IngestError(f"{path}: read failed ({e})") from e
    finally:
        if own:
            fh.close()


def _record_size(value: Any) -> tuple[int, str]:
    """(UTF-8 byte size, text) of a record serialised as JSON."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return len(text.encode("utf-8")), text


def _json_records(path: Path, max_row_bytes: int) -> Iterator[Record]:
    """`.json`: a JSON array of records (loaded whole) or, when it starts with an object, JSON lines."""
    with _open(path) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if not head:
            return
        if head[:1] == b"{":
            fh.seek(0)
            first = fh.readline().lstrip(b"\xef\xbb\xbf").strip()
            try:
                json.loads(first.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise IngestError(
                    f"{path}: a .json file must hold a JSON array of records or JSON lines (one object per line)"
                ) from None
            fh.seek(0)
            yield from _jsonl_records(path, max_row_bytes, fh=fh)
            return
        if head[:1] != b"[":
            raise IngestError(f"{path}: a .json file must hold a JSON array of records or JSON lines")
        fh.seek(0)
        try:
            data = json.loads(fh.read().decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            raise IngestError(f"{path}: not UTF-8 ({e})") from e
        except json.JSONDecodeError as e:
            raise IngestError(
                f"{path}: cannot parse JSON array: {e.msg} at line {e.lineno} col {e.colno}"
            ) from e
    for row, value in enumerate(data):
        size, text = _record_size(value)
        if size > max_row_bytes:
            yield Record(row, None, _oversize(size, max_row_bytes), text[:RAW_MAX_CHARS])
        else:
            yield Record(row, value, None, None)


def _batch_json_sizes(batch) -> list[int] | None:
    """Byte size of each row as compact JSON, computed by polars in one vectorised pass (None if it cannot)."""
    import polars as pl

    try:
        df = pl.from_arrow(batch)
        if not isinstance(df, pl.DataFrame) or df.width == 0:
            return None
        return df.select(pl.struct(pl.all()).struct.json_encode().str.len_bytes())[:, 0].to_list()
    except Exception:  # an arrow type polars cannot encode: fall back to json.dumps per row
        return None


def _parquet_chunks(path: Path, chunk_rows: int, max_row_bytes: int) -> Iterator[list[Record]]:
    """Parquet by record batches of at most `chunk_rows` rows (pyarrow), never the whole file."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for corrupt files
        raise IngestError(f"{path}: not a readable parquet file ({e})") from e
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=chunk_rows):
            values = batch.to_pylist()
            sizes = _batch_json_sizes(batch)
            chunk = []
            for i, value in enumerate(values):
                size = sizes[i] if sizes is not None else _record_size(value)[0]
                if size > max_row_bytes:
                    text = _record_size(value)[1]
                    chunk.append(Record(row, None, _oversize(size, max_row_bytes), text[:RAW_MAX_CHARS]))
                else:
                    chunk.append(Record(row, value, None, None))
                row += 1
            yield chunk
    except IngestError:
        raise
    except Exception as e:
        raise IngestError(f"{path}: parquet read failed near row {row} ({e})") from e
    finally:
        pf.close()


class _LineFeed:
    """Decoded lines for csv.reader, remembering the bytes and text of the record being parsed."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.first = True
        self.reset()

    def reset(self) -> None:
        self.nbytes = 0
        self.raw: list[str] = []
        self.raw_len = 0
        self.bad: str | None = None

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        line = self.fh.readline()
        if not line:
            raise StopIteration
        if self.first:
            self.first = False
            if line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
        self.nbytes += len(line.rstrip(b"\r\n"))
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            if self.bad is None:
                self.bad = f"undecodable_bytes: {e}"
            text = line.decode("utf-8", "surrogateescape")
        if self.raw_len < RAW_MAX_CHARS:
            shown = text if self.bad is None else line.decode("utf-8", "replace")
            self.raw.append(shown)
            self.raw_len += len(shown)
        return text

    def raw_text(self) -> str:
        return "".join(self.raw).rstrip("\r\n")[:RAW_MAX_CHARS]


def _csv_records(path: Path, max_row_bytes: int) -> Iterator[Record]:
    """CSV with a header row; row = 0-based data record index (a quoted field may span lines)."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(max_row_bytes + 1, 1024))
    try:
        with _open(path) as fh:
            feed = _LineFeed(fh)
            reader = csv.reader(feed)
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise IngestError(f"{path}: cannot read CSV header ({e})") from e
            if feed.bad:
                raise IngestError(f"{path}: CSV header is not UTF-8 ({feed.bad.split(': ', 1)[1]})")
            if len(set(header)) != len(header):
                dup = sorted({h for h in header if header.count(h) > 1})
                raise IngestError(f"{path}: CSV header repeats column names {dup}")
            row = -1
            while True:
                feed.reset()
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    row += 1
                    msg = str(e)
                    if "field larger than field limit" in msg:
                        yield Record(
                            row, None, _oversize(feed.nbytes, max_row_bytes) + " (one field)", feed.raw_text()
                        )
                    else:
                        yield Record(row, None, f"malformed_csv: {msg}", feed.raw_text())
                    continue
                if not fields:
                    continue  # blank line
                row += 1
                if feed.bad:
                    yield Record(row, None, feed.bad, feed.raw_text())
                elif feed.nbytes > max_row_bytes:
                    yield Record(row, None, _oversize(feed.nbytes, max_row_bytes), feed.raw_text())
                elif len(fields) != len(header):
                    yield Record(
                        row,
                        None,
                        f"malformed_csv: {len(fields)} fields, header has {len(header)}",
                        feed.raw_text(),
                    )
                else:
                    yield Record(row, dict(zip(header, fields, strict=True)), None, feed.raw_text())
    except OSError as e:
        raise IngestError(f"{path}: read failed ({e})") from e
    finally:
        csv.field_size_limit(old_limit)
