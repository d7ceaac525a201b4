"""Fixtures for the embedding tests: a tiny randomly initialised sentence-transformers model on disk."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest

WORDS = (
    "the a an of to and in is it that for on with as was be by this are or at from have not but what all "
    "were when we there can which one their said if do will each about how up out them then she many some "
    "so these would other into has more her two like him see time could no make than first been its who "
    "now people my made over did down only way find use may water long little very after words called just "
    "where most know cat dog sat mat car road fast slow red blue green house tree river math question answer "
    "number add subtract multiply divide python code function return value list string integer"
).split()


def build_tiny_model(path: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a random BERT (hidden 32, 2 layers, WordPiece vocab) wrapped as Transformer + mean Pooling."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    hf_dir = path / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab += ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab += [w for w in dict.fromkeys(WORDS) if w not in vocab]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    st_dir = path / "st"
    word = Transformer(str(hf_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")], device="cpu")
    model.save(str(st_dir))
    return st_dir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny sentence-transformers model (built once per session)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_st"), seed=0)


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model with other random weights (same architecture)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_st_b"), seed=1)
