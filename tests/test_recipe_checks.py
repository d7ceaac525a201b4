"""A recipe's top-level keys, its stages' parameters (misspelt ones named before missing ones; `run` is the
recipe's), and the select stage's key, which does not depend on how the budget is written."""

from __future__ import annotations

import pytest
from fixtures_pool import make_run

from curate import recipe as rc
from curate.run import RunDir
from curate.select import select


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("run: x\nseed:\nstages:\n  - index\n", "key 'seed' must be an integer, got nothing"),
        ("run: x\nseed: abc\nstages:\n  - index\n", "key 'seed' must be an integer, got 'abc'"),
        ("run: x\nseed: true\nstages:\n  - index\n", "key 'seed' must be an integer, got True"),
        ("run: 5\nstages:\n  - index\n", "key 'run' must be a directory path, got 5"),
        ("run: x\nstages: {index: {}}\n", "key 'stages' must be a list of stages, got a dict"),
        ("run: x\nstages: index\n", "key 'stages' must be a list of stages, got a str"),
        ("run: x\nseeed: 3\nstages:\n  - index\n", r"unknown key 'seeed' \(did you mean 'seed'\?\)"),
        ("run: x\nexecuter: ray\nstages:\n  - index\n", r"unknown key 'executer' \(did you mean 'executor'\?\)"),
        ("run: x\nexecutor: [ray]\nstages:\n  - index\n", "key 'executor' must be local, ray or ray:ADDRESS"),
        ("run: x\nexecutor_options: 4\nstages:\n  - index\n", "key 'executor_options' must be a mapping"),
    ],
)
def test_top_level_keys_are_checked(tmp_path, text, message):
    p = _write(tmp_path, text)
    with pytest.raises(rc.RecipeError, match=f"recipe {p}: {message}"):
        rc.Recipe.load(p)


def test_a_recipe_that_is_a_directory(tmp_path):
    with pytest.raises(rc.RecipeError, match="is a directory, not a recipe file"):
        rc.Recipe.load(tmp_path)


def test_run_is_not_a_stage_parameter(tmp_path):
    p = _write(tmp_path, "run: x\nstages:\n  - select: {run: r9, method: random, budget: 5}\n")
    with pytest.raises(rc.RecipeError, match=r"stage 1: stage 'select': 'run' is not a stage parameter "
                                             r"\(set `run:` at the top level of the recipe"):
        rc.Recipe.load(p)
    with pytest.raises(rc.RecipeError, match="'run' is not a stage parameter"):
        rc.call_stage("select", RunDir(tmp_path / "run"), {"run": "r9", "method": "random", "budget": 5})


def test_a_misspelt_parameter_is_named_before_a_missing_one(tmp_path):
    p = _write(tmp_path, "run: x\nstages:\n  - select: {method: random, budgt: 5}\n")
    with pytest.raises(rc.RecipeError, match=r"stage 'select' has no parameter 'budgt'; it takes: .*"
                                             r"; did you mean 'budget'\?"):
        rc.Recipe.load(p)
    with pytest.raises(rc.RecipeError, match="stage 'export' has no parameter 'selektion'.*did you mean 'selection'"):
        rc.check_params("export", {"selektion": "a"})
    with pytest.raises(rc.RecipeError, match="stage 'export' needs parameter 'selection'"):
        rc.check_params("export", {})


@pytest.mark.parametrize(
    ("given", "canonical"),
    [(5, 5), ("5", 5), (5.0, 5), ("5 rows", 5), (0.2, 0.2), ("20%", 0.2), ("100%", "100%"),
     ("50000tok", "50000tok"), ("50000 tokens", "50000tok"), ("abc", "abc")],
)
def test_canonical_budget(given, canonical):
    got = rc.canonical_budget(given)
    assert got == canonical and type(got) is type(canonical)


def test_the_select_key_does_not_depend_on_how_the_budget_is_written(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    rd = RunDir(run.root)
    # keyed as an int, as a recipe's `budget: 5` always was: still current when the CLI passes "5"
    assert not select.run_stage(run=rd, method="random", budget=5).skipped
    assert rc.call_stage("select", rd, {"method": "random", "budget": "5"}).skipped
    assert rc.call_stage("select", rd, {"method": "random", "budget": 5.0}).skipped
    assert not rc.call_stage("select", rd, {"method": "random", "budget": "6"}).skipped
    assert not rc.call_stage("select", rd, {"method": "random", "budget": "20%", "name": "f"}).skipped
    assert rc.call_stage("select", rd, {"method": "random", "budget": 0.2, "name": "f"}).skipped
    res = rc.call_stage("select", rd, {"method": "random", "budget": "100%", "name": "all"})
    assert len(res.value.ids) == 24  # all of the pool, not one row
