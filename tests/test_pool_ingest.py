"""End-to-end ingest: formats, layouts, directories/globs, duplicates, quarantine, streaming, re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from fixtures_pool import write_jsonl

from curate.pool import POOL_SCHEMA, QUARANTINE_SCHEMA, IngestError, content_id, ingest
from curate.run import RunDir
from index.io import read_json

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731

SFT = [
    {"instruction": "Add the numbers.", "input": "2 + 3", "output": "5", "domain": "math"},
    {
        "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"}],
        "domain": "chat",
    },
    {"messages": [U("Capital of France?"), A("Paris")], "task": "geo", "keywords": ["geography"]},
    {"prompt": "Translate 'cat' to French", "response": "chat", "domain": "translation"},
    {"prompt": "Opposite of hot?", "completion": "cold"},
]
PREF = [
    {"prompt": "Best colour?", "chosen": "Blue.", "rejected": "I refuse."},
    {"chosen": [U("2+2?"), A("4")], "rejected": [U("2+2?"), A("5")]},
]


def pool(run) -> pl.DataFrame:
    return RunDir(run).read_pool()


def side(run, name) -> pl.DataFrame:
    return pl.read_parquet(Path(run) / name)


def check_invariant(rep, run):
    assert rep.n_unique + rep.n_duplicate + rep.n_quarantined == rep.n_read
    meta = read_json(RunDir(run).ingest_path)
    c = meta["counts"]
    assert c == {
        "read": rep.n_read,
        "unique": rep.n_unique,
        "duplicate": rep.n_duplicate,
        "quarantined": rep.n_quarantined,
    }
    assert len(pool(run)) == rep.n_unique
    assert len(side(run, "duplicates.parquet")) == rep.n_duplicate
    assert len(side(run, "quarantine.parquet")) == rep.n_quarantined


def test_mixed_layouts_jsonl(tmp_path):
    f = write_jsonl(tmp_path / "in.jsonl", SFT + PREF)
    rep = ingest(f, tmp_path / "run", progress=False)
    check_invariant(rep, tmp_path / "run")
    df = pool(tmp_path / "run")
    assert df.schema == POOL_SCHEMA
    assert rep.n_read == 7 and rep.n_unique == 7 and rep.n_quarantined == 0
    assert df["row"].to_list() == list(range(7))
    assert set(df["source"]) == {str(f)}
    assert df["kind"].to_list() == ["sft"] * 5 + ["preference"] * 2
    assert df["domain"].to_list() == ["math", "chat", None, "translation", None, None, None]
    assert df["prompt"].to_list() == [
        "Add the numbers.\n\n2 + 3", "Hi there", "Capital of France?", "Translate 'cat' to French",
        "Opposite of hot?", "Best colour?", "2+2?",
    ]  # fmt: skip
    assert df["response"].to_list() == ["5", "Hello!", "Paris", "chat", "cold", "Blue.", "4"]
    assert df["rejected"].to_list() == [None] * 5 + ["I refuse.", "5"]
    assert df["messages"][2].to_list() == [U("Capital of France?"), A("Paris")]
    assert json.loads(df["meta"][2]) == {"task": "geo", "keywords": ["geography"]}
    ids = df["id"].to_list()
    assert ids[6] == content_id("preference", [U("2+2?"), A("4")], "5")
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert rep.per_domain == {"(none)": 4, "chat": 1, "math": 1, "translation": 1}
    assert rep.per_kind == {"preference": 2, "sft": 5}
    assert df["n_duplicates"].to_list() == [0] * 7
    assert "7 rows read" in rep.summary()


def _all_formats(tmp_path: Path) -> dict[str, Path]:
    rows = [{"prompt": f"p{i}", "response": f"r{i}", "domain": "d" + str(i % 2)} for i in range(5)]
    out = {"jsonl": write_jsonl(tmp_path / "f" / "a.jsonl", rows)}
    out["json"] = tmp_path / "f" / "b.json"
    out["json"].write_text(json.dumps(rows, indent=2))
    out["parquet"] = tmp_path / "f" / "c.parquet"
    pl.DataFrame(rows).write_parquet(out["parquet"])
    out["csv"] = tmp_path / "f" / "d.csv"
    pl.DataFrame(rows).write_csv(out["csv"])
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_each_format_gives_the_same_pool(tmp_path, fmt):
    files = _all_formats(tmp_path)
    rep = ingest(files[fmt], tmp_path / "run", progress=False)
    df = pool(tmp_path / "run")
    ref_ids = [content_id("sft", [U(f"p{i}"), A(f"r{i}")]) for i in range(5)]
    assert df["id"].to_list() == ref_ids
    assert df["domain"].to_list() == ["d0", "d1", "d0", "d1", "d0"]
    assert df["row"].to_list() == list(range(5))
    assert rep.n_read == 5 and rep.n_unique == 5


def test_parquet_nested_message_lists_and_preference(tmp_path):
    f = tmp_path / "pref.parquet"
    pl.DataFrame(
        {
            "chosen": [[U("q1"), A("yes")], [U("q2"), A("ok")]],
            "rejected": [[U("q1"), A("no")], [U("q2"), A("meh")]],
            "domain": ["a", None],
        }
    ).write_parquet(f)
    rep = ingest(f, tmp_path / "run", progress=False)
    df = pool(tmp_path / "run")
    assert rep.n_unique == 2 and df["kind"].to_list() == ["preference"] * 2
    assert df["rejected"].to_list() == ["no", "meh"] and df["domain"].to_list() == ["a", None]
    assert df["meta"].to_list() == ["{}", "{}"]


def test_csv_with_messages_as_json_text_and_mapping(tmp_path):
    f = tmp_path / "qa.csv"
    f.write_text('question,answer,category\n"What is 2+2?",4,math\n"Multi\nline?","yes, indeed",misc\n')
    rep = ingest(
        f,
        tmp_path / "run",
        columns={"prompt": "question", "response": "answer", "domain": "category"},
        progress=False,
    )
    df = pool(tmp_path / "run")
    assert rep.n_unique == 2
    assert df["prompt"].to_list() == ["What is 2+2?", "Multi\nline?"]
    assert df["response"].to_list() == ["4", "yes, indeed"]
    assert df["domain"].to_list() == ["math", "misc"]
    assert read_json(RunDir(tmp_path / "run").ingest_path)["columns"] == {
        "prompt": "question", "response": "answer", "domain": "category"
    }  # fmt: skip
    g = tmp_path / "m.csv"
    pl.DataFrame({"messages": [json.dumps([U("hi"), A("yo")])]}).write_csv(g)
    ingest(g, tmp_path / "run2", progress=False)
    assert pool(tmp_path / "run2")["messages"][0].to_list() == [U("hi"), A("yo")]


def test_directory_and_glob_inputs(tmp_path):
    d = tmp_path / "data"
    write_jsonl(d / "b" / "x.jsonl", [{"prompt": "b", "response": "1"}])
    write_jsonl(d / "a.jsonl", [{"prompt": "a", "response": "1"}])
    write_jsonl(d / "c" / "z.jsonl", [{"prompt": "c", "response": "1"}])
    (d / "README.md").write_text("not data")
    (d / ".hidden.jsonl").write_text("garbage\n")
    rep = ingest(d, tmp_path / "run", progress=False)
    assert [Path(s).relative_to(d).as_posix() for s in rep.inputs] == ["a.jsonl", "b/x.jsonl", "c/z.jsonl"]
    assert pool(tmp_path / "run")["prompt"].to_list() == ["a", "b", "c"]
    rep = ingest(str(d / "*" / "*.jsonl"), tmp_path / "run2", progress=False)
    assert pool(tmp_path / "run2")["prompt"].to_list() == ["b", "c"]
    rep = ingest(str(d / "**" / "*.jsonl"), tmp_path / "run3", progress=False)
    assert sorted(pool(tmp_path / "run3")["prompt"].to_list()) == ["a", "b", "c"]
    # a list of inputs keeps its order; a file named twice is read once
    rep = ingest([d / "c" / "z.jsonl", d, d / "a.jsonl"], tmp_path / "run4", progress=False)
    assert pool(tmp_path / "run4")["prompt"].to_list() == ["c", "a", "b"]
    assert rep.n_read == 3


def test_run_dir_inside_input_dir_is_not_ingested(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a", "response": "1"}])
    ingest(tmp_path, tmp_path / "run", progress=False)
    rep = ingest(tmp_path, tmp_path / "run", progress=False)  # second time the run holds parquet files
    assert rep.inputs == [str(tmp_path / "a.jsonl")] and rep.n_read == 1


def test_unreadable_inputs_are_clear_errors(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(IngestError, match="nope.jsonl: no such file"):
        ingest(tmp_path / "nope.jsonl", run, progress=False)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(IngestError, match=r"notes.txt: unknown extension '.txt'"):
        ingest(tmp_path / "notes.txt", run, progress=False)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(IngestError, match="bad.parquet: not a readable parquet"):
        ingest(bad, run, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="empty: directory holds no"):
        ingest(tmp_path / "empty", run, progress=False)
    with pytest.raises(IngestError, match=r"\*.parquet: glob matches no"):
        ingest(str(tmp_path / "empty" / "*.parquet"), run, progress=False)
    notjson = tmp_path / "notjson.json"
    notjson.write_text("hello")
    with pytest.raises(IngestError, match="no input could be read: .*notjson.json: a .json file must hold"):
        ingest(notjson, run, progress=False)
    assert issubclass(IngestError, ValueError)
    assert not (run / "pool").exists()  # nothing half-written
    assert not list(run.glob(".ingest-*"))


def test_bad_rows_are_quarantined_with_source_row_reason(tmp_path):
    good = {"prompt": "ok", "response": "fine"}
    lines = [
        json.dumps(good).encode(),  # 0
        b'{"prompt": "a" "response": "b"}',  # 1 malformed
        json.dumps({"a": 1, "b": 2}).encode(),  # 2 no layout
        json.dumps({"prompt": "p", "response": ""}).encode(),  # 3 empty
        json.dumps({"instruction": "i", "output": 42}).encode(),  # 4 wrong type
        json.dumps({"messages": [1, 2]}).encode(),  # 5 wrong type
        '{"prompt": "caf\xe9", "response": "x"}'.encode("latin-1"),  # 6 undecodable
        json.dumps({"prompt": "x" * 300, "response": "big"}).encode(),  # 7 oversize
        b"",  # 8 blank: not a record
        json.dumps({"prompt": "ok2", "response": "fine2"}).encode(),  # 9
    ]
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    rep = ingest(f, tmp_path / "run", max_row_bytes=200, progress=False)
    check_invariant(rep, tmp_path / "run")
    q = side(tmp_path / "run", "quarantine.parquet")
    assert q.schema == QUARANTINE_SCHEMA
    assert set(q["source"]) == {str(f)}
    got = dict(zip(q["row"].to_list(), q["reason"].to_list(), strict=True))
    assert got[1] == "malformed_json: Expecting ',' delimiter at col 16"
    assert got[2] == "missing_fields: no known layout (keys: a, b)"
    assert got[3] == "empty_text: response"
    assert got[4] == "wrong_type: output is int"
    assert got[5] == "wrong_type: messages[0] is int, expected an object"
    assert got[6].startswith("undecodable_bytes: 'utf-8' codec can't decode byte 0xe9")
    assert got[7] == f"oversize_row: {len(lines[7])} B > 200 B"
    assert sorted(got) == [1, 2, 3, 4, 5, 6, 7]
    assert q.filter(pl.col("row") == 1)["raw"][0] == lines[1].decode()
    assert pool(tmp_path / "run")["row"].to_list() == [0, 9]
    assert rep.reasons == {"empty_text": 1, "malformed_json": 1, "missing_fields": 1, "oversize_row": 1,
                           "undecodable_bytes": 1, "wrong_type": 2}  # fmt: skip


def test_csv_bad_lines_do_not_kill_the_file(tmp_path):
    f = tmp_path / "x.csv"
    f.write_bytes(
        b"prompt,response\n"
        b"a,1\n"
        b"caf\xe9,2\n"  # row 1 undecodable
        b"b,2,extra\n"  # row 2 field count
        b"c,\n"  # row 3 empty response
        b"d,4\n"
    )
    rep = ingest(f, tmp_path / "run", progress=False)
    check_invariant(rep, tmp_path / "run")
    q = side(tmp_path / "run", "quarantine.parquet")
    got = dict(zip(q["row"].to_list(), q["reason"].to_list(), strict=True))
    assert got[1].startswith("undecodable_bytes:")
    assert got[2] == "malformed_csv: 3 fields, header has 2"
    assert got[3] == "empty_text: response"
    assert q.filter(pl.col("row") == 2)["raw"][0] == "b,2,extra"
    assert pool(tmp_path / "run")["prompt"].to_list() == ["a", "d"]
    assert pool(tmp_path / "run")["row"].to_list() == [0, 4]


def test_oversize_parquet_and_json_rows(tmp_path):
    rows = [{"prompt": "p", "response": "r" * 500}, {"prompt": "q", "response": "s"}]
    pl.DataFrame(rows).write_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.json").write_text(json.dumps(rows))
    rep = ingest(
        [tmp_path / "a.parquet", tmp_path / "b.json"], tmp_path / "run", max_row_bytes=300, progress=False
    )
    q = side(tmp_path / "run", "quarantine.parquet")
    assert q["row"].to_list() == [0, 0] and all(r.startswith("oversize_row: ") for r in q["reason"])
    assert len(q["raw"][0]) <= 2000
    assert rep.n_unique == 1 and rep.n_duplicate == 1


def test_huge_jsonl_line_is_skipped_without_reading_it_whole(tmp_path):
    f = tmp_path / "h.jsonl"
    big = json.dumps({"prompt": "p", "response": "x" * 50_000})
    f.write_text(big + "\n" + json.dumps({"prompt": "a", "response": "b"}) + "\n")
    rep = ingest(f, tmp_path / "run", max_row_bytes=1000, progress=False)
    q = side(tmp_path / "run", "quarantine.parquet")
    assert q["reason"].to_list() == [f"oversize_row: {len(big) / 1e3:.1f} kB > 1.0 kB"]
    assert big.startswith(q["raw"][0]) and 1000 <= len(q["raw"][0]) <= 2000
    assert rep.n_unique == 1 and pool(tmp_path / "run")["row"].to_list() == [1]


def test_duplicates_across_files_kept_once_and_ids_stable(tmp_path):
    r1 = {"prompt": "same", "response": "answer"}
    a = write_jsonl(tmp_path / "a.jsonl", [r1, {"prompt": "x", "response": "y"}, r1])
    b = tmp_path / "b.parquet"
    pl.DataFrame(
        {"instruction": ["same", "new"], "output": ["answer", "one"], "extra": [1, 2]}
    ).write_parquet(b)
    rep = ingest([a, b], tmp_path / "run", progress=False)
    check_invariant(rep, tmp_path / "run")
    df = pool(tmp_path / "run")
    kept = content_id("sft", [U("same"), A("answer")])
    assert df["id"].to_list()[0] == kept
    assert df.select("source", "row", "n_duplicates").rows() == [
        (str(a), 0, 2),
        (str(a), 1, 0),
        (str(b), 1, 0),
    ]
    d = side(tmp_path / "run", "duplicates.parquet")
    assert d.rows() == [(str(a), 2, kept), (str(b), 0, kept)]
    assert rep.n_duplicate == 2 and rep.per_source[str(b)] == {
        "read": 2,
        "unique": 1,
        "duplicate": 1,
        "quarantined": 0,
        "status": "ok",
    }
    # same content -> same ids in another run, other file order
    ingest([b, a], tmp_path / "run2", progress=False)
    df2 = pool(tmp_path / "run2")
    assert set(df2["id"]) == set(df["id"])
    assert df2.filter(pl.col("id") == kept).select("source", "row", "n_duplicates").rows() == [(str(b), 0, 2)]


def test_duplicates_across_shards_update_the_kept_row(tmp_path):
    rows = [{"prompt": f"p{i}", "response": "r"} for i in range(7)] + [{"prompt": "p1", "response": "r"}] * 3
    f = write_jsonl(tmp_path / "a.jsonl", rows)
    rep = ingest(f, tmp_path / "run", shard_rows=3, chunk_rows=2, progress=False)
    shards = sorted(p.name for p in (tmp_path / "run" / "pool").iterdir())
    assert shards == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    df = pool(tmp_path / "run")
    assert df["prompt"].to_list() == [f"p{i}" for i in range(7)]
    assert df["n_duplicates"].to_list() == [0, 3, 0, 0, 0, 0, 0]
    assert rep.n_shards == 3


def test_small_chunks_give_identical_output(tmp_path):
    rows = (SFT + PREF) * 3 + [{"bad": 1}, {"prompt": "", "response": "x"}]
    rows += [{"prompt": f"u{i}", "response": f"v{i}", "domain": f"d{i % 3}"} for i in range(40)]
    files = [write_jsonl(tmp_path / "in" / "a.jsonl", rows)]
    pl.DataFrame([{"prompt": f"u{i}", "response": f"v{i}"} for i in range(30)]).write_parquet(
        tmp_path / "in" / "b.parquet"
    )
    pl.DataFrame([{"prompt": f"w{i}", "response": f"v{i}"} for i in range(30)]).write_csv(
        tmp_path / "in" / "c.csv"
    )
    files = tmp_path / "in"
    ingest(files, tmp_path / "big", chunk_rows=10_000, progress=False)
    ingest(files, tmp_path / "small", chunk_rows=3, shard_rows=1000, progress=False)
    for name in ("duplicates.parquet", "quarantine.parquet"):
        assert side(tmp_path / "big", name).equals(side(tmp_path / "small", name))
    assert pool(tmp_path / "big").equals(pool(tmp_path / "small"))
    a, b = read_json(tmp_path / "big" / "ingest.json"), read_json(tmp_path / "small" / "ingest.json")
    assert a["counts"] == b["counts"] and a["pool_fingerprint"] == b["pool_fingerprint"]
    assert a["counts"] == {"read": 123, "unique": 77, "duplicate": 44, "quarantined": 2}


def test_rerun_replaces_pool_cleanly(tmp_path):
    run = tmp_path / "run"
    big = write_jsonl(tmp_path / "big.jsonl", [{"prompt": f"p{i}", "response": "r"} for i in range(10)])
    small = write_jsonl(tmp_path / "small.jsonl", [{"prompt": "only", "response": "one"}])
    ingest(big, run, shard_rows=3, progress=False)
    assert len(list((run / "pool").glob("shard-*.parquet"))) == 4
    rep = ingest(small, run, shard_rows=3, progress=False)
    assert [p.name for p in (run / "pool").iterdir()] == ["shard-00000.parquet"]
    assert pool(run)["prompt"].to_list() == ["only"]
    assert read_json(run / "ingest.json")["inputs"] == [str(small)] and rep.n_read == 1
    assert sorted(p.name for p in run.iterdir() if p.name != ".ingest.lock") == [
        "duplicates.parquet",
        "ingest.json",
        "pool",
        "quarantine.parquet",
        "stages",
    ]
    # a failing re-run leaves the previous pool untouched
    with pytest.raises(IngestError):
        ingest(tmp_path / "missing.jsonl", run, progress=False)
    assert pool(run)["prompt"].to_list() == ["only"]


def test_empty_inputs_write_empty_tables_with_schema(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n\n")
    rep = ingest(f, tmp_path / "run", progress=False)
    assert rep.n_read == 0
    q = side(tmp_path / "run", "quarantine.parquet")
    assert q.schema == QUARANTINE_SCHEMA and q.height == 0
    assert side(tmp_path / "run", "duplicates.parquet").height == 0
    empty = RunDir(tmp_path / "run").read_pool()
    assert empty.height == 0 and empty.schema == POOL_SCHEMA


def test_json_lines_in_a_json_file(tmp_path):
    f = tmp_path / "hf_export.json"  # `datasets.Dataset.to_json` writes JSON lines with a .json name
    f.write_text(
        json.dumps({"prompt": "a", "response": "b"})
        + "\n"
        + json.dumps({"prompt": "c", "response": "d"})
        + "\n"
    )
    rep = ingest(f, tmp_path / "run", progress=False)
    assert rep.n_unique == 2 and pool(tmp_path / "run")["row"].to_list() == [0, 1]


def test_failure_mid_ingest_keeps_previous_pool_and_no_temp_files(tmp_path):
    run = tmp_path / "run"
    first = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "keep", "response": "me"}])
    ingest(first, run, progress=False)
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    many = write_jsonl(tmp_path / "d" / "0.jsonl", [{"prompt": f"p{i}", "response": "r"} for i in range(50)])
    (tmp_path / "d" / "1.parquet").write_bytes(b"PAR1 corrupt")
    with pytest.raises(IngestError, match="1.parquet"):
        ingest([many, tmp_path / "d" / "1.parquet"], run, shard_rows=10, strict=True, progress=False)
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in run.iterdir() if p.name != ".ingest.lock") == [
        "duplicates.parquet",
        "ingest.json",
        "pool",
        "quarantine.parquet",
        "stages",
    ]


def test_progress_bar_reports_rows(tmp_path, capsys):
    f = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"p{i}", "response": "r"} for i in range(5)])
    ingest(f, tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert "ingest" in err and "rows/s" in err


def test_bad_parameters(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(ValueError, match="chunk_rows"):
        ingest(f, tmp_path / "run", chunk_rows=0, progress=False)
    with pytest.raises(ValueError, match="unknown field"):
        ingest(f, tmp_path / "run", columns={"question": "q"}, progress=False)
    with pytest.raises(IngestError, match="no inputs"):
        ingest([], tmp_path / "run", progress=False)


def test_concurrent_ingest_on_one_run_is_refused(tmp_path):
    import fcntl

    f = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}])
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".ingest.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(IngestError, match="another ingest is writing"):
            ingest(f, run, progress=False)
    assert ingest(f, run, progress=False).n_unique == 1


def test_reingesting_the_same_inputs_leaves_the_files_untouched(tmp_path):
    """An unchanged ingest keeps the pool's files (and their mtimes, which the keys of later stages read);
    changed inputs replace them."""
    src = tmp_path / "a.jsonl"
    src.write_text("\n".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) for i in range(5)) + "\nnot json\n")
    run = RunDir(tmp_path / "run")
    ingest(src, run, progress=False)
    files = sorted(run.pool_dir.iterdir()) + [run.duplicates_path, run.quarantine_path, run.ingest_path]
    stamps = [f.stat().st_mtime_ns for f in files]
    report = ingest(src, run, progress=False)
    assert report.n_unique == 5 and report.n_quarantined == 1
    assert [f.stat().st_mtime_ns for f in files] == stamps
    src.write_text("\n".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) for i in range(6)) + "\n")
    assert ingest(src, run, progress=False).n_unique == 6
    assert run.read_pool(["id"]).height == 6 and pl.read_parquet(run.quarantine_path).height == 0


def test_the_same_files_named_another_way_are_the_same_ingest(tmp_path, monkeypatch):
    """The stage key holds the resolved files: a relative path, the absolute one, a glob or the folder find
    the same file, so a second ingest is current and skipped; another file set is a new ingest."""
    data = tmp_path / "data"
    data.mkdir()
    src = data / "a.jsonl"
    src.write_text("\n".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) for i in range(3)) + "\n")
    monkeypatch.chdir(tmp_path)
    run = RunDir(tmp_path / "run")
    assert not ingest.run_stage("data/a.jsonl", run, progress=False).skipped
    for spelling in (str(src), "data/*.jsonl", "data", ["./data/a.jsonl"]):
        assert ingest.run_stage(spelling, run, progress=False).skipped, spelling
    (data / "b.jsonl").write_text(json.dumps({"prompt": "q9", "response": "a9"}) + "\n")
    assert not ingest.run_stage("data", run, progress=False).skipped
    assert run.read_pool(["id"]).height == 4


def test_an_ingest_with_the_same_rows_from_other_files_updates_its_record_only(tmp_path):
    """Another file set that yields the same pool keeps the data files (and their mtimes) but ingest.json says
    what was read, and a skipped call after it returns that record."""
    src = tmp_path / "u.jsonl"
    src.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    run = RunDir(tmp_path / "run")
    ingest(src, run, progress=False)
    stamp = next(run.pool_dir.iterdir()).stat().st_mtime_ns
    report = ingest([src, empty], run, progress=False)
    assert len(report.inputs) == 2 and next(run.pool_dir.iterdir()).stat().st_mtime_ns == stamp
    assert read_json(run.ingest_path)["inputs"] == report.inputs and read_json(run.ingest_path)["files"]["total"] == 2
    assert ingest.run_stage([src, empty], run, progress=False).value.inputs == report.inputs
