"""compare: selections side by side on a known case (sizes, tokens, domains, signal means, Jaccard)."""

from __future__ import annotations

import io
import re

import numpy as np
import polars as pl
import pytest
from fixtures_pool import Fixed, make_run
from rich.console import Console

from curate.compare import compare, jaccard, render, save_table
from curate.select import PoolView


def test_jaccard():
    assert jaccard(np.array([1, 2, 3]), np.array([2, 3, 4])) == 0.5
    assert jaccard(np.array([], dtype=int), np.array([], dtype=int)) == 1.0
    assert jaccard(np.array([1]), np.array([2])) == 0.0


def test_compare_known_case(tmp_path):
    run = make_run(tmp_path, n=8)  # domains cycle code, math, chat, None
    view = PoolView.from_run(run)
    Fixed(order=(0, 1, 2, 3)).select(view, "4").save(run, "a")
    Fixed(order=(2, 3, 4, 5)).select(view, "4").save(run, "b")
    Fixed(order=(0, 4)).select(view, "2").save(run, "c")
    t = compare(run, ["a", "b", "c"], progress=False)
    tokens = view.signal("tokens")
    quality = view.signal("quality")
    rows = {r["selection"]: r for r in t.to_dicts()}
    assert t["selection"].to_list() == ["a", "b", "c"]
    assert [rows[k]["n"] for k in "abc"] == [4, 4, 2]
    assert rows["a"]["tokens"] == int(tokens[[0, 1, 2, 3]].sum())
    assert rows["c"]["median:quality"] == pytest.approx(np.median(quality[[0, 4]]))
    assert rows["b"]["median:tokens"] == pytest.approx(np.median(tokens[[2, 3, 4, 5]]))
    assert rows["c"]["mean:quality"] == pytest.approx(quality[[0, 4]].mean())  # uniform: the mean is kept
    assert {k: rows["c"][f"domain:{k}"] for k in ["(none)", "chat", "code", "math"]} == {
        "(none)": 0, "chat": 0, "code": 2, "math": 0
    }
    assert rows["b"]["domain:code"] == 1 and rows["b"]["domain:(none)"] == 1
    assert rows["a"]["jaccard:b"] == pytest.approx(2 / 6)
    assert rows["a"]["jaccard:c"] == pytest.approx(1 / 5)
    assert rows["b"]["jaccard:c"] == pytest.approx(1 / 5)
    assert rows["a"]["jaccard:a"] == 1.0
    assert "map not built" in rows["a"]["coverage_note"]
    buf = io.StringIO()
    render(t, Console(file=buf, width=200))
    out = buf.getvalue()
    assert "jaccard:b" in out and "0.3333" in out
    narrow = io.StringIO()
    left_out = render(t, Console(file=narrow, width=60))  # only what fits is printed
    assert left_out == ["b", "c"] and "jaccard:b" in narrow.getvalue()
    assert max(map(len, narrow.getvalue().splitlines())) < max(map(len, out.splitlines()))
    md, csv = save_table(run, t)  # the whole table, whatever the terminal
    assert md.read_text().splitlines()[0] == "| figure | a | b | c |"
    assert "| jaccard:b | 0.3333 | 1 | 0.2 |" in md.read_text()
    assert pl.read_csv(csv)["selection"].to_list() == ["a", "b", "c"]


def test_heavy_tailed_signals_get_medians_not_means(tmp_path):
    from fixtures_pool import write_signal

    from curate.compare import mean_is_meaningful

    run = make_run(tmp_path, n=40)
    view = PoolView.from_run(run)
    # perplexity-like: a bulk around 40 and two rows in the tens of thousands (end-of-turn artefacts)
    ppl = np.linspace(20.0, 60.0, 40)
    ppl[[3, 17]] = [46_504.0, 25_000.0]
    ppl[5] = np.nan
    write_signal(run, "perplexity", view.ids.tolist(), ppl)
    Fixed(order=(0, 1, 2, 3, 4)).select(view, "5").save(run, "a")
    Fixed(order=(10, 11, 12, 13, 14, 15, 16, 17)).select(view, "8").save(run, "b")
    rows = {r["selection"]: r for r in compare(run, ["a", "b"], progress=False).to_dicts()}
    assert "mean:perplexity" not in rows["a"]  # 1,800 over the pool against a median of 41
    assert rows["a"]["median:perplexity"] == pytest.approx(np.median(ppl[[0, 1, 2, 3, 4]]))
    assert rows["b"]["median:perplexity"] == pytest.approx(np.median(ppl[10:18]))
    assert rows["b"]["median:perplexity"] < 100 and rows["a"]["median:perplexity"] < 100
    assert "mean:quality" in rows["a"]
    assert mean_is_meaningful(np.arange(100.0)) and mean_is_meaningful(np.ones(5))
    assert not mean_is_meaningful(np.r_[np.arange(100.0), 1e5]) and not mean_is_meaningful(np.full(3, np.nan))


def test_compare_errors(tmp_path):
    run = make_run(tmp_path, n=4)
    with pytest.raises(FileNotFoundError, match="select --name missing"):
        compare(run, ["missing"], progress=False)
    with pytest.raises(ValueError, match="at least one"):
        compare(run, [], progress=False)


def test_compare_progress_bar_and_command_output(tmp_path, capsys):
    from typer.testing import CliRunner

    from curate.cli import app

    run = make_run(tmp_path, n=8)
    view = PoolView.from_run(run)
    Fixed(order=(0, 1, 2, 3)).select(view, "4").save(run, "a")
    Fixed(order=(0, 4)).select(view, "2").save(run, "c")
    compare(run, ["a", "c"], progress=True)
    err = capsys.readouterr().err
    assert "compare: 100%" in err and "rows/s" in err and re.search(r"\b6(\.0+)?/6(\.0+)? ", err)  # 4 + 2 rows
    compare(run, ["a", "c"], progress=False)
    assert capsys.readouterr().err == ""
    res = CliRunner().invoke(app, ["compare", "--run", str(run.root), "a", "c"])
    assert res.exit_code == 0, res.output
    md = run.root / "compare" / "a-c.md"
    squeeze = lambda t: re.sub(r"\s", "", t)  # noqa: E731 - rich wraps the long path at any width
    assert md.exists() and squeeze(f"full table: {md} (and a-c.csv)") in squeeze(res.output)
    recipe = tmp_path / "compare.yaml"
    recipe.write_text(f"run: {run.root}\nstages:\n  - compare: {{names: [c, a]}}\n")
    res = CliRunner().invoke(app, ["run", str(recipe)])
    assert res.exit_code == 0, res.output
    md = run.root / "compare" / "c-a.md"
    assert md.exists() and squeeze(f"full table: {md} (and c-a.csv)") in squeeze(res.output)


def test_the_mix_is_the_one_training_sees_against_the_rows_the_selection_could_choose(tmp_path):
    """Rows count by their selection weight (IDEAL's volumes), and the pool side is the sidecar's eligible rows
    (excluded rows left out), as the selection's own stats.mix counts them."""
    run = make_run(tmp_path, n=8)  # domains cycle code, math, chat, None: 2 rows each
    view = PoolView.from_run(run)
    sel = Fixed(order=(0, 1)).select(view, "2")  # one code row, one math row
    sel.weights = np.array([9.0, 1.0])
    sel.stats.pop("mix", None)
    sel.save(run, "w")
    row = compare(run, ["w"], progress=False).to_dicts()[0]
    assert row["mix_tv"] == pytest.approx(0.5 * (0.65 + 0.15 + 0.25 + 0.25))  # 0.9 / 0.1 against 1/4 each
    assert row["mix_flag"] == "DIVERGES" and (row["domain:code"], row["domain:math"]) == (1, 1)
    sel.stats["mix"] = {"pool": {"code": 2, "math": 2}}  # the other domains' rows were excluded
    sel.save(run, "e")
    assert compare(run, ["e"], progress=False).to_dicts()[0]["mix_tv"] == pytest.approx(0.4)
