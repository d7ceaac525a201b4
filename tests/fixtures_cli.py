"""Calling the command line in tests and reading its one `error:` line."""

from __future__ import annotations

from typer.testing import CliRunner

from curate.cli import app


def invoke(*args: str):
    """(result, its output) of `curate ARGS...`."""
    result = CliRunner().invoke(app, list(args))
    return result, result.output


def one_error_line(result, out: str) -> str:
    """The single `error:` line of a user error (exit code 2, no traceback)."""
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    return errors[0]
