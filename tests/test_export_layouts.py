"""Exports of one selection in several layouts side by side, prompt-only rows in every layout, stale work
folders of a killed export removed, and input files counted in the manifest."""

from __future__ import annotations

import json

import polars as pl

from curate.export import export
from curate.pool import ingest
from curate.select import select
from index.io import read_json


def _run(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(4)] + [{"prompt": f"only {i}"} for i in range(3)]
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"broken\n')
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.json").write_text('"not records"')
    run = tmp_path / "run"
    ingest([src, tmp_path / "in"], run, progress=False)
    select(run, "random", budget=7, seed=0, name="all")
    return run


def test_layouts_side_by_side_with_prompt_rows(tmp_path):
    run = _run(tmp_path)
    stale = run / "export" / "all" / ".messages.killed"
    stale.mkdir(parents=True)
    (stale / "data-00000.parquet").write_bytes(b"")
    outs = {lay: export(run, "all", layout=lay, formats="jsonl") for lay in ("messages", "alpaca", "prompt")}
    assert not stale.exists()
    assert sorted(p.name for p in (run / "export" / "all").iterdir()) == ["alpaca", "messages", "prompt"]
    for lay, out in outs.items():
        assert out == run / "export" / "all" / lay
        assert read_json(out / "manifest.json")["layout"] == lay
    prompts = pl.read_ndjson(outs["prompt"] / "data-00000.jsonl")
    assert prompts.columns == ["prompt", "weight", "id", "domain"] and prompts.height == 7
    alpaca = pl.read_ndjson(outs["alpaca"] / "data-00000.jsonl")
    got = dict(zip(alpaca["instruction"], alpaca["output"], strict=True))
    assert got["only 1"] == "" and got["q2"] == "a2"
    msgs = pl.read_ndjson(outs["messages"] / "data-00000.jsonl")
    last = {m[0]["content"]: m[-1]["role"] for m in msgs["messages"].to_list()}
    assert last["only 0"] == "user" and last["q0"] == "assistant"
    man = read_json(outs["messages"] / "manifest.json")
    assert man["input_files"] == {"total": 2, "ok": 1, "partial": 0, "failed": 1}
    assert list(man["input_file_errors"]) == [str(tmp_path / "in" / "notes.json")]
    c = man["counts"]
    assert (c["read"], c["selected"], c["quarantined"]) == (8, 7, 1)
    assert c["selected"] + c["not_selected"] + c["duplicate"] + c["quarantined"] == c["read"]
