"""ICL proxy: the cached shared-prefix pass equals the plain one, and a relevant demonstration beats an
irrelevant one of the same length on a model that can copy from its context."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_icl import copy_lm  # noqa: F401
from fixtures_lm import tiny_lm  # noqa: F401
from signals_helpers import ROWS, make_pool, write_validation

from curate.run import RunDir
from curate.signals import load_signal, score
from curate.signals.icl import icl_gains
from curate.signals.lm import LMScorer, _shared_prefix
from curate.signals.validation import read_validation


def chat(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def pool_convs() -> list[list[dict]]:
    return [chat(p, r) for _, p, r, _ in ROWS]


@pytest.mark.parametrize("eot", [False, True])
def test_cached_prefix_gains_equal_the_uncached_path(tmp_path, tiny_lm, eot):  # noqa: F811
    # a small token budget forces several batches of groups with prefixes of different lengths (padded)
    sc = LMScorer(tiny_lm, batch_tokens=96)
    val = read_validation(write_validation(tmp_path / "val.jsonl"))
    rows = pool_convs()
    plain, plain_toks = icl_gains(sc, rows, val, eot=eot, cache=False)
    cached, cached_toks = icl_gains(sc, rows, val, eot=eot, cache=True)
    np.testing.assert_allclose(cached, plain, atol=1e-4, rtol=0)
    assert np.ptp(plain) > 1e-2  # the rows differ, so equality is not trivial
    assert cached_toks < 0.8 * plain_toks  # each demo is forwarded once, not once per validation row
    # k = 2: the other demo sits before the row in both terms; both the with and the base groups are cached
    others = [[rows[(i + 3) % len(rows)]] for i in range(len(rows))]
    plain2, _ = icl_gains(sc, rows, val, others=others, eot=eot, cache=False)
    cached2, _ = icl_gains(sc, rows, val, others=others, eot=eot, cache=True)
    np.testing.assert_allclose(cached2, plain2, atol=1e-4, rtol=0)
    assert not np.allclose(plain2, plain, atol=1e-3)


def test_shared_prefix_nll_equals_plain_per_sequence(tiny_lm):  # noqa: F811
    sc = LMScorer(tiny_lm, batch_tokens=64)
    convs = pool_convs()
    groups = [[sc.encode(convs[i] + convs[j]) for j in range(4)] for i in range(len(convs))]
    groups.append([sc.encode(convs[0])])  # one sequence: its prompt is the prefix
    groups.append([sc.encode(c) for c in convs])  # barely shared: only "<s> <|user|>"
    flat = [s for g in groups for s in g]
    ref = sc.nll_parts(flat)
    got, forwarded = sc.nll_shared_prefix(groups)
    np.testing.assert_allclose(got.stack(), ref.stack(), atol=1e-4, rtol=0)
    assert (got.resp_n == ref.resp_n).all() and (got.eot_n == ref.eot_n).all()
    assert forwarded < sum(len(s.ids) for s in flat)


def test_a_truncated_sequence_does_not_cost_its_group_the_shared_prefix(tiny_lm):  # noqa: F811
    """One sequence over max_length is cut from the left, so it does not start with the group's demo: it is
    scored alone and the others still share their prefix (before, the whole group was scored uncached)."""
    convs = pool_convs()
    full = LMScorer(tiny_lm)
    sc = LMScorer(tiny_lm, batch_tokens=256,
                  max_length=max(len(full.encode(a + b).ids) for a in convs for b in convs[:3]))
    long_tail = [{"role": "user", "content": " ".join(["word"] * 200)}, {"role": "assistant", "content": "yes"}]
    groups = [[sc.encode(convs[i] + convs[j]) for j in range(3)] + [sc.encode(convs[i] + long_tail)]
              for i in range(len(convs))]
    assert all(g[-1].truncated and not any(s.truncated for s in g[:-1]) for g in groups)
    flat = [s for g in groups for s in g]
    ref = sc.nll_parts(flat)
    got, forwarded = sc.nll_shared_prefix(groups)
    np.testing.assert_allclose(got.stack(), ref.stack(), atol=1e-4, rtol=0)
    prefix = [_shared_prefix(g[:-1]) for g in groups]
    assert min(prefix) > 0
    # each demo prefix forwarded once per group: what the cache saves is (members - 1) x prefix
    assert forwarded == sum(len(s.ids) for s in flat) - sum(2 * p for p in prefix)


def test_relevant_demo_beats_an_irrelevant_one_of_the_same_length(tmp_path, copy_lm):  # noqa: F811
    rel = [chat("tell me about paris .", "paris is the capital of france and a city on the seine ."),
           chat("tell me about rome .", "rome is the capital of italy and paris is the capital of france .")]
    irr = [chat("tell me about cats .", "many people keep cats and dogs as small pets in a city ."),
           chat("tell me about dogs .", "dogs and cats are small animals and many people keep dogs as pets .")]
    sc = LMScorer(copy_lm)
    for a, b in zip(rel, irr, strict=True):
        assert len(sc.encode(a).ids) == len(sc.encode(b).ids)  # same length in tokens, same template
    rows = [(None, c[0]["content"], c[1]["content"], None) for c in rel + irr]
    run = make_pool(tmp_path / "run", rows)
    val_path = tmp_path / "val.jsonl"
    val_path.write_text(json.dumps({"question": "what is the capital of france ?", "answer": "paris"}) + "\n")
    score(run, ["icl"], model=str(copy_lm), validation=val_path, progress=False)
    gains = load_signal(run, "icl")
    assert gains[0] > gains[2] + 5 and gains[1] > gains[3] + 5  # relevant demos win by nats, not rounding
    assert min(gains[:2]) > 0 > max(gains[2:])
    # the gain is the answer's own log-likelihood ("paris", one token): the end-of-turn marker after it is
    # scored only on request. By hand: log p(paris | context) from one forward pass of the model.
    question = chat("what is the capital of france ?", "")[:1]

    def logp_answer(turns: list[dict]) -> float:
        text = sc.tokenizer.apply_chat_template(turns + question, add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([sc._tok(text)])
        with torch.no_grad():
            logits = sc.model(input_ids=ids).logits[0, -1]
        return torch.log_softmax(logits.float(), -1)[sc.tokenizer.convert_tokens_to_ids("paris")].item()

    for i, c in enumerate(rel + irr):
        assert gains[i] == pytest.approx(logp_answer(c) - logp_answer([]), abs=1e-4)
    side = json.loads(RunDir(run).signal_path("icl").with_suffix(".json").read_text())
    assert side["stats"]["scored_tokens"] == "response" and side["key"]["params"]["score_eot"] is False
    score(run, ["icl"], model=str(copy_lm), validation=val_path, progress=False, score_eot=True)
    with_eot = load_signal(run, "icl")
    assert not np.allclose(with_eot, gains, atol=1e-3)  # the marker's term is now in
    side = json.loads(RunDir(run).signal_path("icl").with_suffix(".json").read_text())
    assert side["stats"]["scored_tokens"] == "response+end_of_turn"
