"""Plots on the 2-D map of a pool: coloured by a column, each selection's rows, and signals per domain.

They take the frame of `curate.inspect.map_frame` (columns id, domain, x, y, cell, cluster, signals and
`sel:<name>` flags). Pools larger than `max_points` are drawn from a fixed random sample, said in the title.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from curate.viz.figure import NONE_LABEL, axes_grid, own_axes, palette

MAX_POINTS = 200_000
LEGEND_MAX = 20


def _need(frame: pl.DataFrame, *columns: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"the map frame has no column {missing[0]!r}; it has: {', '.join(frame.columns)}")


def sample_rows(frame: pl.DataFrame, max_points: int | None, seed: int = 0) -> tuple[pl.DataFrame, str]:
    """The frame in a fixed shuffled order, cut to `max_points` rows, and a note when it was cut."""
    n = frame.height
    order = np.random.default_rng(seed).permutation(n)  # shuffled, so no group is always drawn on top
    if max_points is not None and n > max_points:
        return frame[order[:max_points]], f" (sample of {max_points:,} of {n:,} rows)"
    return frame[order], ""


def point_size(n: int) -> float:
    """A marker area that keeps small maps legible and large ones from turning into a blot."""
    return float(np.clip(3000.0 / max(n, 1), 0.3, 12.0))


def labels_of(values: pl.Series) -> np.ndarray:
    """Category labels as strings, missing values labelled '(none)'."""
    return np.asarray(values.cast(pl.String).fill_null(NONE_LABEL).to_list(), dtype=object)


def category_order(labels: np.ndarray) -> list[str]:
    """Categories by decreasing count (ties by name), '(none)' last."""
    cats, counts = np.unique(labels.astype(str), return_counts=True)
    order = sorted(zip(cats.tolist(), counts.tolist(), strict=True), key=lambda t: (t[0] == NONE_LABEL, -t[1], t[0]))
    return [c for c, _ in order]


def map_scatter(
    frame: pl.DataFrame,
    color: str = "domain",
    *,
    ax: Any = None,
    max_points: int | None = MAX_POINTS,
    seed: int = 0,
    title: str | None = None,
) -> Any:
    """The map coloured by `color`: categories (domain, cluster, a flag) or a continuous signal."""
    _need(frame, "x", "y", color)
    fig, ax = own_axes(ax, (7.5, 6))
    sub, note = sample_rows(frame, max_points, seed)
    x, y = sub["x"].to_numpy(), sub["y"].to_numpy()
    size = point_size(sub.height)
    col = sub[color]
    if col.dtype.is_float():
        vals = col.to_numpy().astype(np.float64)
        nan = np.isnan(vals)
        if nan.any():
            ax.scatter(x[nan], y[nan], s=size, color="lightgrey", linewidths=0, label="no value")
        sc = ax.scatter(x[~nan], y[~nan], c=vals[~nan], s=size, cmap="viridis", linewidths=0)
        fig.colorbar(sc, ax=ax, label=color, shrink=0.8)
    else:
        labels = labels_of(col)
        cats = category_order(labels)
        colours = dict(zip(cats, palette(len(cats)), strict=True))
        if NONE_LABEL in colours:
            colours[NONE_LABEL] = (0.6, 0.6, 0.6, 1.0)
        ax.scatter(x, y, s=size, c=[colours[v] for v in labels], linewidths=0)
        if len(cats) <= LEGEND_MAX:
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], marker="o", ls="", color=colours[c], label=c) for c in cats]
            ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        else:
            note += f" ({len(cats)} {color} values, no legend)"
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title((title or f"map coloured by {color}") + note, fontsize=10)
    return fig


def selection_maps(
    frame: pl.DataFrame,
    names: Sequence[str],
    *,
    ncols: int = 4,
    max_points: int | None = MAX_POINTS,
    seed: int = 0,
) -> Any:
    """One small map per selection: the pool in grey, the selection's rows on top in red."""
    if not names:
        raise ValueError("selection_maps needs at least one selection name")
    _need(frame, "x", "y", *[f"sel:{n}" for n in names])
    fig, axes = axes_grid(len(names), ncols, (3.6, 3.4), sharex=True, sharey=True)
    sub, note = sample_rows(frame, max_points, seed)
    x, y = sub["x"].to_numpy(), sub["y"].to_numpy()
    size = point_size(sub.height)
    for ax, name in zip(axes, names, strict=True):
        flag = sub[f"sel:{name}"].to_numpy()
        ax.scatter(x[~flag], y[~flag], s=size, color="#d0d0d0", linewidths=0)
        ax.scatter(x[flag], y[flag], s=max(size * 2, 1.0), color="crimson", linewidths=0)
        ax.set_title(f"{name}: {int(frame[f'sel:{name}'].sum()):,} rows", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if note:
        fig.suptitle("where each selection lands on the map" + note, fontsize=10)
    return fig


def signal_distributions(
    frame: pl.DataFrame,
    signals: Sequence[str],
    *,
    by: str = "domain",
    ncols: int = 3,
) -> Any:
    """Each signal's distribution per `by` group (box plots, whiskers at 1.5 IQR, NaN left out), plus all rows."""
    if not signals:
        raise ValueError("signal_distributions needs at least one signal")
    _need(frame, by, *signals)
    labels = labels_of(frame[by])
    groups = category_order(labels)
    rows = ["(all)", *groups]
    masks = [np.ones(frame.height, dtype=bool)] + [labels == g for g in groups]
    height = 0.9 + 0.22 * len(rows)
    fig, axes = axes_grid(len(signals), ncols, (4.6, height))
    for ax, name in zip(axes, signals, strict=True):
        vals = frame[name].cast(pl.Float64).to_numpy()
        data = [vals[m & ~np.isnan(vals)] for m in masks]
        data = [d if d.size else np.array([np.nan]) for d in data]
        ax.boxplot(data, orientation="horizontal", tick_labels=rows, widths=0.6, showfliers=True,
                   flierprops={"markersize": 1.5, "alpha": 0.4}, medianprops={"color": "crimson"})
        finite = vals[np.isfinite(vals)]
        if finite.size and finite.min() > 0 and np.percentile(finite, 99) > 50 * np.median(finite):
            ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.invert_yaxis()  # "(all)" on top
    return fig
