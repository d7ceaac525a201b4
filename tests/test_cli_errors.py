"""User errors on the command line: one `error:` line naming the file or parameter and what to do, exit code 2,
no traceback (unless --debug); checks run before expensive work."""

from __future__ import annotations

import fcntl
import json

import numpy as np
import pytest
from fixtures_cli import invoke, one_error_line
from fixtures_pool import make_run
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import CurateError
from curate.select import load_selection


def test_busy_stage_is_one_line(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    with open(run.root / ".score.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        line = one_error_line(*invoke("score", "--run", str(run.root), "--signal", "mtld"))
    assert "another score is writing this run directory" in line and "use another --run" in line


def test_deita_without_signal_names_the_parameter_and_the_command(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    line = one_error_line(*invoke("select", "--run", str(run.root), "--method", "deita", "--budget", "5"))
    assert "deita needs signal=NAME" in line and "curate score --run RUN --signal ifd --model smollm2" in line


def test_ila_without_depth_names_every_flag(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    line = one_error_line(*invoke("select", "--run", str(run.root), "--method", "ila", "--budget", "5"))
    assert "signal 'relative_depth' is missing" in line
    assert f"curate score --run {run.root} --signal relative_depth --base-model DIR --ref-model DIR" in line


def test_stale_embeddings_after_reingest(tmp_path):
    run = make_run(tmp_path / "run", n=24)  # has embeddings of 24 rows
    src = tmp_path / "new.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"p{i}", "response": "r"}) + "\n" for i in range(5)))
    assert invoke("ingest", str(src), "--run", str(run.root))[0].exit_code == 0
    line = one_error_line(*invoke("select", "--run", str(run.root), "--method", "k-center", "--budget", "3"))
    assert "it was made before the pool was re-ingested" in line or "changed since embedding" in line


def test_balanced_random_without_domains_or_map(tmp_path):
    src = tmp_path / "plain.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"p{i}", "response": "r"}) + "\n" for i in range(5)))
    run = tmp_path / "run"
    assert invoke("ingest", str(src), "--run", str(run))[0].exit_code == 0
    line = one_error_line(*invoke("select", "--run", str(run), "--method", "balanced-random", "--budget", "3"))
    assert "no row of the pool has a domain" in line and f"curate map --run {run}" in line


def test_daar_without_seeds_fails_before_features(tmp_path):
    src = tmp_path / "plain.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"p{i}", "response": "r"}) + "\n" for i in range(5)))
    run = tmp_path / "run"
    invoke("ingest", str(src), "--run", str(run))
    line = one_error_line(*invoke("select", "--run", str(run), "--method", "daar", "--budget", "3",
                                  "-p", "cluster_features=embeddings", "-p", "probe_features=embeddings"))  # fmt: skip
    assert "daar: no seeds" in line and "seeds=PATH.jsonl" in line
    assert not (run / "embeddings").exists()  # nothing was computed


def test_param_given_twice_is_one_error_and_once_is_an_option(tmp_path):
    """`-p KEY=VALUE` may set a named option the user left out (the README's `-p executor=...`), not repeat one."""
    run = make_run(tmp_path / "run", n=24)
    line = one_error_line(*invoke("select", "--run", str(run.root), "-m", "random", "-b", "5", "--seed", "1",
                                  "-p", "seed=2"))
    assert "'seed' is given twice: as its own option and as -p seed=..." in line
    ids = {}
    for name, args in (("a", ["--seed", "3"]), ("b", ["-p", "seed=3", "-p", "executor=local"])):
        result, out = invoke("select", "--run", str(run.root), "-m", "random", "-b", "5", "--name", name, *args)
        assert result.exit_code == 0, out
        ids[name] = list(load_selection(run.root, name).ids)
    assert ids["a"] == ids["b"]


def test_unknown_signal_is_named_as_unknown_not_as_one_to_compute(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    line = one_error_line(*invoke("select", "--run", str(run.root), "-m", "top-signal", "-b", "5",
                                  "-p", "signal=nosuch"))
    assert "no signal 'nosuch'" in line and "no signal of that name is registered" in line
    assert "curate score" not in line


def test_budget_zero_is_an_error_and_a_short_pool_is_noted(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    for budget in ("0", "0%", "0tok"):
        line = one_error_line(*invoke("select", "--run", str(run.root), "-m", "random", "-b", budget))
        assert "selects nothing" in line and "give a positive budget" in line
    result, out = invoke("select", "--run", str(run.root), "-m", "random", "-b", "500")
    assert result.exit_code == 0 and "selected 24 rows" in out
    assert "note: budget 500 rows, 24 selected: no more rows were eligible" in out


def test_ingest_with_no_usable_row_fails_naming_the_quarantine(tmp_path):
    src = tmp_path / "qa.csv"
    src.write_text("question,answer\nwhat is 2+2?,4\nwhat is 3+3?,6\n")
    line = one_error_line(*invoke("ingest", str(src), "--run", str(tmp_path / "r")))
    assert "no usable rows: all 2 rows read were quarantined" in line and "keys: question, answer" in line
    assert f"see {tmp_path / 'r' / 'quarantine.parquet'}" in line and "--map prompt=COLUMN" in line
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    line = one_error_line(*invoke("ingest", str(empty), "--run", str(tmp_path / "r2")))
    assert f"no rows read from {empty}" in line
    result, out = invoke("ingest", str(src), "--run", str(tmp_path / "r3"), "--map", "prompt=question",
                         "--map", "response=answer")
    assert result.exit_code == 0 and "unique 2" in out


def test_index_k_past_the_pool_is_clamped_with_a_note(tmp_path):
    from curate.map import build_index

    run = make_run(tmp_path / "run", n=6)
    info = build_index(run.root, k=10, progress=False)
    assert info["k"] == 5 and "k=10 asked for, 5 built" in info["note"]
    assert (np.load(run.root / "index" / "knn.npz")["neighbors"] >= 0).all()


def test_ingest_errors_and_debug(tmp_path):
    line = one_error_line(*invoke("ingest", str(tmp_path / "missing.jsonl"), "--run", str(tmp_path / "r")))
    assert "missing.jsonl: no such file or directory" in line
    line = one_error_line(*invoke("ingest", str(tmp_path), "--run", str(tmp_path / "r"), "--role-map", "usr"))
    assert "--role-map: expected FROM=TO, got 'usr'" in line
    line = one_error_line(*invoke("ingest", str(tmp_path), "--run", str(tmp_path / "r"), "--map", "prompt"))
    assert "--map: expected FIELD=COLUMN, got 'prompt'" in line
    result, _ = invoke("select", "--run", str(tmp_path / "r"), "--method", "random", "--budget", "1", "--seed", "-1")
    assert result.exit_code == 2 and "--seed" in result.output
    bad = tmp_path / "obj.json"
    bad.write_text('{"data": [{"prompt": "p", "response": "r"}]}')
    line = one_error_line(*invoke("ingest", str(bad), "--run", str(tmp_path / "r")))
    assert "obj.json: holds one JSON object" in line and "--records KEY" in line
    result, out = invoke("ingest", str(bad), "--run", str(tmp_path / "r"), "--records", "data")
    assert result.exit_code == 0 and "1 rows read" in out
    result = CliRunner().invoke(app, ["--debug", "ingest", str(tmp_path / "missing.jsonl"), "--run", str(tmp_path)])
    assert isinstance(result.exception, CurateError)  # --debug lets the exception (and its traceback) through


@pytest.mark.parametrize("hint", [None, "do this"])
def test_error_hint_is_part_of_the_message(hint):
    e = CurateError("bad thing", hint)
    assert str(e) == ("bad thing" if hint is None else "bad thing (do this)")


def test_score_prints_one_line_per_signal(tmp_path):
    run = make_run(tmp_path / "run", n=24)
    result, out = invoke("score", "--run", str(run.root), "--signal", "mtld", "--signal", "ttr")
    assert result.exit_code == 0, out
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("signal ")]
    assert len(lines) == 2 and lines[0].split()[1] == "mtld" and lines[0].endswith("mtld.parquet")


def test_a_run_directory_that_does_not_exist_is_named_as_such(tmp_path):
    for args in (["select", "--method", "random", "--budget", "1"], ["export", "--selection", "random"],
                 ["score", "--signal", "tokens"]):
        line = one_error_line(*invoke(*args, "--run", str(tmp_path / "nope")))
        assert f"run directory {tmp_path / 'nope'} does not exist" in line and "check --run" in line
    assert not (tmp_path / "nope").exists()  # nothing was created on the way


def test_a_failed_first_ingest_leaves_no_run_directory(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "a b", "response": "c d"}) + "\n")
    line = one_error_line(*invoke("ingest", str(data), "--run", str(tmp_path / "new"), "--layout", "bogus"))
    assert "unknown layout 'bogus'" in line and not (tmp_path / "new").exists()
    result, _ = invoke("ingest", str(data), "--run", str(tmp_path / "r"))
    assert result.exit_code == 0
    one_error_line(*invoke("ingest", str(data), "--run", str(tmp_path / "r"), "--layout", "bogus"))
    assert (tmp_path / "r" / "pool").is_dir()  # an existing run is left as it was
