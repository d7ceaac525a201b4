"""Column schemas of the pool, duplicates and quarantine tables (see docs/contracts.md, Pool)."""

from __future__ import annotations

import polars as pl

KINDS = ("sft", "preference", "prompt")

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})

POOL_SCHEMA = pl.Schema(
    {
        "id": pl.String,
        "source": pl.String,
        "row": pl.Int64,
        "kind": pl.String,
        "domain": pl.String,
        "messages": pl.List(MESSAGE),
        "prompt": pl.String,
        "response": pl.String,
        "rejected": pl.String,
        "meta": pl.String,
        "n_duplicates": pl.Int64,
    }
)

DUPLICATES_SCHEMA = pl.Schema({"source": pl.String, "row": pl.Int64, "id": pl.String})

QUARANTINE_SCHEMA = pl.Schema({"source": pl.String, "row": pl.Int64, "reason": pl.String, "raw": pl.String})

# Longest `raw` text kept for a quarantined record.
RAW_MAX_CHARS = 2000

# Key used in per-domain counts for rows without a domain (JSON object keys cannot be null).
NO_DOMAIN = "(none)"
