"""Recipe parsing and stage dispatch: errors name the file, stage and parameter."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from curate import recipe as rc
from curate.cli import _parse_params, app


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_load_parses_stages_seed_and_run(tmp_path):
    p = _write(tmp_path, "run: out\nseed: 7\nstages:\n  - embed: {dtype: bfloat16}\n  - index\n")
    r = rc.Recipe.load(p)
    assert r.run.name == "out" and r.seed == 7
    assert r.stages == [("embed", {"dtype": "bfloat16"}), ("index", {})]
    assert rc.Recipe.load(p, run=tmp_path / "other").run == tmp_path / "other"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("run: x\nstages:\n  - fly: {}\n", "stage 1: unknown stage 'fly'"),
        ("run: x\nstages:\n  - embed: 3\n", "parameters must be a mapping"),
        ("stages:\n  - embed: {}\n", "no 'run' directory"),
        ("run: x\n", "expected a mapping with a 'stages' list"),
        ("run: [x\n", "not valid YAML"),
        # a misspelt parameter of a late stage fails at load, before the stages before it run
        ("run: x\nstages:\n  - embed: {}\n  - export: {selection: s, layot: alpaca}\n",
         "stage 2: stage 'export' has no parameter 'layot'; it takes: selection"),
    ],
)
def test_load_errors_are_precise(tmp_path, text, message):
    with pytest.raises(rc.RecipeError, match=message):
        rc.Recipe.load(_write(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(rc.RecipeError, match="does not exist"):
        rc.Recipe.load(tmp_path / "nope.yaml")


def test_call_stage_rejects_unknown_parameter(tmp_path, monkeypatch):
    from curate.stage import stage

    calls = []

    @stage("fake", inputs=lambda run, a: [], outputs=lambda run, a: [])
    def fake(run, *, k=1, seed=0):
        calls.append((run, k, seed))
        return k

    monkeypatch.setitem(rc.STAGES, "fake", "x:y")
    monkeypatch.setattr(rc, "stage_function", lambda name: fake)
    res = rc.call_stage("fake", tmp_path, {"k": 3}, seed=5)
    assert (res.value, res.skipped, calls) == (3, False, [(tmp_path, 3, 5)])
    assert rc.call_stage("fake", tmp_path, {"k": 3}, seed=5).skipped and len(calls) == 1
    with pytest.raises(rc.RecipeError, match="has no parameter 'kk'; it takes: k, seed"):
        rc.call_stage("fake", tmp_path, {"kk": 3})


def test_parse_params_yaml_values():
    assert _parse_params(["tau=0.9", "cells=[1, 2]", "order=best", "top-k=5"]) == {
        "tau": 0.9, "cells": [1, 2], "order": "best", "top_k": 5,
    }


def test_cli_help_lists_commands():
    out = CliRunner().invoke(app, ["--help"]).output
    for cmd in ("ingest", "embed", "index", "map", "score", "select", "export", "compare", "run"):
        assert cmd in out


def test_cli_models_lists_bundled_models():
    out = CliRunner().invoke(app, ["models"]).output
    assert "smollm2" in out and "embedding default" in out


def test_cli_reports_missing_pool_clearly(tmp_path):
    result = CliRunner().invoke(app, ["embed", "--run", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "curate ingest" in result.output


def test_recipe_executor_goes_to_the_stages_that_take_one(tmp_path, monkeypatch):
    p = _write(tmp_path, f"run: {tmp_path / 'out'}\nexecutor: ray\nexecutor_options: {{workers: 3}}\nstages:\n"
                         "  - fake\n  - plain\n  - fake: {executor: local, n: 2}\n")
    monkeypatch.setitem(rc.STAGES, "fake", "x:y")
    monkeypatch.setitem(rc.STAGES, "plain", "x:z")
    from curate.stage import stage

    calls = []

    @stage("fake", inputs=lambda run, a: [], outputs=lambda run, a: [])
    def fake(run, *, n=1, executor=None, executor_options=None):
        calls.append((executor, executor_options))

    @stage("plain", inputs=lambda run, a: [], outputs=lambda run, a: [])
    def plain(run, *, k=1):
        calls.append(k)

    monkeypatch.setattr(rc, "stage_function", lambda name: {"fake": fake, "plain": plain}[name])
    r = rc.Recipe.load(p)  # checks every stage's parameters against its function
    assert r.executor == {"executor": "ray", "executor_options": {"workers": 3}}
    rc.run_recipe(r, log=lambda m: None)
    assert calls == [("ray", {"workers": 3}), 1, ("local", {"workers": 3})]


def test_a_recipe_is_refused_at_load_for_a_missing_or_misspelt_parameter_of_any_stage(tmp_path):
    """Checked before the first stage runs: required parameters, and the names **params reach (the selector's
    own, the signals', the training module's) instead of a TypeError half-way through the recipe."""
    cases = [("select: {method: random, budgt: 10}", "has no parameter 'budgt'.*did you mean 'budget'"),
             ("select: {method: random}", "needs parameter 'budget'"),
             ("export: {}", "needs parameter 'selection'"),
             ("select: {method: random, budget: 10, sede: 1}", "has no parameter 'sede'"),
             ("score: {names: [mtld], n_vall: 3}", "has no parameter 'n_vall'"),
             ("reference: {n: 12, epochz: 1}", "has no parameter 'epochz'")]
    for i, (line, message) in enumerate(cases):
        f = tmp_path / f"r{i}.yaml"
        f.write_text(f"run: {tmp_path / 'run'}\nstages:\n  - {line}\n")
        with pytest.raises(rc.RecipeError, match=message):
            rc.Recipe.load(f)
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"run: {tmp_path / 'run'}\nstages:\n  - select: {{method: deita, budget: 10, signal: ifd, max_ifd: null}}\n")
    rc.check_params("map", {"force": True})  # every stage takes force
    assert rc.Recipe.load(ok).stages == [("select", {"method": "deita", "budget": 10, "signal": "ifd", "max_ifd": None})]
