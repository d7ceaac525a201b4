"""Errors of the ingest stage: a file that cannot be read at all, and one row that cannot be used."""

from __future__ import annotations

from curate.errors import CurateError


class IngestError(CurateError):
    """An input that cannot be read at all (missing, unknown extension, corrupt, matching nothing)."""


class RowError(ValueError):
    """One record that cannot be normalised; `reason` is the short stable string written to quarantine."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
