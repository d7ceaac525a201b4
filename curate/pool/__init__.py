"""Pool ingestion: read jsonl/json/parquet/csv, normalise layouts, content ids, exact dedup, quarantine.

Stage: `ingest(inputs, run, ...)` writes `<run>/pool/shard-*.parquet`, `duplicates.parquet`,
`quarantine.parquet` and `ingest.json` (docs/contracts.md, Pool). Read the pool back with `RunDir.read_pool`.
"""

from __future__ import annotations

from curate.pool.errors import IngestError, RowError
from curate.pool.ids import canonical_bytes, content_id
from curate.pool.layouts import CANONICAL, Normalised, normalise, render_prompt
from curate.pool.readers import FORMATS, resolve_inputs
from curate.pool.schema import DUPLICATES_SCHEMA, NO_DOMAIN, POOL_SCHEMA, QUARANTINE_SCHEMA
from curate.pool.stage import IngestReport, ingest

__all__ = [
    "CANONICAL",
    "DUPLICATES_SCHEMA",
    "FORMATS",
    "NO_DOMAIN",
    "POOL_SCHEMA",
    "QUARANTINE_SCHEMA",
    "IngestError",
    "IngestReport",
    "Normalised",
    "RowError",
    "canonical_bytes",
    "content_id",
    "ingest",
    "normalise",
    "render_prompt",
    "resolve_inputs",
]
