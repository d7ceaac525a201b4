"""Export: layouts round-trip through `datasets` (parquet and jsonl), TRL data utilities accept them,
ids.parquet, shards, and manifest accounting that adds up to the rows read."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from fixtures_lm import CHAT_TEMPLATE
from fixtures_pool import Fixed, make_run

from curate.export import export
from curate.select import PoolView, Selection, make_selector, select
from index.io import read_json, write_json


@pytest.fixture()
def run(tmp_path):
    r = make_run(tmp_path / "run", n=24)
    # rows 5 (system turn) and 7 (multi-turn) are always selected, plus 4 random others, with weights
    sel = make_selector("random").select(PoolView.from_run(r), "6", seed=0)
    pos = [5, 7] + [int(p) for p in sel.positions if p not in (5, 7)][:4]
    Selection(
        positions=np.array(pos),
        ids=[str(PoolView.from_run(r).ids[p]) for p in pos],
        weights=np.array([2.0, 0.5, 1.0, 1.0, 1.5, 1.0]),
        reasons=["test"] * 6,
        method="manual",
        seed=0,
        budget="6",
    ).save(r, "pick")
    return r


def _load(path, fmt, tmp_path):
    import datasets

    files = sorted(str(p) for p in path.glob(f"data-*.{fmt}"))
    builder = "json" if fmt == "jsonl" else "parquet"
    return datasets.load_dataset(builder, data_files=files, split="train", cache_dir=str(tmp_path / "hf"))


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_messages_layout_round_trip_and_trl(run, tmp_path, fmt):
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    out = export(run, "pick", layout="messages", formats=(fmt,), shard_rows=4)
    assert out == run.export_dir / "pick" / "messages"
    assert sorted(p.name for p in out.glob("data-*")) == [f"data-00000.{fmt}", f"data-00001.{fmt}"]
    ds = _load(out, fmt, tmp_path)
    sel = Selection.load(run, "pick")
    assert list(ds["id"]) == sel.ids  # rank order
    assert list(ds["weight"]) == [2.0, 0.5, 1.0, 1.0, 1.5, 1.0]
    pool = run.read_pool(["id", "messages", "domain"])
    by_id = {r["id"]: r for r in pool.to_dicts()}
    for row in ds:
        assert row["messages"] == by_id[row["id"]]["messages"]
        assert row["domain"] == by_id[row["id"]]["domain"]
    assert ds[0]["messages"][0] == {"role": "system", "content": "You are terse."}
    assert [m["role"] for m in ds[1]["messages"]] == ["user", "assistant", "user", "assistant"]
    # TRL sees a conversational dataset and applies a chat template to it
    assert is_conversational(ds[0])
    tok = _tiny_tokenizer()
    text = maybe_apply_chat_template({"messages": ds[0]["messages"]}, tok)["text"]
    assert text.startswith("<s><|system|> You are terse. <|end|>")
    mapped = ds.map(lambda r: maybe_apply_chat_template(r, tok), remove_columns=["messages"])
    enc = tok(list(mapped["text"]))
    assert len(enc["input_ids"]) == 6 and all(len(x) > 0 for x in enc["input_ids"])


def test_alpaca_and_sharegpt_layouts(run, tmp_path):
    from trl.data_utils import is_conversational_from_value, maybe_convert_to_chatml

    pool = {r["id"]: r for r in run.read_pool(["id", "prompt", "response", "messages"]).to_dicts()}
    out = export(run, "pick", layout="alpaca", formats=("parquet", "jsonl"))
    for fmt in ("parquet", "jsonl"):
        ds = _load(out, fmt, tmp_path / fmt)
        assert set(ds.column_names) == {"instruction", "input", "output", "weight", "id", "domain"}
        for row in ds:
            assert row["instruction"] == pool[row["id"]]["prompt"]
            assert row["output"] == pool[row["id"]]["response"]
            assert row["input"] == ""
    out = export(run, "pick", layout="sharegpt", formats=("jsonl",))
    ds = _load(out, "jsonl", tmp_path / "sg")
    assert [c["from"] for c in ds[0]["conversations"]] == ["system", "human", "gpt"]
    assert is_conversational_from_value(ds[0])
    back = maybe_convert_to_chatml(dict(ds[1]))  # TRL renames the keys from/value -> role/content
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    assert [{"role": roles[m["role"]], "content": m["content"]} for m in back["messages"]] == pool[ds[1]["id"]]["messages"]


def test_preference_layout(tmp_path):
    from trl.data_utils import is_conversational

    r = make_run(tmp_path / "pref", n=12, preference_every=2)  # even rows are preference rows
    with pytest.raises(ValueError, match="unknown export layout 'nope'"):
        export(r, "x", layout="nope")
    prefs = [p for p in range(12) if p % 2 == 0][:3]
    view = PoolView.from_run(r)

    Fixed(order=tuple(prefs)).select(view, "3").save(r, "pref")
    out = export(r, "pref", layout="preference", formats=("parquet",))
    ds = _load(out, "parquet", tmp_path)
    assert set(ds.column_names) == {"prompt", "chosen", "rejected", "weight", "id", "domain"}
    assert list(ds["rejected"]) == [f"bad answer {p}" for p in prefs]
    assert not is_conversational(ds[0])
    # a selection holding sft rows cannot be exported as preference
    Fixed(order=(0, 1)).select(view, "2").save(r, "mixed")
    with pytest.raises(ValueError, match="1 non-preference rows"):
        export(r, "mixed", layout="preference")
    # a pool without preference rows: clear error
    s = make_run(tmp_path / "sft2", n=6)
    select(s, "random", 2)
    with pytest.raises(ValueError, match="has none"):
        export(s, "random", layout="preference")


def test_manifest_accounts_for_every_row(run):
    out = export(run, "pick", formats=("parquet",))
    m = read_json(out / "manifest.json")
    c = m["counts"]
    assert c == {
        "read": 24 + 3 + 2,
        "selected": 6,
        "not_selected": 18,
        "duplicate": 3,
        "quarantined": 2,
        "duplicates_of_selected": c["duplicates_of_selected"],
    }
    assert c["selected"] + c["not_selected"] + c["duplicate"] + c["quarantined"] == c["read"]
    sel = Selection.load(run, "pick")
    dup_ids = set(pl.read_parquet(run.duplicates_path)["id"].to_list())
    assert c["duplicates_of_selected"] == len(dup_ids & set(sel.ids))
    assert m["quarantine_reasons"] == {"invalid JSON": 2}
    assert m["inputs"] == ["data/in.jsonl"]
    assert m["domains"]["pool"] == {"(none)": 6, "chat": 6, "code": 6, "math": 6}
    assert sum(m["domains"]["selected"].values()) == 6
    assert m["method"] == "manual" and m["seed"] == 0 and m["budget"] == "6"
    assert m["fingerprints"]["embedding"]["fingerprint"] == "fixture-fp"
    assert set(m["fingerprints"]["signals"]) == {"quality", "tokens"}
    assert {"curate", "polars", "torch", "faiss", "sentence-transformers", "transformers"} <= set(m["packages"])
    assert m["packages"]["polars"] == pl.__version__
    assert m["coverage"]["report"] is None and "map not built" in m["coverage"]["note"]
    assert m["weights"]["sum"] == 7.0
    ids = pl.read_parquet(out / "ids.parquet")
    assert ids.columns == ["id", "weight"] and ids["id"].to_list() == sorted(sel.ids)
    assert dict(zip(ids["id"], ids["weight"], strict=True)) == dict(zip(sel.ids, sel.weights.tolist(), strict=True))
    # manifest is deterministic: a second export gives the same bytes
    first = (out / "manifest.json").read_bytes()
    export(run, "pick", formats=("parquet",))
    assert (out / "manifest.json").read_bytes() == first


def test_manifest_refuses_inconsistent_run(run):
    ing = read_json(run.ingest_path)
    ing["counts"]["read"] += 1
    write_json(run.ingest_path, ing)
    with pytest.raises(ValueError, match="does not add up"):
        export(run, "pick")


def test_reexport_replaces_old_shards_and_custom_out(run, tmp_path):
    out = export(run, "pick", formats=("jsonl",), shard_rows=2)
    assert len(list(out.glob("data-*.jsonl"))) == 3
    out = export(run, "pick", formats=("jsonl",), shard_rows=100)
    assert [p.name for p in out.glob("data-*")] == ["data-00000.jsonl"]
    lines = (out / "data-00000.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == Selection.load(run, "pick").ids
    other = export(run, "pick", out=tmp_path / "elsewhere", formats="parquet")
    assert other == tmp_path / "elsewhere" and (other / "manifest.json").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    with pytest.raises(ValueError, match="unknown export format"):
        export(run, "pick", formats=("csv",))
    with pytest.raises(FileNotFoundError, match="select --name nope"):
        export(run, "nope")


def test_manifest_reuses_the_coverage_report_that_select_stored(run, monkeypatch):
    import curate.export as export_mod

    side_path = run.selection_path("pick").with_suffix(".json")
    side = read_json(side_path)
    stored = {"coverage": 0.25, "covering_radius": 0.5}
    side.setdefault("stats", {})["coverage"] = stored
    side_path.write_text(json.dumps(side))

    def boom(*a, **k):
        raise AssertionError("the coverage report was computed again")

    monkeypatch.setattr(export_mod, "coverage", boom)
    m = read_json(export(run, "pick", formats=("parquet",)) / "manifest.json")
    assert m["coverage"] == {"report": stored}


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(run, umask):
    """Temporary files and folders are private (0600 / 0700); what is renamed into place takes the mode a plain
    `open` would give, so an export on a shared file system is readable by those the umask lets read it."""
    import os
    import stat

    old = os.umask(umask)
    try:
        out = export(run.root, "pick", formats=["jsonl"])
        write_json(run.root / "probe.json", {"a": 1})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, out / "manifest.json", out / "data-00000.jsonl",
                                                              run.root / "probe.json"]}
    assert modes == {out.name: 0o777 & ~umask, "manifest.json": 0o666 & ~umask, "data-00000.jsonl": 0o666 & ~umask,
                     "probe.json": 0o666 & ~umask}


def test_rows_without_a_response_are_noted_in_the_manifest(tmp_path):
    from fixtures_pool import write_jsonl

    from curate.pool import ingest

    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q1", "response": "a1"}, {"prompt": "q2", "response": "a2"},
                                             {"prompt": "only a prompt"}])
    ingest([src], tmp_path / "run", progress=False)
    select(tmp_path / "run", "random", "100%", stratify="none")
    man = read_json(export(tmp_path / "run", "random", layout="alpaca") / "manifest.json")
    assert man["kinds"] == {"sft": 2, "prompt": 1}
    assert man["note"].startswith("1 selected rows have no response (kind prompt): the alpaca layout writes them")
    assert "note" not in read_json(export(tmp_path / "run", "random", layout="prompt") / "manifest.json")


def test_preference_rows_with_system_or_earlier_turns_export_conversational_and_round_trip(tmp_path):
    """A prompt of more than one user turn is exported as messages (TRL conversational preference), not
    flattened into 'system: ...' text; re-ingesting the export gives the same conversations and pairs."""
    from trl.data_utils import is_conversational

    from curate.pool import ingest

    rows = [
        {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Q1"}],
         "chosen": "A1", "rejected": "no"},
        {"prompt": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"},
                    {"role": "user", "content": "Q3"}], "chosen": "A3", "rejected": "nope"},
        {"prompt": "Q4", "chosen": "A4", "rejected": "never"},
    ]
    src = tmp_path / "pref.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest(src, tmp_path / "run", progress=False)
    select(tmp_path / "run", "random", "100%", name="all")
    out = export(tmp_path / "run", "all", layout="preference", formats=("jsonl",))
    ds = _load(out, "jsonl", tmp_path)
    assert all(is_conversational(ds[i]) for i in range(3))
    ingest(out, tmp_path / "again", progress=False)
    cols = ["messages", "rejected", "kind"]
    a = pl.read_parquet(tmp_path / "run" / "pool").select("id", *cols).sort("id")
    b = pl.read_parquet(tmp_path / "again" / "pool").select("id", *cols).sort("id")
    assert a.equals(b) and set(a["kind"]) == {"preference"}


def test_ingest_does_not_repeat_a_text_prompt_that_whole_conversations_hold_after_a_system_turn():
    from curate.pool import normalise

    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    n = normalise({"prompt": "Q", "chosen": [*conv, {"role": "assistant", "content": "A"}],
                   "rejected": [*conv, {"role": "assistant", "content": "B"}]})
    assert n.messages == [*conv, {"role": "assistant", "content": "A"}] and n.rejected == "B"
