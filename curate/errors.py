"""User-facing errors: one root class, so the command line prints them as one `error:` line (exit code 2).

Anything raised as a `CurateError` is the user's to fix (a bad input, a missing stage, a wrong parameter, a
busy run directory); its message names the file or parameter and `hint` says what to do. Every other
exception is a bug and keeps its traceback. `CurateError` is a ValueError, so older `except ValueError`
callers still catch it.
"""

from __future__ import annotations


class CurateError(ValueError):
    """An error the user can fix; `hint` (optional) says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} ({self.hint})" if self.hint and self.hint not in msg else msg


class ParameterError(CurateError, TypeError):
    """A stage, selector or signal parameter that is missing, unknown or out of range."""


class MissingArtefactError(CurateError, FileNotFoundError):
    """An artefact another stage makes is missing or stale; the message names the command that makes it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        CurateError.__init__(self, message, hint)
