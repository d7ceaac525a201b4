"""Plots of a run directory, shared by the notebooks and the HTML report (`curate.report`).

Every plot function takes the tables of `curate.inspect` (or a run directory) and returns a matplotlib
`Figure` built without pyplot, so the report can render many of them without global state and a notebook
shows each as the cell's value (`%matplotlib inline`). matplotlib is imported inside the functions:
importing this package stays cheap.

    map_scatter(frame, "domain" | "cluster" | <signal>)   the 2-D map coloured by a column
    selection_maps(frame, names)                         where each selection lands on the map
    signal_distributions(frame, signals)                 each signal's distribution per domain
    coverage_plot(coverage_curves(run, names))           grid coverage against budget per selection
    domain_counts(frame, names) / domain_counts_plot     per-domain rows of each selection against the pool
    load_mixture(path) / mixture_plot(mixture)           the domain mixture over rounds (mixtures/<name>.json)
    neighbours(run, row, k)                              the nearest neighbours of a row, as a table of texts
    export_map(run)                                      the Embedding Atlas parquet (`curate export-map`)
"""

from __future__ import annotations

from curate.viz.atlas import export_map
from curate.viz.charts import coverage_plot, domain_counts, domain_counts_plot
from curate.viz.figure import png_bytes, png_data_uri
from curate.viz.maps import map_scatter, selection_maps, signal_distributions
from curate.viz.mixture import list_mixtures, load_mixture, mixture_plot
from curate.viz.neighbours import neighbours

__all__ = [
    "coverage_plot",
    "domain_counts",
    "domain_counts_plot",
    "export_map",
    "list_mixtures",
    "load_mixture",
    "map_scatter",
    "mixture_plot",
    "neighbours",
    "png_bytes",
    "png_data_uri",
    "selection_maps",
    "signal_distributions",
]
