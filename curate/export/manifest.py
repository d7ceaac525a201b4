"""manifest.json of an export: every input row accounted for, plus what produced the subset.

Accounting (each input row read by ingest falls in exactly one class):
    selected + not_selected + duplicate + quarantined = read
`selected` / `not_selected` count unique pool rows; `duplicate` counts every exact duplicate folded into a
pool row at ingest, *including duplicates of a selected row* (they are not exported a second time; their
number is also given as `duplicates_of_selected`); `quarantined` counts unreadable input rows (by reason).
Files are counted too (`files`: total, ok, partial, failed); a file that could not be read, or failed part
way, is listed in `file_errors` with its reason (its quarantine entry has no row number).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import numpy as np
import polars as pl

from curate.run import RunDir
from index.io import read_json

PACKAGES = {
    "curate": ["curate"],
    "polars": ["polars"],
    "torch": ["torch"],
    "faiss": ["faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss"],
    "sentence-transformers": ["sentence-transformers"],
    "transformers": ["transformers"],
    "datasets": ["datasets"],
    "trl": ["trl"],
}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a subset (None when absent)."""
    out: dict[str, str | None] = {}
    for key, dists in PACKAGES.items():
        out[key] = None
        for d in dists:
            try:
                out[key] = importlib.metadata.version(d)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def row_accounting(run: RunDir, selected_ids: pl.Series) -> dict[str, Any]:
    """Counts of selected / not selected / duplicate / quarantined input rows; they must add up to `read`."""
    ingest = read_json(run.require(run.ingest_path, "ingest"))
    read = int(ingest["counts"]["read"])
    n_pool = int(run.scan_pool().select(pl.len()).collect().item())
    dup = pl.read_parquet(run.duplicates_path) if run.duplicates_path.exists() else None
    quar = pl.read_parquet(run.quarantine_path) if run.quarantine_path.exists() else None
    n_dup = 0 if dup is None else dup.height
    files = quar.filter(pl.col("row").is_null()) if quar is not None else None  # file-level entries
    quar = quar.filter(pl.col("row").is_not_null()) if quar is not None else None
    n_quar = 0 if quar is None else quar.height
    n_sel = int(selected_ids.len())
    counts = {
        "read": read,
        "selected": n_sel,
        "not_selected": n_pool - n_sel,
        "duplicate": n_dup,
        "quarantined": n_quar,
        "duplicates_of_selected": 0 if dup is None else int(dup["id"].is_in(selected_ids.implode()).sum()),
    }
    total = counts["selected"] + counts["not_selected"] + counts["duplicate"] + counts["quarantined"]
    if total != read:
        raise ValueError(
            f"row accounting of {run.root} does not add up: {n_sel} selected + {n_pool - n_sel} not selected + "
            f"{n_dup} duplicate + {n_quar} quarantined = {total}, but ingest.json says {read} rows were read; "
            "the run is stale or damaged: re-run `curate ingest`"
        )
    reasons: dict[str, int] = {}
    if quar is not None and quar.height:
        vc = quar["reason"].value_counts().sort("reason")
        reasons = {str(r): int(c) for r, c in zip(vc["reason"], vc["count"], strict=True)}
    return {
        "counts": counts,
        "quarantine_reasons": reasons,
        "inputs": ingest.get("inputs", []),
        "files": ingest.get("files", {"total": len(ingest.get("inputs", []))}),
        "file_errors": {} if files is None else dict(zip(files["source"], files["reason"], strict=True)),
    }


def domain_counts(domains: pl.Series) -> dict[str, int]:
    """Rows per domain ('(none)' for rows without one), sorted by name."""
    vc = domains.fill_null("(none)").alias("domain").value_counts().sort("domain")
    return {str(d): int(c) for d, c in zip(vc["domain"], vc["count"], strict=True)}


def fingerprints(run: RunDir) -> dict[str, Any]:
    """Embedding fingerprint (embeddings/current.json) and the key of every stored signal."""
    out: dict[str, Any] = {"embedding": None, "signals": {}}
    cur = run.current_embeddings_path
    if cur.exists():
        out["embedding"] = read_json(cur)
    sig_dir = run.signals_dir
    if sig_dir.is_dir():
        for side in sorted(sig_dir.glob("*.json")):
            data = read_json(side)
            out["signals"][side.stem] = data.get("key", data)
    return out


def coverage(run: RunDir, positions: np.ndarray) -> dict[str, Any]:
    """The subset's coverage and diversity from the map, or a note saying the map was not built."""
    if not (run.map_dir / "grid.parquet").exists():
        return {"report": None, "note": "map not built: run `curate map` to get coverage and diversity"}
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        return {"report": None, "note": "empty subset: no coverage"}
    from curate.map import coverage_report

    try:
        return {"report": coverage_report(run.root, positions)}
    except (FileNotFoundError, RuntimeError, ValueError) as e:  # stale or partial map: say so, keep going
        return {"report": None, "note": f"coverage not computed: {e}"}
