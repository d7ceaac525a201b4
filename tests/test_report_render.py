"""The HTML report renders in headless Chromium with its plots drawn; the check tells a page without plots."""

from __future__ import annotations

import re

try:  # pytest fixtures; tests/ is on sys.path when it is not a package
    from fixtures_chromium import chromium, drawn_fraction, screenshot  # noqa: F401
    from fixtures_embed import tiny_model  # noqa: F401
    from fixtures_viz import viz_run  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.fixtures_chromium import chromium, drawn_fraction, screenshot  # noqa: F401
    from tests.fixtures_embed import tiny_model  # noqa: F401
    from tests.fixtures_viz import viz_run  # noqa: F401

from curate.report import write_report


def test_report_plots_are_drawn_in_chromium(viz_run, chromium, tmp_path):  # noqa: F811
    page = write_report(viz_run, tmp_path / "report.html", progress=False)
    shot = screenshot(chromium, page, tmp_path / "report.png")
    drawn = drawn_fraction(shot)

    # controls: the same page with every image emptied, and a blank page, must fail the same check
    html = page.read_text()
    no_plots = tmp_path / "no_plots.html"
    no_plots.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', html))
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    without = drawn_fraction(screenshot(chromium, no_plots, tmp_path / "no_plots.png"))
    empty = drawn_fraction(screenshot(chromium, blank, tmp_path / "blank.png"))

    assert empty == 0.0
    assert without < 0.003, without  # text, tables and links alone
    assert drawn > 0.01 and drawn > 10 * without, (drawn, without)
    # every plot region is present: rows with coloured pixels span most of the page's plot sections
    rows = (shot.max(axis=2) - shot.min(axis=2) > 80).any(axis=1)
    assert rows.sum() > 1000, rows.sum()  # ~1750 for this report, ~60 without its images
