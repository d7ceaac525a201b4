"""`curate report`: one self-contained HTML file describing a run directory.

Sections: the pool (ingest counts, rows per domain), quarantine reasons, the map coloured by domain, cluster
and a signal, where each selection lands, signals per domain, coverage against budget, rows per domain of
each selection against the pool, the domain mixtures over rounds (mixtures/*.json), the side-by-side
comparison of selections, and the nearest neighbours of one selected row.

Plots are matplotlib figures inlined as base64 PNG: the file needs no network and no script to view, it
opens the same in any browser or mail client, and its size grows with the number of plots, not with the
number of pool rows (a plotly page would carry a ~3.5 MB bundle and every point of a million-row map).
A section whose stage has not run says which command produces it instead of failing the report.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.run import RunDir
from curate.stage import stage

MAX_SIGNAL_PANELS = 12
PREFERRED_SIGNAL = "ifd"


def report_path(run: RunDir | str | os.PathLike) -> Path:
    """Where `write_report` writes by default: <run>/report.html."""
    return RunDir(run).report_path


# ---------------------------------------------------------------------------------------------------------
# HTML pieces


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if np.isnan(value):
            return "NaN"
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table_html(df: pl.DataFrame, *, max_rows: int = 100, index: str | None = None) -> str:
    """A polars table as an escaped HTML table (first `max_rows` rows); `index` names a column shown as <th>."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = []
    for row in df.head(max_rows).iter_rows(named=True):
        cells = []
        for c, v in row.items():
            tag = "th" if c == index else "td"
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<{tag}{cls}>{html.escape(_fmt(v))}</{tag}>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="note">{df.height - max_rows:,} more rows not shown.</p>' if df.height > max_rows else ""
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{more}'


def figure_html(fig: Any, alt: str) -> str:
    """A figure as an inline PNG <img> (base64 data URI)."""
    from curate.viz.figure import png_data_uri

    return f'<img src="{png_data_uri(fig)}" alt="{html.escape(alt)}">'


def note_html(text: str) -> str:
    """A short grey note (what is missing and which command makes it)."""
    return f'<p class="note">{html.escape(text)}</p>'


# ---------------------------------------------------------------------------------------------------------
# sections


@dataclass
class _Ctx:
    """What the sections share: the run, the selection names, the chosen signal, and cached frames (with the
    map's columns, and without them for the sections that need no `curate map`)."""

    run: RunDir
    names: list[str]
    signal: str | None
    max_points: int
    _frames: dict[bool, pl.DataFrame] = field(default_factory=dict, repr=False)

    def frame(self, map_columns: bool = True) -> pl.DataFrame:
        if map_columns not in self._frames:
            from curate.inspect import map_frame

            self._frames[map_columns] = map_frame(self.run, selections=self.names, map_columns=map_columns)
        return self._frames[map_columns]

    def signals(self) -> list[str]:
        return [c for c in self.frame(map_columns=False).columns if c not in ("id", "domain")
                and not c.startswith("sel:")]


def _pool(ctx: _Ctx) -> str:
    from curate.inspect import pool_overview

    parts = []
    if ctx.run.ingest_path.exists():
        counts = json.loads(ctx.run.ingest_path.read_text()).get("counts", {})
        parts.append(table_html(pl.DataFrame({k: [v] for k, v in counts.items()})))
    parts.append(table_html(pool_overview(ctx.run), index="domain"))
    return "".join(parts)


def _quarantine(ctx: _Ctx) -> str:
    from curate.inspect import quarantine_reasons

    table = quarantine_reasons(ctx.run)
    return note_html("No row was quarantined.") if table.is_empty() else table_html(table)


def _map(ctx: _Ctx) -> str:
    from curate import viz

    frame = ctx.frame()
    out = [figure_html(viz.map_scatter(frame, c, max_points=ctx.max_points), f"map by {c}") for c in ("domain", "cluster")]
    signals = ctx.signals()
    signal = ctx.signal or (PREFERRED_SIGNAL if PREFERRED_SIGNAL in signals else (signals[0] if signals else None))
    if signal is None:
        out.append(note_html("No signal is stored: run `curate score` to colour the map by one."))
    else:
        out.append(figure_html(viz.map_scatter(frame, signal, max_points=ctx.max_points), f"map by {signal}"))
    return '<div class="row">' + "".join(out) + "</div>"


def _selection_maps(ctx: _Ctx) -> str:
    from curate import viz

    if not ctx.names:
        return note_html("No selection yet: run `curate select`.")
    fig = viz.selection_maps(ctx.frame(), ctx.names, max_points=ctx.max_points)
    return figure_html(fig, "selections on the map")


def _signals(ctx: _Ctx) -> str:
    from curate import viz

    signals = ctx.signals()
    if not signals:
        return note_html("No signal is stored: run `curate score`.")
    shown = signals[:MAX_SIGNAL_PANELS]
    extra = note_html(f"{len(signals) - len(shown)} more signals not shown.") if len(signals) > len(shown) else ""
    return figure_html(viz.signal_distributions(ctx.frame(map_columns=False), shown), "signals per domain") + extra


def _coverage(ctx: _Ctx) -> str:
    from curate import viz
    from curate.inspect import coverage_curves

    if not ctx.names:
        return note_html("No selection yet: run `curate select`.")
    return figure_html(viz.coverage_plot(coverage_curves(ctx.run, ctx.names)), "coverage against budget")


def _domains(ctx: _Ctx) -> str:
    from curate import viz

    if not ctx.names:
        return note_html("No selection yet: run `curate select`.")
    frame = ctx.frame(map_columns=False)
    fig = viz.domain_counts_plot(frame, ctx.names)
    return figure_html(fig, "rows per domain") + table_html(viz.domain_counts(frame, ctx.names), index="domain")


def _mixtures(ctx: _Ctx) -> str:
    from curate import viz

    paths = viz.list_mixtures(ctx.run)
    if not paths:
        return note_html("No domain mixture in this run (mixtures/*.json is written by the mixture methods).")
    out = []
    for path in paths:
        try:
            out.append(figure_html(viz.mixture_plot(viz.load_mixture(path)), f"mixture {path.stem}"))
        except ValueError as exc:
            out.append(note_html(f"{path.name} cannot be read: {exc}"))
    return "".join(out)


def _comparison(ctx: _Ctx) -> str:
    from curate.compare import compare

    if not ctx.names:
        return note_html("No selection yet: run `curate select`.")
    table = compare(ctx.run, ctx.names, progress=False)  # the report has its own bar over sections
    metrics = [c for c in table.columns if c != "selection"]
    rows = {"figure": metrics}
    for row in table.iter_rows(named=True):
        rows[row["selection"]] = [_fmt(row[m]) for m in metrics]
    return table_html(pl.DataFrame(rows), max_rows=len(metrics), index="figure")


def _neighbours(ctx: _Ctx) -> str:
    from curate import viz
    from curate.select.selection import Selection

    first = next(((n, s) for n in ctx.names if len(s := Selection.load(ctx.run, n).positions)), None)
    row = int(first[1][0]) if first else 0
    where = f"the first row of selection {first[0]!r}" if first else "pool row 0"
    table = viz.neighbours(ctx.run, row, k=5)
    return note_html(f"Row {row} ({where}) and its nearest neighbours in the kNN graph (cosine).") + table_html(table)


SECTIONS: list[tuple[str, str, Callable[[_Ctx], str]]] = [
    ("pool", "The pool", _pool),
    ("quarantine", "Rows that could not be read", _quarantine),
    ("map", "The map", _map),
    ("selections", "Where each selection lands", _selection_maps),
    ("signals", "Signals per domain", _signals),
    ("coverage", "Coverage against budget", _coverage),
    ("domains", "Rows per domain: selections against the pool", _domains),
    ("mixtures", "Domain mixtures over rounds", _mixtures),
    ("comparison", "Selections side by side", _comparison),
    ("neighbours", "Nearest neighbours of a row", _neighbours),
]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1500px;color:#222;padding:0 16px}
h1{font-size:22px} h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:12px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top;max-width:480px} td.num{text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#f3f3f3} .scroll{overflow-x:auto} .note{color:#666;font-size:13px}
img{max-width:100%;height:auto;margin:6px 8px 6px 0} .row{display:flex;flex-wrap:wrap;align-items:flex-start}
.row img{max-width:49%} nav a{margin-right:12px;font-size:13px}
"""


def render_report(
    run: RunDir | str | os.PathLike,
    *,
    selections: Sequence[str] | None = None,
    signal: str | None = None,
    max_points: int = 100_000,
    progress: bool = True,
    extra: str = "",
) -> str:
    """The report of `run` as one HTML string (see the module docstring for its sections)."""
    from tqdm.auto import tqdm

    from curate.select.selection import list_selections

    rd = run if isinstance(run, RunDir) else RunDir(run)
    rd.require(rd.pool_dir, "ingest")
    names = list_selections(rd) if selections is None else list(selections)
    ctx = _Ctx(rd, names, signal, max_points)
    parts = []
    for key, title, build in tqdm(SECTIONS, desc="report", unit="section", disable=not progress):
        try:
            body = build(ctx)
        except (FileNotFoundError, ValueError) as exc:  # a stage has not run, or its files are stale: say
            body = note_html(str(exc))                    # which, and keep the rest of the report
        parts.append(f'<section id="{key}"><h2>{html.escape(title)}</h2>{body}</section>')
    nav = "".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t, _ in SECTIONS)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"curate report: {rd.root}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="note">Written {stamp}; selections: {html.escape(", ".join(names) or "none")}.</p>'
        f"<nav>{nav}</nav>{extra}{''.join(parts)}</body></html>\n"
    )


#: what the report reads in a run directory (its stage key covers them)
REPORT_INPUTS = ("pool", "ingest.json", "quarantine.parquet", "duplicates.parquet", "embeddings/current.json", "index",
                 "map", "projection.parquet", "projection.json", "signals", "selections", "mixtures", "decontam",
                 "reference.json")


@stage("report", inputs=lambda run, a: REPORT_INPUTS,
       outputs=lambda run, a: [str(run.report_path.relative_to(run.root)) if a["out"] is None
                               else str(Path(a["out"]).resolve()),
                               *([str(run.atlas_path.relative_to(run.root))] if a["atlas"] else [])],
       load=lambda run, a: Path(a["out"]) if a["out"] is not None else report_path(run))
def write_report(
    run: RunDir | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    selections: Sequence[str] | None = None,
    signal: str | None = None,
    max_points: int = 100_000,
    atlas: bool = False,
    progress: bool = True,
) -> Path:
    """Write the self-contained HTML report of `run` (default <run>/report.html) and return its path.

    `atlas` also writes the Embedding Atlas parquet (`curate.viz.export_map`) and names it in the report.
    A stage (curate.stage): not rewritten while the artefacts it shows and the arguments are unchanged.
    """
    from index.io import atomic_path

    rd = run if isinstance(run, RunDir) else RunDir(run)
    extra = ""
    if atlas:
        from curate.viz.atlas import export_map

        path = export_map(rd, selections=selections)
        cmd = f"embedding-atlas {path} --text text --x x --y y --neighbors neighbors"
        extra = f'<p class="note">Embedding Atlas view: <code>{html.escape(cmd)}</code></p>'
    page = render_report(rd, selections=selections, signal=signal, max_points=max_points, progress=progress,
                         extra=extra)
    target = Path(out) if out is not None else report_path(rd)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
        os.chmod(tmp, 0o644)  # a temp file is private (0600); the report is meant to be shared
    return target
