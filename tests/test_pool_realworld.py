"""Pools as public data sets ship them: cut-off files, compressed files, prompt-only and nested records,
odd roles. Every input record and every file is accounted for: kept, duplicate or quarantined, with a reason."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import polars as pl
import pytest
import zstandard

from curate.pool import IngestError, ingest
from curate.run import RunDir
from index.io import read_json

ROWS = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(6)]


def quarantine(run: Path) -> pl.DataFrame:
    return pl.read_parquet(run / "quarantine.parquet")


def accounted(rep, run: Path) -> None:
    """Rows: unique + duplicate + quarantined == read, and the tables hold exactly those rows."""
    assert rep.n_unique + rep.n_duplicate + rep.n_quarantined == rep.n_read
    assert RunDir(run).read_pool().height == rep.n_unique
    q = quarantine(run)
    assert q.filter(pl.col("row").is_not_null()).height == rep.n_quarantined
    assert q.filter(pl.col("row").is_null()).height == len(rep.file_errors)
    doc = read_json(run / "ingest.json")
    assert doc["files"] == rep.file_counts and doc["counts"]["read"] == rep.n_read


def test_truncated_json_array_keeps_every_complete_record(tmp_path):
    text = json.dumps(ROWS, indent=1)
    cut = text[: text.index('"answer 4"') + 3]  # inside record 4
    f = tmp_path / "dump.json"
    f.write_text(cut)
    run = tmp_path / "run"
    rep = ingest(f, run, progress=False)
    accounted(rep, run)
    assert (rep.n_read, rep.n_unique, rep.n_quarantined) == (5, 4, 1)
    assert RunDir(run).read_pool()["prompt"].to_list() == [f"question {i}" for i in range(4)]
    tail, whole = quarantine(run).rows(named=True)  # the cut record, then the file's own entry (row null)
    assert whole["row"] is None and whole["reason"].startswith("unreadable_file: ")
    start = len(text[: text.index('{\n  "prompt": "question 4"')].encode())
    assert tail["row"] == 4 and tail["reason"] == (
        f"truncated_json: record 4 starts at byte {start} and is incomplete (the file ends inside it)"
    )
    assert tail["raw"].startswith('{\n  "prompt": "question 4"')
    assert rep.file_counts == {"total": 1, "ok": 0, "partial": 1, "failed": 0}  # cut: read in part
    assert "record 4 (byte" in rep.file_errors[str(f)] and "4 records before are kept" in rep.file_errors[str(f)]


def test_json_array_cut_after_a_complete_record_keeps_it_and_says_the_file_may_be_cut(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps(ROWS)[:-1])  # only the closing bracket is missing: cut here, or just that
    rep = ingest(f, tmp_path / "run", progress=False)
    assert (rep.n_read, rep.n_unique, rep.n_quarantined) == (6, 6, 0)
    assert rep.file_counts["partial"] == 1 and "not closed after record 5" in rep.file_errors[str(f)]


def test_malformed_json_array_keeps_records_before_and_reports_the_rest(tmp_path):
    good = json.dumps(ROWS[:2])[:-1]
    f = tmp_path / "m.json"
    f.write_text(good + ', {"prompt" "x"}, ' + json.dumps(ROWS[2]) + "]")
    run = tmp_path / "run"
    rep = ingest(f, run, progress=False)
    accounted(rep, run)
    assert (rep.n_read, rep.n_unique, rep.n_quarantined) == (3, 2, 1)
    reason = quarantine(run)["reason"][0]
    assert reason.startswith(f"malformed_json: Expecting ':' delimiter at byte {len(good) + 12} (record 2;")


def test_truncated_parquet_beside_good_files(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    pl.DataFrame(ROWS[:3]).write_parquet(d / "a.parquet")
    pl.DataFrame(ROWS[3:]).write_parquet(d / "b.parquet")
    whole = (d / "b.parquet").read_bytes()
    (d / "b.parquet").write_bytes(whole[: len(whole) // 2])  # cut by a size limit
    (d / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[3:]))
    (d / "stray.json").write_text('"release notes, not records"')
    run = tmp_path / "run"
    rep = ingest(d, run, progress=False)
    accounted(rep, run)
    assert (rep.n_read, rep.n_unique) == (6, 6)
    assert rep.file_counts == {"total": 4, "ok": 2, "partial": 0, "failed": 2}
    files = quarantine(run).filter(pl.col("row").is_null())
    assert sorted(Path(s).name for s in files["source"]) == ["b.parquet", "stray.json"]
    reasons = dict(zip([Path(s).name for s in files["source"]], files["reason"], strict=True))
    assert reasons["b.parquet"].startswith(f"unreadable_file: {d / 'b.parquet'}: not a readable parquet file")
    assert "a .json file must hold a JSON array" in reasons["stray.json"]
    assert set(read_json(run / "ingest.json")["file_errors"]) == {str(d / "b.parquet"), str(d / "stray.json")}
    assert "2 unreadable: see quarantine" in rep.summary()
    with pytest.raises(IngestError, match="b.parquet: not a readable parquet"):
        ingest(d, tmp_path / "run2", strict=True, progress=False)


def _write_compressed(path: Path, data: bytes) -> Path:
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zst": zstandard.open}[path.suffix]
    with opener(path, "wb") as fh:
        fh.write(data)
    return path


def test_compressed_inputs_of_every_format(tmp_path):
    jsonl = "".join(json.dumps(r) + "\n" for r in ROWS[:2]).encode()
    files = [
        _write_compressed(tmp_path / "a.jsonl.gz", jsonl),
        _write_compressed(tmp_path / "b.json.gz", json.dumps(ROWS[2:3]).encode()),
        _write_compressed(tmp_path / "c.jsonl.zst", json.dumps(ROWS[3]).encode() + b"\n"),
        _write_compressed(tmp_path / "d.csv.bz2", pl.DataFrame(ROWS[4:5]).write_csv().encode()),
    ]
    pq = tmp_path / "e.parquet"
    pl.DataFrame(ROWS[5:]).write_parquet(pq)
    files.append(_write_compressed(tmp_path / "e.parquet.xz", pq.read_bytes()))
    pq.unlink()
    run = tmp_path / "run"
    rep = ingest(tmp_path, run, progress=False)  # found by a directory walk
    accounted(rep, run)
    assert rep.inputs == [str(f) for f in files] and (rep.n_read, rep.n_unique) == (6, 6)
    assert sorted(RunDir(run).read_pool()["prompt"].to_list()) == [r["prompt"] for r in ROWS]


def test_columns_map_on_a_compressed_file(tmp_path):
    rows = [{"q": "a question", "a": "an answer", "conversations": "not a conversation"}]
    f = _write_compressed(tmp_path / "qa.jsonl.zst", (json.dumps(rows[0]) + "\n").encode())
    rep = ingest(f, tmp_path / "run", columns={"prompt": "q", "response": "a"}, progress=False)
    row = RunDir(tmp_path / "run").read_pool().row(0, named=True)
    assert rep.n_unique == 1 and (row["prompt"], row["response"]) == ("a question", "an answer")
    assert json.loads(row["meta"]) == {"conversations": "not a conversation"}


def test_cut_gzip_keeps_the_lines_before_the_cut(tmp_path):
    rows = [{"prompt": f"p{i} " + "x" * 200, "response": f"r{i}"} for i in range(3000)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    f = tmp_path / "big.jsonl.gz"
    f.write_bytes(data[: len(data) * 3 // 4])
    run = tmp_path / "run"
    rep = ingest([f, _write_compressed(tmp_path / "ok.jsonl.gz", b'{"prompt": "p", "response": "r"}\n')], run,
                 progress=False)  # fmt: skip
    accounted(rep, run)
    assert rep.per_source[str(f)]["status"] == "partial" and 0 < rep.per_source[str(f)]["read"] < 3000
    assert rep.file_counts == {"total": 2, "ok": 1, "partial": 1, "failed": 0}
    pool = RunDir(run).read_pool()
    kept = pool.filter(pl.col("source") == str(f))["row"].to_list()
    assert kept == list(range(len(kept)))  # every line up to the cut, in order
    assert "EOFError" in rep.file_errors[str(f)] and f"after {len(kept)} records" in rep.file_errors[str(f)]


def test_cut_zstd_keeps_every_decodable_line_and_reports_the_cut(tmp_path):
    rows = [{"prompt": f"p{i} " + "x" * 200, "response": f"r{i}"} for i in range(3000)]
    data = zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    f = tmp_path / "big.jsonl.zst"
    f.write_bytes(data[: len(data) * 3 // 4])
    # what a decoder can recover from the cut frame (zstandard's reader returns it without an error)
    with zstandard.open(f, "rb") as fh:
        complete_lines = fh.read().count(b"\n")
    assert 0 < complete_lines < 3000
    run = tmp_path / "run"
    rep = ingest([f, _write_compressed(tmp_path / "ok.jsonl.zst", b'{"prompt": "p", "response": "r"}\n')], run,
                 progress=False)  # fmt: skip
    accounted(rep, run)
    assert rep.per_source[str(f)]["status"] == "partial"
    assert rep.file_counts == {"total": 2, "ok": 1, "partial": 1, "failed": 0}
    kept = RunDir(run).read_pool().filter(pl.col("source") == str(f))["row"].to_list()
    assert kept == list(range(complete_lines))  # every complete line before the cut, in order
    assert rep.n_quarantined == 0  # the cut-off tail is the file-level entry, not a malformed row
    assert "EOFError" in rep.file_errors[str(f)] and f"after {complete_lines} records" in rep.file_errors[str(f)]


def test_zstd_of_several_frames_is_read_whole(tmp_path):
    comp = zstandard.ZstdCompressor()
    f = tmp_path / "frames.jsonl.zst"
    f.write_bytes(b"".join(comp.compress((json.dumps(r) + "\n").encode()) for r in ROWS))
    rep = ingest(f, tmp_path / "run", progress=False)
    accounted(rep, tmp_path / "run")
    assert (rep.n_unique, rep.file_counts["ok"]) == (len(ROWS), 1)


def test_prompt_only_rows(tmp_path):
    rows = [
        {"prompt": "Translate: bonjour"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]},
        {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Now shorten it."]},
        {"instruction": "Summarise", "input": "a long text"},
        {"prompt": "has an empty answer", "response": ""},  # an empty response is a bad row, not a prompt
        {"prompt": "p", "response": "r"},
    ]
    f = tmp_path / "eval.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    rep = ingest(f, run, progress=False)
    accounted(rep, run)
    assert rep.per_kind == {"prompt": 4, "sft": 1} and rep.n_quarantined == 1
    assert quarantine(run)["reason"].to_list() == ["empty_text: response"]
    pool = RunDir(run).read_pool().filter(pl.col("kind") == "prompt")
    assert pool["response"].to_list() == [None] * 4
    assert pool["prompt"].to_list() == [
        "Translate: bonjour",
        "system: Be brief.\n\nuser: Why?",
        "user: Write a poem.\n\nuser: Now shorten it.",
        "Summarise\n\na long text",
    ]
    assert json.loads(pool["meta"][2]) == {"question_id": 81, "category": "writing"}
    assert pool["messages"][2].to_list() == [
        {"role": "user", "content": "Write a poem."},
        {"role": "user", "content": "Now shorten it."},
    ]


def test_nested_records_and_record_keys(tmp_path):
    doc = {"meta": {"version": 2, "note": "a } and a ]"}, "data": {"id1": ROWS[0], "id2": ROWS[1], "id3": "bad"}}
    f = tmp_path / "nested.json"
    f.write_text(json.dumps(doc))
    run = tmp_path / "run"
    rep = ingest(f, run, records="data", progress=False)
    accounted(rep, run)
    assert (rep.n_read, rep.n_unique, rep.n_quarantined) == (3, 2, 1)
    pool = RunDir(run).read_pool()
    assert [json.loads(m)["source_id"] for m in pool["meta"]] == ["id1", "id2"]
    assert quarantine(run)["reason"].to_list() == ["wrong_type: record is str, expected an object"]
    g = tmp_path / "split.json"
    g.write_text(json.dumps({"splits": {"train": ROWS[:3], "test": ROWS[3:]}}))
    rep = ingest(g, tmp_path / "run2", records="splits.test", progress=False)
    assert RunDir(tmp_path / "run2").read_pool()["prompt"].to_list() == [r["prompt"] for r in ROWS[3:]]
    with pytest.raises(IngestError, match=r"--records splits.dev: no key 'dev' at splits.*keys there: train, test"):
        ingest(g, tmp_path / "run3", records="splits.dev", strict=True, progress=False)
    with pytest.raises(IngestError, match=r"nested.json: holds one JSON object.*may hold them: data\).*--records KEY"):
        ingest(f, tmp_path / "run4", strict=True, progress=False)


def test_explicit_map_wins_over_a_conversations_field(tmp_path):
    row = {"question": "What is 2+2?", "answer": "4", "conversations": [{"from": "human", "value": "other"}]}
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps(row) + "\n")
    ingest(f, tmp_path / "run", columns={"prompt": "question", "response": "answer"}, progress=False)
    got = RunDir(tmp_path / "run").read_pool().row(0, named=True)
    assert (got["prompt"], got["response"]) == ("What is 2+2?", "4")
    ingest(f, tmp_path / "run2", layout="sharegpt", progress=False)
    assert RunDir(tmp_path / "run2").read_pool()["kind"].to_list() == ["prompt"]  # forced: one human turn


def test_unknown_roles_and_invisible_text(tmp_path):
    rows = [
        {"messages": [{"role": "usr", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\u200b\u200b \ufeff"}]},
        {"prompt": "\u200b", "response": "x"},
        {"prompt": "ok", "response": "fine"},
    ]
    f = tmp_path / "odd.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    rep = ingest(f, run, progress=False)
    accounted(rep, run)
    assert quarantine(run).select("row", "reason").rows() == [
        (0, "unknown_role: messages[0] has role 'usr' (known: system, user, assistant, tool; "
            "rename it with --role-map usr=user)"),
        (1, "empty_text: response"),
        (2, "empty_text: prompt"),
    ]  # fmt: skip
    rep = ingest(f, tmp_path / "run2", role_map={"usr": "user"}, progress=False)
    assert rep.n_unique == 2 and rep.n_quarantined == 2
    first = RunDir(tmp_path / "run2").read_pool()["messages"][0].to_list()
    assert first[0] == {"role": "user", "content": "hi"}
    with pytest.raises(ValueError, match="role_map: usr=boss: the target must be one of"):
        ingest(f, tmp_path / "run3", role_map={"usr": "boss"}, progress=False)


def test_an_integer_past_pythons_digit_limit_quarantines_its_row_not_the_ingest(tmp_path):
    """json refuses integers of more than 4,300 digits with a plain ValueError: one such row is quarantined
    (JSON lines), or ends an array's reading like other malformed JSON, and the rest of the files is kept."""
    huge = '{"prompt": "q", "response": "a", "n": ' + "9" * 5000 + "}"
    lines = tmp_path / "a.jsonl"
    lines.write_text("\n".join([json.dumps(ROWS[0]), huge, json.dumps(ROWS[1])]) + "\n")
    array = tmp_path / "b.json"
    array.write_text("[" + ", ".join([json.dumps(ROWS[2]), huge, json.dumps(ROWS[3])]) + "]")
    run = tmp_path / "run"
    rep = ingest([lines, array], run, progress=False)
    accounted(rep, run)
    assert RunDir(run).read_pool()["prompt"].to_list() == ["question 0", "question 1", "question 2"]
    rows = quarantine(run).filter(pl.col("row").is_not_null())
    assert rows["row"].to_list() == [1, 1] and all(r.startswith("malformed_json: ") for r in rows["reason"])
    assert "4300 digits" in rows["reason"][0]
    assert rep.per_source[str(lines)]["status"] == "ok" and rep.per_source[str(array)]["status"] == "partial"


def test_a_json_file_of_one_record_is_that_record_and_long_json_lines_get_a_hint(tmp_path):
    """A one-line .json holding one {"messages": [...]} record is ingested (its message list is not taken for a
    list of records); JSON lines whose first line is longer than the bytes looked at are told to be .jsonl."""
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "hello"}]}) + "\n")
    rep = ingest(one, tmp_path / "run", progress=False)
    assert (rep.n_read, rep.n_unique) == (1, 1)
    long = tmp_path / "long.json"
    long.write_text(json.dumps({"prompt": "x" * 70_000, "response": "a"}) + "\n" + json.dumps(ROWS[0]) + "\n")
    with pytest.raises(IngestError, match=r"long.json: holds one JSON object.*name it \.jsonl"):
        ingest(long, tmp_path / "run2", strict=True, progress=False)
