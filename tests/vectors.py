"""Synthetic unit vectors for index-layer tests: random directions and gaussian clusters around them."""

from __future__ import annotations

import numpy as np


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n random L2-normalised float32 rows of dimension d."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, d: int, n_clusters: int, spread: float = 0.5) -> np.ndarray:
    """n unit rows scattered (std spread/sqrt(d) per dimension) around n_clusters random unit centres."""
    c = unit_rows(rng, n_clusters, d)
    lab = rng.integers(0, n_clusters, n)
    x = c[lab] + spread / np.sqrt(d) * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
