"""The model helper: aliases, fingerprints, and (slow) the SmolLM2 GGUF conversion."""

from __future__ import annotations

import shutil

import pytest
from fixtures_lm import tiny_lm  # noqa: F401

from curate.models import ensure_smollm2, list_models, model_fingerprint, resolve_model


def test_resolve_and_fingerprint(tmp_path, tiny_lm):  # noqa: F811
    assert resolve_model(tiny_lm) == tiny_lm
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(tmp_path)
    a = model_fingerprint(tiny_lm, "float32")
    assert a == model_fingerprint(tiny_lm, "float32") and a != model_fingerprint(tiny_lm, "bfloat16")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_lm, copy)
    assert model_fingerprint(copy, "float32") == a  # identity is content, not location
    from safetensors.torch import load_file, save_file

    st = load_file(copy / "model.safetensors")
    st["model.norm.weight"] = st["model.norm.weight"] * 2
    save_file(st, copy / "model.safetensors", metadata={"format": "pt"})
    assert model_fingerprint(copy, "float32") != a
    assert list_models()[0]["name"] == "smollm2"


@pytest.mark.slow
def test_smollm2_conversion(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_smollm2(tmp_path / "smol")
    assert (path / "model.safetensors").exists() and "quantization_config" not in (path / "config.json").read_text()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok("The capital of France is Paris.", return_tensors="pt").input_ids
    shuffled = tok("Paris capital France The is of.", return_tensors="pt").input_ids
    with torch.no_grad():
        ppl = model(input_ids=ids, labels=ids).loss.exp().item()
        ppl_bad = model(input_ids=shuffled, labels=shuffled).loss.exp().item()
    assert ppl < ppl_bad and ppl < 200
    assert ensure_smollm2(tmp_path / "smol") == path  # second call: cached, no conversion
