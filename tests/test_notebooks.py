"""Every notebook in notebooks/ executes top to bottom (nbclient, a real kernel) on a tiny real run."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

try:  # pytest fixtures; tests/ is on sys.path when it is not a package
    from fixtures_embed import tiny_model  # noqa: F401
    from fixtures_viz import viz_run  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.fixtures_embed import tiny_model  # noqa: F401
    from tests.fixtures_viz import viz_run  # noqa: F401

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_top_to_bottom(path, viz_run, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CURATE_RUN", str(viz_run))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    # every cell that calls a curate.viz plot shows a PNG (a figure was drawn, not just returned)
    plot_cells = [c for c in code if any(f"viz.{f}(" in c.source for f in ("map_scatter", "selection_maps",
                  "signal_distributions", "coverage_plot", "domain_counts_plot", "mixture_plot"))]
    assert plot_cells
    for cell in plot_cells:
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"no figure shown by:\n{cell.source}"
    # the run's rows reach the tables: the neighbours table shows the domains of the tiny pool
    text = "\n".join(o.get("data", {}).get("text/plain", "") for c in code for o in c.outputs)
    assert "k-center" in text and "math" in text
