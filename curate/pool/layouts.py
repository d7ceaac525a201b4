"""Recognise a record's layout and normalise it to the pool's row (messages, prompt, response, rejected, ...).

Layouts, detected per record (a file may mix them):
  preference  `prompt` + `chosen` + `rejected` (chosen/rejected as strings or message lists; prompt may be a
              string, a message list, or absent when chosen/rejected are whole conversations)
  messages    OpenAI `messages`: [{role, content}, ...]
  sharegpt    `conversations`: [{from: human/gpt/system, value}, ...]
  alpaca      `instruction`, optional `input`, `output` (or `response`, as Dolly has it, or `completion`)
  prompt/response  `prompt` + `response` (or `completion`, or `output`)
  turns       `turns`: a list of user turns (strings, as evaluation question sets ship them) or of messages
  prompt      `prompt` (or `instruction` + optional `input`) with no response: a prompt-only row
A messages / sharegpt / turns conversation that ends with a user turn is a prompt-only row too (kind `prompt`,
response null); a layout is prompt-only only when no response field is present at all (an empty response is
quarantined; a null one counts as absent, as parquet and CSV files hold every column in every row). An optional `system` field adds a system turn; `domain` is kept. `columns` maps these canonical
names to the input's own column names, and layouts whose fields are all mapped explicitly are tried first;
`layout` forces one layout. Roles are checked (`role_map` renames others, e.g. {"usr": "user"}); text made
only of whitespace and invisible characters (zero-width spaces, BOMs, soft hyphens) counts as empty. Every
other non-null field goes to `meta` as JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from curate.pool.errors import RowError

CANONICAL = (
    "prompt", "response", "completion", "instruction", "input", "output",
    "messages", "conversations", "chosen", "rejected", "domain", "system", "turns",
)  # fmt: skip

# (layout, signature fields), in detection order: preference before prompt/response (both have `prompt`).
LAYOUTS = (
    ("preference", ("chosen", "rejected")),
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("alpaca", ("instruction", "response")),  # Dolly
    ("alpaca", ("instruction", "completion")),
    ("prompt_response", ("prompt", "response")),
    ("prompt_response", ("prompt", "completion")),
    ("prompt_response", ("prompt", "output")),
    ("turns", ("turns",)),
    ("prompt", ("prompt",)),
    ("prompt", ("instruction",)),
)
LAYOUT_NAMES = tuple(dict.fromkeys(name for name, _ in LAYOUTS))
# layouts with no response field: tried only when no layout with one is present, even blank
PROMPT_ONLY = ("prompt",)

ROLE_ALIASES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bot": "assistant", "model": "assistant",
    "system": "system", "tool": "tool",
}  # fmt: skip
ROLES = ("system", "user", "assistant", "tool")
# whitespace and characters that render as nothing (zero-width, joiners, BOM, soft hyphen, Hangul fillers)
_INVISIBLE = re.compile(r"[\s\u00ad\u034f\u115f\u1160\u180e\u200b-\u200f\u2028-\u202f\u205f-\u206f\u3164\ufeff\uffa0]*")


def is_blank(text: str) -> bool:
    """True when `text` holds nothing visible: only whitespace and invisible characters such as U+200B."""
    return _INVISIBLE.fullmatch(text) is not None


_IDENTITY = {c: c for c in CANONICAL}
_META_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, allow_nan=False)


def _finite(v: Any) -> Any:
    """`v` with NaN and infinite floats as null (JSON has no NaN; a NaN cell of an extra column is missing)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _meta_text(meta: dict) -> str:
    try:
        return _META_ENCODER.encode(meta)
    except ValueError:  # a non-finite float somewhere
        return _META_ENCODER.encode(_finite(meta))


class Normalised(NamedTuple):
    """The content columns of one pool row (id, source, row and n_duplicates are added by ingest)."""

    kind: str
    domain: str | None
    messages: list[dict[str, str]]
    prompt: str
    response: str | None  # None for a prompt-only row (kind "prompt")
    rejected: str | None
    meta: str


def check_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a user column mapping {canonical name: input column}; raise ValueError naming a bad key."""
    columns = dict(columns or {})
    for canon, col in columns.items():
        if canon not in CANONICAL:
            raise ValueError(f"columns: unknown field {canon!r} (known: {', '.join(CANONICAL)})")
        if not isinstance(col, str) or not col:
            raise ValueError(f"columns: {canon!r} must map to a column name, got {col!r}")
    sources = list(columns.values())
    if len(set(sources)) != len(sources):
        raise ValueError(f"columns: one input column is mapped twice in {columns}")
    return columns


def _tname(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _blank(v: Any) -> bool:
    if isinstance(v, str):
        return is_blank(v)
    return isinstance(v, (list, tuple)) and len(v) == 0


def check_layout_name(layout: str | None) -> str | None:
    """Validate a forced layout name (None: detect per record)."""
    if layout is not None and layout not in LAYOUT_NAMES:
        raise ValueError(f"layout: unknown layout {layout!r} (known: {', '.join(LAYOUT_NAMES)})")
    return layout


def check_role_map(role_map: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a role renaming {input role: pool role}; the targets must be known roles."""
    out: dict[str, str] = {}
    for src, dst in dict(role_map or {}).items():
        dst_n = ROLE_ALIASES.get(str(dst).strip().lower(), str(dst).strip().lower())
        if dst_n not in ROLES:
            raise ValueError(f"role_map: {src}={dst}: the target must be one of {', '.join(ROLES)}")
        out[str(src).strip().lower()] = dst_n
    return out


def _detect(value: dict, key, mapped: frozenset = frozenset(), layout: str | None = None) -> tuple[str, tuple[str, ...]]:
    fallback = None
    candidates = [ls for ls in LAYOUTS if layout is None or ls[0] == layout]
    if mapped:  # layouts the user mapped every field of win over detection
        candidates.sort(key=lambda ls: not all(f in mapped for f in ls[1]))
    for name, sig in candidates:
        if name in PROMPT_ONLY and fallback is not None and layout is None:
            break
        blank = False
        for f in sig:
            v = value.get(key(f))
            if v is None:
                break
            blank = blank or _blank(v)
        else:
            if not blank:
                return name, sig
            if fallback is None:
                fallback = (name, sig)
    if fallback is not None:
        return fallback
    keys = [str(k) for k, v in value.items() if v is not None]
    shown = ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
    if layout is not None:
        needs = " or ".join("+".join(key(f) for f in sig) for name, sig in LAYOUTS if name == layout)
        raise RowError(f"missing_fields: layout {layout} needs {needs} (keys: {shown})")
    raise RowError(f"missing_fields: no known layout (keys: {shown})")


def _text(v: Any, field: str) -> str:
    if not isinstance(v, str):
        raise RowError(f"wrong_type: {field} is {_tname(v)}")
    return v


def _content(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list) and v and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in v):
        return "\n".join(p["text"] for p in v)  # OpenAI content parts [{type: text, text}]
    raise RowError(f"wrong_type: {where} is {_tname(v)}")


def _maybe_json_list(v: Any) -> Any:
    """A message list stored as JSON text (CSV cells, string parquet columns) is parsed; anything else is kept."""
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            parsed = json.loads(v)
        except (json.JSONDecodeError, RecursionError):
            return v
        if isinstance(parsed, list) and parsed and all(isinstance(t, dict) for t in parsed):
            return parsed
    return v


def _turns(v: Any, field: str, role_map: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Parse a list of {role, content} (or sharegpt {from, value}) turns; empty system turns are dropped."""
    v = _maybe_json_list(v)
    if not isinstance(v, list):
        raise RowError(f"wrong_type: {field} is {_tname(v)}, expected a list of messages")
    out = []
    for i, turn in enumerate(v):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(f"wrong_type: {where} is {_tname(turn)}, expected an object")
        role = turn["role"] if "role" in turn else turn.get("from")
        if "content" in turn:
            content = turn["content"]
        elif "value" in turn:
            content = turn["value"]
        else:
            raise RowError(
                f"missing_fields: {where} has no content/value (keys: {', '.join(map(str, turn))})"
            )
        if role is None:
            raise RowError(f"missing_fields: {where} has no role/from")
        if not isinstance(role, str):
            raise RowError(f"wrong_type: {where}.role is {_tname(role)}")
        role = role.strip().lower()
        role = (role_map or {}).get(role, role)
        role = ROLE_ALIASES.get(role, role)
        if role not in ROLES:
            raise RowError(
                f"unknown_role: {where} has role {role!r} (known: {', '.join(ROLES)}; "
                f"rename it with --role-map {role}=user)"
            )
        content = _content(content, f"{where}.content")
        if role == "system" and is_blank(content):
            continue
        out.append({"role": role, "content": content})
    return out


def _system(value: dict, key, used: set) -> list[dict[str, str]]:
    k = key("system")
    v = value.get(k)
    if v is None:
        return []
    used.add(k)
    v = _text(v, k)
    return [{"role": "system", "content": v}] if not is_blank(v) else []


def _with_system(system: list, turns: list) -> list:
    if system and not (turns and turns[0]["role"] == "system"):
        return system + turns
    return turns


def render_prompt(before: list[dict[str, str]]) -> str:
    """Plain text of the turns before the final assistant turn: the user text for one user turn,
    else 'role: content' blocks joined by blank lines."""
    if len(before) == 1 and before[0]["role"] == "user":
        return before[0]["content"]
    return "\n\n".join(f"{t['role']}: {t['content']}" for t in before)


def _finish(messages: list, field: str | None, prompt_only: bool = False) -> tuple[str, str | None]:
    """Check the conversation ends with a non-empty assistant turn after a non-empty prompt (or, when
    `prompt_only`, with a user turn: response None); render the prompt.

    `field` names the input list for messages/sharegpt/preference-list rows; None for rows built from text
    fields (alpaca, prompt/response), whose empty turns are reported as the prompt."""
    if not messages:
        raise RowError(f"missing_fields: {field or 'messages'} is empty")
    last = messages[-1]["role"]
    if prompt_only and last == "user":
        before, response = messages, None
    else:
        if last != "assistant":
            raise RowError(f"missing_fields: {field} ends with a {last} turn, not assistant")
        response = messages[-1]["content"]
        if is_blank(response):
            raise RowError("empty_text: response")
        before = messages[:-1]
    if not before:
        raise RowError("empty_text: prompt")
    if len(before) == 1 and before[0]["role"] == "user" and is_blank(before[0]["content"]):
        raise RowError("empty_text: prompt")
    for i, t in enumerate(before):
        if is_blank(t["content"]):
            raise RowError(f"empty_text: {field}[{i}].content" if field else "empty_text: prompt")
    return render_prompt(before), response


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x["role"] == y["role"] and x["content"] == y["content"] for x, y in zip(a, b, strict=True)
    )


def _preference(value: dict, key, used: set, system: list, role_map: Mapping[str, str]) -> tuple[list, str]:
    pk, ck, rk = key("prompt"), key("chosen"), key("rejected")
    used.update((ck, rk))
    prompt_v = value.get(pk)
    if prompt_v is None:
        prompt_msgs: list = []
    else:
        used.add(pk)
        prompt_v = _maybe_json_list(prompt_v)
        if isinstance(prompt_v, str):
            if is_blank(prompt_v):
                raise RowError("empty_text: prompt")
            prompt_msgs = [{"role": "user", "content": prompt_v}]
        elif isinstance(prompt_v, list):
            prompt_msgs = _turns(prompt_v, pk, role_map)
        else:
            raise RowError(f"wrong_type: {pk} is {_tname(prompt_v)}")

    def side(v: Any, field: str) -> list:
        v = _maybe_json_list(v)
        if isinstance(v, str):
            if not prompt_msgs:
                raise RowError(f"missing_fields: preference row has a text {field} but no prompt")
            conv = prompt_msgs + [{"role": "assistant", "content": v}]
        elif isinstance(v, list):
            turns = _turns(v, field, role_map)
            # chosen/rejected may repeat the prompt turns (whole conversations, perhaps after a system turn
            # the prompt lacks) or hold only the answer
            own_system = turns and turns[0]["role"] == "system" and prompt_msgs[:1] != turns[:1]
            head = turns[1:] if own_system else turns
            if prompt_msgs and _same(head[: len(prompt_msgs)], prompt_msgs):
                conv = turns
            else:
                conv = prompt_msgs + turns
        else:
            raise RowError(f"wrong_type: {field} is {_tname(v)}")
        return _with_system(system, conv)

    chosen = side(value[ck], ck)
    rejected = side(value[rk], rk)
    if not rejected or rejected[-1]["role"] != "assistant":
        last = rejected[-1]["role"] if rejected else "nothing"
        raise RowError(f"missing_fields: {rk} ends with {last}, not an assistant turn")
    if is_blank(rejected[-1]["content"]):
        raise RowError("empty_text: rejected")
    if chosen and not _same(rejected[:-1], chosen[:-1]):
        raise RowError("mismatched_pair: chosen and rejected continue different conversations")
    return chosen, rejected[-1]["content"]


def _alpaca_user(value: dict, key, used: set) -> str:
    ik, nk = key("instruction"), key("input")
    used.add(ik)
    instruction = _text(value[ik], ik)
    inp = value.get(nk)
    if inp is not None:
        used.add(nk)
        inp = _text(inp, nk)
    return "\n\n".join(p for p in (instruction, inp) if p and not is_blank(p)) or instruction


def _user_turns(v: Any, field: str, role_map: Mapping[str, str]) -> list[dict[str, str]]:
    """`turns`: a list of user turns as strings, or a list of messages."""
    v = _maybe_json_list(v)
    if isinstance(v, list) and v and all(isinstance(t, str) for t in v):
        return [{"role": "user", "content": t} for t in v]
    return _turns(v, field, role_map)


def normalise(
    value: Any,
    columns: Mapping[str, str] | None = None,
    *,
    layout: str | None = None,
    role_map: Mapping[str, str] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> Normalised:
    """Normalise one input record; raise RowError with a short stable reason when it cannot be used.

    `layout` forces a layout (else detected per record), `role_map` renames roles before they are checked,
    and `extra_meta` is added to `meta` (e.g. the record's key in a JSON object of records, as source_id).
    """
    if not isinstance(value, dict):
        raise RowError(f"wrong_type: record is {_tname(value)}, expected an object")
    key = _IDENTITY.__getitem__ if not columns else {c: columns.get(c, c) for c in CANONICAL}.__getitem__
    role_map = role_map or {}

    name, sig = _detect(value, key, frozenset(columns or ()), layout)
    used: set = set()
    system = _system(value, key, used)
    rejected = None
    kind = "sft"
    field: str | None = None
    if name == "preference":
        kind = "preference"
        messages, rejected = _preference(value, key, used, system, role_map)
        field = key("chosen")
    elif name in ("messages", "sharegpt", "turns"):
        field = key(sig[0])
        used.add(field)
        parse = _user_turns if name == "turns" else _turns
        messages = _with_system(system, parse(value[field], field, role_map))
    elif name == "alpaca":
        ok = key(sig[1])
        used.add(ok)
        user = _alpaca_user(value, key, used)
        messages = system + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _text(value[ok], ok)},
        ]
    elif name == "prompt":
        if sig[0] == "instruction":
            user = _alpaca_user(value, key, used)
        else:
            pk = key("prompt")
            used.add(pk)
            user = _text(value[pk], pk)
        messages = system + [{"role": "user", "content": user}]
    else:  # prompt_response
        pk, rk = key(sig[0]), key(sig[1])
        used.update((pk, rk))
        prompt = _text(value[pk], pk)
        messages = system + [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _text(value[rk], rk)},
        ]
    prompt, response = _finish(messages, field, prompt_only=name != "preference")
    if response is None:
        kind = "prompt"

    dk = key("domain")
    domain = value.get(dk)
    if domain is not None:
        used.add(dk)
        if isinstance(domain, bool) or not isinstance(domain, (str, int, float)):
            raise RowError(f"wrong_type: {dk} is {_tname(domain)}")
        domain = str(domain) if not isinstance(domain, str) else domain
        domain = domain if not is_blank(domain) else None
    meta = {str(k): v for k, v in value.items() if k not in used and v is not None}
    if extra_meta:
        meta.update(extra_meta)
    meta_text = _meta_text(meta) if meta else "{}"
    return Normalised(kind, domain, messages, prompt, response, rejected, meta_text)
