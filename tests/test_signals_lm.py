"""LM scorer and LM-based signals on a tiny random Llama: exact masking, batching, IFD, depth, ICL, shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_lm import tiny_lm, tiny_lm_plain, tiny_lm_ref  # noqa: F401
from signals_helpers import ROWS, make_pool, write_validation

from curate.run import RunDir
from curate.signals import load_signal, percentile_rank, score
from curate.signals.lm import Encoded, LMScorer, labels_for


def end_tokens(scorer: LMScorer, seq: Encoded) -> int:
    """The fixture templates' end-of-turn tokens after a response: one "<|end|>" (chat template) or the
    EOS id (plain fallback), told from the token ids alone."""
    ends = {scorer.tokenizer.convert_tokens_to_ids("<|end|>"), scorer.tokenizer.eos_token_id}
    return int(len(seq.ids) > seq.n_prompt and seq.ids[-1] in ends)


def direct_nll(scorer: LMScorer, seq: Encoded, eot: bool = True) -> float:
    """Unbatched reference: HF's own mean loss over the labelled tokens x their number (without the
    end-of-turn tokens unless `eot`)."""
    ids = torch.tensor([seq.ids])
    labels = labels_for(seq)
    n_eot = 0 if eot else end_tokens(scorer, seq)
    labels[len(labels) - n_eot :] = [-100] * n_eot
    n = sum(t != -100 for t in labels)
    with torch.no_grad():
        loss = scorer.model(input_ids=ids, labels=torch.tensor([labels])).loss.item()
    return loss * n


def mean_direct(scorer: LMScorer, seq: Encoded, eot: bool = False) -> float:
    """Per-token mean of `direct_nll` (response tokens only by default, as the signals score)."""
    n = len(seq.ids) - seq.n_prompt - (0 if eot else end_tokens(scorer, seq))
    return direct_nll(scorer, seq, eot) / n


def convs(system: bool = False):
    out = []
    for i, (_, p, r, _) in enumerate(ROWS):
        sys_turn = [{"role": "system", "content": "be brief ."}] if system and i % 2 else []
        out.append(sys_turn + [{"role": "user", "content": p}, {"role": "assistant", "content": r}])
    return out


@pytest.fixture(scope="module")
def scorer(tiny_lm):  # noqa: F811
    return LMScorer(tiny_lm, batch_tokens=64)


def test_batched_nll_equals_direct_per_row(scorer):
    seqs = [scorer.encode(c) for c in convs(system=True)]
    sums, counts = scorer.nll(seqs)  # batch_tokens=64 forces several length-bucketed, padded batches
    assert len({len(s.ids) for s in seqs}) > 3
    for s, got, n in zip(seqs, sums, counts, strict=True):
        assert n == len(s.ids) - s.n_prompt
        assert got == pytest.approx(direct_nll(scorer, s), abs=1e-4)
    one_batch = LMScorer(scorer.path, batch_tokens=100_000).nll(seqs)[0]
    np.testing.assert_allclose(one_batch, sums, atol=1e-4)


def test_prompt_mask_is_exact(scorer):
    conv = convs()[0]
    seq = scorer.encode(conv)
    prompt_ids = scorer._tok(scorer.render(conv[:1], generation_prompt=True))
    assert seq.ids[: seq.n_prompt] == prompt_ids and seq.n_prompt == len(prompt_ids)
    resp_ids = scorer._tok(" " + conv[1]["content"] + " <|end|> ")
    assert seq.ids[seq.n_prompt :] == resp_ids  # labelled = response + end-of-turn marker, nothing else
    assert seq.n_eot == 1 and seq.ids[-1] == scorer.tokenizer.convert_tokens_to_ids("<|end|>")
    labels = labels_for(seq)
    assert labels[: seq.n_prompt] == [-100] * seq.n_prompt
    assert labels[seq.n_prompt :] == seq.ids[seq.n_prompt :]
    # scoring without the marker: the response tokens only, and their NLL is HF's over those labels
    resp_sum, resp_n = scorer.nll([seq], eot=False)
    assert resp_n[0] == len(resp_ids) - 1 and resp_sum[0] == pytest.approx(direct_nll(scorer, seq, eot=False), abs=1e-4)
    parts = scorer.nll_parts([seq])
    assert parts.eot_n[0] == 1 and parts.resp_sum[0] + parts.eot_sum[0] == pytest.approx(scorer.nll([seq])[0][0])
    ours = scorer.nll([seq])[0][0]
    # labelling the prompt too would change the loss: the mask is what makes ours differ
    full = torch.tensor([seq.ids])
    with torch.no_grad():
        all_tokens = scorer.model(input_ids=full, labels=full).loss.item() * (len(seq.ids) - 1)
    assert abs(all_tokens - ours) > 1e-3
    # a different prompt changes the conditional loss but not which tokens are counted
    other = scorer.encode([{"role": "user", "content": "hello world"}, conv[1]])
    s2, c2 = scorer.nll([other])
    assert c2[0] == len(seq.ids) - seq.n_prompt and abs(s2[0] - ours) > 1e-6


def test_plain_fallback_and_truncation(tiny_lm_plain):  # noqa: F811
    sc = LMScorer(tiny_lm_plain, max_length=12)
    assert not sc.has_template
    conv = [{"role": "user", "content": "what is two plus three ?"}, {"role": "assistant", "content": "five"}]
    assert sc.render(conv, generation_prompt=False) == "User: what is two plus three ?\nAssistant: five\n"
    full = LMScorer(tiny_lm_plain).encode(conv)
    assert full.ids[0] == sc.tokenizer.bos_token_id and full.ids[-1] == sc.tokenizer.eos_token_id
    assert full.ids[: full.n_prompt] == [sc.tokenizer.bos_token_id] + sc._tok("User: what is two plus three ?\nAssistant: ")
    assert sc.nll([full])[1][0] == 2  # "five" + eos
    assert full.n_eot == 1 and sc.nll([full], eot=False)[1][0] == 1  # "five" alone
    long_resp = [conv[0], {"role": "assistant", "content": "the answer is five . " * 4}]
    enc = sc.encode(long_resp)
    untrunc = LMScorer(tiny_lm_plain).encode(long_resp)
    assert enc.truncated and len(enc.ids) == 12 and enc.n_prompt == 6  # prompt keeps max_length // 2
    assert enc.ids[:6] == untrunc.ids[untrunc.n_prompt - 6 : untrunc.n_prompt]  # prompt tail
    assert enc.ids[6:] == untrunc.ids[untrunc.n_prompt : untrunc.n_prompt + 6]  # response head
    assert untrunc.n_eot == 1 and enc.n_eot == 0  # the end-of-turn token was cut with the response's tail
    # IFD's "alone" side scores the same response tokens as the cut conditioned side, not more of them
    alone = sc.encode_alone(long_resp)
    assert alone.truncated and alone.ids[alone.n_prompt :] == enc.ids[enc.n_prompt :] and alone.n_eot == 0
    assert LMScorer(tiny_lm_plain).encode_alone(long_resp).ids[-1] == sc.tokenizer.eos_token_id  # uncut: whole


def test_loss_ifd_perplexity_match_hand(tmp_path, tiny_lm, scorer, monkeypatch):  # noqa: F811
    run = make_pool(tmp_path / "run")
    paths = score(run, ["loss", "perplexity", "ifd"], model=str(tiny_lm), progress=False)
    assert set(paths) == {"loss", "perplexity", "ifd"}
    cs = convs()
    cond = [scorer.encode(c) for c in cs]
    alone = [scorer.encode([{"role": "user", "content": ""}, c[-1]]) for c in cs]
    assert all(end_tokens(scorer, s) == 1 for s in cond + alone)
    # default: the response tokens only (the template's end-of-turn marker is not scored)
    exp_loss = np.array([mean_direct(scorer, s) for s in cond])
    exp_alone = np.array([mean_direct(scorer, s) for s in alone])
    np.testing.assert_allclose(load_signal(run, "loss"), exp_loss, atol=1e-5)
    np.testing.assert_allclose(load_signal(run, "perplexity"), np.exp(exp_loss), rtol=1e-4)
    np.testing.assert_allclose(load_signal(run, "ifd"), exp_loss / exp_alone, rtol=1e-4)
    for name in ("loss", "perplexity", "ifd"):
        side = json.loads(RunDir(run).signal_path(name).with_suffix(".json").read_text())
        assert side["name"] == name and side["n"] == len(ROWS) and side["key"]["models"]["model"]
        assert side["stats"]["scored_tokens"] == "response" and side["key"]["params"]["score_eot"] is False
    # score_eot=True: the end-of-turn tokens too, from the same cached pass (no new model pass)
    nll_calls = []
    real = LMScorer.nll_parts
    monkeypatch.setattr(LMScorer, "nll_parts", lambda self, *a, **k: nll_calls.append(1) or real(self, *a, **k))
    score(run, ["loss", "ifd"], model=str(tiny_lm), progress=False, score_eot=True)
    monkeypatch.setattr(LMScorer, "nll_parts", real)
    assert nll_calls == []
    with_eot = np.array([mean_direct(scorer, s, eot=True) for s in cond])
    alone_eot = np.array([mean_direct(scorer, s, eot=True) for s in alone])
    np.testing.assert_allclose(load_signal(run, "loss"), with_eot, atol=1e-5)
    np.testing.assert_allclose(load_signal(run, "ifd"), with_eot / alone_eot, rtol=1e-4)
    assert not np.allclose(with_eot, exp_loss, atol=1e-3)
    side = json.loads(RunDir(run).signal_path("loss").with_suffix(".json").read_text())
    assert side["stats"]["scored_tokens"] == "response+end_of_turn"


def test_training_still_labels_the_end_of_turn_tokens(tmp_path, tiny_lm, scorer):  # noqa: F811
    """Training must keep learning to stop: its labels hold the end-of-turn marker the signals leave out."""
    from fixtures_train import train_pool_run

    from curate.train.data import encode_rows, from_selection
    from curate.train.trainer import Collator

    rows = from_selection(train_pool_run(tmp_path / "run", 8), "sel")
    feats = encode_rows(scorer, rows, preference=False)
    items = [{"input_ids": ids, "n_prompt": int(p), "weight": 1.0, "domain": 0}
             for ids, p in zip(feats.ids, feats.n_prompt, strict=True)]
    batch = Collator(scorer.pad_id)(items)
    end = scorer.tokenizer.convert_tokens_to_ids("<|end|>")
    for b, m in enumerate(rows.messages()):
        seq = scorer.encode(m)
        labels = batch["labels"][b, : len(seq.ids)].tolist()
        assert seq.n_eot == 1 and labels[-1] == end  # the marker is a training target
        assert labels == labels_for(seq)  # every labelled token, response and marker
        assert sum(t != -100 for t in labels) == len(seq.ids) - seq.n_prompt


def test_depth_and_relative_depth(tmp_path, tiny_lm, tiny_lm_ref, scorer):  # noqa: F811
    run = make_pool(tmp_path / "run")
    score(run, ["relative_depth"], base_model=str(tiny_lm), ref_model=str(tiny_lm_ref), progress=False)
    ref = LMScorer(tiny_lm_ref)
    tags = np.array([len(set(t)) if t else 1 for *_, t in ROWS], dtype=float)
    lb = np.array([mean_direct(scorer, s) for s in map(scorer.encode, convs())])
    lr = np.array([mean_direct(ref, s) for s in map(ref.encode, convs())])
    depth = (lb - lr) * tags
    np.testing.assert_allclose(load_signal(run, "depth"), depth, atol=1e-4)
    rel = load_signal(run, "relative_depth")
    domains = [d for d, *_ in ROWS]
    for d in set(domains):
        idx = [i for i, x in enumerate(domains) if x == d]
        order = np.argsort(np.argsort(depth[idx]))
        expect = order / (len(idx) - 1) if len(idx) > 1 else np.full(1, 0.5)
        np.testing.assert_allclose(rel[idx], expect, atol=1e-9)
    np.testing.assert_allclose(rel, percentile_rank(load_signal(run, "depth"), domains))

    # the same conversations (same ids) re-ingested in one domain and with other tags: both are recomputed
    other = [("one", p, r, ["a", "b", "c"] if i % 2 else None) for i, (_, p, r, _) in enumerate(ROWS)]
    make_pool(run, other)
    score(run, ["relative_depth"], base_model=str(tiny_lm), ref_model=str(tiny_lm_ref), progress=False)
    tags = np.array([3.0 if i % 2 else 1.0 for i in range(len(ROWS))])
    np.testing.assert_allclose(load_signal(run, "depth"), (lb - lr) * tags, atol=1e-4)
    np.testing.assert_allclose(load_signal(run, "relative_depth"), percentile_rank((lb - lr) * tags, None),
                               atol=1e-6)


def test_icl_proxy_equals_explicit_difference(tmp_path, tiny_lm, scorer):  # noqa: F811
    run = make_pool(tmp_path / "run")
    val_path = write_validation(tmp_path / "val.jsonl")
    score(run, ["icl"], model=str(tiny_lm), validation=val_path, progress=False)
    got = load_signal(run, "icl")
    val = [
        ([{"role": "user", "content": "what is two plus three ?"}], "five"),
        ([{"role": "user", "content": "translate hello into french\nhello"}], "bonjour"),
        ([{"role": "user", "content": "sort : cherry apple"}], "apple cherry"),
    ]

    def logp(msgs):  # the answer's tokens only: its end-of-turn marker is not scored by default
        s = scorer.encode(msgs)
        return -direct_nll(scorer, s, eot=False)

    for i, conv in enumerate(convs()[:4]):
        gains = [logp(conv + q + [{"role": "assistant", "content": a}]) - logp(q + [{"role": "assistant", "content": a}])
                 for q, a in val]
        assert got[i] == pytest.approx(np.mean(gains), abs=1e-4)
    side = json.loads(RunDir(run).signal_path("icl").with_suffix(".json").read_text())
    assert side["stats"]["forward_tokens_per_row"] > 0 and side["stats"]["scored_tokens"] == "response"

    # k = 2: the other demo is drawn from the pool (seeded) and sits before the row in both terms
    from curate.signals.base import ScoreContext
    from curate.signals.icl import other_demos

    score(run, ["icl"], model=str(tiny_lm), validation=val_path, progress=False, icl_k=2)
    got2 = load_signal(run, "icl")
    ctx = ScoreContext(run, models={"model": str(tiny_lm)}, validation=val_path, dtype="auto",
                       batch_tokens=64, progress=False, params={})
    extra = other_demos(ctx, np.array([3]), 2, 0)[0][0]
    demo = [m for m in extra if m["role"] != "system"]
    conv = convs()[3]
    gains = [logp(demo + conv + q + [{"role": "assistant", "content": a}]) - logp(demo + q + [{"role": "assistant", "content": a}])
             for q, a in val]
    assert got2[3] == pytest.approx(np.mean(gains), abs=1e-4)


def test_shards_resume_without_recomputation(tmp_path, tiny_lm, monkeypatch):  # noqa: F811
    run = make_pool(tmp_path / "run")
    calls = []
    kill = {"at": 2}
    real = LMScorer.nll_parts

    def flaky(self, seqs, **kw):
        calls.append(len(seqs))
        if len(calls) == kill["at"]:
            raise RuntimeError("killed")
        return real(self, seqs, **kw)

    monkeypatch.setattr(LMScorer, "nll_parts", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        score(run, ["loss"], model=str(tiny_lm), progress=False, shard_rows=4)
    shards = sorted((run / "signals" / "_lm").rglob("shard-*.parquet"))
    assert len(shards) == 1 and not RunDir(run).signal_path("loss").exists()
    calls.clear()
    kill["at"] = -1
    score(run, ["loss"], model=str(tiny_lm), progress=False, shard_rows=4)
    assert calls == [4, 2]  # only shards 1 and 2 (rows 4-7, 8-9) are computed on resume
    monkeypatch.setattr(LMScorer, "nll_parts", real)
    fresh = make_pool(tmp_path / "fresh")
    score(fresh, ["loss"], model=str(tiny_lm), progress=False, shard_rows=4)
    np.testing.assert_allclose(load_signal(run, "loss"), load_signal(fresh, "loss"), atol=1e-9)


def test_cache_skip_and_recompute_on_key_change(tmp_path, tiny_lm, tiny_lm_ref):  # noqa: F811
    from curate.signals.base import ScoreContext
    from curate.signals.stage import ensure_signal

    run = make_pool(tmp_path / "run")

    def ctx(model, **params):
        return ScoreContext(run, models={"model": str(model)}, validation=None, dtype="auto",
                            batch_tokens=256, progress=False, params=params)

    assert ensure_signal(ctx(tiny_lm), "loss")[1] is True
    assert ensure_signal(ctx(tiny_lm), "loss")[1] is False
    first = load_signal(run, "loss")
    assert ensure_signal(ctx(tiny_lm, max_length=8), "loss")[1] is True  # params changed
    assert ensure_signal(ctx(tiny_lm_ref), "loss")[1] is True  # model changed
    assert not np.allclose(load_signal(run, "loss"), first)
    assert ensure_signal(ctx(tiny_lm_ref, unrelated=3), "loss")[1] is False  # params loss does not read


def test_missing_signal_error_names_command(tmp_path):
    run = make_pool(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"curate score .* --signal ifd"):
        load_signal(run, "ifd")
    with pytest.raises(KeyError, match="unknown signal"):
        score(run, ["nope"])
    with pytest.raises(ValueError, match="base_model"):
        score(run, ["depth"], progress=False)


def test_cli_score_eot_flag_reaches_the_signals(tmp_path, tiny_lm):  # noqa: F811
    from typer.testing import CliRunner

    from curate.cli import app

    run = make_pool(tmp_path / "run")
    for flag, scored in (("--score-eot", "response+end_of_turn"), ("--no-score-eot", "response")):
        result = CliRunner().invoke(app, ["score", "--run", str(run), "--signal", "loss", "--model", str(tiny_lm),
                                          flag])
        assert result.exit_code == 0, result.output
        side = json.loads(RunDir(run).signal_path("loss").with_suffix(".json").read_text())
        assert side["stats"]["scored_tokens"] == scored
        assert side["key"]["params"]["score_eot"] is (flag == "--score-eot")
