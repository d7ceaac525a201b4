"""Per-row response negative log-likelihood under any local Hugging Face causal LM.

Formatting: `tokenizer.apply_chat_template` when the tokenizer has a chat template; otherwise the plain
fallback "User: {content}\\nAssistant: {content}\\n" (roles capitalised, "System: " for system turns), with
the tokenizer's BOS id prepended and its EOS id appended after the response.

Masking is exact: the prompt (every turn before the last assistant turn, rendered with
`add_generation_prompt=True`) and the full conversation are tokenised separately; the prompt ids must be a
prefix of the full ids and only the tokens after that prefix are labelled (the response and the template's
end-of-turn marker, which the model must also learn to emit). If the ids are not a prefix (a tokenizer that
merges across the boundary) but the full text starts with the prompt text, the boundary is found from the
character offsets instead (tokens ending at or before the prompt's last character are prompt); otherwise a
ValueError names the row.

Truncation to `max_length` keeps the prompt's TAIL and the response's HEAD: the prompt keeps
min(len(prompt), max(max_length - len(response), max_length // 2)) of its last tokens and the response
fills the rest of the window from its start. `n_tokens` counts the labelled tokens actually scored.

Batching: sequences are sorted by length and packed into batches whose padded size (rows x longest row)
stays within `batch_tokens`; right padding with an attention mask. Only labelled positions go through the
output head, in float32 log-softmax, so results do not depend on batching beyond float rounding.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PLAIN_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}


def resolve_dtype(dtype: str | None, device: str) -> str:
    """'auto' -> bfloat16 on GPU, float32 on CPU (bf16 on CPU is opt-in: pass 'bfloat16')."""
    if dtype in (None, "auto"):
        return "bfloat16" if device.startswith("cuda") else "float32"
    aliases = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16", "half": "float16"}
    dtype = aliases.get(dtype, dtype)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return dtype


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Encoded:
    """Token ids of one sequence and the number of leading prompt (unlabelled) tokens."""

    ids: list[int]
    n_prompt: int
    truncated: bool = False


class LMScorer:
    """A causal LM plus its tokenizer and formatter: encodes conversations, returns per-row NLL."""

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        dtype: str | None = "auto",
        device: str | None = None,
        max_length: int = 2048,
        batch_tokens: int = 8192,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from curate.models import model_fingerprint, resolve_model

        self.path = resolve_model(model)
        self.device = device or default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=False)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.path, dtype=getattr(torch, self.dtype), trust_remote_code=False, use_safetensors=True
        ).to(self.device)
        self.model.eval()
        self._setup(max_length, batch_tokens, model_fingerprint(self.path, self.dtype))

    @classmethod
    def from_model(
        cls,
        model,
        tokenizer,
        *,
        path: str | os.PathLike,
        dtype: str,
        device: str,
        fingerprint: str,
        max_length: int = 2048,
        batch_tokens: int = 8192,
    ) -> LMScorer:
        """A scorer over a model already in memory (the training module's), with the same encoder."""
        self = cls.__new__(cls)
        self.path, self.device, self.dtype = Path(path), device, dtype
        self.tokenizer, self.model = tokenizer, model
        self._setup(max_length, batch_tokens, fingerprint)
        return self

    def _setup(self, max_length: int, batch_tokens: int, fingerprint: str) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_length
        self.max_length = int(min(max_length, limit))
        self.batch_tokens = int(batch_tokens)
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.fingerprint = fingerprint
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self._split = _split_head(self.model)

    # formatting -------------------------------------------------------------------------------
    @property
    def format_name(self) -> str:
        return "chat_template" if self.has_template else "plain"

    def render(self, messages: Sequence[dict], *, generation_prompt: bool) -> str:
        """Text of a conversation in the model's format (chat template or the plain fallback)."""
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self.has_template:
            return self.tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=generation_prompt
            )
        text = "".join(f"{PLAIN_ROLES.get(m['role'], m['role'].capitalize())}: {m['content']}\n" for m in msgs)
        if generation_prompt:
            text += "Assistant: "
        return text

    def _tok(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, messages: Sequence[dict], *, where: str = "row") -> Encoded:
        """Token ids of a conversation whose last turn is the response, with exact prompt masking."""
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"{where}: the last turn must be an assistant response")
        prompt_msgs, resp = list(messages[:-1]), messages[-1]["content"]
        if self.has_template:
            p_text = self.render(prompt_msgs, generation_prompt=True)
            f_text = self.render(messages, generation_prompt=False)
            p_ids, f_ids = self._tok(p_text), self._tok(f_text)
            if f_ids[: len(p_ids)] == p_ids and len(f_ids) > len(p_ids):
                return self._truncate(f_ids, len(p_ids))
            if f_text.startswith(p_text):
                return self._truncate(f_ids, self._offset_boundary(f_text, len(p_text), where))
            raise ValueError(
                f"{where}: the chat template renders the prompt differently inside the full conversation "
                "(prompt text is not a prefix of the conversation text); cannot mask the prompt exactly"
            )
        p_text = self.render(prompt_msgs, generation_prompt=True)
        f_text = p_text + resp
        p_ids, f_ids = self._tok(p_text), self._tok(f_text)
        if f_ids[: len(p_ids)] != p_ids:
            n_p = self._offset_boundary(f_text, len(p_text), where)
        else:
            n_p = len(p_ids)
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return self._truncate(bos + f_ids + eos, n_p + len(bos))

    def encode_alone(self, messages: Sequence[dict], *, where: str = "row") -> Encoded:
        """The response scored without its instruction: the same format with one empty user turn.

        Keeping the template (assistant header, end-of-turn marker) makes the labelled tokens the same
        as in `encode`, so IFD compares like with like.
        """
        return self.encode([{"role": "user", "content": ""}, messages[-1]], where=where)

    def _offset_boundary(self, text: str, n_chars: int, where: str) -> int:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        n = 0
        for _start, end in enc["offset_mapping"]:
            if end <= n_chars:
                n += 1
            else:
                break
        if n >= len(enc["input_ids"]):
            raise ValueError(f"{where}: the response is empty after tokenisation")
        return n

    def _truncate(self, ids: list[int], n_prompt: int) -> Encoded:
        L = self.max_length
        if len(ids) <= L:
            return Encoded(ids, n_prompt)
        p, r = ids[:n_prompt], ids[n_prompt:]
        keep_p = min(len(p), max(L - len(r), L // 2))
        p = p[len(p) - keep_p :]
        r = r[: L - keep_p]
        return Encoded(p + r, len(p), truncated=True)

    # scoring ----------------------------------------------------------------------------------
    def nll(
        self, seqs: Sequence[Encoded], *, progress: bool = False, desc: str = "nll"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL (float64, nats) and labelled-token count of each sequence, in input order."""
        import torch

        n = len(seqs)
        sums = np.zeros(n, dtype=np.float64)
        counts = np.array([max(0, len(s.ids) - max(s.n_prompt, 1)) for s in seqs], dtype=np.int64)
        order = sorted(range(n), key=lambda i: -len(seqs[i].ids))
        batches = _budget_batches([len(seqs[i].ids) for i in order], self.batch_tokens)
        bar = _progress(n, desc, progress)
        t0, toks = time.perf_counter(), 0
        with torch.inference_mode():
            for lo, hi in batches:
                idx = order[lo:hi]
                sums[idx] = self._batch_nll([seqs[i] for i in idx])
                toks += sum(len(seqs[i].ids) for i in idx)
                if bar is not None:
                    bar.update(len(idx))
                    bar.set_postfix(tok_s=f"{toks / max(time.perf_counter() - t0, 1e-9):.0f}")
        if bar is not None:
            bar.close()
        return sums, counts

    def _batch_nll(self, batch: list[Encoded]) -> np.ndarray:
        import torch

        T = max(len(s.ids) for s in batch)
        B = len(batch)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        rows, pos, tgt = [], [], []
        for b, s in enumerate(batch):
            ids[b, : len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
            mask[b, : len(s.ids)] = 1
            start = max(s.n_prompt, 1)  # the first token of a sequence has no context to predict it
            for t in range(start, len(s.ids)):
                rows.append(b)
                pos.append(t - 1)
                tgt.append(s.ids[t])
        out = np.zeros(B, dtype=np.float64)
        if not rows:
            return out
        ids, mask = ids.to(self.device), mask.to(self.device)
        rows_t = torch.tensor(rows, device=self.device)
        pos_t = torch.tensor(pos, device=self.device)
        tgt_t = torch.tensor(tgt, device=self.device)
        if self._split is not None:
            base, head = self._split
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
            sel = hidden[rows_t, pos_t]
            tok_nll = torch.cat(
                [
                    _token_nll(head(sel[i : i + 4096]).float(), tgt_t[i : i + 4096])
                    for i in range(0, sel.shape[0], 4096)
                ]
            )
        else:
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            tok_nll = _token_nll(logits[rows_t, pos_t].float(), tgt_t)
        acc = torch.zeros(B, dtype=torch.float64, device=self.device)
        acc.index_add_(0, rows_t, tok_nll.double())
        return acc.cpu().numpy()

    def conversation_nll(
        self, conversations: Sequence[Sequence[dict]], *, alone: bool = False, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Response NLL sums and token counts of conversations (response alone when `alone`)."""
        enc = self.encode_alone if alone else self.encode
        seqs = [enc(m, where=f"row {i}") for i, m in enumerate(conversations)]
        return self.nll(seqs, progress=progress)


def labels_for(seq: Encoded) -> list[int]:
    """The label vector used for a sequence: -100 on prompt positions, the token id on response ones."""
    start = max(seq.n_prompt, 1)
    return [-100] * start + list(seq.ids[start:])


def _token_nll(logits, targets):
    import torch

    return -torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _split_head(model):
    """(backbone, output head) when logits are a plain linear map of the last hidden state, else None."""
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings()
    if base is None or head is None or base is model:
        return None
    return base, head


def _budget_batches(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Split a length-sorted (descending) list into [lo, hi) batches with rows x max_len <= budget."""
    out, lo = [], 0
    while lo < len(lengths):
        longest = lengths[lo]
        size = max(1, budget // max(longest, 1))
        hi = min(len(lengths), lo + size)
        out.append((lo, hi))
        lo = hi
    return out


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="rows", dynamic_ncols=True)


def load_tokenizer(path: str | os.PathLike):
    """A (fast) tokenizer from a model directory, offline, without remote code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(path), trust_remote_code=False)
