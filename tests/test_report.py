"""`curate report`: one self-contained HTML file with every section, notes for stages not run, CLI and recipe."""

from __future__ import annotations

import base64
import json
import re
from io import BytesIO

import numpy as np
from fixtures_pool import Fixed, make_run
from typer.testing import CliRunner

from curate.cli import app
from curate.recipe import Recipe, run_recipe
from curate.report import SECTIONS, write_report
from curate.view import PoolView

try:  # pytest fixtures; tests/ is on sys.path when it is not a package
    from fixtures_embed import tiny_model  # noqa: F401
    from fixtures_viz import MIXTURE, SELECTIONS, viz_run  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.fixtures_embed import tiny_model  # noqa: F401
    from tests.fixtures_viz import MIXTURE, SELECTIONS, viz_run  # noqa: F401

IMG = re.compile(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)">')


def _coloured_pixels(b64: str) -> int:
    from PIL import Image

    px = np.asarray(Image.open(BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)
    return int(((px.max(2) - px.min(2)) > 80).sum())


def test_report_of_a_real_run_is_complete_and_offline(viz_run, tmp_path):  # noqa: F811
    page = write_report(viz_run, tmp_path / "r.html", progress=False).read_text()
    for key, title, _ in SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in page
    # self-contained: no script, no external reference (only inline data and in-page anchors)
    assert "<script" not in page
    assert not re.findall(r'(?:src|href)="(?!data:|#)', page)
    images = IMG.findall(page)
    alts = [alt for _, alt in images]
    assert alts == ["map by domain", "map by cluster", "map by mtld", "selections on the map", "signals per domain",
                    "coverage against budget", "rows per domain", "mixture ideal"]
    assert all(_coloured_pixels(b64) > 50 for b64, _ in images)  # each PNG has drawn marks
    assert "malformed_json" in page and "empty_text" in page  # quarantine reasons
    for name in SELECTIONS:
        assert f"<th>{name}</th>" in page  # comparison columns
    assert "jaccard:k-center" in page and "median:tokens" in page
    assert "nearest neighbours in the kNN graph" in page
    assert "No row was quarantined" not in page and "is missing" not in page


def test_report_says_which_stage_is_missing(tmp_path):
    run = make_run(tmp_path / "run", n=12, signals=False)  # pool and quarantine only: no map, no selection
    page = write_report(run, progress=False).read_text()
    assert (run.root / "report.html").stat().st_mode & 0o777 == 0o644
    assert "run `curate map`" in page and "No selection yet: run `curate select`." in page
    assert "No domain mixture in this run" in page and "run `curate index`" in page
    assert not IMG.findall(page)


def test_report_signals_and_domains_need_no_map(tmp_path):
    from curate.select import select

    run = make_run(tmp_path / "run", n=24)  # pool, signals and embeddings; no map, no kNN graph
    select(run.root, "random", 6, name="r6")
    page = write_report(run, progress=False).read_text()
    assert [alt for _, alt in IMG.findall(page)] == ["signals per domain", "rows per domain"]
    assert "run `curate map`" in page  # the map sections still say what is missing


def test_report_notes_an_unreadable_mixture_and_keeps_going(tmp_path):
    run = make_run(tmp_path / "run", n=24, map_=True, knn=3)
    Fixed(order=(0, 5, 9)).select(PoolView.from_run(run), "3").save(run, "fixed")
    (run.root / "mixtures").mkdir()
    (run.root / "mixtures" / "good.json").write_text(json.dumps(MIXTURE | {"domains": ["code", "math", "chat", "geo"]}))
    (run.root / "mixtures" / "bad.json").write_text('{"method": "ama", "domains": ["a"], "rounds": [{"weights": {"b": 1}}]}')
    page = write_report(run, progress=False, signal="quality").read_text()
    assert "bad.json cannot be read" in page and "not in &#x27;domains&#x27;" in page
    assert [alt for _, alt in IMG.findall(page)][-1] == "mixture good"
    assert 'alt="map by quality"' in page


def test_report_with_atlas_names_the_open_command(tmp_path):
    run = make_run(tmp_path / "run", n=24, map_=True, knn=3)
    page = write_report(run, progress=False, atlas=True).read_text()
    assert (run.root / "atlas.parquet").exists()
    assert f"embedding-atlas {run.root / 'atlas.parquet'} --text text --x x --y y --neighbors neighbors" in page
    (run.root / "atlas.parquet").unlink()  # an output of the stage: a deleted atlas is written again
    write_report(run, progress=False, atlas=True)
    assert (run.root / "atlas.parquet").exists()


def test_report_neighbours_start_from_the_first_non_empty_selection(tmp_path):
    run = make_run(tmp_path / "run", n=24, map_=True, knn=3)
    Fixed(order=()).select(PoolView.from_run(run), "0").save(run, "a-empty")
    Fixed(order=(7, 2)).select(PoolView.from_run(run), "2").save(run, "b-fixed")
    page = write_report(run, progress=False, selections=["a-empty", "b-fixed"]).read_text()
    assert "Row 7 (the first row of selection &#x27;b-fixed&#x27;)" in page


def test_cli_report_and_recipe_stage_print_the_path(tmp_path):
    run = make_run(tmp_path / "run", n=24, map_=True, knn=3)
    res = CliRunner().invoke(app, ["report", "--run", str(run.root), "--out", str(tmp_path / "x.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.html").exists() and "x.html" in res.output

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run: {run.root}\nstages:\n  - report: {{}}\n")
    results = run_recipe(Recipe.load(recipe), log=lambda s: None)
    assert results[0][0] == "report" and results[0][1].value == run.root / "report.html"
    res = CliRunner().invoke(app, ["run", str(recipe)])
    assert res.exit_code == 0, res.output
    tail = res.output.rsplit("report:", 1)[-1]  # the last thing printed is the report's path (rich may wrap it)
    assert "".join(tail.split()) == str(run.root / "report.html")


def test_cli_report_on_a_missing_run_fails_clearly(tmp_path):
    res = CliRunner().invoke(app, ["report", "--run", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "curate ingest" in res.output


def test_demo_recipe_ends_with_the_report():
    from pathlib import Path

    demo = Recipe.load(Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml")
    assert demo.stages[-1][0] == "report"
