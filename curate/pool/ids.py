"""Stable content-hash ids: the same normalised content gives the same id in any file and any run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def canonical_bytes(kind: str, messages: Sequence[dict], rejected: str | None) -> bytes:
    """The canonical serialisation hashed for an id: compact JSON of [kind, [[role, content], ...], rejected]."""
    turns = [[m["role"], m["content"]] for m in messages]
    return _ENCODER.encode([kind, turns, rejected]).encode("utf-8")


def content_digest(kind: str, messages: Sequence[dict], rejected: str | None) -> bytes:
    """16-byte blake2b digest of the canonical serialisation (compact form kept in the dedup set)."""
    return hashlib.blake2b(canonical_bytes(kind, messages, rejected), digest_size=16).digest()


def content_id(kind: str, messages: Sequence[dict], rejected: str | None = None) -> str:
    """32-hex id of a normalised row: blake2b over (kind, messages, rejected)."""
    return content_digest(kind, messages, rejected).hex()
