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

End of turn: the labelled tokens after the response text (the template's end-of-turn marker and what follows
it, e.g. SmolLM2's "<|im_end|>" and "\n"; the EOS id in the plain fallback) are counted in `Encoded.n_eot`.
Training labels them (a model must learn to stop); scoring signals leave them out by default, because for a
short answer the marker dominates the loss (`nll(..., eot=False)`). The response's end is found by locating
its text after the prompt in the rendered conversation (as given, else stripped); tokens that start before
that character are response. A template that rewrites the response so that its text cannot be found gets
n_eot = 0 (every labelled token counts as response).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index.cpu import auto_dtype

PLAIN_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}


def resolve_dtype(dtype: str | None, device: str) -> str:
    """'auto' -> bfloat16 on GPU and on CPUs with native bf16 units, float32 elsewhere (index.cpu.auto_dtype)."""
    if dtype in (None, "auto"):
        return auto_dtype(device)
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
    n_eot: int = 0  # trailing labelled tokens that are the template's end-of-turn marker, not the response

    def label_span(self, eot: bool = True) -> tuple[int, int]:
        """[start, stop) of the labelled positions: the response, plus the end-of-turn tokens when `eot`."""
        start = max(self.n_prompt, 1)  # the first token of a sequence has no context to predict it
        stop = len(self.ids) if eot else len(self.ids) - self.n_eot
        return start, max(start, stop)


@dataclass
class ScorerJob:
    """The part of the shard jobs that score rows with one causal LM (`LMNllJob`, `ICLJob`, `RowNllJob`): the
    model and how it is run, and `local` (the caller's scorer, never pickled, used in process); a worker loads
    its own scorer once in `setup`."""

    model: str
    dtype: str
    device: str | None
    max_length: int
    batch_tokens: int
    local: Callable[[], Any] | None = field(default=None, kw_only=True)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "local": None}

    def load_scorer(self) -> LMScorer:
        """The caller's scorer, or one loaded here (`device` None: this process's default device)."""
        if self.local is not None:
            return self.local()
        return LMScorer(self.model, dtype=self.dtype, device=self.device, max_length=self.max_length,
                        batch_tokens=self.batch_tokens)

    def setup(self):  # noqa: ANN201 - a job's worker state
        return self.load_scorer()


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
                n_p = len(p_ids)
            elif f_text.startswith(p_text):
                n_p = self._offset_boundary(f_text, len(p_text), where)
            else:
                raise ValueError(
                    f"{where}: the chat template renders the prompt differently inside the full conversation "
                    "(prompt text is not a prefix of the conversation text); cannot mask the prompt exactly"
                )
            n_resp_end = max(n_p, self._response_end(f_text, len(p_text), resp, f_ids))
            return self._truncate(f_ids, n_p, len(f_ids) - n_resp_end)
        p_text = self.render(prompt_msgs, generation_prompt=True)
        f_text = p_text + resp
        p_ids, f_ids = self._tok(p_text), self._tok(f_text)
        if f_ids[: len(p_ids)] != p_ids:
            n_p = self._offset_boundary(f_text, len(p_text), where)
        else:
            n_p = len(p_ids)
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return self._truncate(bos + f_ids + eos, n_p + len(bos), len(eos))

    def encode_alone(self, messages: Sequence[dict], *, where: str = "row") -> Encoded:
        """The response scored without its instruction: the same format with one empty user turn.

        Keeping the template (assistant header, end-of-turn marker) makes the labelled tokens the same
        as in `encode`, so IFD compares like with like. When the whole conversation is longer than
        `max_length`, `encode` keeps only the head of the response: the response here is cut to as many
        tokens, so both sides score the same tokens.
        """
        alone = self.encode([{"role": "user", "content": ""}, messages[-1]], where=where)
        cond = self.encode(messages, where=where)
        extra = (len(alone.ids) - alone.n_prompt) - (len(cond.ids) - cond.n_prompt)
        if not cond.truncated or extra <= 0:
            return alone
        return Encoded(alone.ids[: len(alone.ids) - extra], alone.n_prompt, truncated=True,
                       n_eot=max(0, alone.n_eot - extra))

    def _response_end(self, text: str, start: int, resp: str, ids: list[int]) -> int:
        """Number of leading tokens of `ids` (the tokens of `text`) up to the end of the response text.

        The response is looked up in `text` from character `start` (the end of the prompt), as given or
        stripped (templates that trim). Not found: len(ids), i.e. no end-of-turn tokens are told apart.
        """
        pos, content = text.find(resp, start), resp
        if pos < 0:
            content = resp.strip()
            pos = text.find(content, start)
        if pos < 0:
            return len(ids)
        end = pos + len(content)
        head = self._tok(text[:end])
        if ids[: len(head)] == head:
            return len(head)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return sum(1 for s, _ in enc["offset_mapping"] if s < end)  # a token straddling the end is response

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

    def _truncate(self, ids: list[int], n_prompt: int, n_eot: int = 0) -> Encoded:
        L = self.max_length
        if len(ids) <= L:
            return Encoded(ids, n_prompt, n_eot=n_eot)
        p, r = ids[:n_prompt], ids[n_prompt:]
        keep_p = min(len(p), max(L - len(r), L // 2))
        p = p[len(p) - keep_p :]
        cut = len(r) - (L - keep_p)
        r = r[: L - keep_p]
        return Encoded(p + r, len(p), truncated=True, n_eot=max(0, n_eot - max(cut, 0)))

    # scoring ----------------------------------------------------------------------------------
    def nll(
        self, seqs: Sequence[Encoded], *, eot: bool = True, progress: bool = False, desc: str = "nll"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL (float64, nats) and labelled-token count of each sequence, in input order.

        eot=True counts every labelled token (the training loss); eot=False leaves out the trailing
        end-of-turn tokens (`Encoded.n_eot`), as the scoring signals do by default.
        """
        parts = self.nll_parts(seqs, progress=progress, desc=desc)
        return parts.sums(eot), parts.counts(eot)

    def nll_parts(self, seqs: Sequence[Encoded], *, progress: bool = False, desc: str = "nll") -> NLLParts:
        """Per-sequence NLL of the response tokens and of the end-of-turn tokens, from one forward pass."""
        import torch

        n = len(seqs)
        sums = np.zeros((n, 2), dtype=np.float64)
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
        return NLLParts.of(seqs, sums)

    def _batch_nll(self, batch: list[Encoded]) -> np.ndarray:
        import torch

        T = max(len(s.ids) for s in batch)
        ids = torch.full((len(batch), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for b, s in enumerate(batch):
            ids[b, : len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
            mask[b, : len(s.ids)] = 1
        return self._labelled_nll(batch, [0] * len(batch), input_ids=ids, attention_mask=mask)

    def _labelled_nll(self, batch: list[Encoded], offsets: list[int], **inputs) -> np.ndarray:
        """Forward `inputs` and sum the NLL of each sequence's labelled tokens: [len(batch), 2] (response,
        end of turn). Row b of the input holds batch[b]'s tokens from position offsets[b] on (the rest is
        in the past key values)."""
        import torch

        rows, pos, tgt, part = [], [], [], []
        for b, (s, off) in enumerate(zip(batch, offsets, strict=True)):
            start, stop = s.label_span(eot=False)
            for t in range(start, len(s.ids)):
                rows.append(b)
                pos.append(t - 1 - off)
                tgt.append(s.ids[t])
                part.append(0 if t < stop else 1)
        out = np.zeros((len(batch), 2), dtype=np.float64)
        if not rows:
            return out
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        rows_t = torch.tensor(rows, device=self.device)
        pos_t = torch.tensor(pos, device=self.device)
        tgt_t = torch.tensor(tgt, device=self.device)
        if self._split is not None:
            base, head = self._split
            hidden = base(**inputs).last_hidden_state
            sel = hidden[rows_t, pos_t]
            tok_nll = torch.cat(
                [
                    _token_nll(head(sel[i : i + 4096]).float(), tgt_t[i : i + 4096])
                    for i in range(0, sel.shape[0], 4096)
                ]
            )
        else:
            logits = self.model(**inputs).logits
            tok_nll = _token_nll(logits[rows_t, pos_t].float(), tgt_t)
        acc = torch.zeros(len(batch) * 2, dtype=torch.float64, device=self.device)
        acc.index_add_(0, rows_t * 2 + torch.tensor(part, device=self.device), tok_nll.double())
        return acc.view(len(batch), 2).cpu().numpy()

    def nll_shared_prefix(
        self, groups: Sequence[Sequence[Encoded]], *, progress: bool = False, desc: str = "nll"
    ) -> tuple[NLLParts, int]:
        """`nll_parts` of the sequences of all groups (flattened in order), and the tokens forwarded.

        The sequences of a group share a token prefix (an ICL demonstration before each validation row):
        its keys and values are computed once (the HF key/value cache) and each sequence forwards only its
        remaining tokens behind them. The prefix is the group's longest common prefix, cut so that every
        labelled token is predicted from a forwarded position; the labelled tokens and their NLL are those
        of `nll_parts` (equal within float rounding).

        Batching: groups sorted by prefix length are taken in chunks whose padded prefixes fit
        `batch_tokens` (one pass, right-padded and masked); the chunk's remaining parts are sorted by length
        and forwarded in batches of rows x (prefix + part) <= `batch_tokens`, each behind a copy of its rows'
        prefix keys and values.
        """
        import torch

        flat = [s for g in groups for s in g]
        firsts = np.cumsum([0] + [len(g) for g in groups])
        # a sequence cut from the left (longer than max_length) starts elsewhere: it is scored alone, so one
        # long validation row does not cost every group its shared prefix
        members = [[j for j in range(firsts[i], firsts[i + 1]) if not flat[j].truncated] for i in range(len(groups))]
        plen = [_shared_prefix([flat[j] for j in m]) for m in members]
        shared = {j for i, m in enumerate(members) if plen[i] > 0 for j in m}
        plain = [j for j in range(len(flat)) if j not in shared]
        sums = np.zeros((len(flat), 2), dtype=np.float64)
        bar = _progress(len(flat), desc, progress)
        if plain:
            sums[plain] = self.nll_parts([flat[j] for j in plain]).stack()
            if bar is not None:
                bar.update(len(plain))
        forwarded = sum(len(flat[j].ids) for j in plain)
        todo = sorted((i for i in range(len(groups)) if plen[i] > 0), key=lambda i: -plen[i])
        chunks = [todo[lo:hi] for lo, hi in _budget_batches([plen[i] for i in todo], self.batch_tokens)]
        with torch.inference_mode():
            for chunk in chunks:
                rows = [j for i in chunk for j in members[i]]
                sums[rows] = self._prefix_chunk([[flat[j] for j in members[i]] for i in chunk],
                                                [plen[i] for i in chunk])
                forwarded += sum(plen[i] + sum(len(flat[j].ids) - plen[i] for j in members[i]) for i in chunk)
                if bar is not None:
                    bar.update(len(rows))
        if bar is not None:
            bar.close()
        return NLLParts.of(flat, sums), forwarded

    def _prefix_chunk(self, groups: list[Sequence[Encoded]], plen: list[int]) -> np.ndarray:
        """One chunk of `nll_shared_prefix`: the prefixes in one pass, then the rest behind their cache."""
        import torch
        from transformers import DynamicCache

        G, P = len(groups), max(plen)
        pre = torch.full((G, P), self.pad_id, dtype=torch.long)
        pre_mask = torch.zeros((G, P), dtype=torch.long)
        for g, (grp, n) in enumerate(zip(groups, plen, strict=True)):
            pre[g, :n] = torch.tensor(grp[0].ids[:n], dtype=torch.long)
            pre_mask[g, :n] = 1
        net = self._split[0] if self._split is not None else self.model
        cache = net(input_ids=pre.to(self.device), attention_mask=pre_mask.to(self.device), use_cache=True).cache
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        owner = [g for g, grp in enumerate(groups) for _ in grp]
        seqs = [s for grp in groups for s in grp]
        rest = [len(s.ids) - plen[g] for s, g in zip(seqs, owner, strict=True)]
        order = sorted(range(len(seqs)), key=lambda b: -rest[b])
        out = np.zeros((len(seqs), 2), dtype=np.float64)
        for lo, hi in _budget_batches([P + rest[b] for b in order], self.batch_tokens):
            idx = order[lo:hi]
            S = rest[idx[0]]
            ids = torch.full((len(idx), S), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), P + S), dtype=torch.long)
            positions = torch.zeros((len(idx), S), dtype=torch.long)
            for r, b in enumerate(idx):
                o = plen[owner[b]]
                ids[r, : rest[b]] = torch.tensor(seqs[b].ids[o:], dtype=torch.long)
                mask[r, :P] = pre_mask[owner[b]]
                mask[r, P : P + rest[b]] = 1
                positions[r] = torch.arange(o, o + S)  # positions continue from the row's own prefix
            sel = torch.tensor([owner[b] for b in idx], device=self.device)
            sub = DynamicCache(ddp_cache_data=[(k[sel], v[sel]) for k, v in kv], config=self.model.config)
            out[idx] = self._labelled_nll([seqs[b] for b in idx], [plen[owner[b]] for b in idx], input_ids=ids,
                                          attention_mask=mask, position_ids=positions, cache=sub, use_cache=True)
        return out

    def conversation_nll(
        self,
        conversations: Sequence[Sequence[dict]],
        *,
        alone: bool = False,
        eot: bool = True,
        progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Response NLL sums and token counts of conversations (response alone when `alone`; with the
        end-of-turn tokens, as training labels them, unless eot=False)."""
        enc = self.encode_alone if alone else self.encode
        seqs = [enc(m, where=f"row {i}") for i, m in enumerate(conversations)]
        return self.nll(seqs, eot=eot, progress=progress)


@dataclass
class NLLParts:
    """Per-sequence summed NLL and token count of the response tokens and of the end-of-turn tokens."""

    resp_sum: np.ndarray
    resp_n: np.ndarray
    eot_sum: np.ndarray
    eot_n: np.ndarray

    @classmethod
    def of(cls, seqs: Sequence[Encoded], sums: np.ndarray) -> NLLParts:
        """From [n, 2] sums (response, end of turn) and the sequences' label spans."""
        spans = [s.label_span(eot=False) for s in seqs]
        resp_n = np.array([b - a for a, b in spans], dtype=np.int64)
        total = np.array([max(0, len(s.ids) - a) for s, (a, _) in zip(seqs, spans, strict=True)], dtype=np.int64)
        sums = np.asarray(sums, dtype=np.float64).reshape(len(seqs), 2)
        return cls(sums[:, 0].copy(), resp_n, sums[:, 1].copy(), total - resp_n)

    def sums(self, eot: bool) -> np.ndarray:
        """Summed NLL of the response tokens, plus the end-of-turn tokens when `eot`."""
        return self.resp_sum + self.eot_sum if eot else self.resp_sum.copy()

    def counts(self, eot: bool) -> np.ndarray:
        """Token counts matching `sums(eot)`."""
        return self.resp_n + self.eot_n if eot else self.resp_n.copy()

    def stack(self) -> np.ndarray:
        """The [n, 2] sums (response, end of turn)."""
        return np.stack([self.resp_sum, self.eot_sum], axis=1)


def _shared_prefix(group: Sequence[Encoded]) -> int:
    """Tokens all sequences of a group start with, cut before the first predicting position of any of them."""
    if not group:
        return 0
    first = group[0].ids
    n = min(len(s.ids) for s in group)
    for s in group[1:]:
        ids = s.ids
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
    return max(0, min(n, min(s.label_span()[0] - 1 for s in group)))


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
