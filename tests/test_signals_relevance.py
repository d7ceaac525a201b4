"""Relevance to a validation set: cosine to the validation centroid (or max cosine), same encoder."""

from __future__ import annotations

import numpy as np
import pytest
from signals_helpers import make_pool, write_validation

from curate.signals import load_signal, score
from curate.signals.relevance import relevance_scores


def test_relevance_scores_small():
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]], dtype=np.float32)
    val = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    c = val.mean(0) / np.linalg.norm(val.mean(0))
    np.testing.assert_allclose(relevance_scores(rows, val, "mean"), rows @ c, rtol=1e-6)
    np.testing.assert_allclose(relevance_scores(rows, val, "max"), (rows @ val.T).max(1), rtol=1e-6)
    with pytest.raises(ValueError, match="relevance_mode"):
        relevance_scores(rows, val, "median")


def test_relevance_signal_uses_run_encoder(tmp_path):
    from curate.embed import embed, load_vectors
    from index.embed import Encoder

    run = make_pool(tmp_path / "run")
    val = write_validation(tmp_path / "val.jsonl")
    embed(run, progress=False)
    score(run, ["relevance"], validation=val, progress=False)
    texts = ["what is two plus three ?\nfive", "translate hello into french\nhello\nbonjour", "sort : cherry apple\napple cherry"]
    v = Encoder.load().encode(texts)
    c = v.mean(0) / np.linalg.norm(v.mean(0))
    expect = np.asarray(load_vectors(run), dtype=np.float64) @ c
    got = load_signal(run, "relevance")
    np.testing.assert_allclose(got, expect, atol=1e-5)
    assert got[3] > got[8] and got[0] > got[8]  # sorting / arithmetic rows beat the cat-and-dog row


def test_validation_file_errors_name_the_file_and_line(tmp_path):
    from curate.signals.validation import read_validation

    path = write_validation(tmp_path / "val.jsonl")
    assert len(read_validation(path)) > 0
    path.write_text(path.read_text() + '{"prompt": "q", \n')
    n_lines = len(path.read_text().splitlines())
    with pytest.raises(ValueError, match=rf"val.jsonl:{n_lines}: not valid JSON"):
        read_validation(path)
    with pytest.raises(FileNotFoundError, match="validation file .*nope.jsonl does not exist"):
        read_validation(tmp_path / "nope.jsonl")
    good = write_validation(tmp_path / "v2.jsonl").read_bytes()
    path.write_bytes(b"\xef\xbb\xbf" + good)  # a BOM before the first row is not data
    assert len(read_validation(path)) == len(read_validation(tmp_path / "v2.jsonl"))
    path.write_bytes(good + b'{"prompt": "caf\xe9", "response": "r"}\n')  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=rf"val.jsonl:{len(good.splitlines()) + 1}: not UTF-8 \(byte 0xe9 at column"):
        read_validation(path)
