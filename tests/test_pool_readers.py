"""Input discovery and record streams (curate.pool.readers): chunking, encodings, CSV edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curate.pool import IngestError, resolve_inputs
from curate.pool.readers import format_bytes, iter_chunks

ROWS = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(10)]


def _files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "jsonl": tmp_path / "a.jsonl",
        "csv": tmp_path / "a.csv",
        "parquet": tmp_path / "a.parquet",
        "json": tmp_path / "a.json",
    }
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pl.DataFrame(ROWS).write_csv(out["csv"])
    pl.DataFrame(ROWS).write_parquet(out["parquet"], row_group_size=3)
    out["json"].write_text(json.dumps(ROWS))
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "json"])
def test_chunks_are_bounded_and_complete(tmp_path, fmt):
    path = _files(tmp_path)[fmt]
    chunks = list(iter_chunks(path, fmt, chunk_rows=4, max_row_bytes=10_000))
    assert max(len(c) for c in chunks) <= 4 and len(chunks) >= 3
    recs = [r for c in chunks for r in c]
    assert [r.row for r in recs] == list(range(10))
    assert [r.value for r in recs] == ROWS and all(r.error is None for r in recs)


def test_bom_and_crlf(tmp_path):
    j = tmp_path / "bom.jsonl"
    j.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\r\n" + json.dumps(ROWS[1]).encode() + b"\r\n"
    )
    recs = [r for c in iter_chunks(j, "jsonl", 10, 1000) for r in c]
    assert [r.value for r in recs] == ROWS[:2]
    c = tmp_path / "bom.csv"
    c.write_bytes(b"\xef\xbb\xbfprompt,response\r\np0,r0\r\n")
    recs = [r for ch in iter_chunks(c, "csv", 10, 1000) for r in ch]
    assert [r.value for r in recs] == ROWS[:1]


def test_csv_quoted_newlines_oversize_field_and_header_only(tmp_path):
    c = tmp_path / "q.csv"
    c.write_text(
        'prompt,response\n"line1\nline2","a ""quoted"" answer"\n' + "p," + "x" * 500 + "\nlast,one\n"
    )
    recs = [r for ch in iter_chunks(c, "csv", 10, 300) for r in ch]
    assert recs[0].value == {"prompt": "line1\nline2", "response": 'a "quoted" answer'}
    assert recs[1].row == 1 and recs[1].error == "oversize_row: 502 B > 300 B"
    assert recs[2].row == 2 and recs[2].value == {"prompt": "last", "response": "one"}
    h = tmp_path / "h.csv"
    h.write_text("prompt,response\n")
    assert list(iter_chunks(h, "csv", 10, 300)) == []
    d = tmp_path / "dup.csv"
    d.write_text("prompt,prompt\na,b\n")
    with pytest.raises(IngestError, match=r"dup.csv: CSV header repeats column names \['prompt'\]"):
        list(iter_chunks(d, "csv", 10, 300))


def test_json_that_is_neither_array_nor_lines(tmp_path):
    f = tmp_path / "obj.json"
    f.write_text('{\n  "data": [1, 2],\n  "meta": {}\n}\n')
    with pytest.raises(IngestError, match=r"obj.json: holds one JSON object.*its keys: data, meta.*--records KEY"):
        list(iter_chunks(f, "json", 10, 1000))
    s = tmp_path / "scalar.json"
    s.write_text('"just text"')
    with pytest.raises(IngestError, match="scalar.json: a .json file must hold a JSON array"):
        list(iter_chunks(s, "json", 10, 1000))
    g = tmp_path / "bytes.json"
    g.write_bytes(b'[{"prompt": "ok"}, {"prompt": "caf\xe9"}]')
    recs = []
    with pytest.raises(IngestError, match=r"bytes.json: record 1 \(byte 19\) is incomplete \(undecodable_bytes"):
        for c in iter_chunks(g, "json", 10, 1000):  # the records read are given before the file's error
            recs += c
    assert recs[0].value == {"prompt": "ok"} and recs[1].row == 1 and recs[1].value is None
    assert recs[1].error == (
        "truncated_json: record 1 starts at byte 19 and is incomplete "
        "(undecodable_bytes: invalid continuation byte at byte 34)"
    )


def test_resolve_inputs_order_and_errors(tmp_path):
    for name in ("b/2.jsonl", "b/10.csv", "a.parquet", "c.JSON", "skip.txt"):
        p = tmp_path / "d" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    got = resolve_inputs(tmp_path / "d")
    assert [(p.relative_to(tmp_path / "d").as_posix(), f) for p, f in got] == [
        ("a.parquet", "parquet"), ("b/10.csv", "csv"), ("b/2.jsonl", "jsonl"), ("c.JSON", "json"),
    ]  # fmt: skip
    got = resolve_inputs(str(tmp_path / "d" / "b" / "*"))
    assert [p.name for p, _ in got] == ["10.csv", "2.jsonl"]
    with pytest.raises(IngestError, match="skip.txt: unknown extension"):
        resolve_inputs(tmp_path / "d" / "skip.txt")
    with pytest.raises(IngestError, match=r"nothing\*.csv: glob matches no"):
        resolve_inputs(str(tmp_path / "nothing*.csv"))


def test_format_bytes():
    assert format_bytes(2_300_000) == "2.3 MB" and format_bytes(1_000_000) == "1.0 MB"
    assert format_bytes(4100) == "4.1 kB" and format_bytes(120) == "120 B"


def test_csv_field_over_the_parser_limit_is_quarantined_and_reading_goes_on(tmp_path):
    c = tmp_path / "big.csv"
    c.write_text("prompt,response\n" + 'p,"' + "y" * 5000 + '"\nnext,row\n')
    recs = [r for ch in iter_chunks(c, "csv", 10, 2000) for r in ch]
    assert recs[0].row == 0 and recs[0].error.startswith("oversize_row: ")
    assert recs[1].row == 1 and recs[1].value == {"prompt": "next", "response": "row"}
    # an oversize quoted field that spans lines (with a quote on a later line): its rest is not read as records
    m = tmp_path / "multi.csv"
    m.write_text('prompt,response\nq0,a0\nq1,"' + "z" * 3000 + '\nmore ""quoted"" text",a1\nq2,a2\nq3,a3\n')
    recs = [r for ch in iter_chunks(m, "csv", 10, 1000) for r in ch]
    assert [(r.row, r.value) for r in recs if r.error is None] == [
        (0, {"prompt": "q0", "response": "a0"}), (2, {"prompt": "q2", "response": "a2"}),
        (3, {"prompt": "q3", "response": "a3"})]
    assert recs[1].row == 1 and recs[1].error.startswith("oversize_row: ") and len(recs) == 4
    # an oversize unquoted field holding a quote (12" screen) is text to csv: nothing after it is skipped
    u = tmp_path / "unquoted.csv"
    u.write_text('prompt,response\nq0,a0\nq1,' + "z" * 3000 + ' a 12" screen\nq2,a2\nq3,a3\n')
    recs = [r for ch in iter_chunks(u, "csv", 10, 1000) for r in ch]
    assert [r.value["prompt"] for r in recs if r.error is None] == ["q0", "q2", "q3"] and len(recs) == 4
    # a quoted field with escaped quotes that closes and opens another on the same line
    from curate.pool.readers import _ends_quoted

    assert _ends_quoted('a,"b ""x"" c', False) and not _ends_quoted('a,"b ""x"" c",d', False)
    assert _ends_quoted('end of it",x,"next one', True) and not _ends_quoted('x""', False)
    assert _ends_quoted('x""', True) and not _ends_quoted('x"""', True)
    import csv

    assert csv.field_size_limit() == 131072  # the global parser limit is restored
