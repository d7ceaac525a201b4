"""Several selections of one pool side by side: size, tokens, domains, coverage, diversity, signals, overlap.

`compare(run, names)` returns one row per selection (a polars DataFrame); `render(table)` prints it with rich.
Columns: selection, method, n, tokens (when the `tokens` signal is stored), domain:<name> (rows per
domain), stratify (how it was stratified: none, domain, cluster), mix_tv / mix_kl (total variation and
KL(selection || pool) between its domain mix and the pool's), mix_flag ("DIVERGES" when mix_tv exceeds
`MIX_FLAG_TV`, the selection skews the pool's domain mix strongly), daar_probe_r2 (DaaR's diversity probe,
held-out R^2) and ifd_removed (rows the `max_ifd` filter removed) where a selection has them, coverage / density_coverage and the diversity figures of `curate.map.coverage_report` (when the map
is built: `coverage` on the map's grid, which ILA fills, `coverage_fine2` / `coverage_fine4` on finer grids
no selector sees, `knn_coverage` with no grid), median:<signal> (median of every stored signal over the subset,
non-finite values ignored) and mean:<signal> only for signals whose pool mean is meaningful (`mean_is_meaningful`:
heavy-tailed signals such as perplexity get no mean column), jaccard:<other> (|A & B| / |A | B| with every
other selection).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.run import RunDir
from curate.select.selection import Selection
from curate.select.stratify import MIX_FLAG_TV, domain_codes, mix_divergence
from curate.stage import stage
from curate.view import TOKENS_SIGNAL, PoolView
from index.io import atomic_path

# scalar figures taken from coverage_report when present
COVERAGE_KEYS = ("coverage", "density_coverage")
#: a signal's mean is reported only when, over the pool, it lies within this many interquartile ranges of the
#: median (a robust skewness bound: a few huge values, like perplexities in the thousands, move the mean far
#: outside the bulk; a normal or uniform signal has mean = median)
MEAN_SKEW_IQR = 0.5


def mean_is_meaningful(values: np.ndarray) -> bool:
    """Whether a signal's mean describes its bulk: |mean - median| <= MEAN_SKEW_IQR x IQR over finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return False
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return bool(abs(float(v.mean()) - med) <= MEAN_SKEW_IQR * (q3 - q1))


def _median(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A & B| / |A | B| of two position sets (1.0 for two empty sets)."""
    sa, sb = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = len(sa | sb)
    return 1.0 if union == 0 else len(sa & sb) / union


def _table_stem(names: Sequence[str]) -> str:
    stem = "-".join(names)
    return stem if len(stem) <= 120 else f"{names[0]}-and-{len(names) - 1}-more"


def table_paths(run: RunDir | str | os.PathLike, names: Sequence[str]) -> tuple[Path, Path]:
    """The markdown and CSV files `compare` saves for these selections."""
    folder = RunDir(run).compare_dir
    stem = _table_stem([str(n) for n in names])
    return folder / f"{stem}.md", folder / f"{stem}.csv"


def _table_files(run: RunDir, a: dict) -> list[str]:
    stem = _table_stem([str(n) for n in a["names"]])
    return [f"compare/{stem}.{ext}" for ext in ("parquet", "md", "csv")]


@stage(lambda a: "compare-" + _table_stem([str(n) for n in a["names"]]),
       inputs=lambda run, a: [*(f"selections/{n}.parquet" for n in a["names"]), "pool", "signals", "map",
                              "projection.parquet", "index", "embeddings/current.json"],
       outputs=_table_files, load=lambda run, a: pl.read_parquet(run.root / _table_files(run, a)[0]))
def compare(run: RunDir | str | os.PathLike, names: Sequence[str], *, progress: bool = True) -> pl.DataFrame:
    """One row per selection of `run`: size, tokens, per-domain counts, coverage, signal medians (means), Jaccard;
    saved as <run>/compare/<names>.{parquet,md,csv} (`save_table`).

    With progress, a bar over the selections' rows (rows/s) names the selection being measured. A stage
    (curate.stage): the stored table is returned when the selections and what they are measured on are unchanged.
    """
    from tqdm.auto import tqdm

    run = run if isinstance(run, RunDir) else RunDir(run)
    names = list(names)
    if not names:
        raise ValueError("compare needs at least one selection name")
    if len(set(names)) != len(names):
        raise ValueError(f"selection names repeat: {names}")
    sels = {name: Selection.load(run, name) for name in names}
    view = PoolView.from_run(run)
    domains = view.frame["domain"].fill_null("(none)")
    dom_names = sorted(domains.unique().to_list())
    pool_counts = {str(d): int(c) for d, c in domains.value_counts().iter_rows()}
    code_names, codes = domain_codes(view)
    signals = view.signal_names()
    values = {s: view.signal(s) for s in signals}
    with_mean = {s for s in signals if mean_is_meaningful(values[s])}

    rows: list[dict[str, Any]] = []
    bar = tqdm(total=sum(len(sel) for sel in sels.values()), desc="compare", unit="rows", unit_scale=True,
               dynamic_ncols=True, disable=not progress)
    for name, sel in sels.items():
        bar.set_postfix_str(name)
        pos = sel.positions
        row: dict[str, Any] = {"selection": name, "method": sel.method, "n": len(sel)}
        if TOKENS_SIGNAL in values:
            row["tokens"] = int(round(float(values[TOKENS_SIGNAL][pos].sum())))
        counts = domains.gather(pos).value_counts() if len(pos) else None
        got = {} if counts is None else dict(zip(counts["domain"], counts["count"], strict=True))
        for d in dom_names:
            row[f"domain:{d}"] = int(got.get(d, 0))
        # the mix training sees: each row's domain counted by its selection weight (IDEAL volumes)
        mass = np.bincount(codes[pos], weights=np.asarray(sel.weights, dtype=np.float64), minlength=len(code_names))
        trained = {code_names[i]: float(v) for i, v in enumerate(mass) if v}
        row.update(_mix_figures(sel, pool_counts, trained))
        row.update(_selector_figures(sel))
        row.update(_coverage_figures(run, pos))
        for s in signals:
            v = np.asarray(values[s][pos], dtype=np.float64)
            row[f"median:{s}"] = _median(v)
            if s in with_mean:
                fin = v[np.isfinite(v)]
                row[f"mean:{s}"] = float(fin.mean()) if fin.size else None
        for other, osel in sels.items():
            row[f"jaccard:{other}"] = jaccard(pos, osel.positions)
        rows.append(row)
        bar.update(len(sel))
    bar.close()
    table = pl.DataFrame(rows)
    save_table(run, table)
    return table


def _mix_figures(sel: Selection, pool: dict[str, int], got: dict[str, float]) -> dict[str, Any]:
    """How the selection was stratified, and how far its weighted domain mix is from the pool's rows it could
    choose from (its sidecar's `stats.mix.pool`: excluded rows left out; else every row), flagged if far."""
    stats = sel.stats if isinstance(sel.stats, dict) else {}
    strat = stats.get("stratify")
    eligible = (stats.get("mix") or {}).get("pool") if isinstance(stats.get("mix"), dict) else None
    div = mix_divergence(eligible or pool, got)
    tv = div["total_variation"]
    return {
        "stratify": strat.get("by", "none") if isinstance(strat, dict) else "none",
        "mix_tv": tv,
        "mix_kl": div["kl"],
        "mix_flag": "DIVERGES" if tv is not None and tv > MIX_FLAG_TV else "",
    }


def _selector_figures(sel: Selection) -> dict[str, Any]:
    """Diagnostics a selector recorded: DaaR's held-out probe R^2, rows the IFD filter removed (when present)."""
    stats = sel.stats if isinstance(sel.stats, dict) else {}
    out: dict[str, Any] = {}
    if "probe_heldout_r2" in stats:
        out["daar_probe_r2"] = stats["probe_heldout_r2"]
    if isinstance(stats.get("ifd_filter"), dict):
        out["ifd_removed"] = stats["ifd_filter"].get("removed")
    return out


def _coverage_figures(run: RunDir, positions: np.ndarray) -> dict[str, Any]:
    """Scalar coverage and diversity figures of a subset (from coverage_report), or an error note."""
    from curate.export.manifest import coverage

    rep = coverage(run, positions)
    if rep["report"] is None:
        return {"coverage_note": rep.get("note", "")}
    out: dict[str, Any] = {}
    for key, val in rep["report"].items():
        if isinstance(val, (int, float, np.integer, np.floating)) and not isinstance(val, bool):
            out[key] = float(val)
    return out


def save_table(run: RunDir | str | os.PathLike, table: pl.DataFrame) -> tuple[Path, Path]:
    """Write the whole compare table as parquet, markdown and CSV under <run>/compare/ (named by the
    selections); return the markdown and CSV paths."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    names = [str(n) for n in table["selection"].to_list()]
    md, csv = table_paths(run, names)
    with atomic_path(md.with_suffix(".parquet"), suffix=".parquet") as tmp:
        table.write_parquet(tmp)
    rows = [c for c in table.columns if c != "selection"]
    lines = ["| figure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {c} | " + " | ".join(_fmt(v) for v in table[c].to_list()) + " |" for c in rows]
    with atomic_path(md, suffix=".md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    flat = table.select([pl.col(c).cast(pl.String) if table[c].dtype.is_nested() else pl.col(c) for c in table.columns])
    with atomic_path(csv, suffix=".csv") as tmp:
        flat.write_csv(tmp)
    return md, csv


def render(table: pl.DataFrame, console: Any = None, width: int | None = None) -> list[str]:
    """Print a compare table with rich: one column per selection, one row per figure; only as many selection
    columns as fit in `width` (default: the terminal's) are printed. Returns the selections left out."""
    from rich.console import Console
    from rich.table import Table

    names = [str(n) for n in table["selection"].to_list()]
    label_width = max(len(c) for c in table.columns)
    console = console or Console()
    width = width or console.width
    shown, used = [], label_width + 4
    for i, name in enumerate(names):
        col = max(len(name), max(len(_fmt(v)) for v in table.row(i)), 8) + 3
        if shown and used + col > width:
            break
        shown.append(i)
        used += col
    t = Table(title="selections", show_lines=False)
    t.add_column("figure", style="bold", no_wrap=True, min_width=label_width)
    for i in shown:
        t.add_column(names[i], justify="right", no_wrap=True, min_width=len(names[i]))
    for col in table.columns:
        if col == "selection":
            continue
        values = table[col].to_list()
        t.add_row(col, *[_fmt(values[i]) for i in shown])
    console.print(t, width=max(width, used), crop=False)
    return [names[i] for i in range(len(names)) if i not in shown]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
