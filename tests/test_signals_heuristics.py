"""Heuristic indicators on known strings, percentile ranks, kNN novelty/density, token counts."""

from __future__ import annotations

import re

import numpy as np
import pytest
from fixtures_lm import tiny_lm  # noqa: F401
from scipy.stats import rankdata
from signals_helpers import ROWS, make_pool

from curate.signals import load_signal, percentile_rank, score
from curate.signals.heuristics import code_markers, math_markers, mtld, reasoning_steps, ttr, words


def test_mtld_hand_checked():
    # "a b c a": the TTR never reaches 0.72 (last value 3/4); partial factor (1 - 0.75) / 0.28 both ways
    assert mtld("a b c a") == pytest.approx(4 / (0.25 / 0.28))
    # "a b a b c": forward: a b a -> 2/3 <= 0.72 closes a factor; "b c" remains at TTR 1 -> 5 / 1;
    # backward c b a b a: 3/4 = 0.75, then 3/5 = 0.6 closes a factor with nothing left -> 5 / 1
    assert mtld("a b a b c") == pytest.approx(5.0)
    # asymmetric: "a a b c d": forward a a -> 1/2 closes; "b c d" TTR 1 -> 5/1; backward d c b a a:
    # 4/5 = 0.8 remains -> partial 0.2/0.28 -> 5 / 0.714...
    assert mtld("a a b c d") == pytest.approx(0.5 * (5.0 + 5 / (0.2 / 0.28)))
    assert mtld("") == 0.0
    assert mtld("one two three") == 3.0  # every word distinct: no factor, the word count
    assert ttr("the cat the dog") == pytest.approx(3 / 4)
    assert words("Don't STOP, don't!") == ["don't", "stop", "don't"]


def test_reasoning_code_math_markers():
    text = "First, add 2 and 3.\n1. Then x = 5.\nStep 2: divide. The sky is blue.\n- finally report\nhello"
    # segments: "First, add 2 and 3." (seq word) | "1. Then x = 5." (enum) | "Step 2: divide." (step) |
    # "The sky is blue." (no) | "- finally report" (bullet) | "hello" (no)
    assert reasoning_steps(text) == 4
    assert reasoning_steps("Therefore y = 2 * 3. So it is 6.") == 2
    assert reasoning_steps("B. false") == 0 and reasoning_steps("B) false") == 0  # answer letters
    assert reasoning_steps("a) add\nb) carry") == 2
    assert reasoning_steps("3.14 is roughly pi.") == 0 and reasoning_steps("2) two\n10: ten") == 2  # decimals
    code = "```python\ndef f(x):\n    return x\n```\nint main() {\n  return 0;\n}\nplain words"
    # 2 fences + def + return + "int main() {" + "  return 0;" + "}" = 7
    assert code_markers(code) == 7
    assert code_markers("no code here.") == 0
    # 3 + 4 (arith), = (equals), \frac (latex), $x$ (dollar), "==" not counted
    assert math_markers("3 + 4 = 7 and \\frac{1}{2} and $x$ and a == b") == 4


def test_percentile_rank_ties_groups():
    v = np.array([3.0, 1.0, 3.0, 2.0, np.nan])
    r = percentile_rank(v)
    np.testing.assert_allclose(r[:4], (rankdata(v[:4]) - 1) / 3)
    assert np.isnan(r[4]) and r[0] == r[2]
    g = ["a", "b", "a", "b", "a"]
    r = percentile_rank(v, g)
    np.testing.assert_allclose(r[[0, 2]], [0.5, 0.5])
    np.testing.assert_allclose(r[[1, 3]], [0.0, 1.0])
    assert percentile_rank(np.array([5.0]), [None])[0] == 0.5


def test_registered_heuristics_on_pool(tmp_path, tiny_lm):  # noqa: F811
    from transformers import AutoTokenizer

    run = make_pool(tmp_path / "run", system=True)
    names = ["tokens", "prompt_tokens", "response_tokens", "turns", "mtld", "ttr", "reasoning_steps", "code_markers", "math_markers"]
    score(run, names, model=str(tiny_lm), progress=False)
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    exp_p = [len(tok(p, add_special_tokens=False).input_ids) for _, p, _, _ in ROWS]
    np.testing.assert_array_equal(load_signal(run, "prompt_tokens"), exp_p)
    exp_r = [len(tok(r, add_special_tokens=False).input_ids) for _, _, r, _ in ROWS]
    np.testing.assert_array_equal(load_signal(run, "response_tokens"), exp_r)
    np.testing.assert_array_equal(load_signal(run, "tokens"), np.add(exp_p, exp_r))
    np.testing.assert_array_equal(load_signal(run, "turns"), [2] * len(ROWS))
    np.testing.assert_allclose(load_signal(run, "mtld"), [mtld(r) for _, _, r, _ in ROWS])
    np.testing.assert_allclose(load_signal(run, "code_markers"), [code_markers(r) for _, _, r, _ in ROWS])
    assert load_signal(run, "code_markers")[2] == 1  # "def add ..."
    # text_field enters the key: prompt-side values differ and are recomputed
    score(run, ["math_markers"], text_field="prompt", progress=False)
    np.testing.assert_allclose(load_signal(run, "math_markers"), [math_markers(p) for _, p, _, _ in ROWS])


def test_heuristic_scoring_shows_a_bar_per_signal_only_with_progress(tmp_path, tiny_lm, capsys):  # noqa: F811
    run = make_pool(tmp_path / "run")
    score(run, ["mtld", "turns", "tokens"], model=str(tiny_lm), progress=True)
    err = capsys.readouterr().err
    for name in ("mtld", "turns", "tokens"):
        assert f"{name}: 100%" in err
    n = 2 * len(ROWS)  # tokens: one bar over the prompt rows and the response rows
    assert "rows/s" in err and re.search(rf"tokens: 100%.*\b{n}(\.0)?/{n}", err)
    score(run, ["ttr", "code_markers"], model=str(tiny_lm), progress=False)
    assert capsys.readouterr().err == ""


def test_knn_novelty_density(tmp_path):
    run = make_pool(tmp_path / "run")
    n = len(ROWS)
    rng = np.random.default_rng(0)
    sims = np.sort(rng.random((n, 4)).astype(np.float32), axis=1)[:, ::-1].copy()
    nbrs = np.stack([rng.permutation(n)[:4] for _ in range(n)]).astype(np.int64)
    (run / "index").mkdir()
    np.savez(run / "index" / "knn.npz", neighbors=nbrs, sims=sims)
    score(run, ["knn_novelty", "knn_density"], progress=False)
    np.testing.assert_allclose(load_signal(run, "knn_density"), sims.astype(float).mean(1), rtol=1e-6)
    np.testing.assert_allclose(load_signal(run, "knn_novelty"), 1 - sims.astype(float).mean(1), rtol=1e-6)
    score(run, ["knn_novelty"], knn_k=2, progress=False)
    np.testing.assert_allclose(load_signal(run, "knn_novelty"), 1 - sims[:, :2].astype(float).mean(1), rtol=1e-6)
    with pytest.raises(ValueError, match="knn_k"):
        score(run, ["knn_novelty"], knn_k=9, progress=False)
    # the index rebuilt (k=3, other similarities): the same score call recomputes from the new graph
    score(run, ["knn_density"], progress=False)
    np.savez(run / "index" / "knn.npz", neighbors=nbrs[:, :3], sims=sims[:, :3] / 2)
    score(run, ["knn_density"], progress=False)
    np.testing.assert_allclose(load_signal(run, "knn_density"), sims[:, :3].astype(float).mean(1) / 2, rtol=1e-6)
    # a graph padded with -1 / 0 (rows with fewer neighbours than k): the mean is over real neighbours
    pad = nbrs[:, :3].copy()
    pad[0, 1:] = -1
    pad[1, :] = -1
    np.savez(run / "index" / "knn.npz", neighbors=pad, sims=np.where(pad >= 0, sims[:, :3], 0).astype(np.float32))
    score(run, ["knn_density"], progress=False)
    got = load_signal(run, "knn_density")
    assert got[0] == pytest.approx(float(sims[0, 0]), rel=1e-6) and np.isnan(got[1])


@pytest.mark.parametrize("before", [None, "false"])
def test_token_counts_run_on_the_tokenizers_threads_and_restore_the_setting(before, monkeypatch):
    """Inside token_counts the fast tokenizer may use its threads; the caller's TOKENIZERS_PARALLELISM comes
    back unchanged (unset stays unset), so forked workers keep their configuration."""
    import os

    from curate.signals.heuristics import token_counts

    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    seen = []

    def tokenizer(texts, **_):
        seen.append(os.environ.get("TOKENIZERS_PARALLELISM"))
        return {"input_ids": [t.split() for t in texts]}

    counts = token_counts(tokenizer, ["a b c", "", "d e"] * 3, chunk=4)
    np.testing.assert_array_equal(counts, [3, 0, 2] * 3)
    assert seen == ["true"] * 3
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before


def test_unknown_score_parameter_fails_and_every_read_parameter_is_known(tmp_path):
    """A misspelt parameter (`mtld_treshold`) is an error, not silently ignored; and every parameter a signal
    reads (`ctx.param("...")` anywhere in curate/) is one `score` accepts, so the check cannot reject a real one."""
    from pathlib import Path

    from curate.errors import ParameterError
    from curate.signals.stage import known_params

    run = make_pool(tmp_path / "run", ROWS)
    with pytest.raises(ParameterError, match="unknown parameter.*mtld_treshold"):
        score(run, ["mtld"], mtld_treshold=0.5, progress=False)
    src = Path(__file__).resolve().parents[1] / "curate"
    read = {m for f in src.rglob("*.py") for m in re.findall(r'(?:ctx|self)\.param\("(\w+)"', f.read_text())}
    assert read and read <= known_params(), read - known_params()


def test_a_signal_killed_between_its_values_and_its_key_is_not_taken_as_current(tmp_path, monkeypatch):
    from curate.run import RunDir
    from curate.signals import store

    run = make_pool(tmp_path / "run")
    ids = RunDir(run).read_pool(["id"])["id"].to_list()
    store.write_signal(run, "x", ids, np.zeros(len(ids)), {"v": 1})
    assert store.stored_key(run, "x") == {"v": 1}

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write_signal(run, "x", ids, np.ones(len(ids)), {"v": 2})
    assert store.stored_key(run, "x") is None  # new values, no key: recomputed, not read as {"v": 1}
