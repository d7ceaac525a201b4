"""RDS+: position-weighted mean pooling, cosine to the validation rows per task, round-robin over tasks; the
selector on the tiny fixture LM equals a hand computation and leaves validation copies out."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_lm import tiny_lm  # noqa: F401  (fixture)
from fixtures_pool import write_jsonl

from curate.select.rds import round_robin, task_scores


def test_position_weighted_mean_known_answer():
    import torch

    from index.features import position_weighted_mean

    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]], [[6.0, 0.0], [0.0, 3.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    got = position_weighted_mean(h, mask).numpy()
    # row 0: weights 1/6, 2/6, 3/6; row 1 (last position is padding): 1/3, 2/3
    np.testing.assert_allclose(got[0], [1 / 6 + 9 / 6, 2 / 6 + 9 / 6], rtol=1e-6)
    np.testing.assert_allclose(got[1], [6 / 3, 6 / 3], rtol=1e-6)


def test_task_scores_and_round_robin_known_answer():
    rows = 2 * np.array([[1, 0], [0, 1], [0.8, 0.6], [0.6, 0.8], [-1, 0], [0.96, 0.28], [1, 0]])  # not unit
    val = np.array([[1, 0], [0, 1], [0.28, 0.96]])
    names, s = task_scores(rows, val, ["a", "b", "b"])
    assert names == ["a", "b"]
    # task a: cosine to (1, 0); task b: the larger cosine to (0, 1) and (0.28, 0.96)
    np.testing.assert_allclose(s[:, 0], [1, 0, 0.8, 0.6, -1, 0.96, 1], atol=1e-6)
    np.testing.assert_allclose(s[:, 1], [0.28, 1, 0.8, 0.936, 0, 0.5376, 0.28], atol=1e-6)
    picks, task = round_robin(s, 7)
    # a: 0 (1, before the tie 6), b: 1, a: 6, b: 3, a: 5, b: 2 (0.8), a: its best left is 4 (-1)
    assert picks.tolist() == [0, 1, 6, 3, 5, 2, 4]
    assert task.tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert round_robin(s, 3)[0].tolist() == [0, 1, 6]
    # validation rows without a domain: one task, the plain ranking by cosine
    names, s1 = task_scores(rows, val[:1], [None])
    assert names == ["(none)"] and round_robin(s1, 3)[0].tolist() == [0, 6, 5]


VAL = [
    {"question": "what is two plus three ?", "answer": "the answer is five .", "domain": "math"},
    {"question": "translate hello world into french", "answer": "bonjour le monde", "domain": "lang"},
]
POOL = [
    {"prompt": "what is two plus three ?", "response": "the answer is five .", "domain": "math"},  # a copy
    {"prompt": "x = 3 * 4 + 2 so x equals 14", "response": "step 1 : read the question", "domain": "math"},
    {"prompt": "write a function that returns the sum of a list of numbers", "response": "def add ( a , b ) : "
     "return a + b", "domain": "code"},
    {"prompt": "sort these words : banana apple cherry", "response": "apple banana cherry", "domain": "code"},
    {"prompt": "translate hello world into french", "response": "bonjour", "domain": "lang"},
    {"prompt": "the capital of france is paris", "response": "and the capital of spain is madrid", "domain": "lang"},
    {"prompt": "explain why the sky is blue in one sentence", "response": "hello thanks", "domain": "science"},
    {"prompt": "a cat sat on the mat", "response": "and a dog sat on the log", "domain": "science"},
]


@pytest.fixture(scope="module")
def rds_run(tmp_path_factory):
    from curate.pool import ingest

    root = tmp_path_factory.mktemp("rds")
    src, val = write_jsonl(root / "pool.jsonl", POOL), write_jsonl(root / "val.jsonl", VAL)
    ingest([src], root / "run", progress=False)
    return root / "run", val


def _by_hand(model_path, conversations):
    """Position-weighted mean of the tiny LM's last (normed) hidden states, one text at a time, no padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    lm = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    out = []
    for conv in conversations:
        text = tok.apply_chat_template(conv, tokenize=False).removeprefix(tok.bos_token)
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = lm.model(input_ids=ids).last_hidden_state[0]
        w = torch.arange(1, h.shape[0] + 1, dtype=torch.float32)
        out.append(((w / w.sum())[:, None] * h).sum(0).numpy())
    return np.stack(out)


def test_rds_selector_matches_a_hand_computation(rds_run, tiny_lm):  # noqa: F811
    from curate.run import RunDir
    from curate.select import select

    run, val = rds_run
    pool = RunDir(run).read_pool(["id", "messages"])
    convs = pool["messages"].to_list()
    vconv = [[{"role": "user", "content": v["question"]}, {"role": "assistant", "content": v["answer"]}] for v in VAL]
    feats, vfeats = _by_hand(str(tiny_lm), convs), _by_hand(str(tiny_lm), vconv)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cos = unit(feats) @ unit(vfeats).T  # tasks sorted: lang (val row 1), math (val row 0)
    expect = round_robin(np.column_stack([cos[:, 1], cos[:, 0]]), 4)[0]

    off = select(run, "rds", 4, validation=val, model=str(tiny_lm), decontaminate=False, name="rds-off")
    assert off.positions.tolist() == expect.tolist()
    assert off.positions[1] == 0 and "task math, cosine=1" in off.reasons[1]  # the copy: first of its task
    assert off.stats["tasks"] == {"lang": 1, "math": 1}
    assert off.stats["decontamination"]["selected_contaminated_rows"] == 1

    on = select(run, "rds", 4, validation=val, model=str(tiny_lm), name="rds-on")
    assert 0 not in on.positions and len(on.positions) == 4
    assert on.positions.tolist() == [p for p in round_robin(np.column_stack([cos[:, 1], cos[:, 0]]), 5)[0]
                                     if p != 0][:4]
    assert on.stats["decontamination"]["by_reason"]["exact_id"] == 1
    # the pool features were cached and are reused
    assert len(list((run / "features").glob("*weighted_mean*/shard-*.npy"))) == 1


def test_rds_stratified_and_cli(rds_run, tiny_lm):  # noqa: F811
    from typer.testing import CliRunner

    from curate.cli import app
    from curate.select import select

    run, val = rds_run
    strat = select(run, "rds", 4, validation=val, model=str(tiny_lm), stratify="domain", name="rds-dom")
    assert strat.stats["stratify"]["by"] == "domain" and len(strat.positions) == 4 and 0 not in strat.positions
    res = CliRunner().invoke(app, ["select", "--run", str(run), "--method", "rds", "--budget", "3",
                                   "--validation", str(val), "-p", f"model={tiny_lm}", "--name", "rds-cli"])
    assert res.exit_code == 0, res.output
    assert "selected 3 rows with rds" in res.output
    res = CliRunner().invoke(app, ["select", "--run", str(run), "--method", "rds", "--budget", "3"])
    assert res.exit_code == 2 and "rds needs the target task's validation set" in res.output
