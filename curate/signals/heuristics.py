"""Heuristic indicators: token lengths, turns, lexical diversity (MTLD, TTR), reasoning steps,
code and math markers, and kNN novelty / density. Each returns one float per pool row.

Text rules (documented so they can be audited):
- words for MTLD/TTR: lower-cased `\\w+` runs (apostrophes inside words kept: "don't" is one word).
- reasoning steps: the text is split into lines, and lines into sentences (after . ! ? followed by a
  space). A segment is a step if it starts with an enumerator ("1.", "2)", "(3)", "a)", "(b)", "Step 4",
  "- ", "* ", "• "; NOT "B. false": a lettered multiple-choice answer is not a step), or with a sequencing word (first/firstly, second/secondly, third, next, then, after that,
  afterwards, finally, lastly, therefore, thus, hence, so), or contains an equation (a "=" between two
  operands, "==" excluded). Each segment counts once.
- code markers: code fences (```), lines starting with a code keyword (def, class, import, from X import,
  return, #include, function, const, let, var, public, private, static, for(, while(, if(, elif, else:,
  try:, except, SELECT), and lines ending with "{", "}" or ";". The count of such items.
- math markers: digit-operator-digit patterns ("3 + 4", "2*x" needs digits on both sides), LaTeX
  commands (\\frac, \\sum, ...), $...$ spans and "=" signs (not "=="). The count of such items.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from curate.signals.base import ScoreContext, signal

MTLD_THRESHOLD = 0.72
_WORD = re.compile(r"\w+(?:'\w+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens used by the lexical-diversity indicators."""
    return _WORD.findall(text.lower())


def _mtld_pass(tokens: list[str], threshold: float) -> float:
    factors, types, count = 0.0, set(), 0
    for w in tokens:
        count += 1
        types.add(w)
        if len(types) / count <= threshold:
            factors += 1.0
            types, count = set(), 0
    if count:
        ttr = len(types) / count
        factors += (1.0 - ttr) / (1.0 - threshold)
    if factors == 0:
        return float(len(tokens))
    return len(tokens) / factors


def mtld(text: str | list[str], threshold: float = MTLD_THRESHOLD) -> float:
    """MTLD (McCarthy & Jarvis 2010): mean of the forward and backward passes.

    A pass walks the words keeping a running type-token ratio; each time it falls to `threshold` or
    below, a factor is counted and the run restarts; the unfinished remainder adds the partial factor
    (1 - TTR) / (1 - threshold). MTLD = words / factors. With no factor at all (every word distinct,
    so the remainder's TTR is 1) the pass returns the word count; an empty text gives 0.
    """
    tokens = words(text) if isinstance(text, str) else list(text)
    if not tokens:
        return 0.0
    return 0.5 * (_mtld_pass(tokens, threshold) + _mtld_pass(tokens[::-1], threshold))


def ttr(text: str) -> float:
    """Type-token ratio of the words (0 for an empty text)."""
    tokens = words(text)
    return len(set(tokens)) / len(tokens) if tokens else 0.0


_ENUM = re.compile(r"^\s*(?:\(?\d+[.):](?=\s|$)|(?-i:\(?[a-z]\))(?=\s)|step\s*\d+|[-*\u2022]\s)", re.IGNORECASE)
_SEQ = re.compile(
    r"^\s*(?:first(?:ly)?|second(?:ly)?|third(?:ly)?|next|then|after that|afterwards|finally|lastly|"
    r"therefore|thus|hence|so)\b",
    re.IGNORECASE,
)
_EQ = re.compile(r"[\w)\]}]\s*(?<![=!<>])=(?!=)\s*[\w(\[{\-$\\]")
_SENT = re.compile(r"(?<=[.!?])\s+")


def reasoning_steps(text: str) -> int:
    """Number of line/sentence segments that look like reasoning steps (rule in the module doc).

    An enumerated line ("1. ...") counts once for its first sentence (the enumerator's own "." does not
    start a new sentence); its further sentences are judged on their own.
    """
    n = 0
    for line in text.splitlines():
        m = _ENUM.match(line)
        segs = _SENT.split(line[m.end():] if m else line)
        for j, seg in enumerate(segs):
            if not seg.strip():
                continue
            if (m and j == 0) or _ENUM.match(seg) or _SEQ.match(seg) or _EQ.search(seg):
                n += 1
    return n


_FENCE = re.compile(r"```")
_CODE_KW = re.compile(
    r"^\s*(?:def\s|class\s|import\s|from\s+\S+\s+import\s|return\b|#include\b|function\b|const\s|let\s|"
    r"var\s|public\s|private\s|static\s|for\s*\(|while\s*\(|if\s*\(|elif\s|else\s*:|try\s*:|except\b|"
    r"SELECT\s)"
)
_CODE_END = re.compile(r"[{};]\s*$")


def code_markers(text: str) -> int:
    """Count of code fences, code-keyword lines and lines ending in { } or ; (see module doc)."""
    n = len(_FENCE.findall(text))
    for line in text.splitlines():
        if _CODE_KW.match(line):
            n += 1
        elif _CODE_END.search(line):
            n += 1
    return n


_ARITH = re.compile(r"\d\s*[-+*/×÷^]\s*\d")
_LATEX = re.compile(r"\\[a-zA-Z]+")
_DOLLAR = re.compile(r"\$[^$\n]+\$")
_EQUALS = re.compile(r"(?<![=!<>])=(?!=)")


def math_markers(text: str) -> int:
    """Count of arithmetic patterns, LaTeX commands, $...$ spans and '=' signs (see module doc)."""
    return (
        len(_ARITH.findall(text))
        + len(_LATEX.findall(text))
        + len(_DOLLAR.findall(text))
        + len(_EQUALS.findall(text))
    )


# registered indicators ---------------------------------------------------------------------------


def _texts(ctx: ScoreContext) -> list[str]:
    field = ctx.param("text_field", "response")
    if field not in ("prompt", "response"):
        raise ValueError(f"text_field must be 'prompt' or 'response', got {field!r}")
    return [t or "" for t in ctx.pool[field].to_list()]


def token_counts(tokenizer: Any, texts: list[str], chunk: int = 1024, bar: Any = None) -> np.ndarray:
    """Token counts of texts (no special tokens), tokenised in batches by a fast tokenizer (`bar` advanced),
    on the tokenizer's own threads (see `_tokenizer_threads`)."""
    out = np.zeros(len(texts), dtype=np.float64)
    with _tokenizer_threads():
        for lo in range(0, len(texts), chunk):
            enc = tokenizer(texts[lo : lo + chunk], add_special_tokens=False, verbose=False)["input_ids"]
            out[lo : lo + chunk] = [len(e) for e in enc]
            if bar is not None:
                bar.update(len(enc))
    return out


@contextmanager
def _tokenizer_threads() -> Iterator[None]:
    """Let a fast (Rust) tokenizer batch-encode on all cores inside this block only.

    The Makefile and the tests set TOKENIZERS_PARALLELISM=false, so worker processes forked later never use a
    thread pool inherited mid-use; with the variable restored on exit, forked children stay sequential and
    silent. Counting 2M BIG-bench texts was a third of the 1M pipeline's score stage on one thread.
    """
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _per_row(ctx: ScoreContext, name: str, fn: Callable[[Any], float], items: Sequence[Any],
             chunk: int = 1024) -> np.ndarray:
    """fn over every item, as float64, with a progress bar named after the signal (rows/s)."""
    out = np.empty(len(items), dtype=np.float64)
    with ctx.bar(len(items), name) as bar:
        for lo in range(0, len(items), chunk):
            part = items[lo : lo + chunk]
            out[lo : lo + len(part)] = [fn(x) for x in part]
            bar.update(len(part))
    return out


def _field_tokens(ctx: ScoreContext, name: str, fields: Sequence[str]) -> np.ndarray:
    """Token counts of the pool's `fields`, summed, with one bar over all of them."""
    tok = ctx.tokenizer()
    total = np.zeros(ctx.n, dtype=np.float64)
    with ctx.bar(ctx.n * len(fields), name) as bar:
        for f in fields:
            total += token_counts(tok, [t or "" for t in ctx.pool[f].to_list()], bar=bar)
    return total


@signal("prompt_tokens", roles=("tokenizer",))
def _prompt_tokens(ctx: ScoreContext) -> np.ndarray:
    """Prompt length in tokens (the scorer's tokenizer when a model is given, else the embedder's)."""
    return _field_tokens(ctx, "prompt_tokens", ["prompt"])


@signal("response_tokens", roles=("tokenizer",))
def _response_tokens(ctx: ScoreContext) -> np.ndarray:
    """Response length in tokens (the scorer's tokenizer when a model is given, else the embedder's)."""
    return _field_tokens(ctx, "response_tokens", ["response"])


@signal("tokens", roles=("tokenizer",))
def _tokens(ctx: ScoreContext) -> np.ndarray:
    """Prompt + response tokens: the unit of token budgets (`curate select --budget 50000tok`)."""
    return _field_tokens(ctx, "tokens", ["prompt", "response"])


@signal("turns")
def _turns(ctx: ScoreContext) -> np.ndarray:
    """Number of user and assistant messages in the conversation (system turns not counted)."""
    return _per_row(ctx, "turns", lambda msgs: sum(1 for m in msgs if m["role"] != "system"), ctx.messages())


@signal("mtld", params={"text_field": "response", "mtld_threshold": MTLD_THRESHOLD})
def _mtld(ctx: ScoreContext) -> np.ndarray:
    """MTLD lexical diversity of the text field (bidirectional, factor threshold 0.72)."""
    th = float(ctx.param("mtld_threshold", MTLD_THRESHOLD))
    return _per_row(ctx, "mtld", lambda t: mtld(t, th), _texts(ctx))


@signal("ttr", params={"text_field": "response"})
def _ttr(ctx: ScoreContext) -> np.ndarray:
    """Type-token ratio of the text field."""
    return _per_row(ctx, "ttr", ttr, _texts(ctx))


@signal("reasoning_steps", params={"text_field": "response"})
def _steps(ctx: ScoreContext) -> np.ndarray:
    """Number of step-like segments of the text field (numbered lines, sequencing words, equations)."""
    return _per_row(ctx, "reasoning_steps", reasoning_steps, _texts(ctx))


@signal("code_markers", params={"text_field": "response"})
def _code(ctx: ScoreContext) -> np.ndarray:
    """Count of code markers in the text field (fences, keyword lines, lines ending in { } ;)."""
    return _per_row(ctx, "code_markers", code_markers, _texts(ctx))


@signal("math_markers", params={"text_field": "response"})
def _math(ctx: ScoreContext) -> np.ndarray:
    """Count of math markers in the text field (arithmetic, LaTeX, $..$, '=')."""
    return _per_row(ctx, "math_markers", math_markers, _texts(ctx))


def _knn_mean(ctx: ScoreContext) -> np.ndarray:
    """Each row's mean similarity to its first k neighbours, over the neighbours the graph holds (it pads a
    row with fewer, in a pool of k rows or fewer, with -1 / 0: those are not neighbours); NaN for none."""
    g = ctx.view.knn()  # checked against the pool's length
    sims = np.asarray(g.sims, dtype=np.float64)
    real = np.asarray(g.neighbors) >= 0
    k = ctx.param("knn_k")
    if k is not None:
        if not 1 <= int(k) <= sims.shape[1]:
            raise ValueError(f"knn_k={k} but the graph holds {sims.shape[1]} neighbours per row")
        sims, real = sims[:, : int(k)], real[:, : int(k)]
    n = real.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(real, sims, 0.0).sum(axis=1) / n, np.nan)


@signal("knn_density", params={"knn_k": None}, roles=("knn",))
def _density(ctx: ScoreContext) -> np.ndarray:
    """Mean cosine similarity to the k nearest neighbours (index/knn.npz; k = all stored unless knn_k)."""
    return _knn_mean(ctx)


@signal("knn_novelty", params={"knn_k": None}, roles=("knn",))
def _novelty(ctx: ScoreContext) -> np.ndarray:
    """1 - mean cosine similarity to the k nearest neighbours (semantic novelty)."""
    return 1.0 - _knn_mean(ctx)
