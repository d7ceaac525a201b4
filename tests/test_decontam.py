"""Decontamination: pool copies of validation rows are found (exact id, exact text, cosine >= threshold),
recorded at the validation step, left out of selections by default (stratified too) and listed in the sidecar."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_pool import write_jsonl

from curate.signals.decontam import find_contamination, item_id, text_key
from curate.signals.validation import ValItem

VAL = [
    {"question": "what is two plus three ?", "answer": "five", "domain": "math"},
    {"question": "translate hello world into french", "answer": "bonjour le monde", "domain": "lang"},
    {"question": "sort these words : banana apple cherry", "answer": "apple banana cherry", "domain": "code"},
]

POOL = [
    # 0: an exact copy of validation row 0 (same content id once ingested)
    {"prompt": "what is two plus three ?", "response": "five", "domain": "math"},
    # 1: validation row 1 with other case and spacing: an exact text match, another id
    {"prompt": "Translate  hello world into French", "response": "Bonjour le monde", "domain": "lang"},
    {"prompt": "what is four plus four ?", "response": "eight", "domain": "math"},
    {"prompt": "x = 3 * 4 + 2 so what is x ?", "response": "x equals 14 .", "domain": "math"},
    {"prompt": "write a function that returns the sum of a list", "response": "def add ( a , b ) : return a + b",
     "domain": "code"},
    {"prompt": "explain why the sky is blue", "response": "light scatters more at short wavelengths",
     "domain": "science"},
    {"prompt": "a cat sat on the mat", "response": "and a dog sat on the log", "domain": "science"},
    {"prompt": "name a colour", "response": "blue", "domain": "lang"},
    {"prompt": "the capital of france is ?", "response": "paris", "domain": "lang"},
    {"prompt": "step 1 : read the question . step 2 : solve it", "response": "step 3 : answer", "domain": "math"},
]


def test_find_contamination_known_answer():
    items = [ValItem([{"role": "user", "content": v["question"]}], v["answer"]) for v in VAL]
    ids = [item_id(items[0]), "b", "c", "d"]
    prompts = ["what is two plus three ?", "TRANSLATE hello   world into french",
               "please sort these words : banana apple cherry", "r"]
    responses = ["five", "bonjour le monde", "apple banana cherry", "s"]
    val_vec = np.eye(3, 4, dtype=np.float32)
    c = 0.96
    vec = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, c, np.sqrt(1 - c * c)], [0, 0, 0.94, np.sqrt(1 - 0.94**2)]],
                   dtype=np.float32)
    rows = find_contamination(ids, prompts, responses, items, vectors=vec, val_vectors=val_vec, threshold=0.95)
    got = [(r["position"], r["reason"], r["val_row"]) for r in rows]
    assert got == [(0, "exact_id", 0), (1, "exact_text", 1), (2, "near_duplicate", 2)]  # 0.94 < 0.95: kept
    assert rows[2]["cosine"] == pytest.approx(c, abs=1e-6) and rows[0]["cosine"] == pytest.approx(1.0)
    assert rows[2]["overlap"] == 1.0  # it holds both 8-grams of the item's 9 words
    assert text_key(" A  b\n", "C") == text_key("a b", "c") != text_key("a b", "c d")
    # without vectors only the exact matches; a stricter threshold drops the near duplicate
    assert [r["position"] for r in find_contamination(ids, prompts, responses, items)] == [0, 1]
    assert len(find_contamination(ids, prompts, responses, items, vectors=vec, val_vectors=val_vec,
                                  threshold=0.97)) == 2
    # an empty pool with its (empty) embeddings has nothing to find
    assert find_contamination([], [], [], items, vectors=vec[:0], val_vectors=val_vec) == []
    with pytest.raises(ValueError, match="threshold must lie in"):
        find_contamination(ids, prompts, responses, items, threshold=1.5)


def test_near_duplicates_of_a_templated_task_need_the_items_own_text():
    """Twelve rows of one template (the same question frame and options, another path and answer) all sit above
    the cosine threshold: the frame's n-grams are in 10+ of them, so only the item's own n-grams (its path, its
    answer) count, and only the row that copies those is a near duplicate."""
    from curate.signals.decontam import own_overlap, word_ngrams

    frame = "this svg path element <path d={}/> draws a A. circle B. heptagon C. hexagon D. kite E. line F. octagon"
    item = ValItem([{"role": "user", "content": frame.format('"M 58.64,7.09 L 52.95,1.23 L 44.35,4.34"')}], "E. line")
    paths = [f'"M {i}.5,{i}.1 L {2 * i}.9,{i}.3 L {3 * i}.2,4.{i}"' for i in range(11)]
    prompts = [frame.format(pt) for pt in paths] + ["  " + frame.format('"M 58.64,7.09 L 52.95,1.23 L 44.35,4.34"')]
    responses = ["F. octagon"] * 11 + ["E. line (a copy)"]
    vec = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (12, 1))
    rows = find_contamination([str(i) for i in range(12)], prompts, responses, [item], vectors=vec,
                              val_vectors=np.array([[1.0, 0.0]], dtype=np.float32), threshold=0.95)
    assert [(r["position"], r["reason"]) for r in rows] == [(11, "near_duplicate")]
    text = item.question_text + " " + item.answer
    texts = [f"{p} {r}" for p, r in zip(prompts, responses, strict=True)]
    ov = own_overlap(text, texts)
    assert ov[:11].max() == 0.0 and ov[11] == rows[0]["overlap"] > 0.5
    # below TEMPLATE_ROWS rows the frame counts as the item's own text: the plain share of its 8-grams
    grams = word_ngrams(text, 8)
    plain = [len(grams & word_ngrams(t, 8)) / len(grams) for t in texts[:3]]
    assert own_overlap(text, texts[:3]).tolist() == plain and min(plain) > 0


def test_the_template_is_counted_over_the_items_nearest_rows():
    """A templated task with only 3 siblings above the cosine threshold (a long shared preamble; the other 8 at
    0.9): its template is still found in the item's nearest rows, so only the copy is a near duplicate. Counting
    the template over the rows above the threshold alone (fewer than TEMPLATE_ROWS) flagged every sibling."""
    from curate.signals.decontam import TEMPLATE_ROWS, own_overlap

    frame = ("given the database schema below with the tables singer ( id name age country ) concert ( id year "
             "stadium ) and stadium ( id name capacity location ) write the sql query that answers the question "
             "below and return only the query : {}")
    item = ValItem([{"role": "user", "content": frame.format("how many singers are older than forty ?")}],
                   "select count ( * ) from singer where age > 40")
    prompts = [frame.format(f"list the names of stadiums with capacity above {i}000 please") for i in range(11)]
    prompts.append(frame.format("how many singers are older than forty ?"))
    responses = [f"select name from stadium where capacity > {i}000" for i in range(11)]
    responses.append("select count ( * ) from singer where age > 40 ;")
    c = 0.9
    vec = np.array([[1.0, 0.0]] * 3 + [[c, np.sqrt(1 - c * c)]] * 8 + [[1.0, 0.0]], dtype=np.float32)
    rows = find_contamination([str(i) for i in range(12)], prompts, responses, [item], vectors=vec,
                              val_vectors=np.array([[1.0, 0.0]], dtype=np.float32), threshold=0.95)
    assert [(r["position"], r["reason"]) for r in rows] == [(11, "near_duplicate")]
    above = [f"{prompts[p]} {responses[p]}" for p in (0, 1, 2, 11)]
    assert len(above) < TEMPLATE_ROWS
    text = item.question_text + " " + item.answer
    assert own_overlap(text, above)[:3].min() >= 0.5  # the old rule: the siblings passed the text check


@pytest.fixture(scope="module")
def contaminated_run(tmp_path_factory):
    """An ingested, embedded pool holding copies of two validation rows, and the validation file."""
    from curate.embed import embed
    from curate.pool import ingest

    root = tmp_path_factory.mktemp("decontam")
    src, val = write_jsonl(root / "pool.jsonl", POOL), write_jsonl(root / "val.jsonl", VAL)
    run = root / "run"
    ingest([src], run, progress=False)
    embed(run, progress=False)
    return run, val


def _ids(run):
    from curate.run import RunDir

    return RunDir(run).read_pool(["id", "prompt"])


def test_score_with_validation_records_the_copies(contaminated_run):
    from curate.embed import load_vectors
    from curate.signals import score
    from curate.signals.decontam import encode_like_pool, record_path
    from curate.signals.validation import read_validation

    run, val = contaminated_run
    score(run, ["turns"], validation=val, progress=False)  # any signal: the validation step records copies
    rec = json.loads(record_path(run, val).read_text())
    pool = _ids(run)
    reasons = {pool["prompt"].to_list().index(p): r for p, r in
               [(pool.filter(pool["id"] == x["id"])["prompt"][0], x["reason"]) for x in rec["rows"]]}
    assert reasons[0] == "exact_id" and reasons[1] == "exact_text"
    # near duplicates are exactly the other rows at cosine >= 0.95 with the run's own encoder
    cos = np.asarray(load_vectors(run)) @ encode_like_pool(run, read_validation(val)).T
    near = {p for p in np.flatnonzero(cos.max(1) >= 0.95) if p not in (0, 1)}
    assert {p for p, r in reasons.items() if r == "near_duplicate"} == near
    assert rec["counts"]["total"] == len(rec["rows"]) == 2 + len(near) and rec["threshold"] == 0.95


def test_selection_leaves_copies_out_by_default(contaminated_run, tmp_path):
    from curate.select import select
    from curate.signals import score

    run, val = contaminated_run
    score(run, ["relevance"], validation=val, relevance_mode="max", progress=False)
    pool = _ids(run)
    copies = set(pool["id"].to_list()[:2])
    # the copies have the highest relevance: without decontamination they come first
    off = select(run, "top-signal", 3, signal="relevance", decontaminate=False, name="rel-off")
    assert copies <= set(off.ids)
    assert off.stats["decontamination"]["excluded"] is False
    assert off.stats["decontamination"]["selected_contaminated_rows"] >= 2
    on = select(run, "top-signal", 3, signal="relevance", name="rel-on")
    dec = on.stats["decontamination"]
    listed = {r["id"] for r in dec["rows"]}
    assert copies <= listed and not listed & set(on.ids) and len(on.ids) == 3
    assert dec["excluded"] is True and dec["selected_contaminated_rows"] == 0
    assert dec["by_reason"]["exact_id"] == 1 and dec["by_reason"]["exact_text"] == 1
    side = json.loads((run / "selections" / "rel-on.json").read_text())
    assert {r["id"] for r in side["stats"]["decontamination"]["rows"]} == listed
    # stratified by domain: the copies stay out and the budget is still met
    strat = select(run, "top-signal", 6, signal="relevance", stratify="domain", name="rel-strat")
    assert not listed & set(strat.ids) and len(strat.ids) == 6
    assert strat.stats["stratify"]["by"] == "domain"


def test_export_manifest_lists_the_decontamination(contaminated_run):
    from curate.export import export
    from curate.select import select

    run, val = contaminated_run
    select(run, "random", 4, seed=1, name="rnd", validation=val)
    out = export(run, "rnd")
    manifest = json.loads((out / "manifest.json").read_text())
    dec = manifest["selection_stats"]["decontamination"]
    assert dec["contaminated_rows"] >= 2 and dec["selected_contaminated_rows"] == 0
    assert {s["validation"] for s in dec["validation_sets"]} == {str(val)}


def test_select_cli_no_decontaminate(contaminated_run):
    from typer.testing import CliRunner

    from curate.cli import app

    run, val = contaminated_run
    res = CliRunner().invoke(app, ["select", "--run", str(run), "--method", "longest", "--budget", "10",
                                   "--name", "all", "--validation", str(val), "--no-decontaminate"])
    assert res.exit_code == 0, res.output
    assert "kept eligible" in res.output
    res = CliRunner().invoke(app, ["select", "--run", str(run), "--method", "longest", "--budget", "10",
                                   "--name", "clean"])
    assert res.exit_code == 0, res.output
    side = json.loads((run / "selections" / "clean.json").read_text())
    assert side["n"] == 10 - side["stats"]["decontamination"]["contaminated_rows"]
