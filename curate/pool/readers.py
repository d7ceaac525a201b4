"""Find input files and stream their records in bounded chunks.

Formats: JSON lines (`.jsonl`, `.ndjson`), JSON (`.json`: an array of records, the records at a key path
`records`, or JSON lines), parquet (`.parquet`, read by row-group batches with pyarrow) and CSV (`.csv`, header
row, read line by line). Any of them may be compressed: `.gz`, `.bz2`, `.xz`, `.zst` after the format's
extension (`train.jsonl.gz`) are decompressed as they are read (a compressed parquet is spooled to a temporary
file first, as parquet needs random access). JSON lines and CSV are read as bytes and decoded line by line, so
one bad line (invalid UTF-8, broken JSON, a row over the size limit) becomes one quarantined record and the
rest of the file is still read; a JSON array is streamed record by record (curate.pool.jsonstream), so a file
cut off mid-record keeps every complete record and reports the tail.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import io
import json
import lzma
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from curate.pool.errors import IngestError, RowError
from curate.pool.jsonstream import json_records, top_level_keys
from curate.pool.layouts import normalise
from curate.pool.schema import RAW_MAX_CHARS

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
_READ_BUFFER = 1 << 16  # decompressed bytes buffered: small, so a cut compressed file keeps what came before
_GLOB_CHARS = set("*?[")


class Record(NamedTuple):
    """One input record: its 0-based index in the file, the parsed value or the reason it could not be read."""

    row: int
    value: Any  # the parsed record (normally a dict); None when `error` is set
    error: str | None  # quarantine reason when the record could not be read
    raw: str | None  # raw text for quarantine (None: serialise `value` when needed)
    key: str | None = None  # the record's key when the records are a JSON object {key: record}


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
def file_format(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """(format, compression) of a file name: 'a.jsonl.gz' -> ('jsonl', 'gzip'); (None, ...) when unknown."""
    name = Path(path).name.lower()
    compression = None
    for ext, comp in COMPRESSIONS.items():
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
            break
    return FORMATS.get(Path(name).suffix), compression


def _known(path: Path) -> bool:
    return file_format(path)[0] is not None


def _expected() -> str:
    return f"one of {', '.join(sorted(FORMATS))}, optionally + {'/'.join(COMPRESSIONS)}"


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
            out.append((path, str(file_format(path)[0])))

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
                raise IngestError(f"{text}: unknown extension {path.suffix!r} (expected {_expected()})")
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
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError)


def iter_chunks(
    path: Path, fmt: str, chunk_rows: int, max_row_bytes: int, records: Sequence[str] = ()
) -> Iterator[list[Record]]:
    """Yield the records of one file in lists of at most `chunk_rows`, decompressing by extension.

    `records` is a key path to the records inside a `.json` document. A file that fails part way (a cut
    compressed stream, a damaged parquet) raises IngestError after the records read before the damage.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if records and fmt != "json":
        raise IngestError(f"{path}: --records applies to .json documents, not {fmt}")
    n = 0
    try:
        if fmt == "parquet":
            for chunk in _parquet_chunks(path, chunk_rows, max_row_bytes):
                n += len(chunk)
                yield chunk
            return
        with _open(path) as fh:
            if fmt == "jsonl":
                stream = _jsonl_records(path, max_row_bytes, fh=fh)
            elif fmt == "json":
                stream = _json_records(path, fh, max_row_bytes, records)
            elif fmt == "csv":
                stream = _csv_records(path, fh, max_row_bytes)
            else:
                raise IngestError(f"{path}: unknown format {fmt!r}")
            chunk: list[Record] = []
            failure: BaseException | None = None
            try:
                for rec in stream:
                    chunk.append(rec)
                    if len(chunk) >= chunk_rows:
                        n += len(chunk)
                        yield chunk
                        chunk = []
            except (IngestError, *_READ_ERRORS) as e:  # keep the records read before the damage
                failure = e
            if chunk:
                n += len(chunk)
                yield chunk
            if failure is not None:
                raise failure
    except IngestError:
        raise
    except _READ_ERRORS as e:  # damaged compressed input, or a value a reader cannot take
        raise IngestError(f"{path}: read failed after {n} records ({type(e).__name__}: {e})") from e


def _decompressed(path: Path, compression: str) -> io.BufferedIOBase:
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    return _ZstdReader(path)  # type: ignore[return-value]


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of a .zst file's frames; EOFError when the file ends inside a frame.

    zstandard's own stream reader returns the decodable part of a cut frame as if the file ended cleanly,
    which would hide a cut download; this reader feeds one frame at a time to a decompressor and checks it.
    """

    def __init__(self, path: Path, chunk: int = _READ_BUFFER) -> None:
        try:
            import zstandard
        except ImportError as e:  # pragma: no cover - zstandard is a dependency
            raise IngestError(f"{path}: reading .zst needs the zstandard package") from e
        self._dctx = zstandard.ZstdDecompressor()
        self._fh = open(path, "rb")
        self._chunk = chunk
        self._frame: Any = None  # decompressor of the frame being read, None between frames
        self._pending = b""  # compressed bytes after the end of the last frame, not yet fed
        self._out = memoryview(b"")

    def readable(self) -> bool:
        """Always readable."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` with decompressed bytes; 0 at the clean end of the last frame."""
        while not self._out:
            if not self._decompress_more():
                return 0
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress_more(self) -> bool:
        data, self._pending = self._pending or self._fh.read(self._chunk), b""
        if not data:
            if self._frame is not None:
                raise EOFError("zstd file ended before the end of its frame (cut or incomplete)")
            return False
        if self._frame is None:
            self._frame = self._dctx.decompressobj()
        self._out = memoryview(self._frame.decompress(data))
        if self._frame.eof:
            self._pending, self._frame = self._frame.unused_data, None
        return True

    def close(self) -> None:
        """Close the file."""
        self._fh.close()
        super().close()


def _open(path: Path) -> io.BufferedReader:
    """A buffered binary stream of the file's (decompressed) bytes."""
    compression = file_format(path)[1]
    try:
        if compression is None:
            return open(path, "rb", buffering=_READ_BUFFER)
        return io.BufferedReader(_decompressed(path, compression), _READ_BUFFER)  # type: ignore[arg-type]
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
            except ValueError as e:  # Python's own limits, e.g. an integer of more than 4,300 digits
                yield Record(row, None, f"malformed_json: {e}", text[:RAW_MAX_CHARS])
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


def _text_bytes(text: str, limit: int) -> int:
    """UTF-8 size of `text`, encoding it only when its length leaves the comparison with `limit` open."""
    if len(text) > limit or len(text) * 4 <= limit:
        return len(text)
    return len(text.encode("utf-8"))


def _is_record(obj: dict) -> bool:
    """Whether one JSON object is itself a usable record (a layout recognises it), not a holder of records."""
    try:
        normalise(obj)
    except RowError:
        return False
    return True


def _record_holders(obj: dict) -> list[str]:
    """Keys of an object whose values are lists or objects of mostly objects (where records would be)."""
    out = []
    for k, v in obj.items():
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        if items and 2 * sum(isinstance(x, dict) for x in items) >= len(items):
            out.append(str(k))
    return out


def _json_records(path: Path, fh, max_row_bytes: int, records: Sequence[str]) -> Iterator[Record]:
    """`.json`: an array of records, the records at key path `records`, or JSON lines; streamed."""
    head = fh.peek(_READ_BUFFER)[:_READ_BUFFER].lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        return
    if head[:1] == b"{" and not records:
        first = head.split(b"\n", 1)[0].strip()
        try:
            is_lines = isinstance(json.loads(first.decode("utf-8")), dict)
        except (ValueError, RecursionError):  # bad UTF-8 or JSON, or a Python limit (huge integers)
            is_lines = False
        rest = head.split(b"\n", 1)[1].strip() if b"\n" in head else b""
        if is_lines and not rest and len(head) < _READ_BUFFER // 2:
            obj = json.loads(first.decode("utf-8"))
            holders = [] if _is_record(obj) else _record_holders(obj)
            if holders:  # one line holding one object of records, not JSON lines
                raise IngestError(
                    f"{path}: holds one JSON object, not a list of records (keys that may hold them: {', '.join(holders)})",
                    "pass --records KEY (a dotted key path) naming the array or object that holds the records",
                )
        if is_lines:
            yield from _jsonl_records(path, max_row_bytes, fh=fh)
            return
        keys = top_level_keys(io.BytesIO(head))
        shown = f" (its keys: {', '.join(keys[:20])})" if keys else ""
        lines = "" if b"\n" in head else (
            f", or, if it holds JSON lines (its first line is longer than the {_READ_BUFFER // 1024} KiB looked at), "
            "name it .jsonl")
        raise IngestError(
            f"{path}: holds one JSON object, not a list of records{shown}",
            "pass --records KEY (a dotted key path) naming the array or object that holds the records" + lines,
        )
    if head[:1] not in (b"[", b"{"):
        raise IngestError(f"{path}: a .json file must hold a JSON array of records or JSON lines")
    for row, item in enumerate(json_records(fh, str(path), records)):
        if item.error is not None:
            yield Record(row, None, item.error, item.raw[:RAW_MAX_CHARS])
            continue
        size = _text_bytes(item.raw, max_row_bytes)
        if size > max_row_bytes:
            yield Record(row, None, _oversize(len(item.raw.encode("utf-8")), max_row_bytes), item.raw[:RAW_MAX_CHARS])
        else:
            yield Record(row, item.value, None, item.raw, item.key)


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

    source: Any = path
    if file_format(path)[1] is not None:  # parquet needs random access: spool the decompressed bytes
        source = tempfile.TemporaryFile()
        with _open(path) as fh:
            shutil.copyfileobj(fh, source, 1 << 20)
        source.seek(0)
    try:
        pf = pq.ParquetFile(source)
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
        if source is not path:
            source.close()


# the rest of an open quoted CSV field, through its closing quote ('""' inside it is an escaped quote)
_QUOTED_REST = re.compile(r'(?:[^"]|"")*"(?!")')


def _ends_quoted(line: str, inside: bool) -> bool:
    """Whether a CSV line (default dialect) ends inside a quoted field, given whether it starts inside one. A
    quote opens a field only at the field's start; elsewhere in an unquoted field it is text, as for csv."""
    line, pos = line.rstrip("\r\n"), 0
    while True:
        if inside:
            m = _QUOTED_REST.match(line, pos)
            if m is None:
                return True
            inside, pos = False, m.end()
        elif line.startswith('"', pos):  # pos is always a field's start here
            inside, pos = True, pos + 1
            continue
        comma = line.find(",", pos)
        if comma < 0:
            return False
        pos = comma + 1


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
        self.lines: list[str] = []  # the record's lines so far (the parser holds as much), for skip_open_field

    def skip_open_field(self) -> None:
        """When the parser gave up inside a quoted field (an oversize one), read on to the end of the line that
        closes it: the parser starts afresh after an error, and would read the field's rest as new records."""
        inside = False
        for line in self.lines:
            inside = _ends_quoted(line, inside)
        while inside:
            try:
                inside = _ends_quoted(next(self), True)
            except StopIteration:
                return

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
        self.lines.append(text)
        if self.raw_len < RAW_MAX_CHARS:
            shown = text if self.bad is None else line.decode("utf-8", "replace")
            self.raw.append(shown)
            self.raw_len += len(shown)
        return text

    def raw_text(self) -> str:
        return "".join(self.raw).rstrip("\r\n")[:RAW_MAX_CHARS]


def _csv_records(path: Path, fh, max_row_bytes: int) -> Iterator[Record]:
    """CSV with a header row; row = 0-based data record index (a quoted field may span lines)."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(max_row_bytes + 1, 1024))
    try:
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
                    feed.skip_open_field()
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
