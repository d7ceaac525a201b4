"""A hand-built causal LM that copies from its context, for ICL-proxy tests with a known right answer.

The tiny random fixture LM (fixtures_lm) cannot tell a relevant demonstration from an irrelevant one. This
one can, by construction: a one-layer Llama whose attention is uniform over the context (zero queries, so
every causal score is equal), with one-hot embeddings, identity values and output projection and an
identity output head. Its next-token logits are `scale` x the normalised bag of context tokens (plus the
current token): a token gains probability by occurring earlier in the context. A demonstration that
contains the validation answer raises that answer's probability; an unrelated one of the same length
does not.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures_lm import CHAT_TEMPLATE

WORDS = (
    "what is the capital of france spain italy ? paris madrid rome city a an and in on it its river "
    "name colour blue red green sky sea grass please one word . , answer largest known for art seine "
    "tell me about cats dogs cat dog small pets animals many people keep"
)


def build_copy_lm(path: str | Path, *, scale: float = 8.0) -> Path:
    """Save the context-copying LM described above (and its word-level tokenizer) to `path`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    words = sorted(set(re.findall(r"\w+|[^\w\s]", WORDS)))
    tok.train_from_iterator([" ".join(words)], trainer=trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    v = len(fast)
    d = v + v % 2  # RoPE needs an even head size (it rotates nothing here: the queries are zero)
    cfg = LlamaConfig(
        vocab_size=v, hidden_size=d, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1,
        num_key_value_heads=1, head_dim=d, max_position_embeddings=512, rms_norm_eps=1e-9,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    eye, one_hot = torch.eye(d), torch.eye(v, d)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(0.1 * one_hot)  # the current token counts for little
        layer = model.model.layers[0]
        layer.self_attn.q_proj.weight.zero_()  # equal scores: uniform attention over the causal context
        layer.self_attn.k_proj.weight.copy_(eye)
        layer.self_attn.v_proj.weight.copy_(eye)
        layer.self_attn.o_proj.weight.copy_(eye)
        layer.mlp.down_proj.weight.zero_()
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, model.model.norm):
            norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(scale * one_hot)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def copy_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the context-copying LM."""
    return build_copy_lm(tmp_path_factory.mktemp("copy_lm") / "model")
