"""Stream the records of a JSON document in bounded memory, keeping every complete record of a cut-off file.

`json_records(fh, records)` walks a JSON value incrementally: the records are the elements of the top-level
array, or of the array / object found at the key path `records` (`("data",)`, `("data", "train")`). An object
of records yields its keys as `source_id`. Text is decoded in chunks and each record is parsed alone with the
standard library's C decoder (`raw_decode`), so memory holds one chunk plus the largest record, whatever the
file size. A file that ends inside a record (a truncated download) yields every complete record and then one
`truncated_json` entry with the byte offset where the cut record starts; a record that is malformed in the
middle of the file yields one `malformed_json` entry with its byte offset, and the rest of the file (which
cannot be re-synchronised safely) is reported in that entry. Byte offsets count decompressed bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO, NamedTuple

from curate.pool.errors import IngestError

CHUNK_BYTES = 1 << 20
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# an error this close to the end of the buffer may only mean the record continues in the next chunk
_NEAR_END = 64
_RAW_CHARS = 4000  # text kept for an error entry


class JsonItem(NamedTuple):
    """One record of the stream (`value`, with `raw` text), or the reason the rest could not be read."""

    key: str | None  # the record's key when the records are an object, else None
    value: Any
    raw: str  # the record's JSON text (the start of the unread rest for an error entry)
    error: str | None = None


class _Truncated(Exception):
    pass


class _Malformed(Exception):
    def __init__(self, msg: str, pos: int) -> None:
        super().__init__(msg)
        self.msg = msg
        self.pos = pos


class _Text:
    """Incrementally decoded UTF-8 text with the byte offset of its first character."""

    def __init__(self, fh: BinaryIO, chunk: int = CHUNK_BYTES) -> None:
        self.fh = fh
        self.chunk = chunk
        self.pending = b""  # the start of a multi-byte character cut by the chunk boundary
        self.buf = ""
        self.pos = 0
        self.keep: int | None = None  # position from which text must be kept (start of the current record)
        self.base = 0  # bytes before buf[0]
        self.eof = False
        self.bad: str | None = None  # undecodable bytes met: the text stops there
        self.first = True

    def more(self, n: int | None = None) -> bool:
        """Drop the consumed text and append the next chunk; False when nothing more can be read."""
        if self.eof:
            return False
        data = self.fh.read(n or self.chunk)
        drop = self.pos if self.keep is None else min(self.keep, self.pos)
        if drop:
            self.base += len(self.buf[:drop].encode("utf-8"))
            self.buf = self.buf[drop:]
            self.pos -= drop
            if self.keep is not None:
                self.keep -= drop
        if not data:
            self.eof = True
            if self.pending:
                self.bad = f"undecodable_bytes: the file ends inside a UTF-8 character at byte {self._end_offset()}"
            return False
        data = self.pending + data
        self.pending = b""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            text = data[: e.start].decode("utf-8")
            if e.reason == "unexpected end of data" and e.end == len(data):
                self.pending = data[e.start :]
            else:
                self.bad = f"undecodable_bytes: {e.reason} at byte {self._end_offset() + e.start}"
                self.eof = True
        if self.first:
            self.first = False
            text = text.removeprefix("\ufeff")
        self.buf += text
        return True

    def _end_offset(self) -> int:
        return self.base + len(self.buf.encode("utf-8"))

    def offset(self, pos: int | None = None) -> int:
        """Byte offset of buffer position `pos` (default: the current one) in the decoded stream."""
        pos = self.pos if pos is None else pos
        return self.base + len(self.buf[:pos].encode("utf-8"))

    def skip_ws(self) -> str:
        """Skip whitespace; return the next character ('' at the end of the text)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def expect(self, chars: str, where: str) -> str:
        c = self.skip_ws()
        if c == "":
            raise _Truncated
        if c not in chars:
            raise _Malformed(f"expected {' or '.join(map(repr, chars))} {where}, found {c!r}", self.pos)
        self.pos += 1
        return c

    def value(self) -> tuple[Any, str]:
        """Parse the JSON value at the current position (reading more text as needed)."""
        if self.skip_ws() == "":
            raise _Truncated
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                unterminated = e.msg.startswith("Unterminated string")
                if unterminated or e.pos >= len(self.buf) - _NEAR_END:
                    before = self.pos
                    if self.more(max(self.chunk, len(self.buf) - self.pos)):
                        continue  # the record may only continue in the next chunk
                    e.pos -= before - self.pos  # more() dropped the text before the record
                    if unterminated or e.pos >= len(self.buf.rstrip()):
                        raise _Truncated from None  # the text ends inside the record
                raise _Malformed(e.msg, e.pos) from None
            except ValueError as e:  # Python's own limits, e.g. an integer of more than 4,300 digits
                raise _Malformed(str(e), self.pos) from None
            except RecursionError:
                raise _Malformed("nested too deeply", self.pos) from None
            if end >= len(self.buf) - _NEAR_END and not self.eof and self.buf[end - 1] not in "}]\"":
                # a number or literal at the end of the buffer may continue in the next chunk
                if self.more(self.chunk):
                    continue
            raw = self.buf[self.pos : end]
            self.pos = end
            return value, raw


def _keys_of(text: _Text) -> list[str]:
    """Top-level keys of the object at the current position (values skipped), for error messages."""
    keys: list[str] = []
    try:
        text.expect("{", "")
        if text.skip_ws() == "}":
            return keys
        while True:
            key, _ = text.value()
            keys.append(str(key))
            text.expect(":", "after a key")
            text.value()
            if text.expect(",}", "after a value") == "}":
                return keys
    except (_Truncated, _Malformed):
        return keys


def top_level_keys(fh: BinaryIO) -> list[str]:
    """Keys of a JSON object document, read in bounded memory (best effort: stops at the first error)."""
    return _keys_of(_Text(fh))


def _descend(text: _Text, records: Sequence[str], name: str) -> None:
    """Move to the value at key path `records`, raising IngestError when a key is not there."""
    for depth, want in enumerate(records):
        where = ".".join(records[:depth]) or "the top level"
        c = text.skip_ws()
        if c != "{":
            kind = {"[": "an array", "": "empty"}.get(c, "not an object")
            raise IngestError(f"{name}: --records {'.'.join(records)}: {where} is {kind}, so it has no key {want!r}")
        text.pos += 1
        seen: list[str] = []
        while True:
            if text.skip_ws() == "}":
                raise IngestError(
                    f"{name}: --records {'.'.join(records)}: no key {want!r} at {where}",
                    f"keys there: {', '.join(seen[:20]) or 'none'}",
                )
            key, _ = text.value()
            text.expect(":", f"after key {key!r}")
            if key == want:
                break
            seen.append(str(key))
            text.value()  # skip a value that does not hold the records
            if text.expect(",}", f"after the value of {key!r}") == "}":
                raise IngestError(
                    f"{name}: --records {'.'.join(records)}: no key {want!r} at {where}",
                    f"keys there: {', '.join(seen[:20])}",
                )


def json_records(fh: BinaryIO, name: str, records: Sequence[str] = (), chunk: int = CHUNK_BYTES) -> Iterator[JsonItem]:
    """Yield the records of a JSON array (or of the array / object at key path `records`), then at most one
    error entry for a cut-off or malformed rest; raises IngestError when the records cannot be found."""
    text = _Text(fh, chunk)
    n = 0
    try:
        if records:
            _descend(text, records, name)
        c = text.skip_ws()
        if c not in ("[", "{") or (c == "{" and not records):
            where = f"--records {'.'.join(records)}" if records else "the top level"
            kind = "empty" if c == "" else "a single value"
            raise IngestError(f"{name}: {where} is {kind}, not an array or object of records")
        close = "]" if c == "[" else "}"
        text.pos += 1
        if text.skip_ws() == close:
            return
        while True:
            text.skip_ws()
            text.keep = text.pos
            key = None
            if close == "}":
                key, _ = text.value()
                text.expect(":", f"after the key of record {n}")
                key = str(key)
            value, raw = text.value()
            yield JsonItem(key, value, raw)
            n += 1
            text.keep = text.pos
            if text.skip_ws() == "" and not text.bad:  # the file ends after a complete record: cut there, or
                kind = "array" if close == "]" else "object"  # only the closing bracket is missing
                raise IngestError(f"{name}: the {kind} of records is not closed after record {n - 1} (byte "
                                  f"{text.offset()}): the file may be cut there; the {n} records before are kept")
            if text.expect("," + close, f"after record {n - 1}") == close:
                return
    except _Truncated:
        text.pos = min(text.keep or 0, len(text.buf))
        at = text.offset()
        rest = text.buf[text.pos : text.pos + _RAW_CHARS]
        why = text.bad or "the file ends inside it"
        yield JsonItem(None, None, rest, f"truncated_json: record {n} starts at byte {at} and is incomplete ({why})")
        raise IngestError(f"{name}: record {n} (byte {at}) is incomplete ({why}), so the file is not read past it; "
                          f"the {n} records before are kept") from None
    except _Malformed as e:
        start = min(text.keep or 0, len(text.buf))
        at = text.offset(min(e.pos, len(text.buf)))
        rest = text.buf[start : start + _RAW_CHARS]
        yield JsonItem(
            None, None, rest,
            f"malformed_json: {e.msg} at byte {at} (record {n}; the rest of the file from byte "
            f"{text.offset(start)} is not read)",
        )  # fmt: skip
        raise IngestError(f"{name}: malformed JSON in record {n} (byte {at}): the rest of the file from byte "
                          f"{text.offset(start)} is not read; the {n} records before are kept") from None
