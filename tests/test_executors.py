"""The executor seam: the embedding stage on a local Ray with 2 workers gives the in-process vectors; a worker
killed mid-stage leaves no corrupt shard and the re-run computes only the missing shards."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from curate.errors import ParameterError
from curate.executors import get_executor
from index.embed import EmbedJob, Encoder, embed_to_shards, load_shards
from index.io import missing_shards, run_job, shard_name

try:
    from fixtures_embed import tiny_model  # noqa: F401
    from fixtures_lm import tiny_lm, tiny_lm_ref  # noqa: F401
    from signals_helpers import make_pool
except ImportError:
    from tests.fixtures_embed import tiny_model  # noqa: F401
    from tests.fixtures_lm import tiny_lm, tiny_lm_ref  # noqa: F401
    from tests.signals_helpers import make_pool

pytest.importorskip("ray")
TEXTS = [f"row {i}: " + " ".join(["the cat sat on the mat", "add two numbers", "python code"][i % 3:]) * (1 + i % 4)
         for i in range(40)]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) for the module; shut down afterwards."""
    import ray

    tests = str(Path(__file__).parent)  # so the workers can unpickle the jobs defined here
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}})
    yield ray
    ray.shutdown()


def test_get_executor_names():
    assert get_executor(None) is run_job and get_executor("local") is run_job
    ex = get_executor("ray:auto", {"workers": 3})
    assert ex.address == "auto" and ex.workers == 3
    with pytest.raises(ParameterError, match="'local', 'ray'"):
        get_executor("dask")
    with pytest.raises(ParameterError, match="need executor='ray'"):
        get_executor("local", {"workers": 2})
    with pytest.raises(ParameterError, match="executor options"):
        get_executor("ray", {"wrokers": 2})


def test_embed_job_pickles_without_the_loaded_model(tiny_model: Path):
    import pickle

    enc = Encoder.load(tiny_model, device="cpu")
    job = EmbedJob(TEXTS, len(TEXTS), 16, str(tiny_model), "cpu", "float32", 8, None, enc.dim, local=enc)
    assert job.setup() is enc
    clone = pickle.loads(pickle.dumps(job))
    assert clone.local is None and clone.texts == TEXTS


def test_ray_embedding_equals_in_process(tiny_model: Path, tmp_path: Path, ray_local):
    from curate.executors.ray import RayExecutor

    enc = Encoder.load(tiny_model, device="cpu", batch_size=8)
    local = load_shards(embed_to_shards(TEXTS, tmp_path / "local", enc, shard_size=7, progress=False))
    ex = RayExecutor(workers=2)
    remote = load_shards(embed_to_shards(TEXTS, tmp_path / "ray", enc, shard_size=7, progress=False, executor=ex))
    assert len(set(ex.actor_pids)) == 2 and os.getpid() not in ex.actor_pids  # really two other processes
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-6)
    assert remote.shape == (40, enc.dim)


class DieOnce(EmbedJob):
    """An embedding job whose worker process dies (SIGKILL-like) on shard 3 the first time it reaches it."""

    marker: str = ""

    def run(self, state, i, tmp, progress=None):
        if i == 3 and not Path(self.marker).exists():
            Path(self.marker).write_text("died")
            with open(tmp, "wb") as fh:  # a half-written shard under the temporary name
                fh.write(b"\x93NUMPY partial")
            os._exit(1)
        Path(self.marker + f".{i}").write_text("computed")
        return super().run(state, i, tmp, progress)


def test_killed_worker_leaves_no_corrupt_shard_and_rerun_fills_the_gap(tiny_model: Path, tmp_path: Path, ray_local):
    from curate.executors.ray import ExecutorError, RayExecutor

    enc = Encoder.load(tiny_model, device="cpu", batch_size=8)
    out = tmp_path / "shards"
    job = DieOnce(TEXTS, 40, 5, str(tiny_model), "cpu", "float32", 8, None, enc.dim)
    job.marker = str(tmp_path / "marker")
    with pytest.raises(ExecutorError, match="shard 3 .*re-run the stage"):
        RayExecutor(workers=2, in_flight=1, retries=0)(job, out, 8, "npy")
    assert 3 in missing_shards(out, 8, "npy")
    for f in out.glob("shard-*.npy"):  # every shard under a final name is whole
        assert np.load(f).shape[1] == enc.dim
    before = set(range(8)) - set(missing_shards(out, 8, "npy"))
    for i in range(8):
        Path(job.marker + f".{i}").unlink(missing_ok=True)
    done = RayExecutor(workers=2, retries=0)(job, out, 8, "npy")
    assert sorted(done) == sorted(set(range(8)) - before)  # only the missing ones, each once
    assert {int(p.suffix[1:]) for p in tmp_path.glob("marker.*")} == set(done)
    assert not list(out.glob(".shard-*"))  # the dead worker's temporary file is gone
    want = np.concatenate([enc.encode(TEXTS[i * 5:(i + 1) * 5]) for i in range(8)])
    got = np.concatenate([np.load(out / shard_name(i, "npy")) for i in range(8)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_retry_restarts_a_dead_worker(tiny_model: Path, tmp_path: Path, ray_local):
    from curate.executors.ray import RayExecutor

    enc = Encoder.load(tiny_model, device="cpu", batch_size=8)
    job = DieOnce(TEXTS, 40, 5, str(tiny_model), "cpu", "float32", 8, None, enc.dim)
    job.marker = str(tmp_path / "marker")
    done = RayExecutor(workers=2, retries=1)(job, tmp_path / "shards", 8, "npy")
    assert sorted(done) == list(range(8)) and not missing_shards(tmp_path / "shards", 8, "npy")


def test_cli_embed_on_ray_equals_local(tiny_model: Path, tmp_path: Path, ray_local):
    """`curate embed --executor ray` writes the vectors the local stage writes (the pool read shard by shard
    from the run by each worker, across the pool's two parquet files)."""
    from typer.testing import CliRunner

    from curate.cli import app
    from curate.embed import embed, load_vectors

    try:
        from test_embed import make_run
    except ImportError:
        from tests.test_embed import make_run
    prompts, responses = TEXTS[:13], [*TEXTS[13:25], None]
    local = make_run(tmp_path / "local", prompts, responses)
    embed(local, model=str(tiny_model), device="cpu", progress=False)
    remote = make_run(tmp_path / "remote", prompts, responses)
    res = CliRunner().invoke(app, ["embed", "--run", str(remote), "--model", str(tiny_model), "--device", "cpu",
                                   "--executor", "ray", "--executor-opt", "workers=2"])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(load_vectors(remote), load_vectors(local), rtol=0, atol=1e-6)
    bad = CliRunner().invoke(app, ["embed", "--run", str(remote), "--executor", "spark"])
    assert bad.exit_code == 2 and "executor must be" in bad.output


def test_lm_scoring_on_ray_equals_in_process(tiny_lm: Path, tiny_lm_ref: Path, tmp_path: Path, ray_local):  # noqa: F811
    """loss / IFD / relative depth with the LM passes on 2 Ray workers (3 shards of rows each) equal the
    in-process scores; a re-run finds every shard done and computes nothing."""
    from curate.signals import load_signal, score

    names = ["loss", "ifd", "depth"]
    kw = dict(model=str(tiny_lm), base_model=str(tiny_lm), ref_model=str(tiny_lm_ref), progress=False, shard_rows=3)
    local, remote = make_pool(tmp_path / "local"), make_pool(tmp_path / "remote")
    score(local, names, **kw)
    score(remote, names, executor="ray", executor_options={"workers": 2}, **kw)
    for name in names:
        a, b = load_signal(local, name), load_signal(remote, name)
        assert np.isfinite(a).sum() >= len(a) - 1  # real scores, not a column of NaN
        np.testing.assert_allclose(b, a, rtol=1e-5, equal_nan=True)
    shards = sorted((tmp_path / "remote" / "signals" / "_lm").rglob("shard-*.parquet"))
    assert len(shards) >= 3 * 3  # three LM passes (cond, alone, reference cond), several shards each
    stamps = [p.stat().st_mtime_ns for p in shards]
    score(remote, ["loss"], executor="ray", **{**kw, "score_eot": True})  # a new signal key, same LM pass
    assert [p.stat().st_mtime_ns for p in shards] == stamps
