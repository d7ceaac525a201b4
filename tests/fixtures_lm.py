"""A tiny randomly initialised Llama causal LM with an offline word-level tokenizer, saved to disk.

Built once per test session (a few hundred KB), so every model-based signal runs on CPU in tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

SENTENCES = [
    "what is two plus three ? the answer is five .",
    "first add the numbers then divide by two and finally report the result",
    "write a function that returns the sum of a list of numbers",
    "def add ( a , b ) : return a + b",
    "the capital of france is paris and the capital of spain is madrid",
    "explain why the sky is blue in one sentence",
    "step 1 : read the question . step 2 : solve it . step 3 : answer",
    "x = 3 * 4 + 2 so x equals 14",
    "translate hello world into french : bonjour le monde",
    "a cat sat on the mat and a dog sat on the log",
    "sort these words : banana apple cherry",
    "question answer user assistant system hello thanks please yes no maybe",
]


def build_tiny_lm(path: str | Path, *, with_template: bool = True, seed: int = 0) -> Path:
    """Save a tiny LlamaForCausalLM (hidden 32, 2 layers) and its tokenizer to `path`; return the path."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    words = sorted({w for s in SENTENCES for w in re.findall(r"\w+|[^\w\s]", s)})
    trainer = trainers.WordLevelTrainer(special_tokens=specials, vocab_size=500)
    tok.train_from_iterator(SENTENCES + [" ".join(words)], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    if with_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random causal LM with a chat template."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_lm_ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny LM with the same tokenizer and other random weights (the 'reference' model)."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm_ref") / "model", seed=1)


@pytest.fixture(scope="session")
def tiny_lm_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LM whose tokenizer has no chat template (exercises the plain fallback)."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm_plain") / "model", with_template=False, seed=2)


def sentence_pool_run(run: Path, n: int = 48) -> Path:
    """A run directory holding only a one-shard pool of n unlabelled rows built from SENTENCES."""
    import polars as pl

    (run / "pool").mkdir(parents=True)
    pl.DataFrame(
        {
            "id": [f"{i:032x}" for i in range(n)],
            "domain": [None] * n,
            "kind": ["sft"] * n,
            "prompt": [SENTENCES[i % 12] for i in range(n)],
            "response": [SENTENCES[(i * 5) % 12] for i in range(n)],
            "n_duplicates": [0] * n,
        },
        schema_overrides={"domain": pl.String},
    ).write_parquet(run / "pool" / "shard-00000.parquet")
    return run
