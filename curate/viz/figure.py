"""Figure plumbing for curate.viz: pyplot-free figures, a categorical palette, PNG bytes and data URIs."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

NONE_LABEL = "(none)"


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure not registered with pyplot (no global state, freed when dropped)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def axes_grid(n: int, ncols: int, cell: tuple[float, float], **kw: Any) -> tuple[Any, list[Any]]:
    """A figure with `n` axes on a grid of `ncols` columns (unused cells removed)."""
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = new_figure(cell[0] * ncols, cell[1] * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, **kw)).ravel().tolist()
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def own_axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    """(figure, axes): the given axes and its figure, or a new figure with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(*size)
    return fig, fig.add_subplot()


def palette(n: int) -> list[tuple[float, float, float, float]]:
    """n distinguishable colours: tab10 / tab20 for few categories, a spread of turbo beyond 20."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    # interleave so neighbouring labels (cluster 3, cluster 4) get distant colours
    steps = np.linspace(0.05, 0.95, n)
    order = np.argsort(np.arange(n) * 7 % n, kind="stable")
    return [colormaps["turbo"](float(steps[i])) for i in order]


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    """The figure rendered as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def png_data_uri(fig: Any, dpi: int = 110) -> str:
    """The figure as a `data:image/png;base64,...` URI, for an <img> in a self-contained HTML file."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi)).decode("ascii")
