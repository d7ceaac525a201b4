"""Command-line parameters the user can get wrong: `-p` values, reserved keys, a parameter given twice, paths of
the wrong kind, selection names, `curate run`'s executor options. Each is one `error:` line, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_cli import invoke, one_error_line
from fixtures_pool import make_run

ROOT = Path(__file__).resolve().parents[1]


def _pool(tmp_path: Path, n: int = 20) -> Path:
    src = tmp_path / "pool.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"question {i}", "response": f"answer {i}"}) + "\n"
                           for i in range(n)))
    return src


def test_a_param_value_that_is_not_yaml_names_the_item(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    line = one_error_line(*invoke("select", "--run", str(run.root), "-m", "random", "-b", "5", "-p", "tau=[a"))
    assert "-p 'tau=[a': the value is not valid YAML" in line
    line = one_error_line(*invoke("embed", "--run", str(run.root), "--executor", "ray",
                                  "--executor-opt", "workers={"))
    assert "--executor-opt 'workers={': the value is not valid YAML" in line


@pytest.mark.parametrize(("item", "message"), [("run=r2", "use --run"), ("stage=x", "'stage' is not a parameter")])
def test_run_and_stage_are_not_parameters(tmp_path, item, message):
    run = make_run(tmp_path / "run", n=24)
    line = one_error_line(*invoke("select", "--run", str(run.root), "-m", "random", "-b", "5", "-p", item))
    assert f"-p {item.split('=')[0]}=..." in line and message in line
    assert not (tmp_path / "r2").exists()


def test_map_and_mix_ideal_reject_a_parameter_given_twice(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    line = one_error_line(*invoke("map", "--run", str(run.root), "--projection", "pca", "-p", "projection=umap"))
    assert "'projection' is given twice: as its own option and as -p projection=..." in line
    line = one_error_line(*invoke("mix", "ideal", "--run", str(run.root), "-s", "x", "--reference",
                                  str(tmp_path / "ref.jsonl"), "--seed", "1", "-p", "seed=2"))
    assert "'seed' is given twice" in line
    line = one_error_line(*invoke("mix", "ideal", "--run", str(run.root), "-s", "x", "--reference",
                                  str(tmp_path / "ref.jsonl"), "-p", "selection=y"))
    assert "'selection' is given twice" in line


def test_train_rejects_its_own_arguments_as_params(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    line = one_error_line(*invoke("train", "--run", str(run.root), "--selection", "a", "-p", "selection=b"))
    assert "'selection' is given twice" in line
    line = one_error_line(*invoke("train", "--run", str(run.root), "--reference", "3", "-p", "n=4"))
    assert "-p n=...: the reference model's row count is --reference N" in line


def test_a_run_path_that_is_a_file_and_a_recipe_that_is_a_directory(tmp_path):
    src = _pool(tmp_path)
    line = one_error_line(*invoke("ingest", str(src), "--run", str(src)))
    assert f"--run {src}: is a file, not a run directory" in line
    line = one_error_line(*invoke("run", str(tmp_path)))
    assert f"recipe {tmp_path} is a directory, not a recipe file" in line
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run: {src}\nstages:\n  - ingest: {{inputs: [{src}]}}\n")
    line = one_error_line(*invoke("run", str(recipe)))
    assert f"recipe {recipe}: run {src}: is a file, not a run directory" in line
    line = one_error_line(*invoke("run", str(recipe), "--run", str(src)))
    assert f"--run {src}: is a file" in line


@pytest.mark.parametrize("name", ["a/b", "..", ""])
def test_a_selection_name_with_a_path_separator_is_refused(tmp_path, name):
    run = make_run(tmp_path / "run", n=24)
    line = one_error_line(*invoke("select", "--run", str(run.root), "-m", "random", "-b", "5", "--name", name))
    assert f"--name {name!r}: a name cannot be empty, '.', '..' or contain a path separator" in line
    assert not list((run.root / "selections").glob("**/*.parquet"))


def test_run_executor_options_need_an_executor_and_merge_over_the_recipes(tmp_path, monkeypatch):
    import curate.recipe as rc

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run: {tmp_path / 'out'}\nexecutor: ray\nexecutor_options: {{workers: 3}}\n"
                      "stages:\n  - index\n")
    seen = []
    monkeypatch.setattr(rc, "run_recipe", lambda rec, log: seen.append(rec.executor) or [])
    line = one_error_line(*invoke("run", str(recipe), "--executor-opt", "workers=2"))
    assert "--executor-opt needs --executor" in line and not seen
    for args, expected in [
        ((), {"executor": "ray", "executor_options": {"workers": 3}}),
        (("--executor", "ray:auto"), {"executor": "ray:auto", "executor_options": {"workers": 3}}),
        (("--executor", "ray", "--executor-opt", "in_flight=1", "--executor-opt", "workers=5"),
         {"executor": "ray", "executor_options": {"workers": 5, "in_flight": 1}}),
        (("--executor", "local"), {"executor": "local", "executor_options": None}),
    ]:
        result, out = invoke("run", str(recipe), *args)
        assert result.exit_code == 0, out
        assert seen.pop() == expected


def test_force_param_reruns_a_current_selection(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    side = run.root / "stages" / "select-random.json"
    assert invoke("select", "--run", str(run.root), "-m", "random", "-b", "5")[0].exit_code == 0
    first = json.loads(side.read_text())["finished"], side.stat().st_mtime_ns
    assert invoke("select", "--run", str(run.root), "-m", "random", "-b", "5")[0].exit_code == 0
    assert (json.loads(side.read_text())["finished"], side.stat().st_mtime_ns) == first  # current: not rerun
    assert invoke("select", "--run", str(run.root), "-m", "random", "-b", "5", "-p", "force=true")[0].exit_code == 0
    assert side.stat().st_mtime_ns != first[1]


def test_readme_installs_the_ray_extra_into_the_local_environment():
    readme, makefile = (ROOT / "README.md").read_text(), (ROOT / "Makefile").read_text()
    assert "pip install 'curate[ray]'" not in readme
    assert '.venv/bin/pip install -c constraints.txt -e ".[ray]"' in readme
    assert "$(PIP) install -q -c constraints.txt -e" in makefile and "ray]" in makefile
