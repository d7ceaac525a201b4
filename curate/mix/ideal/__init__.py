"""IDEAL: domain volumes from EK-FAC influence of each domain on a reference set (see `rounds`, `ekfac`)."""

from curate.mix.ideal.ekfac import EKFAC, influence, influence_matrix, mean_gradient
from curate.mix.ideal.rounds import ideal, new_volumes, step_sizes

__all__ = ["EKFAC", "ideal", "influence", "influence_matrix", "mean_gradient", "new_volumes", "step_sizes"]
