"""The executor seam: the embedding stage, the LM scoring passes, the ICL proxy, RDS+'s features and the training
module's per-row passes (DPO reference log-probs, AutoMixAlign's specialist losses) on a local Ray with 2
workers give the in-process results; a worker killed mid-stage leaves no corrupt shard and the re-run computes
only the missing shards."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.errors import ParameterError
from curate.executors import get_executor
from index.embed import EmbedJob, Encoder, embed_to_shards, load_shards
from index.io import missing_shards, run_job, shard_name

try:
    from fixtures_embed import tiny_model  # noqa: F401
    from fixtures_lm import tiny_lm, tiny_lm_ref  # noqa: F401
    from fixtures_train import train_pool_run
    from signals_helpers import make_pool, write_validation
except ImportError:
    from tests.fixtures_embed import tiny_model  # noqa: F401
    from tests.fixtures_lm import tiny_lm, tiny_lm_ref  # noqa: F401
    from tests.fixtures_train import train_pool_run
    from tests.signals_helpers import make_pool, write_validation

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


def test_ray_asks_for_room_for_every_actor_and_says_when_the_cluster_has_none():
    """Local Ray is started with every actor's share rounded up (1 worker x 0.5 GPU needs a GPU); an actor no
    node can hold is an error, not a wait for ever."""
    from curate.executors.ray import ExecutorError, RayExecutor

    class FakeRay:
        def __init__(self, resources):
            self.resources, self.init_kw = resources, None

        def is_initialized(self):
            return self.init_kw is not None

        def init(self, address=None, **kw):
            self.init_kw = kw

        def cluster_resources(self):
            return self.resources

    ray = FakeRay({})
    RayExecutor(workers=1, cpus_per_worker=0.5, gpus_per_worker=0.5)._init(ray)
    assert (ray.init_kw["num_cpus"], ray.init_kw["num_gpus"]) == (1, 1)
    ray = FakeRay({})
    RayExecutor(workers=5, cpus_per_worker=0.5)._init(ray)
    assert (ray.init_kw["num_cpus"], ray.init_kw["num_gpus"]) == (3, 0)
    RayExecutor(workers=2, cpus_per_worker=1)._check_room(FakeRay({"CPU": 2.0}))
    with pytest.raises(ExecutorError, match="needs 1 GPU but the Ray cluster has 0"):
        RayExecutor(workers=2, gpus_per_worker=1)._check_room(FakeRay({"CPU": 2.0}))


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
    """An embedding job whose worker process dies (SIGKILL-like) on shard 3 the first time it reaches it, once
    shard 2 (handed out just before it, so on the other actor or already done) has started; shard 2 is slow."""

    marker: str = ""

    def run(self, state, i, tmp, progress=None):
        if i == 2:
            Path(self.marker + ".2").write_text("started")
            time.sleep(1.0)
        if i == 3 and not Path(self.marker).exists():
            for _ in range(200):
                if Path(self.marker + ".2").exists():
                    break
                time.sleep(0.05)
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
    settled = missing_shards(out, 8, "npy")
    assert 3 in settled and 2 not in settled  # the other actor's slow shard was finished before the error
    time.sleep(1.0)  # and nothing lands after it
    assert missing_shards(out, 8, "npy") == settled
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


def test_icl_on_ray_equals_in_process(tiny_lm: Path, tmp_path: Path, ray_local):  # noqa: F811
    """The two-shot ICL proxy with its rows on 2 Ray workers (4 shards, each worker reading its rows and their
    extra demonstrations from the run's pool) equals the in-process gains."""
    from curate.signals import load_signal, score

    val = write_validation(tmp_path / "val.jsonl")
    kw = dict(model=str(tiny_lm), validation=val, progress=False, icl_k=2, icl_shard_rows=3)
    local, remote = make_pool(tmp_path / "local"), make_pool(tmp_path / "remote")
    score(local, ["icl"], **kw)
    score(remote, ["icl"], executor="ray", executor_options={"workers": 2}, **kw)
    a, b = load_signal(local, "icl"), load_signal(remote, "icl")
    assert np.isfinite(a).all() and np.ptp(a) > 0
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert len(list((remote / "signals" / "_icl").rglob("shard-*.parquet"))) == 4


def test_rds_features_on_ray_equal_in_process(tiny_lm: Path, tmp_path: Path, ray_local):  # noqa: F811
    """RDS+'s pool features: 2 Ray workers rendering their rows from the pool (3 shards) give the in-process
    features; the selector's remote path (the job pickled, texts read from the run) gives them too."""
    import pickle

    from curate.executors.ray import RayExecutor
    from curate.select import PoolView
    from curate.select.rds import PoolChatTexts, RDSSelector
    from index.features import cached_features

    run, val = make_pool(tmp_path / "run"), write_validation(tmp_path / "val.jsonl")
    want, _, _ = RDSSelector(validation=str(val), model=str(tiny_lm)).features(PoolView.from_run(run))
    assert want.shape[0] == 10 and np.isfinite(want).all()
    sent = []

    def remote(job, out, n_shards, ext, progress=None):  # in process, but as a worker sees the job
        clone = pickle.loads(pickle.dumps(job))
        sent.append(clone)
        return run_job(clone, out, n_shards, ext, progress)

    run2 = make_pool(tmp_path / "run2")
    got, _, _ = RDSSelector(validation=str(val), model=str(tiny_lm), executor=remote).features(PoolView.from_run(run2))
    assert sent and sent[0].local is None and isinstance(sent[0].texts, PoolChatTexts)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

    texts = PoolChatTexts(run, tiny_lm)(0, 10)
    n_layers = len(sent[0].setup()[1].layers)
    ray_feats = cached_features(texts, tmp_path / "ray-features", tiny_lm, layer=n_layers, max_length=2048,
                                batch_size=8, shard_size=4, dtype="float32", progress=False, pooling="weighted_mean",
                                executor=RayExecutor(workers=2), source=PoolChatTexts(run, tiny_lm))
    assert len(list((tmp_path / "ray-features").glob("shard-*.npy"))) == 3
    np.testing.assert_allclose(ray_feats, want, rtol=0, atol=1e-5)


def test_training_row_passes_on_ray_equal_in_process(tiny_lm: Path, tiny_lm_ref: Path, tmp_path: Path,  # noqa: F811
                                                     ray_local, monkeypatch):
    """DPO's reference log-probs and AutoMixAlign's per-row specialist losses with their rows on 2 Ray workers
    (3 shards) equal the in-process values; the reference cache is stored, reused, and no shard folder is left."""
    import curate.train.rowpass as rowpass
    from curate.executors.ray import RayExecutor
    from curate.mix.ama.specialists import row_losses
    from curate.models import model_fingerprint
    from curate.run import RunDir
    from curate.train.data import from_selection

    monkeypatch.setattr(rowpass, "SHARD_ROWS", 3)
    run = train_pool_run(tmp_path / "run", 16, preference=True)
    rows = from_selection(run, "sel")
    assert rows.frame.height == 8
    kw = dict(model=str(tiny_lm), max_length=256, batch_tokens=128, device="cpu")
    cache = run / "train" / "_ref_logps" / f"{model_fingerprint(tiny_lm, 'float32')}-256.parquet"
    lc, lr, _ = rowpass.reference_logps(rows, tmp_path / "local" / cache.name, **kw)
    rc, rr, computed = rowpass.reference_logps(rows, cache, executor=RayExecutor(workers=2), **kw)
    assert computed and np.all(lc < 0) and np.all(lr < 0)
    np.testing.assert_allclose(rc, lc, rtol=1e-6)
    np.testing.assert_allclose(rr, lr, rtol=1e-6)
    assert pl.read_parquet(cache).height == 8 and not (cache.parent / "_parts").exists()
    assert rowpass.reference_logps(rows, cache, executor="unused", **kw)[2] is False  # all cached: no pass

    settings = {"max_length": 256, "batch_tokens": 128, "beta": 0.1}
    args = dict(objective="dpo", base_model=tiny_lm, rd=RunDir(run), settings=settings, device="cpu")
    local = row_losses(tiny_lm_ref, rows, **args)
    remote = row_losses(tiny_lm_ref, rows, executor="ray", executor_options={"workers": 2}, **args)
    assert np.all(local > 0) and not np.allclose(local, np.log(2))  # the specialist differs from the base
    np.testing.assert_allclose(remote, local, rtol=1e-5)
    assert not any((run / "mix" / "ama" / "_row_nll").iterdir())


def test_daar_features_on_ray_give_the_in_process_selection(tiny_lm: Path, tmp_path: Path, ray_local):  # noqa: F811
    """DaaR through `select(..., executor="ray")`: the LM features are computed by 2 Ray workers reading their
    rows from the pool, and the selection (ids, weights) and stored parameters equal the in-process ones."""
    import json

    from fixtures_lm import SENTENCES, sentence_pool_run

    from curate.select import select

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"domain": d, "prompt": SENTENCES[i], "response": SENTENCES[i]}) + "\n"
                             for d, i in (("math", 0), ("math", 7), ("code", 2), ("code", 3))))
    kw = {"model": str(tiny_lm), "layer": 1, "max_length": 64, "seeds": str(seeds), "epochs": 2, "folds": 1,
          "stratify": "none"}
    local = select(sentence_pool_run(tmp_path / "a", 24), "daar", 8, seed=0, **kw)
    remote = select(sentence_pool_run(tmp_path / "b", 24), "daar", 8, seed=0, executor="ray",
                    executor_options={"workers": 2}, **kw)
    assert remote.ids == local.ids and np.array_equal(remote.weights, local.weights)
    assert remote.params == local.params and "executor" not in remote.params
