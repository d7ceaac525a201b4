"""Domain mixtures over rounds, as `mixtures/<name>.json` holds them, and their plot.

Layout: {"method": str, "domains": [str, ...], "rounds": [{"round": int, "weights": {domain: float}}, ...]}
("method" optional; other keys, such as "objective", ignored). A domain missing from a round's weights has
weight 0 in that round.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.run import RunDir
from curate.viz.figure import own_axes, palette


@dataclass
class Mixture:
    """A domain mixture per round: `weights[r, d]` is domain d's weight in round `rounds[r]`."""

    name: str
    method: str
    domains: list[str]
    rounds: list[int]
    weights: np.ndarray


def load_mixture(path: str | os.PathLike) -> Mixture:
    """Read and check one mixtures/<name>.json file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not {"domains", "rounds"} <= set(doc):
        raise ValueError(f"{path}: expected an object with 'domains' and 'rounds'")
    domains = [str(d) for d in doc["domains"]]
    if not domains or len(set(domains)) != len(domains):
        raise ValueError(f"{path}: 'domains' must be a non-empty list of distinct names")
    rounds, rows = [], []
    for i, item in enumerate(doc["rounds"]):
        if not isinstance(item, dict) or "weights" not in item or not isinstance(item["weights"], dict):
            raise ValueError(f"{path}: round {i} must be an object with a 'weights' mapping")
        unknown = set(item["weights"]) - set(domains)
        if unknown:
            raise ValueError(f"{path}: round {i} weighs domains not in 'domains': {sorted(unknown)}")
        w = np.array([float(item["weights"].get(d, 0.0)) for d in domains])
        if (w < 0).any() or not np.isfinite(w).all():
            raise ValueError(f"{path}: round {i} has negative or non-finite weights")
        rounds.append(int(item.get("round", i)))
        rows.append(w)
    if not rows:
        raise ValueError(f"{path}: no rounds")
    return Mixture(path.stem, str(doc.get("method") or ""), domains, rounds, np.stack(rows))


def list_mixtures(run: RunDir | str | os.PathLike) -> list[Path]:
    """The mixture files of a run directory, by name."""
    folder = RunDir(run).mixtures_dir
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def mixture_plot(mixture: Mixture | str | os.PathLike, *, ax: Any = None) -> Any:
    """The domain mixture of each round as a stacked bar (weights normalised to shares per round)."""
    mix = mixture if isinstance(mixture, Mixture) else load_mixture(mixture)
    fig, ax = own_axes(ax, (7.5, 4.2))
    totals = mix.weights.sum(axis=1, keepdims=True)
    share = np.divide(mix.weights, totals, out=np.zeros_like(mix.weights), where=totals > 0)
    pos = np.arange(len(mix.rounds))
    bottom = np.zeros(len(mix.rounds))
    for d, (dom, colour) in enumerate(zip(mix.domains, palette(len(mix.domains)), strict=True)):
        ax.bar(pos, share[:, d], bottom=bottom, color=colour, label=dom, width=0.8)
        bottom += share[:, d]
    ax.set_xticks(pos, [str(r) for r in mix.rounds])
    ax.set_xlabel("round")
    ax.set_ylabel("domain weight (share)")
    ax.set_ylim(0, 1)
    if len(mix.domains) <= 20:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    method = f" ({mix.method})" if mix.method else ""
    ax.set_title(f"{mix.name}: domain mixture over rounds{method}", fontsize=10)
    return fig
