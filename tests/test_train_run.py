"""The train stage end to end on the tiny fixture model: artefacts, per-domain evaluation, resumption after
SIGKILL, LoRA merging, mixtures and their hook, DPO's reference cache, ILA's reference model, and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fixtures_lm import tiny_lm, tiny_lm_ref  # noqa: F401
from fixtures_train import run_until_killed, train_pool_run
from safetensors.torch import load_file

from curate.signals.lm import LMScorer
from curate.train import TrainDataError, train
from curate.train.model import ModelDirError, merge_adapter

FAST = {"batch_tokens": 128, "progress": False, "lr": 1e-3, "log_every": 1}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_two_domain_selection_trains_evaluates_per_domain_and_leaves_reloadable_artefacts(tiny_lm, tmp_path):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 32)
    res = train(run, "sel", model=str(tiny_lm), heldout_split=8, epochs=2, eval_every=2, **FAST)
    out = run / "train" / "sel"
    assert res.out == out
    for name in ("config.json", "train_ids.parquet", "heldout_ids.parquet", "log.jsonl", "metrics.json"):
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists()  # removed once the model is saved
    sel = pl.read_parquet(run / "selections" / "sel.parquet")
    assert sorted(pl.read_parquet(out / "train_ids.parquet")["id"]) == sorted(sel["id"])
    held = pl.read_parquet(out / "heldout_ids.parquet")
    assert held.height == 8 and not set(held["id"]) & set(sel["id"])
    assert held["domain"].value_counts()["count"].to_list() == [4, 4]  # the split keeps each domain's share

    m = res.metrics
    assert set(m["heldout"]["per_domain"]) == {"math", "text"} and m["steps"] > 0
    assert m["heldout"]["macro"] == pytest.approx(np.mean(list(m["heldout"]["per_domain"].values())))
    log = _lines(out / "log.jsonl")
    assert any("loss/math" in x and "loss/text" in x for x in log)
    evals = [x for x in log if "eval" in x]
    assert [x["step"] for x in evals] == sorted({*range(2, m["steps"] + 1, 2), m["steps"]})

    # the saved model reloads and scores the held-out rows exactly as the final evaluation did
    scorer = LMScorer(out / "model", dtype="float32", device="cpu")
    pool = pl.read_parquet(run / "pool").filter(pl.col("id").is_in(held["id"].to_list()))
    sums, counts = scorer.conversation_nll(pool["messages"].to_list())
    assert sums.sum() / counts.sum() == pytest.approx(m["heldout"]["micro"], rel=1e-5)
    # trained: the held-out loss went down from the first evaluation
    assert evals[-1]["eval"]["micro"] < _lines(out / "log.jsonl")[0].get("loss", 1e9)

    # a second call with the same key is a no-op that returns the stored result
    before = (out / "log.jsonl").read_text()
    again = train(run, "sel", model=str(tiny_lm), heldout_split=8, epochs=2, eval_every=2, **FAST)
    assert again.metrics == m and (out / "log.jsonl").read_text() == before
    with pytest.raises(ValueError, match="other data or parameters"):
        train(run, "sel", model=str(tiny_lm), heldout_split=8, epochs=3, **FAST)


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(tiny_lm, tmp_path):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 24)
    run_until_killed(f"from curate.train import train\ntrain({str(run)!r}, 'sel', model={str(tiny_lm)!r}, "
                     f"name='killed', max_steps=8, save_every=2, callbacks=[Kill()], **{FAST!r})")
    ck = run / "train" / "killed" / "checkpoints"
    assert (ck / "checkpoint-4" / "COMPLETE").exists() and not (run / "train" / "killed" / "metrics.json").exists()

    resumed = train(run, "sel", model=str(tiny_lm), name="killed", max_steps=8, save_every=2, **FAST)
    straight = train(run, "sel", model=str(tiny_lm), name="straight", max_steps=8, save_every=2, **FAST)
    assert resumed.metrics["resumed_from"] == "checkpoint-4"
    # the tokens trained on before the kill are counted too (they were saved with the sampler's state)
    assert resumed.metrics["train_tokens"] == straight.metrics["train_tokens"] > 0
    a = load_file(str(resumed.out / "model" / "model.safetensors"))
    b = load_file(str(straight.out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6), k
    base = load_file(str(Path(tiny_lm) / "model.safetensors"))
    assert not np.allclose(a["lm_head.weight"].numpy(), base["lm_head.weight"].numpy())  # it did train


def test_lora_merged_model_scores_like_the_adapter(tiny_lm, tmp_path):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 24)
    res = train(run, "sel", model=str(tiny_lm), lora=True, lora_r=4, merge=True, heldout_split=6, max_steps=6, **FAST)
    assert (res.out / "adapter" / "adapter_config.json").exists()
    merged = LMScorer(res.out / "model", dtype="float32", device="cpu")
    held = pl.read_parquet(res.out / "heldout_ids.parquet")
    pool = pl.read_parquet(run / "pool").filter(pl.col("id").is_in(held["id"].to_list()))
    sums, counts = merged.conversation_nll(pool["messages"].to_list())
    assert sums.sum() / counts.sum() == pytest.approx(res.metrics["heldout"]["micro"], rel=1e-5)
    again = LMScorer(merge_adapter(res.out / "adapter", tmp_path / "merged"), dtype="float32", device="cpu")
    assert np.allclose(again.conversation_nll(pool["messages"].to_list())[0], sums, rtol=1e-5)


def test_mixture_file_and_hook_steer_the_domains_trained_on(tiny_lm, tmp_path):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 32)
    (run / "mixtures").mkdir()
    only_math = json.dumps({"domains": ["math", "text"], "rounds": [{"round": 0, "weights": {"math": 1.0, "text": 0.0}}]})
    (run / "mixtures" / "only_math.json").write_text(only_math)
    res = train(run, "sel", model=str(tiny_lm), mixture="only_math", name="m", max_steps=6, **FAST)
    log = [x for x in _lines(res.out / "log.jsonl") if "loss" in x and "train_loss" not in x]
    assert log and all("loss/math" in x and "loss/text" not in x for x in log)
    # other weights under the same name (a rerun of `curate mix` rewrote the file) are another run: the old one
    # is not returned as if it were this one
    (run / "mixtures" / "only_math.json").write_text(
        json.dumps({"domains": ["math", "text"], "rounds": [{"round": 0, "weights": {"math": 0.0, "text": 1.0}}]})
    )
    with pytest.raises(ValueError, match="holds a training run with other data or parameters"):
        train(run, "sel", model=str(tiny_lm), mixture="only_math", name="m", max_steps=6, **FAST)
    res = train(run, "sel", model=str(tiny_lm), mixture="only_math", name="m2", max_steps=6, **FAST)
    log = [x for x in _lines(res.out / "log.jsonl") if "loss" in x and "train_loss" not in x]
    assert log and all("loss/text" in x and "loss/math" not in x for x in log)
    (run / "mixtures" / "only_math.json").write_text(only_math)

    seen = []

    def hook(step, losses):
        seen.append((step, sorted(losses)))
        return {"math": 0.0, "text": 1.0} if step == 2 else None

    res = train(run, "sel", model=str(tiny_lm), mixture="only_math", name="h", max_steps=12, mixture_hook=hook,
                **{**FAST, "batch_tokens": 40})
    log = [x for x in _lines(res.out / "log.jsonl") if "loss" in x and "train_loss" not in x]
    assert seen[0] == (1, ["math"])
    assert "loss/text" not in log[0] and "loss/text" in log[-1] and "loss/math" not in log[-1]


def test_dpo_trains_on_preference_rows_and_caches_reference_logps(tiny_lm, tmp_path):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 16, preference=True)
    res = train(run, "sel", model=str(tiny_lm), max_steps=3, **FAST)
    assert res.metrics["objective"] == "dpo"
    cache = list((run / "train" / "_ref_logps").glob("*.parquet"))
    assert len(cache) == 1 and pl.read_parquet(cache[0]).height == 8
    first = _lines(res.out / "log.jsonl")[0]
    assert first["loss"] == pytest.approx(np.log(2), rel=1e-4)  # policy = reference at step 1
    mtime = cache[0].stat().st_mtime_ns
    train(run, "sel", model=str(tiny_lm), name="again", max_steps=2, **FAST)
    assert cache[0].stat().st_mtime_ns == mtime  # reused, not recomputed
    with pytest.raises(TrainDataError, match="preference rows in an SFT run"):
        train(run, "sel", model=str(tiny_lm), objective="sft", name="x", **FAST)


def test_bad_inputs_give_clear_errors_and_write_nothing(tiny_lm, tmp_path):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 16)
    sel = pl.read_parquet(run / "selections" / "sel.parquet")
    stale = sel.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("f" * 32)).otherwise("id").alias("id"))
    stale.write_parquet(run / "selections" / "stale.parquet")
    with pytest.raises(TrainDataError, match="not in the pool"):
        train(run, "stale", model=str(tiny_lm), **FAST)
    sel.head(0).write_parquet(run / "selections" / "empty.parquet")
    with pytest.raises(TrainDataError, match="no rows"):
        train(run, "empty", model=str(tiny_lm), **FAST)
    with pytest.raises(TrainDataError, match="SFT rows in a DPO run"):
        train(run, "sel", model=str(tiny_lm), objective="dpo", **FAST)
    nosafe = tmp_path / "nosafe"
    nosafe.mkdir()
    (nosafe / "config.json").write_text((Path(tiny_lm) / "config.json").read_text())
    with pytest.raises(ModelDirError, match="no \\*.safetensors"):
        train(run, "sel", model=str(nosafe), **FAST)
    pool = pl.read_parquet(run / "pool")
    heldout = tmp_path / "held.jsonl"
    heldout.write_text("".join(json.dumps({"messages": m, "domain": "math"}) + "\n" for m in pool["messages"][:2].to_list()))
    with pytest.raises(TrainDataError, match="held-out rows are also training rows"):
        train(run, "sel", model=str(tiny_lm), heldout=heldout, **FAST)
    # the same conversations under ids of their own (a file with an `id` column) are caught too
    heldout.write_text("".join(json.dumps({"id": f"h{i}", "messages": m, "domain": "math"}) + "\n"
                               for i, m in enumerate(pool["messages"][:2].to_list())))
    with pytest.raises(TrainDataError, match="held-out rows are also training rows"):
        train(run, "sel", model=str(tiny_lm), heldout=heldout, **FAST)
    prefs = tmp_path / "prefs.jsonl"  # an SFT run scores sft held-out rows only: none here (was a NaN macro)
    prefs.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "domain": "math"}) + "\n")
    with pytest.raises(TrainDataError, match="none is an sft row"):
        train(run, "sel", model=str(tiny_lm), heldout=prefs, **FAST)
    assert not (run / "train").exists() or not list((run / "train").glob("*/metrics.json"))


def test_training_on_an_export_folder_uses_its_weights(tiny_lm, tmp_path):  # noqa: F811
    from curate.train import from_files

    run = train_pool_run(tmp_path / "run", 16)
    rows = pl.read_parquet(run / "pool").head(4)
    folder = tmp_path / "export" / "messages"  # export/<selection>/<layout>/, as curate export writes
    folder.mkdir(parents=True)
    pl.DataFrame({"messages": rows["messages"], "weight": [0.0, 1.0, 2.0, 3.0], "id": rows["id"],
                  "domain": rows["domain"]}).write_parquet(folder / "data-00000.parquet")
    pl.DataFrame({"id": rows["id"]}).write_parquet(folder / "ids.parquet")
    got = from_files(folder.parent)
    assert got.frame["weight"].to_list() == [0.0, 1.0, 2.0, 3.0] and got.frame["id"].to_list() == rows["id"].to_list()
    res = train(data=folder.parent, model=str(tiny_lm), out=tmp_path / "out", max_steps=2, **FAST)
    assert res.metrics["n_rows"] == 4 and (tmp_path / "out" / "model" / "model.safetensors").exists()


def test_ila_reference_model_gives_real_depth_and_its_rows_are_not_selected(tiny_lm, tmp_path):  # noqa: F811
    from curate.select import select
    from curate.signals import load_signal, score
    from curate.train.reference import train_reference

    run = train_pool_run(tmp_path / "run", 32)
    res = train_reference(run, 8, model=str(tiny_lm), max_steps=4, **FAST)
    ref = json.loads((run / "reference.json").read_text())
    ref_ids = set(pl.read_parquet(run / "selections" / "reference.parquet")["id"])
    assert ref["model"] == str(res.out / "model") and ref["n_rows"] == len(ref_ids) == 8

    score(run, ["depth"], base_model=str(tiny_lm), ref_model="reference", dtype="float32")  # reference.json
    depth = load_signal(run, "depth")
    assert np.isfinite(depth).all() and np.abs(depth).max() > 0
    with pytest.raises(ValueError, match="two different models"):
        score(run, ["depth"], base_model=str(tiny_lm), ref_model=str(tiny_lm), dtype="float32")

    sel = select(run, "random", 24, seed=0)
    assert not set(sel.ids) & ref_ids and len(sel.ids) == 24 and sel.stats["excluded_reference_rows"] == 8
    sel_all = select(run, "random", 24, seed=0, name="with_ref", exclude_reference=False)
    assert set(sel_all.ids) & ref_ids


def test_cli_train_prints_held_out_loss_per_domain(tiny_lm, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from curate.cli import app

    run = train_pool_run(tmp_path / "run", 24)
    args = ["train", "--run", str(run), "--selection", "sel", "--model", str(tiny_lm), "--max-steps", "2",
            "--heldout-split", "6", "--batch-tokens", "128", "-p", "progress=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out NLL macro" in result.output and "math" in result.output and "text" in result.output
    bad = CliRunner().invoke(app, ["train", "--run", str(run), "--selection", "nope", "--model", str(tiny_lm)])
    assert bad.exit_code == 2 and "nope" in bad.output and "Traceback" not in bad.output


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from curate.train import train
    train({run!r}, "sel", model={model!r}, name="ddp", max_steps=2, **{fast!r})
    """
)


def test_two_processes_under_torchrun_train_like_one_with_accumulation(tiny_lm, tmp_path):  # noqa: F811
    """DDP on CPU (gloo): rank r takes batches r, r+2, ...; one process accumulating 2 micro-batches takes the
    same pairs, so the per-step loss normalisation must give the same weights."""
    run = train_pool_run(tmp_path / "run", 32)
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(run=str(run), model=str(tiny_lm), fast=FAST))
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "2", str(script)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train(run, "sel", model=str(tiny_lm), name="one", max_steps=2, grad_accum=2, **FAST)
    ddp = json.loads((run / "train" / "ddp" / "metrics.json").read_text())
    assert ddp["steps"] == one.metrics["steps"] == 2  # within the first epoch: an odd batch count wraps under DDP
    # the same loss and gradient norm at every step: the step's normaliser spans both processes (a loss
    # off by the process count would halve the gradient norm; Adam alone would hide it in the weights)
    steps_ddp = [x for x in _lines(run / "train" / "ddp" / "log.jsonl") if "grad_norm" in x]
    steps_one = [x for x in _lines(one.out / "log.jsonl") if "grad_norm" in x]
    for x, y in zip(steps_ddp, steps_one, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-3)
        # per-domain losses over both processes' batches (rank 0 logged only its own)
        dom = {k for k in y if k.startswith("loss/")}
        assert dom and dom == {k for k in x if k.startswith("loss/")}
        for k in dom:
            assert x[k] == pytest.approx(y[k], rel=1e-4), k
    a = load_file(str(run / "train" / "ddp" / "model" / "model.safetensors"))
    b = load_file(str(one.out / "model" / "model.safetensors"))
    for k in a:  # Adam turns float noise in near-zero gradients into lr-sized steps: a loose check only
        assert np.allclose(a[k].numpy(), b[k].numpy(), atol=3e-3), k


def test_atomic_dir_swaps_whole_folders_and_clears_those_of_dead_processes(tmp_path):
    from index.io import atomic_dir

    final = tmp_path / "model"
    dead = tmp_path / ".model.tmp-999999999"  # no such process
    dead.mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "new" and not dead.exists()
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (final / "a.txt").read_text() == "new" and not list(tmp_path.glob(".model.tmp-*"))
    # replacing a folder moves the old one aside first (a kill mid-delete left half of it in place); a
    # moved-aside folder of a dead process is cleared
    (tmp_path / ".model.old-999999999").mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("newer")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_heldout_split_draws_only_the_kind_the_run_scores(tmp_path):
    """In a pool of sft and preference rows an SFT run's held-out split is n sft rows (it drew from both and the
    run then dropped the preference ones: fewer rows than asked, domain shares off)."""
    from fixtures_pool import make_run

    from curate.train.data import heldout_split

    run = make_run(tmp_path / "run", n=24, preference_every=2)
    got = heldout_split(run.root, [], 6, seed=0, kind="sft")
    assert got.frame.height == 6 and set(got.frame["kind"]) == {"sft"}
    assert set(heldout_split(run.root, [], 12, seed=0).frame["kind"]) == {"sft", "preference"}
