"""What a training run is keyed by and where it writes: the model's weights (not its path), the rows' domains
and text, resolved relative paths, `force`, jsonl-only export folders, fp16, mixture objectives, mixture names
with dots, and stored keys written before these fields existed (they stay current)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fixtures_lm import build_tiny_lm, tiny_lm  # noqa: F401
from fixtures_train import train_pool_run

from curate.run import RunDir
from curate.train import train
from curate.train.model import ModelDirError, merge_adapter

FAST = {"batch_tokens": 128, "progress": False, "lr": 1e-3, "log_every": 1, "device": "cpu", "dtype": "float32"}


def _config_key(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())["key"]


def test_a_model_rebuilt_in_place_is_another_run_and_force_retrains_it(tmp_path, monkeypatch):
    model = build_tiny_lm(tmp_path / "model", seed=0)
    run = train_pool_run(tmp_path / "run", 16)
    first = train(run, "sel", model=str(model), max_steps=2, **FAST)
    stored = _config_key(first.out)
    # the same model and run named by relative paths: the same run, current
    monkeypatch.chdir(tmp_path)
    same = train.run_stage("run", "sel", model="model", max_steps=2, **FAST)
    assert same.skipped and same.value.metrics == first.metrics
    # new weights at the same path: not the stored run (which was returned as current, trained on other weights)
    build_tiny_lm(tmp_path / "model", seed=1)
    with pytest.raises(ValueError, match="other data or parameters"):
        train(run, "sel", model=str(model), max_steps=2, **FAST)
    again = train.run_stage(run, "sel", model="model", max_steps=2, force=True, **FAST)
    assert not again.skipped and again.value.metrics["train_loss"] != first.metrics["train_loss"]
    assert _config_key(first.out)["params"]["model_fingerprint"] != stored["params"]["model_fingerprint"]
    assert train.run_stage(run, "sel", model=str(model), max_steps=2, **FAST).skipped


def test_a_stored_key_without_the_new_fields_stays_current_and_is_completed(tiny_lm, tmp_path):  # noqa: F811
    from curate.train.stage import same_key

    run = train_pool_run(tmp_path / "run", 24)
    res = train(run, "sel", model=str(tiny_lm), heldout_split=4, max_steps=2, **FAST)
    key = _config_key(res.out)
    assert {"data_content", "heldout_content"} <= set(key) and "model_fingerprint" in key["params"]
    # the key an older version stored: no content digests, no fingerprint, the model path as it was given
    legacy = {k: v for k, v in key.items() if k not in ("data_content", "heldout_content")}
    legacy["params"] = {k: v for k, v in key["params"].items() if k != "model_fingerprint"}
    legacy["params"]["model"] = os.path.relpath(key["params"]["model"])
    assert same_key(legacy, key)
    assert not same_key({**legacy, "data": "0" * 16}, key)  # a legacy key of other rows still differs
    assert not same_key({**legacy, "params": {**legacy["params"], "lr": 1.0}}, key)
    assert not same_key({**key, "data_content": "0" * 16}, key)  # a new key compares on every field

    # a run folder and sidecar as the older version left them: current, not retrained, key completed
    cfg = json.loads((res.out / "config.json").read_text())
    (res.out / "config.json").write_text(json.dumps({**cfg, "key": legacy}))
    side = RunDir(run).stage_path("train-sel")
    doc = json.loads(side.read_text())
    doc["key"]["params"] = legacy
    side.write_text(json.dumps(doc))
    log = (res.out / "log.jsonl").read_text()
    again = train(run, "sel", model=str(tiny_lm), heldout_split=4, max_steps=2, **FAST)
    assert again.metrics == res.metrics and (res.out / "log.jsonl").read_text() == log
    assert _config_key(res.out) == key
    third = train.run_stage(run, "sel", model=str(tiny_lm), heldout_split=4, max_steps=2, **FAST)
    assert third.skipped


def test_lora_adapter_records_an_absolute_base_and_merges_from_anywhere(tiny_lm, tmp_path, monkeypatch):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 16)
    monkeypatch.chdir(tiny_lm.parent)
    res = train(run, "sel", model=tiny_lm.name, lora=True, lora_r=4, max_steps=1, **FAST)
    cfg = json.loads((res.out / "adapter" / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == tiny_lm.resolve()
    monkeypatch.chdir(tmp_path)
    merged = merge_adapter(res.out / "adapter", tmp_path / "merged")
    assert (merged / "model.safetensors").exists()
    # an adapter whose base is not a local folder: a clear model error, not peft's OSError from the Hub
    bad = tmp_path / "bad_adapter"
    shutil.copytree(res.out / "adapter", bad)
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "no/such-model"}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelDirError, match="no/such-model"):
        merge_adapter(bad, tmp_path / "merged2")


def test_a_relative_out_is_taken_from_the_current_directory_and_retrains_when_deleted(tiny_lm, tmp_path,  # noqa: F811
                                                                                      monkeypatch):
    run = train_pool_run(tmp_path / "run", 16)
    monkeypatch.chdir(tmp_path)
    res = train("run", "sel", model=str(tiny_lm), name="rel", out="relout", max_steps=1, **FAST)
    assert res.out == (tmp_path / "relout").resolve() and (tmp_path / "relout" / "metrics.json").exists()
    side = json.loads(RunDir(run).stage_path("train-rel").read_text())
    assert all(Path(p).is_absolute() for p in side["outputs"])
    shutil.rmtree(tmp_path / "relout")
    again = train.run_stage("run", "sel", model=str(tiny_lm), name="rel", out="relout", max_steps=1, **FAST)
    assert not again.skipped and (tmp_path / "relout" / "metrics.json").exists()


def test_force_retrains_and_replaces_only_training_folders(tiny_lm, tmp_path):  # noqa: F811
    from curate.recipe import call_stage

    run = train_pool_run(tmp_path / "run", 16)
    first = train(run, "sel", model=str(tiny_lm), max_steps=2, **FAST)
    params = {"selection": "sel", "model": str(tiny_lm), "max_steps": 2, **FAST}
    assert call_stage("train", RunDir(run), params).skipped
    (first.out / "stray.txt").write_text("from the old run")
    forced = call_stage("train", RunDir(run), {**params, "force": True})
    assert not forced.skipped and forced.value.metrics["wall_s"] != first.metrics["wall_s"]
    assert not (first.out / "stray.txt").exists() and (first.out / "metrics.json").exists()
    assert len([x for x in (first.out / "log.jsonl").read_text().splitlines() if '"eval"' not in x]) == len(
        [x for x in forced.value.out.joinpath("log.jsonl").read_text().splitlines()])  # one run's log, not two
    # a folder that holds no training run is not deleted to retrain into it
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="does not hold a training run"):
        train(run, "sel", model=str(tiny_lm), name="x", out=other, max_steps=1, force=True, **FAST)
    assert (other / "notes.txt").read_text() == "keep"


def test_a_jsonl_only_export_folder_trains(tiny_lm, tmp_path):  # noqa: F811
    from curate.export import export
    from curate.train import from_files

    run = train_pool_run(tmp_path / "run", 16)
    (run / "ingest.json").write_text(json.dumps({"inputs": ["in.jsonl"], "counts": {"read": 16}}))
    folder = export(run, "sel", formats="jsonl")  # export/sel/messages/: data-00000.jsonl, ids.parquet, manifest
    assert (folder / "manifest.json").exists() and not list(folder.glob("data-*.parquet"))
    rows = from_files(folder.parent)
    sel = pl.read_parquet(run / "selections" / "sel.parquet")
    assert sorted(rows.frame["id"]) == sorted(sel["id"]) and sorted(rows.frame["weight"]) == sorted(sel["weight"])
    res = train(data=folder, model=str(tiny_lm), out=tmp_path / "out", max_steps=1, **FAST)
    assert res.metrics["n_rows"] == sel.height


def test_relabelled_domains_or_edited_text_of_rows_with_ids_are_another_run(tiny_lm, tmp_path):  # noqa: F811
    from curate.train import from_files

    pool = pl.read_parquet(train_pool_run(tmp_path / "run", 16) / "pool").head(6)
    rows = [{"id": f"r{i}", "messages": m, "domain": d}
            for i, (m, d) in enumerate(zip(pool["messages"].to_list(), pool["domain"].to_list(), strict=True))]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = from_files(data)
    train(data=data, model=str(tiny_lm), out=tmp_path / "out", max_steps=1, **FAST)
    relabelled = [{**r, "domain": "text"} for r in rows]
    data.write_text("".join(json.dumps(r) + "\n" for r in relabelled))
    with pytest.raises(ValueError, match="other data or parameters"):
        train(data=data, model=str(tiny_lm), out=tmp_path / "out", max_steps=1, **FAST)
    assert from_files(data).key() == base.key() and from_files(data).content_key() != base.content_key()
    edited = [dict(r) for r in rows]
    edited[0]["messages"] = [dict(m) for m in edited[0]["messages"]]
    edited[0]["messages"][-1]["content"] += " edited"
    data.write_text("".join(json.dumps(r) + "\n" for r in edited))
    with pytest.raises(ValueError, match="other data or parameters"):
        train(data=data, model=str(tiny_lm), out=tmp_path / "out", max_steps=1, **FAST)
    assert from_files(data).content_key() != base.content_key()


def test_float16_is_refused_not_ignored(tiny_lm, tmp_path):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 16)
    for kw in ({"dtype": "float16"}, {"dtype": "fp16"}, {"dtype": "float32", "eval_dtype": "float16"}):
        with pytest.raises(ValueError, match="float16 is not supported"):
            train(run, "sel", model=str(tiny_lm), max_steps=1, **{**FAST, **kw})
    assert not (run / "train" / "sel" / "metrics.json").exists()


def _mixture(run: Path, name: str, weights: dict, objective: dict | None = None) -> None:
    (run / "mixtures").mkdir(exist_ok=True)
    doc = {"domains": sorted(weights), "rounds": [{"round": 0, "weights": weights}]}
    if objective is not None:
        doc["objective"] = objective
    (run / "mixtures" / f"{name}.json").write_text(json.dumps(doc))


def test_mixture_objective_names_only_known_sampled_domains(tiny_lm, tmp_path):  # noqa: F811
    from curate.train.sampler import MixtureBatchSampler

    run = train_pool_run(tmp_path / "run", 16)
    _mixture(run, "typo", {"math": 1.0, "text": 1.0}, {"math": 1.0, "txet": 1.0})
    with pytest.raises(ValueError, match=r"unknown domains \['txet'\].*'math', 'text'"):
        train(run, "sel", model=str(tiny_lm), mixture="typo", max_steps=1, **FAST)
    _mixture(run, "unsampled", {"math": 1.0, "text": 0.0}, {"math": 1.0, "text": 1.0})
    with pytest.raises(ValueError, match=r"\['text'\].*sampling weight 0"):
        train(run, "sel", model=str(tiny_lm), mixture="unsampled", max_steps=1, **FAST)
    assert not list((run / "train").glob("*/metrics.json")) if (run / "train").exists() else True

    lengths, domains = np.full(40, 10), np.repeat([0, 1], 20)
    with pytest.raises(ValueError, match="objective weight > 0"):
        MixtureBatchSampler(lengths, domains, [1.0, 0.0], 100, objective=[0.5, 0.5], domain_names=["a", "b"])
    s = MixtureBatchSampler(lengths, domains, [0.5, 0.5], 100, objective=[0.5, 0.5], domain_names=["a", "b"])
    with pytest.raises(ValueError, match="objective weight > 0"):
        s.set_proportions({"a": 1.0, "b": 0.0})
    MixtureBatchSampler(lengths, domains, [1.0, 0.0], 100, objective=[1.0, 0.0], domain_names=["a", "b"])


def test_a_mixture_name_with_a_dot_names_the_runs_mixture(tiny_lm, tmp_path, monkeypatch):  # noqa: F811
    from curate.mixtures import mixture_file

    run = train_pool_run(tmp_path / "run", 16)
    rd = RunDir(run)
    _mixture(run, "ama-eta0.1", {"math": 1.0, "text": 0.0})
    assert mixture_file("ama-eta0.1", rd) == run / "mixtures" / "ama-eta0.1.json"
    assert mixture_file("plain", rd) == run / "mixtures" / "plain.json"
    assert mixture_file("some/where.json", rd) == Path("some/where.json")
    assert mixture_file("where.json", rd) == Path("where.json")
    assert mixture_file("ama-eta0.1") == Path("ama-eta0.1")
    monkeypatch.chdir(tmp_path)
    Path("given.v2").write_text("{}")
    assert mixture_file("given.v2", rd) == Path("given.v2")  # an existing file that is no mixture of the run
    res = train(run, "sel", model=str(tiny_lm), mixture="ama-eta0.1", name="m", max_steps=2, **FAST)
    logged = [x for x in (res.out / "log.jsonl").read_text().splitlines() if "loss/" in x]
    assert logged and all("loss/math" in x and "loss/text" not in x for x in logged)


def test_progress_false_silences_transformers_bars_and_restores_them(tiny_lm, tmp_path, capfd):  # noqa: F811
    from transformers.utils import logging as hf_logging

    run = train_pool_run(tmp_path / "run", 16)
    before = hf_logging.is_progress_bar_enabled()  # other code in this process may have turned them off
    hf_logging.enable_progress_bar()
    try:
        train(run, "sel", model=str(tiny_lm), max_steps=1, **FAST)
        err = capfd.readouterr().err
        assert "Loading weights" not in err and "Writing model shards" not in err
        assert hf_logging.is_progress_bar_enabled()  # as it was before the run
    finally:
        if not before:
            hf_logging.disable_progress_bar()
