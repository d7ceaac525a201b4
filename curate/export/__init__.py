"""The export stage: a selection as a weighted training subset, in the layouts trainers read, with a manifest.

    <run>/export/<selection>/<layout>/data-00000.parquet, data-00000.jsonl, ...   rows in rank order, with `weight`
    <run>/export/<selection>/<layout>/ids.parquet                         id (sorted), weight (DataComp-style)
    <run>/export/<selection>/<layout>/manifest.json                       accounting, provenance, versions

Each layout of a selection has its own folder, so exports in several layouts sit side by side. The folder is
built beside its final place and swapped in at the end, so a killed export never leaves a mixture of old and
new shards; work folders left by a killed export are removed by the next one. Load it with `datasets.load_dataset("parquet", data_files=".../data-*.parquet")`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from curate.export.layouts import LAYOUTS, POOL_COLUMNS, check_layout, to_layout
from curate.export.manifest import coverage, domain_counts, fingerprints, package_versions, row_accounting
from curate.pool.ids import align, positions
from curate.run import RunDir
from curate.stage import stage
from index.io import atomic_dir, read_json, write_json

FORMATS = ("jsonl", "parquet")

__all__ = ["FORMATS", "LAYOUTS", "export", "selected_rows"]


def selected_rows(run: RunDir | str | os.PathLike, selection: str) -> pl.DataFrame:
    """Pool rows of a saved selection in rank order: POOL_COLUMNS + weight, rank, reason."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    path = run.require(run.selection_path(selection), f"select --name {selection}")
    sel = pl.read_parquet(path).sort("rank")
    pool = run.scan_pool().select(POOL_COLUMNS).collect()
    rows = align(sel, pool)
    missing = rows.filter(pl.col("kind").is_null())
    if missing.height:
        raise ValueError(
            f"{path}: {missing.height} selected ids are not in the pool (e.g. {missing['id'][0]}); "
            "the selection is stale: re-run `curate select`"
        )
    return rows


def _export_dir(run: RunDir, a: dict) -> Path:
    return Path(a["out"]) if a["out"] is not None else run.export_dir / a["selection"] / (a["layout"] or "messages")


@stage(lambda a: f"export-{a['selection']}-{a['layout'] or 'messages'}" + ("" if a["out"] is None else "-out"),
       inputs=lambda run, a: [str(run.selection_path(a["selection"]).relative_to(run.root)), "pool",
                              "duplicates.parquet", "quarantine.parquet", "reference.json"],
       outputs=lambda run, a: [f"export/{a['selection']}/{a['layout'] or 'messages'}" if a["out"] is None
                               else str(Path(a["out"]).resolve())], load=_export_dir)
def export(
    run: RunDir | str | os.PathLike,
    selection: str,
    *,
    layout: str | None = "messages",
    formats: Sequence[str] | str | None = FORMATS,
    shard_rows: int = 100_000,
    out: str | os.PathLike | None = None,
) -> Path:
    """Write <run>/export/<selection>/<layout>/ (or `out`): data shards, ids.parquet and manifest.json; return
    the folder. A stage (curate.stage): nothing is rewritten when the selection, pool and arguments are unchanged."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    layout = check_layout(layout or "messages")
    formats = (formats,) if isinstance(formats, str) else tuple(formats or FORMATS)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"unknown export format(s) {bad}; use {' and/or '.join(FORMATS)}")
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    final = Path(out) if out is not None else run.export_dir / selection / layout

    rows = selected_rows(run, selection)
    if layout == "preference":
        n_pref = run.scan_pool().filter(pl.col("kind") == "preference").select(pl.len()).collect().item()
        if n_pref == 0:
            raise ValueError(
                f"layout 'preference' needs preference rows (prompt/chosen/rejected), but the pool of "
                f"{run.root} has none: export with layout 'messages', 'alpaca' or 'sharegpt'"
            )
    data = to_layout(rows, layout)
    accounting = row_accounting(run, rows["id"])

    with run.lock("export"):  # one export at a time per run, so removing stale work folders is safe
        final.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(final)
        with atomic_dir(final) as work:  # `final` is the old export or the whole new one, never half of it
            files = _write_shards(data, work, formats, shard_rows)
            data.select("id", "weight").sort("id").write_parquet(work / "ids.parquet")
            files.append({"path": "ids.parquet", "rows": data.height})
            write_json(work / "manifest.json", _manifest(run, selection, layout, formats, shard_rows, rows, files, accounting))
    return final


def _write_shards(data: pl.DataFrame, out: Path, formats: Sequence[str], shard_rows: int) -> list[dict[str, Any]]:
    files = []
    n_shards = max(1, -(-data.height // shard_rows))
    for s in range(n_shards):
        part = data.slice(s * shard_rows, shard_rows)
        for fmt in formats:
            name = f"data-{s:05d}.{fmt}"
            if fmt == "parquet":
                part.write_parquet(out / name)
            else:
                part.write_ndjson(out / name)
            files.append({"path": name, "rows": part.height})
    return files


def _clean_stale(final: Path) -> None:
    """Remove the work folders a killed export of `final` left beside it (names `.<final name>.*`)."""
    for p in final.parent.glob(f".{final.name}.*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _manifest(
    run: RunDir,
    selection: str,
    layout: str,
    formats: Sequence[str],
    shard_rows: int,
    rows: pl.DataFrame,
    files: list[dict[str, Any]],
    accounting: dict[str, Any],
) -> dict[str, Any]:
    side_path = run.selection_path(selection).with_suffix(".json")
    side = read_json(side_path) if side_path.exists() else {}
    pool_domains = run.scan_pool().select("domain").collect()["domain"]
    order = positions(rows["id"], run.scan_pool().select("id").collect()["id"])
    import curate

    return {
        "curate_version": curate.__version__,
        "selection": selection,
        "method": side.get("method"),
        "params": side.get("params", {}),
        "seed": side.get("seed"),
        "budget": side.get("budget"),
        "selection_stats": side.get("stats", {}),
        "layout": layout,
        "formats": list(formats),
        "shard_rows": shard_rows,
        "files": files,
        "inputs": accounting["inputs"],
        "input_files": accounting["files"],
        "input_file_errors": accounting["file_errors"],
        "counts": accounting["counts"],
        "counts_note": (
            "selected + not_selected + duplicate + quarantined = read; duplicates of a selected row count as "
            "duplicate (not exported again), see duplicates_of_selected"
        ),
        "quarantine_reasons": accounting["quarantine_reasons"],
        "domains": {"pool": domain_counts(pool_domains), "selected": domain_counts(rows["domain"])},
        "weights": {
            "sum": float(rows["weight"].sum()) if rows.height else 0.0,
            "min": float(rows["weight"].min()) if rows.height else None,
            "max": float(rows["weight"].max()) if rows.height else None,
        },
        "fingerprints": fingerprints(run),
        "packages": package_versions(),
        # the report `select` stored for these rows (its sidecar is an input of this stage), else computed now
        "coverage": ({"report": stored} if (stored := (side.get("stats") or {}).get("coverage"))
                     else coverage(run, order)),
        "reference": _reference(run, rows),
        "kinds": (kinds := {str(k): int(v) for k, v in rows["kind"].value_counts().iter_rows()}),
        **({"note": f"{kinds['prompt']} selected rows have no response (kind prompt): the {layout} layout writes "
                    "them with an empty answer; export with layout 'prompt', or select from the other rows"}
           if kinds.get("prompt") and layout != "prompt" else {}),
    }


def _reference(run: RunDir, rows: pl.DataFrame) -> dict[str, Any] | None:
    """ILA's reference rows (trained on by the reference model): how many, and how many were exported."""
    ids = run.reference_ids()
    if ids is None:
        return None
    ref = read_json(run.reference_path)
    return {
        "selection": ref["selection"],
        "model": ref.get("model"),
        "n_rows": len(ids),
        "exported_reference_rows": int(rows["id"].is_in(list(ids)).sum()),
    }
