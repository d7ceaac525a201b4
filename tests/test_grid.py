"""Known-answer tests for the ILA coverage grid."""

from __future__ import annotations

import numpy as np
import pytest

from index.grid import assign_cells, coverage, coverage_curve, density_coverage


def lattice(nx: int, ny: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(nx, dtype=float), np.arange(ny, dtype=float), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5  # cell centres, min = 0.5


def test_exact_cell_ids_row_major():
    pts = np.array([[0.0, 0.0], [0.9, 0.2], [1.1, 0.0], [0.0, 2.5], [2.99, 2.99]])
    g = assign_cells(pts, cell_size=1.0)
    # per-dim index: (0,0) (0,0) (1,0) (0,2) (2,2); shape (3,3) -> id = i0*3 + i1
    assert g.shape == (3, 3)
    assert g.cells.tolist() == [0, 0, 3, 2, 8]
    assert g.n_nonempty == 4
    assert g.cells.dtype == np.int64


def test_min_offset_and_3d():
    pts = np.array([[10.0, -5.0, 1.0], [12.0, -5.0, 1.0], [10.0, -3.0, 3.5]])
    g = assign_cells(pts, cell_size=2.0)
    assert g.mins.tolist() == [10.0, -5.0, 1.0]
    # indices (0,0,0), (1,0,0), (0,1,1); shape (2,2,2) -> id = (i0*2 + i1)*2 + i2
    assert g.cells.tolist() == [0, 4, 3]


def test_coverage_on_lattice():
    pts = lattice(4, 4)  # 16 points, one per unit cell
    g = assign_cells(pts, cell_size=1.0)
    assert g.n_nonempty == 16
    assert coverage(g, [0, 1, 2, 3]) == pytest.approx(4 / 16)
    assert coverage(g, [0, 0, 0]) == pytest.approx(1 / 16)
    g2 = assign_cells(pts, cell_size=2.0)  # 2x2 blocks of 4 points
    assert g2.n_nonempty == 4
    assert coverage(g2.cells, [0, 1, 4, 5]) == pytest.approx(1 / 4)  # all in the first block
    assert coverage(g2.cells, [0, 15]) == pytest.approx(2 / 4)


def test_density_coverage_weights_by_mass():
    # cell A holds 8 rows, cell B 1, cell C 1
    pts = np.array([[0.1, 0.1]] * 8 + [[5.1, 0.1], [0.1, 5.1]])
    g = assign_cells(pts, cell_size=1.0)
    assert g.n_nonempty == 3
    assert coverage(g, [0]) == pytest.approx(1 / 3)
    assert density_coverage(g, [0]) == pytest.approx(8 / 10)
    assert density_coverage(g, [8]) == pytest.approx(1 / 10)
    assert density_coverage(g, [8, 9, 3]) == pytest.approx(1.0)


def test_coverage_curve_matches_single_calls():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 2))
    g = assign_cells(pts, cell_size=0.5)
    order = rng.permutation(500)
    budgets = [0, 1, 5, 37, 100, 499, 500]
    curve = coverage_curve(g, order, budgets)
    expect = [0.0] + [coverage(g, order[:b]) for b in budgets[1:]]
    np.testing.assert_allclose(curve, expect)
    dcurve = coverage_curve(g, order, budgets, density=True)
    dexpect = [0.0] + [density_coverage(g, order[:b]) for b in budgets[1:]]
    np.testing.assert_allclose(dcurve, dexpect)
    assert curve[-1] == pytest.approx(1.0) and dcurve[-1] == pytest.approx(1.0)


def test_coverage_curve_known_values():
    g = assign_cells(lattice(2, 2), cell_size=1.0)  # 4 cells, rows 0..3 one per cell
    order = np.array([0, 0, 1, 1, 2, 3])
    np.testing.assert_allclose(coverage_curve(g, order, [1, 2, 3, 4, 5, 6]), [0.25, 0.25, 0.5, 0.5, 0.75, 1.0])


def test_target_cells_bisection():
    pts = lattice(20, 20)  # 400 points on a unit lattice
    for target in (4, 16, 25, 100, 400):
        g = assign_cells(pts, target_cells=target)
        assert g.n_nonempty == target, (target, g.n_nonempty, g.cell_size)
    rng = np.random.default_rng(1)
    cloud = rng.normal(size=(20_000, 2))
    for target in (50, 300, 1_000):
        g = assign_cells(cloud, target_cells=target)
        assert abs(g.n_nonempty - target) <= max(2, 0.03 * target)
        assert g.info["n_nonempty"] == g.n_nonempty
    assert assign_cells(cloud, target_cells=1).n_nonempty == 1


def test_target_cells_identical_points():
    g = assign_cells(np.ones((10, 2)), target_cells=5)
    assert g.n_nonempty == 1 and coverage(g, [3]) == 1.0


def test_bad_input_messages():
    with pytest.raises(ValueError, match="row 1"):
        assign_cells(np.array([[0.0, 1.0], [np.nan, 0.0]]), cell_size=1.0)
    with pytest.raises(ValueError, match="not both"):
        assign_cells(np.zeros((2, 2)), cell_size=1.0, target_cells=2)
    g = assign_cells(lattice(2, 2), cell_size=1.0)
    with pytest.raises(IndexError, match="outside the pool of 4"):
        coverage(g, [7])
    with pytest.raises(ValueError, match="budgets"):
        coverage_curve(g, [0, 1], [3])
    # cell ids past int64: an error, not a silent wrap into one cell
    with pytest.raises(ValueError, match="overflows int64"):
        assign_cells(np.array([[0, 0], [0.5, 0], [1, 0], [1, 1]], dtype=float), cell_size=1e-20)
