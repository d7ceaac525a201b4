"""Stable content-hash ids: the same normalised content gives the same id in any file and any run; and the
one way rows are aligned by id (`align`, `positions`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

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


# aligning rows by id ------------------------------------------------------------------------------------------
class MissingIdsError(KeyError):
    """Ids asked for that the frame (or id list) looked in does not hold; `missing` lists them in the order
    asked, `first` is the first of them."""

    def __init__(self, missing: list, total: int) -> None:
        super().__init__(missing[0])
        self.missing = missing
        self.first = missing[0]
        self.total = total

    def __str__(self) -> str:  # KeyError would quote the message
        return f"{len(self.missing)} of {self.total} ids are missing (first: {self.first})"


class DuplicateIdsError(ValueError):
    """The frame (or id list) looked in holds an id twice, so a row cannot be matched to one of its rows."""

    def __init__(self, duplicate: object) -> None:
        super().__init__(f"id {duplicate} appears more than once")
        self.duplicate = duplicate


def align(left: Any, right: pl.DataFrame, *, on: str = "id", require_all: bool = False) -> pl.DataFrame:
    """`right`'s rows matched to `left` by `on`, in `left`'s order: one row per row of `left` (a left join
    that keeps the left order).

    `left` is a sequence of ids (list, numpy array, polars Series) or a frame with an `on` column, whose
    columns come first. Rows of `left` that `right` lacks get nulls in `right`'s columns, or, with
    `require_all`, raise MissingIdsError naming them. An id that `right` holds twice raises DuplicateIdsError.
    """
    frame = left if isinstance(left, pl.DataFrame) else pl.DataFrame([_id_series(left, on, right.schema[on])])
    try:
        out = frame.join(right, on=on, how="left", maintain_order="left", validate="m:1")
    except pl.exceptions.ComputeError:
        dup = right.filter(pl.col(on).is_duplicated())
        if dup.height == 0:
            raise
        raise DuplicateIdsError(dup[on][0]) from None
    if require_all:
        lacking = frame[on].filter(frame[on].is_in(right[on].implode()).not_())
        if lacking.len():
            raise MissingIdsError(lacking.to_list(), frame.height)
    return out


def positions(ids: Any, of: Any) -> np.ndarray:
    """int64 positions in `of` (a sequence of distinct ids, e.g. the pool's id column) of each of `ids`, in
    the order of `ids`. An id that `of` lacks raises MissingIdsError (`.first` names the first one); an id
    that `of` holds twice raises DuplicateIdsError."""
    of = _id_series(of, "id")
    index = pl.DataFrame({"id": of, "pos": np.arange(of.len(), dtype=np.int64)})
    return align(ids, index, require_all=True)["pos"].to_numpy()


def _id_series(ids: Any, name: str, dtype: Any = None) -> pl.Series:
    if isinstance(ids, pl.Series):
        ids = ids.rename(name)
        return ids if dtype is None or ids.dtype == dtype else ids.cast(dtype)
    if dtype is None and isinstance(ids, Sequence) and not isinstance(ids, str) and len(ids) == 0:
        dtype = pl.String  # an empty list has no type of its own: ids are strings
    return pl.Series(name, ids, dtype=dtype)
