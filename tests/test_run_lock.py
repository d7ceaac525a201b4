"""Stage locks: a second process running the same stage on one run directory is refused, not interleaved."""

from __future__ import annotations

import fcntl

import pytest
from fixtures_pool import make_run

from curate.map import build_index, map_pool
from curate.run import RunBusyError
from curate.signals import score


@pytest.mark.parametrize(
    ("stage", "call"),
    [
        ("score", lambda run: score(run, ["mtld"], progress=False)),
        ("index", lambda run: build_index(run, k=3, progress=False)),
        ("map", lambda run: map_pool(run, n_clusters=3, target_cells=6, progress=False)),
    ],
)
def test_a_busy_stage_is_refused_then_runs_once_free(tmp_path, stage, call) -> None:
    run = make_run(tmp_path / "run", n=24)
    with open(run.root / f".{stage}.lock", "a") as fh:  # another process holding the stage (flock is per open file)
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(RunBusyError, match=f"another {stage} is writing this run directory"):
            call(run.root)
    assert call(run.root)  # released: the stage runs and returns its report


def test_other_stages_are_not_blocked(tmp_path) -> None:
    run = make_run(tmp_path / "run", n=24)
    with open(run.root / ".embed.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert score(run.root, ["mtld"], progress=False)["mtld"].exists()


def test_stale_temporary_files_are_removed_when_the_stage_resumes(tmp_path) -> None:
    run = make_run(tmp_path / "run", n=24)
    sig = run.root / "signals"
    sig.mkdir(exist_ok=True)
    stale = [sig / ".mtld.parquet.abc123.parquet.tmp", sig / "_lm" / "x" / ".shard-00000.npz.q1.tmp"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")  # what a killed run leaves (mkstemp creates the file first)
    other = run.root / "embeddings" / ".vectors.npy.zz.tmp"  # another stage's: left alone
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(b"")
    assert score(run.root, ["mtld"], progress=False)["mtld"].exists()
    assert not any(p.exists() for p in stale) and other.exists()
