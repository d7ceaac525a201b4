"""The stage protocol (curate.stage): one up-to-date check, lock and sidecar for every stage, and a recipe that
does no work at all when it is run again after it finished."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixtures_embed import tiny_model  # noqa: F401
from fixtures_lm import tiny_lm  # noqa: F401
from fixtures_pool import pool_rows, write_jsonl

from curate.run import RunBusyError, RunDir
from curate.stage import Stage, run_stage, stage
from index.io import read_json


def _counting_stage(calls: list, **over) -> Stage:
    def work(rd: RunDir) -> int:
        calls.append(1)
        (rd.root / "out.txt").write_text(str(len(calls)))
        return len(calls)

    return Stage(**{"name": "demo", "run": work, "params": {"a": 1}, "inputs": ["in.txt"], "outputs": ["out.txt"],
                    "load": lambda rd: int((rd.root / "out.txt").read_text()), **over})


def _bump(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_run_stage_skips_current_work_and_reruns_on_each_kind_of_change(tmp_path):
    rd = RunDir(tmp_path)
    (tmp_path / "in.txt").write_text("x")
    calls: list = []
    first = run_stage(_counting_stage(calls), rd)
    assert (first.value, first.skipped, len(calls)) == (1, False, 1)
    again = run_stage(_counting_stage(calls), rd)
    assert (again.value, again.skipped, len(calls)) == (1, True, 1)  # loaded, not run
    side = read_json(rd.stage_path("demo"))
    assert side["key"]["params"] == {"a": 1} and set(side["outputs"]) == {"out.txt"} and side["seconds"] >= 0

    assert not run_stage(_counting_stage(calls, params={"a": 2}), rd).skipped  # a parameter
    _bump(tmp_path / "in.txt")
    assert not run_stage(_counting_stage(calls, params={"a": 2}), rd).skipped  # an input
    _bump(tmp_path / "out.txt")
    assert not run_stage(_counting_stage(calls, params={"a": 2}), rd).skipped  # an output touched by hand
    (tmp_path / "out.txt").unlink()
    assert not run_stage(_counting_stage(calls, params={"a": 2}), rd).skipped  # an output gone
    assert run_stage(_counting_stage(calls, params={"a": 2}), rd).skipped
    assert not run_stage(_counting_stage(calls, params={"a": 2}), rd, force=True).skipped
    assert len(calls) == 6


def test_a_stage_that_updates_its_own_side_inputs_is_current_next_time_but_not_after_a_foreign_change(tmp_path):
    rd = RunDir(tmp_path)
    (tmp_path / "records").mkdir()
    calls: list = []

    def work(r: RunDir) -> None:
        calls.append(1)
        (r.root / "records" / "seen.json").write_text(str(len(calls)))
        (r.root / "out.txt").write_text("done")

    own = Stage("s", work, inputs=["records"], outputs=["out.txt"], writes_inputs=["records"])
    run_stage(own, rd)
    assert run_stage(own, rd).skipped and len(calls) == 1
    foreign = Stage("t", work, inputs=["records", "other.txt"], outputs=["out.txt"])
    (tmp_path / "other.txt").write_text("a")
    run_stage(foreign, rd)  # it writes records/, which it does not declare: the key read before is kept
    assert not run_stage(foreign, rd).skipped and len(calls) == 3


def test_run_stage_holds_the_run_lock(tmp_path):
    import fcntl

    rd = RunDir(tmp_path)
    with open(tmp_path / ".demo.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(RunBusyError, match="another demo is writing"):
            run_stage(_counting_stage([]), rd)


def test_the_stage_decorator_keys_on_every_argument_with_defaults_and_not_on_progress(tmp_path):
    calls = []

    @stage(lambda a: f"thing-{a['name']}", inputs=lambda run, a: [], outputs=lambda run, a: [f"{a['name']}.txt"],
           load=lambda run, a: "stored")
    def thing(run, name: str, *, size: int = 3, progress: bool = True, **extra) -> str:
        calls.append((size, extra))
        (Path(run) / f"{name}.txt").write_text("x")
        return "fresh"

    assert thing(tmp_path, "a") == "fresh"
    assert thing(tmp_path, "a", size=3, progress=False) == "stored"  # the default spelled out; progress ignored
    assert thing(tmp_path, "a", colour="red") == "fresh"  # **extra enters the key
    res = thing.run_stage(tmp_path, "a", colour="red")
    assert res.skipped and res.stage == "thing-a" and res.key["params"]["colour"] == "red"
    assert len(calls) == 2
    # `force` reruns any stage, also one whose function has no `force` of its own (it is not passed on)
    forced = thing.run_stage(tmp_path, "a", colour="red", force=True)
    assert not forced.skipped and len(calls) == 3 and calls[-1] == (3, {"colour": "red"})


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_finished_recipe_run_again_does_no_work_in_any_stage(tmp_path, tiny_model, tiny_lm):  # noqa: F811
    """ingest -> embed -> index -> map -> ILA's reference model -> score (heuristic and LM) -> select (five
    selectors) -> export -> train -> compare -> report; the second run skips every stage and rewrites no file."""
    from curate.recipe import Recipe, run_recipe

    data = write_jsonl(tmp_path / "pool.jsonl", [{"messages": r["messages"], "domain": r["domain"] or "misc"}
                                                 for r in pool_rows(60)])
    names = ["random", "balanced-random", "k-center", "deita", "ila"]
    recipe = tmp_path / "r.yaml"
    train = "max_steps: 2, batch_tokens: 256, max_length: 64, progress: false"
    recipe.write_text(f"""run: {tmp_path / "run"}
seed: 0
stages:
  - ingest: {{inputs: [{data}]}}
  - embed: {{model: {tiny_model}, progress: false}}
  - index: {{k: 5, progress: false}}
  - map: {{n_clusters: 4, progress: false}}
  - reference: {{n: 12, model: {tiny_lm}, lora: false, {train}}}
  - score: {{names: [tokens, mtld, knn_novelty], progress: false}}
  - score: {{names: [loss, ifd], model: {tiny_lm}, max_length: 64, progress: false}}
  - select: {{method: random, budget: 10}}
  - select: {{method: balanced-random, budget: 10}}
  - select: {{method: k-center, budget: 10}}
  - select: {{method: deita, budget: 10, signal: ifd, max_ifd: null}}
  - select: {{method: ila, budget: 10, signal: ifd, max_ifd: null}}
  - export: {{selection: ila}}
  - train: {{selection: ila, model: {tiny_lm}, {train}}}
  - compare: {{names: [{", ".join(names)}]}}
  - report: {{progress: false}}
""")
    first = run_recipe(Recipe.load(recipe), log=lambda s: None)
    assert not any(r.skipped for _, r in first)
    before = _tree(tmp_path / "run")
    second = run_recipe(Recipe.load(recipe), log=lambda s: None)
    assert [n for n, r in second if not r.skipped] == []
    assert _tree(tmp_path / "run") == before  # nothing rewritten, sidecars included
    assert [r.value.ids for n, r in second if n == "select"] == [r.value.ids for n, r in first if n == "select"]
    trained = [(r.value.out, r.value.metrics) for n, r in first + second if n in ("train", "reference")]
    assert trained[:2] == trained[2:] and trained[1][0] == tmp_path / "run" / "train" / "ila"
    assert second[-1][1].value == first[-1][1].value == tmp_path / "run" / "report.html"
