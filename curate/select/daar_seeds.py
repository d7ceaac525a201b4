"""DaaR Stage A, optional: an instruct LM writes domain seed pairs, kept by cosine rejection (methods.md 2.4).

Procedure (Ling et al., arXiv 2502.04380, steps 1-2, written from the brief, off by default in `daar`):
(1) seed: for each domain, the LM is asked for one instruction/response pair about that domain only, and
    explicitly not about the other domains (their one-sentence descriptions are listed);
(2) augment: once a domain holds `n_initial` kept samples, each new request shows a sliding window of
    `window` of them as counter-examples and asks for a clearly different pair;
(3) rejection: a parsed candidate is kept only if its cosine (under `embed`) to EVERY kept sample of its
    domain is < the domain's threshold (default 0.85; e.g. {"math": 0.9} as in the paper).
A domain stops at `n_per_domain` kept samples or `max_attempts` requests (then a warning; zero kept is an
error). Unparsable outputs count as failed attempts.

Output format asked of the LM (parsed by `parse_pair`, tolerant of markdown bold/headers and of an
"Input:" section, which is folded into the instruction):
    Instruction: <the instruction>
    Response: <the response>

Deviations (documented): one pair per request in both phases (the paper asks for 5 pairs in the first prompt
and parses them with regex, which its README calls fragile); rejection also applies to the first phase (a
duplicate seed adds nothing to a centroid); the window rotates deterministically over the kept samples (the
code draws 3 at random); one temperature for both phases (the code uses 0.95 when augmenting); cosines come
from the caller's `embed` (in `daar`: the pool's sentence encoder, else the LM's input-embedding mean), not
the paper's embedding layer of the instruct model (its code used the last hidden layer); the LM's answer is
prefilled with "Instruction:" (small instruct models rarely start in the format otherwise).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from curate.select.daar_features import row_texts

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.85
#: bump when a change would change the seeds generated from the same inputs, so older cached seeds are not used
#: (2: requests seeded by the domain's name, not its position)
SEEDS_VERSION = 2
SYSTEM_PROMPT = "You write high-quality training examples for a language model. Follow the format exactly."

# complete(messages, seed) -> generated text; `seed` is derived from the run seed, the domain and the attempt
# (`request_seed`)
Completer = Callable[[list[dict], int], str]
Embedder = Callable[[list[str]], np.ndarray]


class GeneratedSeeds(list):
    """The kept seed rows (dicts with domain, prompt, response, text) plus `stats` per domain."""

    stats: dict[str, Any]

    def __init__(self, rows: Sequence[dict] = (), stats: dict[str, Any] | None = None) -> None:
        super().__init__(rows)
        self.stats = stats or {}


# ---------------------------------------------------------------------------------------------------------
# parsing and prompts

_LABEL = r"(?:^|\n)[ \t>#*_-]*(?:\d+[.)]\s*)?{name}[ \t*_]*[:：][ \t*_]*"
_INSTR = re.compile(_LABEL.format(name=r"(?:instruction|question|prompt)"), re.IGNORECASE)
_INPUT = re.compile(_LABEL.format(name=r"input"), re.IGNORECASE)
_RESP = re.compile(_LABEL.format(name=r"(?:response|output|answer)"), re.IGNORECASE)
_RESP_INLINE = re.compile(r"\b(?:response|output|answer)[ \t*_]*[:：][ \t*_]*", re.IGNORECASE)


def _clean(s: str) -> str:
    return s.strip().strip("*_").strip()


def parse_pair(text: str) -> tuple[str, str] | None:
    """(instruction, response) from an LM output in the "Instruction: ...\\nResponse: ..." format, or None.

    Only the first pair is read (text after a second "Instruction:" is dropped); an "Input:" section is
    appended to the instruction; both parts must be non-empty and the instruction must hold a letter or digit.
    """
    if not isinstance(text, str):
        return None
    m = _INSTR.search("\n" + text)
    if m is None:
        return None
    rest = ("\n" + text)[m.end() :]
    r = _RESP.search(rest) or _RESP_INLINE.search(rest)
    if r is None:
        return None
    instr, resp = rest[: r.start()], rest[r.end() :]
    nxt = _INSTR.search(resp)
    if nxt is not None:
        resp = resp[: nxt.start()]
    i = _INPUT.search(instr)
    if i is not None:
        extra = _clean(instr[i.end() :])
        instr = _clean(instr[: i.start()]) + (f"\n{extra}" if extra else "")
    instr, resp = _clean(instr), _clean(resp)
    if not resp or not re.search(r"\w", instr):
        return None
    return instr, resp


def _others(domain: str, domains: Mapping[str, str]) -> str:
    return "\n".join(f"- {d}: {desc}" for d, desc in domains.items() if d != domain)


def seed_messages(
    domain: str, domains: Mapping[str, str], examples: Sequence[tuple[str, str]] = ()
) -> list[dict]:
    """Chat messages asking for one new pair of `domain`; `examples` (instruction, response) are shown as
    counter-examples the new pair must differ from (the augmentation step)."""
    others = _others(domain, domains)
    lines = [
        f'Write one instruction and its response for the domain "{domain}": {domains[domain]}',
        "The instruction must be about this domain only.",
    ]
    if others:
        lines.append(f"It must NOT be about any of these other domains:\n{others}")
    if examples:
        shown = "\n\n".join(
            f"Example {j}:\nInstruction: {p}\nResponse: {r}" for j, (p, r) in enumerate(examples, 1)
        )
        lines.append(
            f"Here are existing examples of this domain:\n\n{shown}\n\n"
            "Write a NEW pair that is clearly different from all of these examples (another topic, "
            "task type and wording)."
        )
    lines.append("Answer in exactly this format and nothing else:\nInstruction: <the instruction>\nResponse: <the response>")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(lines)}]


def window_examples(
    kept: Sequence[tuple[str, str]], start: int, window: int
) -> tuple[list[tuple[str, str]], int]:
    """The sliding window of counter-examples: `window` consecutive kept samples from `start` (mod the number
    kept), wrapping around, or all of them if fewer; returns (examples, start of the next window).

    Used with a cursor over the growing list of kept samples, each sample is shown in turn (the paper's code
    draws 3 at random)."""
    n = len(kept)
    if n <= window:
        return list(kept), n  # the next window starts after the last sample shown (the list grows)
    start %= n
    return [kept[(start + j) % n] for j in range(window)], (start + window) % n


# ---------------------------------------------------------------------------------------------------------
# the LM-backed completer


class LMCompleter:
    """Sampling from a local causal LM (folder or alias such as "smollm2") with its chat template.

    Each call seeds torch from its `seed` argument inside a forked RNG, so outputs are reproducible and do not
    depend on call order or on global random state. The assistant turn is prefilled with `prefill` (default
    "Instruction:"), which the returned text starts with: small instruct models (SmolLM2-135M) otherwise
    rarely start in the requested format.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        temperature: float = 0.9,
        top_p: float = 0.95,
        max_new_tokens: int = 256,
        device: str = "cpu",
        dtype: str | None = "auto",
        prefill: str = "Instruction:",
    ) -> None:
        from curate.signals.lm import LMScorer

        if temperature <= 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
            raise ValueError(
                f"LM sampling needs temperature > 0, top_p in (0, 1], max_new_tokens >= 1; "
                f"got {temperature}, {top_p}, {max_new_tokens}"
            )
        self.lm = LMScorer(model, device=device, dtype=dtype)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_new_tokens = int(max_new_tokens)
        self.prefill = str(prefill)
        self.context = int(getattr(self.lm.model.config, "max_position_embeddings", 0) or 0)

    def __call__(self, messages: list[dict], seed: int) -> str:
        """Sample one completion of `messages`: the prefill plus the new tokens' text (special tokens removed)."""
        import torch

        lm = self.lm
        text = lm.render(messages, generation_prompt=True) + self.prefill
        ids = list(lm.tokenizer(text, add_special_tokens=False).input_ids)
        if not lm.has_template and lm.tokenizer.bos_token_id is not None:
            ids = [int(lm.tokenizer.bos_token_id), *ids]
        if self.context and len(ids) + self.max_new_tokens > self.context:
            raise ValueError(
                f"seed prompt of {len(ids)} tokens + max_new_tokens={self.max_new_tokens} exceeds the model's "
                f"context of {self.context} tokens: lower max_new_tokens, window or the description lengths"
            )
        inp = torch.tensor([ids], device=lm.device)
        devices = [] if str(lm.device) == "cpu" else None
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(int(seed))
            out = lm.model.generate(
                input_ids=inp,
                attention_mask=torch.ones_like(inp),
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=lm.pad_id,
            )
        return self.prefill + lm.tokenizer.decode(out[0, inp.shape[1] :].tolist(), skip_special_tokens=True)


def default_embedder() -> Embedder:
    """The bundled sentence encoder (all-MiniLM-L6-v2), loaded once."""
    from index.embed import Encoder

    enc = Encoder.load(None, device="cpu")
    return enc.encode


# ---------------------------------------------------------------------------------------------------------
# generation with rejection sampling


def _thresholds(threshold: float | Mapping[str, float], domains: Mapping[str, str]) -> dict[str, float]:
    if isinstance(threshold, Mapping):
        unknown = sorted(set(threshold) - set(domains))
        if unknown:
            raise ValueError(f"seed threshold given for unknown domain(s) {unknown}; domains: {sorted(domains)}")
        out = {d: float(threshold.get(d, DEFAULT_THRESHOLD)) for d in domains}
    else:
        out = {d: float(threshold) for d in domains}
    bad = {d: t for d, t in out.items() if not 0 < t <= 1}
    if bad:
        raise ValueError(f"seed cosine thresholds must lie in (0, 1], got {bad}")
    return out


def _check_domains(domains: Mapping[str, str]) -> None:
    if not isinstance(domains, Mapping) or not domains:
        raise ValueError("generate_seeds needs domains: a mapping domain -> one-sentence description")
    for d, desc in domains.items():
        if not isinstance(d, str) or not d.strip():
            raise ValueError(f"domain names must be non-empty strings, got {d!r}")
        if not isinstance(desc, str) or not desc.strip():
            raise ValueError(f"domain {d!r} needs a non-empty description (a sentence), got {desc!r}")


def request_seed(seed: int, domain: str, attempt: int) -> int:
    """The seed of one generation request: from the run seed, the domain's NAME (not its place among the
    domains, so reordering a descriptions file changes no request) and the attempt."""
    name = int.from_bytes(hashlib.blake2b(domain.encode("utf-8"), digest_size=8).digest(), "little")
    return int(np.random.SeedSequence([int(seed), name, int(attempt)]).generate_state(1)[0])


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def generate_seeds(
    model: str | os.PathLike | None,
    domains: Mapping[str, str],
    *,
    n_per_domain: int = 10,
    n_initial: int = 5,
    threshold: float | Mapping[str, float] = DEFAULT_THRESHOLD,
    max_attempts: int = 100,
    window: int = 3,
    temperature: float = 0.9,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    seed: int = 0,
    embed: Embedder | None = None,
    complete: Completer | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> GeneratedSeeds:
    """Generate DaaR seed rows per domain with an LM, keeping only candidates whose cosine to every kept
    sample of the domain is below its threshold; rows {"domain", "prompt", "response", "text"} in domain order.

    `model`: a causal LM folder or alias ("smollm2"), used by the default `complete` (an `LMCompleter`); a
    custom `complete(messages, seed) -> str` replaces it. `embed(texts) -> vectors` (default: the bundled
    sentence encoder) embeds each candidate's DaaR text. `stats` on the result: attempts, accepted,
    unparsable and rejected counts per domain.
    """
    _check_domains(domains)
    thr = _thresholds(threshold, domains)
    if n_per_domain < 1 or max_attempts < 1 or window < 1 or n_initial < 0:
        raise ValueError(
            f"generate_seeds needs n_per_domain >= 1, max_attempts >= 1, window >= 1, n_initial >= 0; "
            f"got {n_per_domain}, {max_attempts}, {window}, {n_initial}"
        )
    if complete is None:
        if model is None:
            raise ValueError("generate_seeds needs a model (a causal LM folder or 'smollm2') or a `complete` function")
        complete = LMCompleter(
            model, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, device=device
        )
    if embed is None:
        embed = default_embedder()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_per_domain * len(domains), desc="daar seeds", unit="seed")
    rows: list[dict] = []
    stats: dict[str, Any] = {}
    try:
        for domain in domains:
            kept: list[tuple[str, str]] = []
            vecs: list[np.ndarray] = []
            st = {"attempts": 0, "accepted": 0, "unparsable": 0, "rejected": 0, "threshold": thr[domain]}
            cursor = 0
            while len(kept) < n_per_domain and st["attempts"] < max_attempts:
                if kept and len(kept) >= max(1, min(n_initial, n_per_domain)):
                    examples, cursor = window_examples(kept, cursor, window)
                else:
                    examples = []
                call_seed = request_seed(seed, domain, st["attempts"])
                st["attempts"] += 1
                out = complete(seed_messages(domain, domains, examples), call_seed)
                pair = parse_pair(out)
                if pair is None:
                    st["unparsable"] += 1
                    log.debug("daar seeds: %s attempt %d unparsable: %.200r", domain, st["attempts"], out)
                    continue
                text = row_texts([pair[0]], [pair[1]])[0]
                v = _unit(np.asarray(embed([text]))[0])
                if vecs and float(np.max(np.stack(vecs) @ v)) >= thr[domain]:
                    st["rejected"] += 1
                    continue
                kept.append(pair)
                vecs.append(v)
                rows.append({"domain": domain, "prompt": pair[0], "response": pair[1], "text": text})
                if bar is not None:
                    bar.update(1)
            st["accepted"] = len(kept)
            stats[domain] = st
            log.info("daar seeds: %s kept %d of %d attempts", domain, len(kept), st["attempts"])
            if not kept:
                raise RuntimeError(
                    f"daar seeds: domain {domain!r} got no usable seed in {st['attempts']} attempts "
                    f"({st['unparsable']} unparsable, {st['rejected']} rejected): raise max_attempts, or check "
                    "that the model follows the 'Instruction: ... / Response: ...' format"
                )
            if len(kept) < n_per_domain:
                warnings.warn(
                    f"daar seeds: domain {domain!r} stopped at max_attempts={max_attempts} with {len(kept)} of "
                    f"{n_per_domain} seeds ({st['unparsable']} unparsable, {st['rejected']} rejected at cosine "
                    f">= {thr[domain]})",
                    RuntimeWarning,
                    stacklevel=2,
                )
    finally:
        if bar is not None:
            bar.close()
    return GeneratedSeeds(rows, stats)
