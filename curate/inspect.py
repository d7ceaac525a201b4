"""Notebook helpers: the tables a notebook plots, read from a run directory (no plotting here).

`map_frame` gives one row per pool row with its 2-D coordinates, grid cell, cluster, signals and a flag per
selection, ready for a scatter plot or an embedding-atlas widget; `coverage_curves` gives coverage against
budget for selections in their rank order; `pool_overview` summarises domains, duplicates and quarantine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import polars as pl

from curate.run import RunDir
from curate.select.selection import Selection, list_selections
from curate.view import PoolView


def pool_overview(run: RunDir | str | os.PathLike) -> pl.DataFrame:
    """Rows, duplicates folded in, and mean prompt/response characters per domain (plus a total row)."""
    pool = RunDir(run).read_pool(["domain", "prompt", "response", "n_duplicates"])
    per = (
        pool.with_columns(pl.col("domain").fill_null("(none)"))
        .group_by("domain")
        .agg(
            pl.len().alias("rows"),
            pl.col("n_duplicates").sum().alias("duplicates"),
            pl.col("prompt").str.len_chars().mean().alias("prompt_chars"),
            pl.col("response").str.len_chars().mean().alias("response_chars"),
        )
        .sort("rows", descending=True)
    )
    total = pool.select(  # over the rows themselves: prompt-only rows have no response to average
        pl.lit("(all)").alias("domain"),
        pl.len().alias("rows"),
        pl.col("n_duplicates").sum().alias("duplicates"),
        pl.col("prompt").str.len_chars().mean().alias("prompt_chars"),
        pl.col("response").str.len_chars().mean().alias("response_chars"),
    )
    return pl.concat([per, total.cast(per.schema)])


def quarantine_reasons(run: RunDir | str | os.PathLike) -> pl.DataFrame:
    """Quarantined rows per file and reason kind (the text before the first colon)."""
    q = pl.read_parquet(RunDir(run).require(RunDir(run).quarantine_path, "ingest"))
    return (
        q.with_columns(pl.col("reason").str.split(":").list.first().alias("kind"))
        .group_by("source", "kind")
        .agg(pl.len().alias("rows"))
        .sort("rows", descending=True)
    )


def map_frame(
    run: RunDir | str | os.PathLike,
    selections: Sequence[str] | None = None,
    signals: Sequence[str] | None = None,
    *,
    map_columns: bool = True,
) -> pl.DataFrame:
    """One row per pool row: id, domain, x, y, cell, cluster, chosen signals and `sel:<name>` flags.

    `selections` defaults to every saved selection and `signals` to every stored one. `map_columns=False` leaves
    out x, y, cell and cluster, so tables of signals and selections by domain need no `curate map`.
    """
    view = PoolView.from_run(run)
    cols: dict[str, object] = {"id": view.ids, "domain": view.domains()}
    if map_columns:
        coords = view.projection()
        cols.update(x=coords[:, 0], y=coords[:, 1], cell=view.cells(), cluster=view.clusters())
    for name in view.signal_names() if signals is None else signals:
        cols[name] = view.signal(name)
    names = list_selections(run) if selections is None else list(selections)
    for name in names:
        flag = np.zeros(view.n, dtype=bool)
        flag[Selection.load(run, name).positions] = True
        cols[f"sel:{name}"] = flag
    return pl.DataFrame(cols)


def coverage_curves(
    run: RunDir | str | os.PathLike,
    names: Sequence[str],
    budgets: Sequence[int] | None = None,
    *,
    density: bool = False,
) -> pl.DataFrame:
    """Grid coverage of each selection's first b rows, for every budget b (default: 20 steps up to its size)."""
    from index.grid import coverage_curve

    cells = PoolView.from_run(run).cells()
    frames = []
    for name in names:
        order = Selection.load(run, name).positions
        steps = budgets or sorted({max(1, round(len(order) * i / 20)) for i in range(1, 21)})
        steps = [b for b in steps if b <= len(order)]
        if steps:  # an empty selection has no curve
            cov = coverage_curve(cells, order, steps, density=density)
            frames.append(pl.DataFrame({"selection": name, "budget": steps, "coverage": np.asarray(cov, float)}))
    schema = {"selection": pl.String, "budget": pl.Int64, "coverage": pl.Float64}
    return pl.concat([f.cast(schema) for f in frames]) if frames else pl.DataFrame(schema=schema)
