"""DaaR: truncated-LM masked features, probes and entropy ranking, the selector, and the inter/intra bands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_lm import tiny_lm  # noqa: F401  (fixture)

from curate.select import PoolView, make_selector
from curate.select.daar_band import band_positions
from curate.select.daar_fit import daar_entropy
from curate.select.daar_probe import entropy, probe_widths, train_probe
from curate.select.daar_seed_io import read_seed_files
from index.features import (
    cached_features,
    feature_fingerprint,
    load_truncated_lm,
    masked_mean_features,
)

TEXTS = [
    "what is two plus three ? the answer is five .",
    "hello",
    "write a function that returns the sum of a list of numbers and then explain why the sky is blue",
]


# ---------------------------------------------------------------------------------------------------------
# truncated-LM features


def test_masked_mean_equals_direct_computation(tiny_lm) -> None:  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, base = load_truncated_lm(tiny_lm, layer=1)
    assert len(base.layers) == 1
    feats = masked_mean_features(tok, base, TEXTS, batch_size=3)
    full = AutoModelForCausalLM.from_pretrained(str(tiny_lm), dtype=torch.float32).eval()
    ftok = AutoTokenizer.from_pretrained(str(tiny_lm))
    for i, text in enumerate(TEXTS):
        ids = ftok(text, return_tensors="pt")
        with torch.no_grad():
            hs = full(**ids, output_hidden_states=True).hidden_states
            direct = full.model.norm(hs[1])[0].mean(0).numpy()  # layer 1 output, final norm, mean over tokens
            emb = hs[0][0].mean(0).numpy()
        np.testing.assert_allclose(feats[i], direct, rtol=1e-4, atol=1e-5)
        e = masked_mean_features(tok, base, [text], kind="input_embeddings")[0]
        np.testing.assert_allclose(e, emb, rtol=1e-5, atol=1e-6)


def test_padding_changes_nothing(tiny_lm) -> None:  # noqa: F811
    tok, base = load_truncated_lm(tiny_lm, layer=2)
    alone = np.concatenate([masked_mean_features(tok, base, [t]) for t in TEXTS])
    batched = masked_mean_features(tok, base, TEXTS, batch_size=3)  # "hello" padded to the longest row
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-5)
    # unmasked pooling (the released code) would differ for the padded short row
    assert not np.allclose(batched[1], batched[1] * 0)


def test_features_batch_rows_of_similar_length(tiny_lm) -> None:  # noqa: F811
    """Batches are cut from the rows in token-length order (each pads to its own longest row); the features come
    back in the input order, equal to each row's features alone."""
    tok, base = load_truncated_lm(tiny_lm, layer=1)
    texts = [TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(7)]
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    widths = []
    base.register_forward_hook(lambda mod, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]),
                               with_kwargs=True)
    feats = masked_mean_features(tok, base, texts, batch_size=2)
    ranked = sorted(lengths)
    assert widths == [max(ranked[i : i + 2]) for i in range(0, 7, 2)]
    alone = np.concatenate([masked_mean_features(tok, base, [t]) for t in texts])
    np.testing.assert_allclose(feats, alone, rtol=1e-4, atol=1e-5)
    assert masked_mean_features(tok, base, []).shape == (0, base.config.hidden_size)


def test_cached_features_resume_without_recomputing(tiny_lm, tmp_path, monkeypatch) -> None:  # noqa: F811
    import index.features as F

    fp = feature_fingerprint(tiny_lm, kind="truncated", layer=1, max_length=64)
    assert fp == feature_fingerprint(tiny_lm, kind="truncated", layer=1, max_length=64)
    assert fp != feature_fingerprint(tiny_lm, kind="truncated", layer=2, max_length=64)
    out = tmp_path / fp
    texts = TEXTS * 3
    first = cached_features(texts, out, tiny_lm, layer=1, max_length=64, shard_size=4, progress=False)
    assert first.shape == (9, 32) and len(list(out.glob("shard-*.npy"))) == 3
    (out / "shard-00001.npy").unlink()
    calls = []
    real = F.load_truncated_lm
    monkeypatch.setattr(F, "load_truncated_lm", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = cached_features(texts, out, tiny_lm, layer=1, max_length=64, shard_size=4, progress=False)
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-6)
    assert len(calls) == 1  # one shard recomputed, model loaded once
    monkeypatch.setattr(F, "load_truncated_lm", lambda *a, **k: pytest.fail("recomputed a finished shard"))
    cached_features(texts, out, tiny_lm, layer=1, max_length=64, shard_size=4, progress=False)
    with pytest.raises(ValueError, match="other inputs"):
        cached_features(texts[:2], out, tiny_lm, layer=1, max_length=64, shard_size=4, progress=False)
    with pytest.raises(ValueError, match="layer"):
        load_truncated_lm(tiny_lm, layer=5)


def test_feature_cache_is_keyed_by_the_pass_dtype(tiny_lm, tmp_path) -> None:  # noqa: F811
    """A run folder moved to a machine where dtype "auto" means bf16 must not reuse or resume float32 features."""
    fp32 = feature_fingerprint(tiny_lm, kind="truncated", layer=1, max_length=64, dtype="float32")
    assert fp32 == feature_fingerprint(tiny_lm, kind="truncated", layer=1, max_length=64)  # earlier caches' key
    fp16 = feature_fingerprint(tiny_lm, kind="truncated", layer=1, max_length=64, dtype="bfloat16")
    assert fp16 == f"{fp32}-bfloat16"
    with pytest.raises(ValueError, match="auto_dtype"):
        feature_fingerprint(tiny_lm, kind="truncated", layer=1, max_length=64, dtype="auto")
    out = tmp_path / fp32
    kw = dict(layer=1, max_length=64, shard_size=4, progress=False)
    f32 = cached_features(TEXTS, out, tiny_lm, dtype="float32", **kw)
    with pytest.raises(ValueError, match="other inputs"):  # the float32 folder is not resumed in bf16
        cached_features(TEXTS, out, tiny_lm, dtype="bfloat16", **kw)
    bf = cached_features(TEXTS, tmp_path / fp16, tiny_lm, dtype="bfloat16", **kw)
    assert json.loads((tmp_path / fp16 / "meta.json").read_text())["dtype"] == "bfloat16"
    assert "dtype" not in json.loads((out / "meta.json").read_text())
    np.testing.assert_allclose(bf, f32, atol=0.1)  # the same features up to bf16 rounding
    assert not np.array_equal(bf, f32)


# ---------------------------------------------------------------------------------------------------------
# probes and entropy


def _mixed_clusters(n: int = 400, k: int = 3, d: int = 12, seed: int = 0, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 4
    lab = rng.integers(0, k, n)
    x = centres[lab] + rng.standard_normal((n, d))
    mixed = np.arange(n) % 10 == 0  # boundary rows: midway between two clusters, pseudo-label either side
    a = lab[mixed]
    b = (a + 1) % k
    x[mixed] = 0.5 * (centres[a] + centres[b]) + noise * rng.standard_normal((mixed.sum(), d))
    lab[mixed] = np.where(rng.random(mixed.sum()) < 0.5, a, b)
    return x.astype(np.float32), lab, mixed


def test_entropy_and_probe_shape() -> None:
    np.testing.assert_allclose(entropy(np.zeros((2, 4))), np.log(4))
    np.testing.assert_allclose(entropy(np.array([[100.0, 0.0]])), 0.0, atol=1e-12)
    p = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(entropy(np.log(p)[None]), -(p * np.log(p)).sum())
    assert probe_widths(4096, 4) == [4096, 8192, 4096, 2048, 256, 4]


def test_domain_probe_near_perfect_on_separated_clusters() -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((4, 10)) * 5
    y = rng.integers(0, 4, 300)
    x = (centres[y] + rng.standard_normal((300, 10))).astype(np.float32)
    fit = train_probe(x, y, task="classify", epochs=30, seed=0)
    assert fit.info["holdout_accuracy"] >= 0.96 and fit.info["n_holdout"] == 30
    again = train_probe(x, y, task="classify", epochs=30, seed=0)
    assert again.info == fit.info  # deterministic for a seed


def test_boundary_rows_get_the_highest_predicted_entropy() -> None:
    x, lab, mixed = _mixed_clusters()
    res = daar_entropy(x, lab, np.arange(x.shape[0]), epochs=30, seed=0)
    # clean rows near perfect, boundary rows (pseudo-label either side) ~50%: out-of-fold accuracy ~0.95
    assert res.stats["domain_probe"]["oof_accuracy"] >= 0.9
    h = res.predicted_entropy
    top = np.argsort(-h)[: int(mixed.sum())]
    assert mixed[top].mean() >= 0.8  # base rate 0.1
    assert h[mixed].mean() > 3 * h[~mixed].mean()  # out of fold (3.7x here); in-sample predictions were > 4x
    paper = daar_entropy(x, lab, np.arange(x.shape[0]), epochs=30, seed=0, folds=1)  # in-sample targets
    assert mixed[np.argsort(-paper.predicted_entropy)[: int(mixed.sum())]].mean() >= 0.8


def test_selector_on_sentence_embeddings_selects_boundary_rows() -> None:
    # here the pseudo-labels come from k-means (a function of the same features), so boundary rows are only
    # near the decision boundary, not ambiguous: the selection must still be enriched in them (base rate 10%).
    # Every row's entropy is predicted out of fold (0.30 here, held-out R^2 0.21); the probe predicting its own
    # training rows reached 0.5 by repeating their targets.
    x, lab, mixed = _mixed_clusters(n=400, d=12, seed=4, noise=0.3)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    domains = [f"d{lab[i]}" if (i % 10 == 5) else None for i in range(len(lab))]  # 10% labelled seed rows
    view = PoolView.from_arrays([f"r{i}" for i in range(len(lab))], domains=domains, vectors=x)
    sel = make_selector(
        "daar", cluster_features="embeddings", probe_features="embeddings", probe_size=400, epochs=30
    ).select(view, 40, seed=0)
    assert mixed[sel.positions].mean() >= 0.2
    assert sel.stats["daar_domains"] == ["d0", "d1", "d2"]
    assert sel.reasons[0].startswith("daar: predicted entropy")


def test_selector_parameters_are_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match="model=PATH"):
        make_selector("daar")
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"domain": "math", "text": "1+1"}\n{"text": "no domain"}\n')
    with pytest.raises(ValueError, match="seeds.jsonl:2"):
        read_seed_files([bad])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"domain": "math", "text": "1+1"}\n\n{"domain": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:3: not valid JSON"):
        read_seed_files([broken])
    with pytest.raises(FileNotFoundError, match="DaaR seed file .*missing.jsonl does not exist"):
        read_seed_files([tmp_path / "missing.jsonl"])
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"domain": "code", "prompt": "p", "response": "r"}) + "\n")
    assert read_seed_files([good]) == (["code"], ["Instruction: p\nOutput: r"])


# ---------------------------------------------------------------------------------------------------------
# contrastive bands


def test_band_positions_hand_example() -> None:
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, -1])
    # group 0 ascending: 1(.1) 3(.3) 0(.5) 4(.7) 2(.9); n=5, band [20, 60) -> ranks 1, 2 -> rows 3, 0
    # group 1 ascending: 5(.2) 7(.4) 8(.6) 6(.8); n=4, band [20, 60) -> ranks [0, 2) -> rows 5, 7 (floor(.8)=0)
    pos, q = band_positions(scores, groups, 20, 60, descending=False)
    assert pos.tolist() == [5, 3, 7, 0]  # by quantile (0, .2, .25, .4), then group
    np.testing.assert_allclose(q, [0.0, 0.2, 0.25, 0.4])
    pos, _ = band_positions(scores, groups, 80, 100, descending=True)
    assert sorted(pos.tolist()) == [1, 5]  # lowest in each group when sorted descending
    with pytest.raises(ValueError, match="band"):
        band_positions(scores, groups, 50, 20, descending=True)


def test_band_selector_exact_on_hand_built_pool() -> None:
    # two domains on the unit circle; centroids at angle 0 (a) and 90 degrees (b)
    ang = np.deg2rad([0, 10, -10, 40, -40, 90, 80, 100, 60, 120])
    v = np.stack([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32)
    dom = ["a"] * 5 + ["b"] * 5
    view = PoolView.from_arrays([f"r{i}" for i in range(10)], domains=dom, vectors=v)
    from index.diversity import daar_scores

    inter, intra = daar_scores(v, np.array([0] * 5 + [1] * 5))
    sel = make_selector("daar_band", metric="intra", band=[0, 40], descending=True).select(view, 4)
    # highest intra (closest to own centroid) 40% of each domain: 2 rows each
    expect = []
    for g in (range(0, 5), range(5, 10)):
        g = np.array(list(g))
        expect.append(g[np.lexsort((g, -intra[g]))][:2])
    assert sorted(sel.positions.tolist()) == sorted(np.concatenate(expect).tolist())
    sel2 = make_selector("daar_band", metric="inter", band=[60, 100], descending=False).select(view, 4)
    exp2 = []
    for g in (np.arange(5), np.arange(5, 10)):
        exp2.append(g[np.lexsort((g, inter[g]))][3:])
    assert sorted(sel2.positions.tolist()) == sorted(np.concatenate(exp2).tolist())
    with pytest.raises(TypeError, match="descending"):
        make_selector("daar_band", metric="inter")
    with pytest.raises(ValueError, match="holds 4 rows"):
        make_selector("daar_band", metric="inter", band=[0, 40], descending=True).select(view, 5)


def test_selector_on_a_run_with_lm_features_and_seed_file(tiny_lm, tmp_path) -> None:  # noqa: F811
    from fixtures_lm import SENTENCES, sentence_pool_run

    from curate.select import select

    n = 48
    run = sentence_pool_run(tmp_path / "run", n)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "\n".join(
            json.dumps({"domain": dom, "prompt": SENTENCES[i], "response": SENTENCES[i]})
            for dom, i in (("math", 0), ("math", 7), ("code", 2), ("code", 3), ("chat", 5), ("chat", 9))
        )
        + "\n"
    )
    kw = {"model": str(tiny_lm), "layer": 1, "max_length": 64, "seeds": str(seeds), "epochs": 3, "folds": 1}
    sel = select(run, "daar", 10, seed=0, **kw)
    assert len(sel) == 10 and sel.stats["daar_domains"] == ["chat", "code", "math"]
    feats = sorted(p.name for p in (run / "features").iterdir())
    assert len(feats) == 2 and any("truncated-L1" in f for f in feats)
    again = select(run, "daar", 10, seed=0, name="again", **kw)  # cached features, same selection
    assert again.ids == sel.ids


def _band_pool(n_per: int, seed: int = 0) -> PoolView:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((2 * n_per, 8)).astype(np.float32)
    return PoolView.from_arrays([f"r{i}" for i in range(2 * n_per)], domains=["a"] * n_per + ["b"] * n_per, vectors=v)


def test_band_shortfall_is_judged_on_the_rows_left_after_exclusions() -> None:
    """The base asks a pool-scope selector for k + (excluded rows); the band used to fail on that count."""
    from curate.select import Budget

    view = _band_pool(50)
    sel = make_selector("daar_band", metric="inter", band=[0, 20], descending=False)
    band = sel.rank(view, 20, seed=0, budget=Budget(rows=20)).positions
    assert band.size == 20  # 10 rows of each domain of 50
    outside = np.setdiff1d(np.arange(100), band)[:3]
    got = sel.select(view, 20, exclude=outside)
    assert got.positions.tolist() == band.tolist() and got.stats["excluded_rows"] == 3
    # excluded rows inside the band: 17 are left; the message names the user's budget and a budget that works
    inside = band[[0, 5, 9]]
    with pytest.raises(ValueError, match=r"holds 17 rows, the budget needs 20: lower the budget to 17 rows "
                                         r"\(-b 17\) or widen the band \(3 excluded rows"):
        sel.select(view, 20, exclude=inside)
    got = sel.select(view, 17, exclude=inside)
    assert got.positions.tolist() == [p for p in band.tolist() if p not in inside.tolist()]


def test_band_shortfall_suggests_a_budget_that_works() -> None:
    # 7 rows per domain: a [0, 20) band keeps floor(1.4) = 1 row of each, 2 rows; "20%" of 14 rows is 3 rows
    view = _band_pool(7)
    sel = make_selector("daar_band", metric="inter", band=[0, 20], descending=False)
    with pytest.raises(ValueError, match=r"holds 2 rows, the budget needs 3: lower the budget to 2 rows \(-b 2\)"):
        sel.select(view, "20%")
    assert len(sel.select(view, 2)) == 2
