"""Loading the model to train (full or LoRA through peft) and saving what training made, atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.models import model_fingerprint, resolve_model


class ModelDirError(CurateError):
    """A model directory that cannot be trained from (no config, no safetensors weights)."""


def model_key(run: Any, a: dict[str, Any]) -> dict[str, str]:
    """A stage key part (`curate.stage.stage(key=...)`) for a stage whose argument `model` names the base model:
    its fingerprint, so the key changes when the model's weights do."""
    return {"model_fingerprint": model_fingerprint(check_model_dir(a["model"]), "float32")}


def check_model_dir(model: str | os.PathLike) -> Path:
    """Resolve an alias or folder to a local HF causal-LM directory holding safetensors weights, as an absolute
    path (what a training run's key and a LoRA adapter's `base_model_name_or_path` record: a relative one would
    name another folder, or a Hub repository, from another working directory)."""
    try:
        path = resolve_model(model).resolve()
    except FileNotFoundError as exc:
        raise ModelDirError(str(exc)) from None
    if not any(path.glob("*.safetensors")):
        raise ModelDirError(
            f"{path} has no *.safetensors weights (pickle .bin checkpoints are not loaded): "
            "convert it with `model.save_pretrained(dir, safe_serialization=True)`"
        )
    return path


def load_for_training(path: Path, *, lora: dict | None):
    """(model, tokenizer, fingerprint) in float32 weights (bf16 runs under autocast); LoRA-wrapped if asked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).resolve()  # peft records it in the adapter's config: absolute, so it loads from anywhere
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=False, use_safetensors=True
    )
    model.config.use_cache = False
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=int(lora["r"]),
                lora_alpha=float(lora["alpha"]),
                lora_dropout=float(lora["dropout"]),
                target_modules=lora["targets"],
                task_type="CAUSAL_LM",
            ),
        )
    return model, tok, model_fingerprint(path, "float32")


def unwrap(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_model_dir(model, tokenizer, final: Path, *, merge: bool) -> Path:
    """Write a full model directory (merging LoRA weights when `merge`) or a LoRA adapter folder.

    Built in a temporary sibling and renamed into place, so `final` is either absent or complete.
    """
    from index.io import atomic_dir

    with atomic_dir(final) as tmp:
        if merge and hasattr(model, "merge_and_unload"):
            import copy

            full = copy.deepcopy(model).merge_and_unload()
            full.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return final


def merge_adapter(adapter: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Merge a saved LoRA adapter folder into its base model; write a full model directory `out`."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise ModelDirError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    base = _adapter_base(adapter)
    try:
        model = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(adapter)
    except OSError as exc:  # e.g. a base model path that is not a folder here: peft then asks the Hub
        raise ModelDirError(
            f"cannot load the LoRA adapter {adapter} on its base model {base!r}: {str(exc).splitlines()[0]}; "
            "the base model must be a local model folder (adapter_config.json `base_model_name_or_path`)"
        ) from None
    return save_model_dir(model, tok, Path(out), merge=True)


def _adapter_base(adapter: Path) -> str | None:
    """The base model an adapter folder names (`base_model_name_or_path` of adapter_config.json)."""
    import json

    try:
        return json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelDirError(f"{adapter}/adapter_config.json cannot be read: {exc}") from None
