"""Charts comparing selections: coverage against budget, and rows per domain against the pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from curate.viz.figure import NONE_LABEL, own_axes, palette
from curate.viz.maps import category_order, labels_of


def coverage_plot(curves: pl.DataFrame, *, ax: Any = None, title: str | None = None) -> Any:
    """Grid coverage against budget, one line per selection (the table of `curate.inspect.coverage_curves`)."""
    missing = {"selection", "budget", "coverage"} - set(curves.columns)
    if missing:
        raise KeyError(f"coverage curves need columns selection, budget, coverage; missing {sorted(missing)}")
    fig, ax = own_axes(ax, (6.5, 4.2))
    names = list(dict.fromkeys(curves["selection"].to_list()))
    for name, colour in zip(names, palette(len(names)), strict=True):
        part = curves.filter(pl.col("selection") == name).sort("budget")
        ax.plot(part["budget"].to_numpy(), part["coverage"].to_numpy(), marker=".", color=colour, label=name)
    ax.set_xlabel("rows taken, in rank order")
    ax.set_ylabel("share of non-empty grid cells covered")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "coverage against budget", fontsize=10)
    return fig


def domain_counts(frame: pl.DataFrame, names: Sequence[str]) -> pl.DataFrame:
    """Rows per domain in the pool and in each selection (`sel:<name>` flags of the map frame), largest first."""
    labels = labels_of(frame["domain"])
    cats = category_order(labels)
    cols: dict[str, Any] = {"domain": cats, "pool": [int((labels == c).sum()) for c in cats]}
    for name in names:
        flag = frame[f"sel:{name}"].to_numpy()
        cols[name] = [int(((labels == c) & flag).sum()) for c in cats]
    return pl.DataFrame(cols)


def domain_counts_plot(frame: pl.DataFrame, names: Sequence[str], *, ax: Any = None) -> Any:
    """Share of rows per domain: the pool (grey) against each selection, as grouped horizontal bars."""
    table = domain_counts(frame, names)
    groups = ["pool", *names]
    cats = table["domain"].to_list()
    height = 1.2 + 0.12 * len(cats) * len(groups)
    fig, ax = own_axes(ax, (7.5, min(max(height, 3.0), 40.0)))
    bar = 0.8 / len(groups)
    colours = [(0.45, 0.45, 0.45, 1.0), *palette(len(names))]
    ypos = np.arange(len(cats))
    for i, (g, colour) in enumerate(zip(groups, colours, strict=True)):
        counts = table[g].to_numpy()
        share = counts / max(int(counts.sum()), 1)
        ax.barh(ypos + i * bar, share * 100, height=bar, color=colour, label=f"{g} ({int(counts.sum()):,})")
    ax.set_yticks(ypos + bar * (len(groups) - 1) / 2, [c if c != NONE_LABEL else "(no domain)" for c in cats],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("% of rows")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title("rows per domain: the pool against each selection", fontsize=10)
    return fig
