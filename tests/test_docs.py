"""Docs match the code: every registered selector and signal is described in docs/methods.md,
and every stage the recipes know is a real function."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from curate.recipe import STAGES, Recipe, stage_function
from curate.select import SELECTORS
from curate.signals import SIGNALS

ROOT = Path(__file__).resolve().parents[1]
METHODS = (ROOT / "docs" / "methods.md").read_text()


@pytest.mark.parametrize("name", SELECTORS.names())
def test_every_selector_is_documented(name):
    assert f"`{name}`" in METHODS


@pytest.mark.parametrize("name", SIGNALS.names())
def test_every_signal_is_documented(name):
    assert f"`{name}`" in METHODS


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_is_a_function_taking_run(stage):
    assert "run" in inspect.signature(stage_function(stage)).parameters


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_parameters_exist(path):
    """Each stage parameter in every bundled recipe is a real keyword of its stage (or a selector's, a signal's,
    or training's for the `reference` stage)."""
    recipe = Recipe.load(path)
    for name, params in recipe.stages:
        sig = dict(inspect.signature(stage_function(name)).parameters)
        if name == "reference":
            sig.update(inspect.signature(stage_function("train")).parameters)
        extra = {k for k in params if k not in sig}
        if name == "select":
            extra -= set(inspect.signature(SELECTORS.get(params["method"]).__init__).parameters)
        if name == "score":
            extra -= {p for n in params["names"] for p in SIGNALS.get(n).params}
        assert not extra, f"{path.name} stage {name}: unknown parameters {extra}"
