"""AutoMixAlign (curate.mix.ama): the EXP3 sampler on a synthetic bandit, AMA-R's weights, the clipped excess
loss against a hand computation on the tiny fixture model, an end-to-end AMA-S run with reloadable artefacts, a
DPO AMA-R run, resumption after SIGKILL, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from fixtures_lm import tiny_lm  # noqa: F401
from fixtures_train import run_until_killed, train_pool_run
from safetensors.torch import load_file

from curate.mix.ama import ExcessObjective, Exp3, ExpGrad, ama
from curate.mix.ama.run import history_from_log
from curate.signals.lm import LMScorer
from curate.train import from_selection, load_mixture, train
from curate.train.data import TrainRows, encode_rows
from curate.train.loss import row_nll
from curate.train.sampler import MixtureBatchSampler, TokenBudgetBatchSampler
from curate.train.trainer import Collator, CurateTrainer, EncodedRows

FAST = {"batch_tokens": 128, "progress": False, "lr": 1e-3, "log_every": 1}


# the optimisers on synthetic losses, through the objective's own batch path ------------------------------
def _bandit_step(obj: ExcessObjective, rng, means: np.ndarray, slots: int, step: int, sampled: bool):
    """One step: tasks drawn by the objective's α (AMA-S) or stratified (AMA-R), noisy excess per slot."""
    k = len(means)
    alpha = obj.weights
    task = rng.choice(k, size=slots, p=alpha) if sampled else np.repeat(np.arange(k), slots // k)
    values = torch.as_tensor(np.clip(means[task] + rng.normal(0, 0.3, task.size), 0, None))
    batch = {"domain": torch.as_tensor(task), "weight": torch.ones(task.size, dtype=torch.float64),
             "ref_loss": torch.zeros(task.size, dtype=torch.float64),
             "sample_prob": torch.as_tensor(alpha[task])}
    obj.loss(values, torch.ones(task.size), batch, obj.step_total(batch))
    return obj.after_step(step)


@pytest.mark.parametrize("eta", [0.05, 5.0])
def test_ama_s_sampler_converges_to_the_worst_task_and_never_goes_under_its_floor(eta):
    tasks, means, floor = ["a", "b", "c", "d"], np.array([0.3, 0.9, 0.5, 0.6]), 0.08
    obj = ExcessObjective(tasks, {}, Exp3(4, eta=eta, floor=floor), method="ama-s")
    rng = np.random.default_rng(0)
    lowest = 1.0
    for step in range(1, 1501):
        new = _bandit_step(obj, rng, means, 16, step, sampled=True)
        assert list(new) == tasks and sum(new.values()) == pytest.approx(1.0)
        lowest = min(lowest, min(new.values()))
    w = obj.weights
    assert int(np.argmax(w)) == 1  # task b has the largest mean excess
    assert w[1] > 1 - floor  # all but the exploration share
    assert lowest >= floor / 4 - 1e-12  # α_i = (1 - c) q_i + c / k >= c / k at every step
    assert np.allclose(np.delete(w, 1), floor / 4, atol=0.02)
    assert len(obj.history) == 1500 and obj.history[-1]["weights"] == pytest.approx(w.tolist())


def test_ama_s_estimate_is_importance_weighted_by_the_probability_the_row_was_drawn_with():
    obj = ExcessObjective(["a", "b"], {}, Exp3(2, eta=1.0, floor=0.1), method="ama-s")
    batch = {"domain": torch.tensor([0, 0, 0, 1]), "weight": torch.ones(4, dtype=torch.float64),
             "ref_loss": torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64),
             "sample_prob": torch.tensor([0.75, 0.75, 0.75, 0.25], dtype=torch.float64)}
    values = torch.tensor([0.3, 0.6, 0.5, 0.2])  # the third row is below its specialist: excess 0
    loss = obj.loss(values, torch.ones(4), batch, obj.step_total(batch))
    assert float(loss) == pytest.approx((0.3 + 0.6 + 0 + 0.2) / 4)
    obj.after_step(1)
    est = obj.history[0]["estimate"]
    assert est == pytest.approx([(0.3 + 0.6) / 0.75 / 4, 0.2 / 0.25 / 4])
    q = np.exp(np.array(est) - max(est))
    assert obj.weights == pytest.approx(0.9 * q / q.sum() + 0.05)


def test_a_log_line_cut_by_a_kill_is_ended_and_skipped(tmp_path):
    """A kill mid-write leaves a last line without its newline: the next append ends it first (so its own line
    stays whole) and the reader skips the cut one; a whole log gets no blank lines."""
    from curate.train.trainer import append_jsonl

    log = tmp_path / "log.jsonl"
    rec = {"step": 1, "ama": {"weights": {"a": 1.0}, "excess": {"a": 0.5}, "estimate": {"a": 0.5}}}
    append_jsonl(log, rec)
    append_jsonl(log, {"step": 1, "loss": 2.0})
    assert log.read_text().count("\n") == 2 and "\n\n" not in log.read_text()
    with open(log, "a") as fh:
        fh.write('{"step": 2, "ama": {"wei')  # killed here
    append_jsonl(log, {**rec, "step": 3})
    assert log.read_text().splitlines()[2] == '{"step": 2, "ama": {"wei'
    assert [h["step"] for h in history_from_log(log)] == [1, 3]


def test_a_step_whose_rows_all_weigh_zero_is_logged_without_an_update():
    """Zero row weights are legal; such a step gives no evidence, so the weights stay, but it is one update record
    like every other step (the mixture file checks one record per step; it raised after the whole run before)."""
    obj = ExcessObjective(["a", "b"], {}, Exp3(2, eta=1.0, floor=0.1), method="ama-s")
    batch = {"domain": torch.tensor([0, 1]), "weight": torch.zeros(2, dtype=torch.float64),
             "ref_loss": torch.zeros(2, dtype=torch.float64), "sample_prob": torch.tensor([0.5, 0.5])}
    obj.loss(torch.tensor([0.3, 0.6]), torch.ones(2), batch, obj.step_total(batch))
    assert obj.after_step(1) is None
    assert obj.history == [{"step": 1, "weights": pytest.approx([0.5, 0.5]), "excess": [None, None],
                            "estimate": [None, None]}]
    assert obj.weights == pytest.approx([0.5, 0.5])


def test_ama_s_estimate_does_not_favour_tasks_whose_length_grouped_batches_hold_fewer_rows():
    """Task a's rows are long (2 a batch), b's short (16 a batch); one batch of a 64-row megabatch is trained
    each step. Equal excess must keep α near uniform: normalising by the step's own row count would not."""
    obj = ExcessObjective(["a", "b"], {}, Exp3(2, eta=0.005, floor=0.05), method="ama-s")
    rng = np.random.default_rng(0)
    for step in range(1, 2001):
        alpha = obj.weights
        n = rng.multinomial(64, alpha)
        batches = [[0] * min(2, n[0] - i) for i in range(0, n[0], 2)] + [[1] * min(16, n[1] - i)
                                                                         for i in range(0, n[1], 16)]
        task = np.array(batches[rng.integers(len(batches))])
        batch = {"domain": torch.as_tensor(task), "weight": torch.ones(task.size, dtype=torch.float64),
                 "ref_loss": torch.zeros(task.size, dtype=torch.float64), "sample_prob": torch.as_tensor(alpha[task])}
        values = torch.as_tensor(np.clip(0.5 + rng.normal(0, 0.2, task.size), 0, None))
        obj.loss(values, torch.ones(task.size), batch, obj.step_total(batch))
        obj.after_step(step)
    assert 0.3 < obj.weights[0] < 0.7  # per-step normalisation drifts to a (about 0.95 here)


def test_ama_r_weights_move_to_the_task_with_the_largest_excess_and_weight_the_loss():
    tasks, means = ["x", "y", "z"], np.array([0.1, 0.7, 0.35])
    obj = ExcessObjective(tasks, {}, ExpGrad(3, eta=0.05), method="ama-r")
    rng = np.random.default_rng(1)
    seen = []
    for step in range(1, 401):
        assert _bandit_step(obj, rng, means, 30, step, sampled=False) is None  # weights act in the loss
        seen.append(obj.weights[1])
    assert int(np.argmax(obj.weights)) == 1 and obj.weights[1] > 0.9
    assert seen[50] > seen[0] and seen[-1] > seen[50]
    # the loss is sum_i alpha_i * sum_{S∩i} w e / W_i, W_i task i's mean weight per step: 400 steps of 10 rows of
    # weight 1 a task, then this one (weights 4, 2 and 1)
    alpha = obj.weights.copy()
    batch = {"domain": torch.tensor([0, 0, 1, 2]), "weight": torch.tensor([1.0, 3.0, 2.0, 1.0], dtype=torch.float64),
             "ref_loss": torch.zeros(4, dtype=torch.float64)}
    loss = obj.loss(torch.tensor([0.2, 0.4, 0.5, 0.9]), torch.ones(4), batch, obj.step_total(batch))
    hand = alpha[0] * (0.2 + 1.2) / (4004 / 401) + alpha[1] * 1.0 / (4002 / 401) + alpha[2] * 0.9 / (4001 / 401)
    assert float(loss) == pytest.approx(hand, rel=1e-6)
    # on a first step W_i is the step's own task weight: task i's weighted mean excess
    fresh = ExcessObjective(tasks, {}, ExpGrad(3), method="ama-r")
    loss = fresh.loss(torch.tensor([0.2, 0.4, 0.5, 0.9]), torch.ones(4), batch, fresh.step_total(batch))
    assert float(loss) == pytest.approx(((0.2 + 1.2) / 4 + 0.5 + 0.9) / 3, rel=1e-6)


def _length_grouped_batches(short_first: bool, *, steps: int = 300, n: int = 2000, seed: int = 0) -> list:
    """The real mixture sampler, stratified (1/2 a task), 4096-token batches: task a's responses 40 tokens and
    task b's 400 (or swapped). A 256-row megabatch packs a's ~128 rows into 2 batches and b's into 13, so a
    step holds one task and the short one is in about 2 steps of 15."""
    lengths = np.repeat([40, 400] if short_first else [400, 40], n)
    sampler = MixtureBatchSampler(lengths, np.repeat([0, 1], n), [0.5, 0.5], 4096, seed=seed, with_probs=True,
                                  num_batches=steps)
    return list(sampler)


def _drive(obj: ExcessObjective, batches: list, *, first_step: int = 1, row_weight=(1.0, 1.0), noise: float = 0.0,
           seed: int = 0) -> np.ndarray:
    """Train-free steps through the objective's own batch path on the sampler's batches (row r < 2000 is task a's);
    row r's excess is 1 ± noise (the sign fixed per row, half of each task's rows each way: every task's mean
    excess is exactly 1). Returns the θ-gradient each task's rows got per unit of row weight and of α_i."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.permutation(np.repeat([-1.0, 1.0], 1000)) for _ in range(2)])
    mass = np.zeros(2)
    for step, b in enumerate(batches, first_step):
        rows = np.array([r for r, *_ in b])
        task = (rows >= 2000).astype(np.int64)
        w = np.asarray(row_weight)[task]
        batch = {"domain": torch.as_tensor(task), "weight": torch.as_tensor(w),
                 "ref_loss": torch.zeros(task.size, dtype=torch.float64),
                 "sample_prob": torch.tensor([p for *_, p in b], dtype=torch.float64)}
        values = torch.as_tensor(np.clip(1.0 + noise * z[rows], 0, None)).requires_grad_()
        alpha = obj.weights.copy()
        obj.loss(values, torch.ones(task.size), batch, obj.step_total(batch)).backward()
        np.add.at(mass, task, values.grad.numpy() / w / alpha[task])
        obj.after_step(step)
    return mass


@pytest.mark.parametrize("short_first", [True, False])
@pytest.mark.parametrize("method,eta,smoothing", [("ama-r", 0.01, 0.0), ("doremi", 1.0, 1e-3)])
def test_reweighting_does_not_drift_toward_tasks_whose_length_grouped_batches_are_few(
        method, eta, smoothing, short_first):
    """Equal excess (1 on every row) must keep α at 1/2 however the tasks' responses pack into batches. With
    ê_i = the step's task mean (0 when absent) the expected estimate is P(i in step) x 1, about 0.18 for the short
    task against 0.87: AMA-R ended at α_short 0.11 (0.88 swapped), DoReMi at 0.001, and the long task's rows got
    4.5x the θ-gradient. Now each task's estimate is exactly 1 once it has been seen (the baseline c_i = 1 and
    the step's rows add w (e - c_i) = 0), so the only deviation is DoReMi's transient before the short task's
    first step (under 0.002): 0.02 is a wide margin that the old rule misses by 0.38 or more."""
    obj = ExcessObjective(["a", "b"], {}, ExpGrad(2, eta=eta, smoothing=smoothing), method=method)
    mass = _drive(obj, _length_grouped_batches(short_first))
    short = 0 if short_first else 1
    assert obj.weights[short] == pytest.approx(0.5, abs=0.02)
    assert obj.average_weights()[short] == pytest.approx(0.5, abs=0.02)
    est = np.array([h["estimate"] for h in obj.history])
    assert est.mean(axis=0) == pytest.approx([1.0, 1.0], abs=0.02)
    # every row gets α_i / W_i of the θ-gradient whichever batch it is in: half the rows are each task's, so the
    # tasks' totals match up to the noise of W_i (the short task is in ~40 of the 300 steps; 1.11 here, 4.5 before)
    assert 0.8 < mass[0] / mass[1] < 1.25


def test_ama_r_estimate_is_task_i_weighted_mean_excess_with_noise_and_unequal_row_weights():
    """Per-row excess 1 ± 0.5 and task a's rows weigh 3, b's 1, lengths as above: the estimates average 1 for both
    tasks and α stays near 1/2. (Normalising by AMA-S's q_i W rather than task i's own mean weight per step would
    make a look 1.5 and b 0.5.) Tolerances: over sampler seeds 0-9 the estimates' means stay within 0.005 of 1,
    the average α_a in 0.478-0.507 and the gradient ratio within 0.92-1.06 of 1/3; the old rule gives means
    0.18 / 0.87 and average α_a 0.07."""
    obj = ExcessObjective(["a", "b"], {}, ExpGrad(2, eta=0.05), method="ama-r")
    mass = _drive(obj, _length_grouped_batches(True), row_weight=(3.0, 1.0), noise=0.5)
    est = np.array([h["estimate"] for h in obj.history])
    assert est.mean(axis=0) == pytest.approx([1.0, 1.0], abs=0.02)
    assert obj.average_weights()[0] == pytest.approx(0.5, abs=0.05)
    assert mass[0] / mass[1] == pytest.approx(1 / 3, rel=0.2)  # the same total weight a task: α_i / W_i per unit


def test_ama_r_state_resumes_to_the_same_weights_and_marks_its_estimate_in_the_key():
    batches = _length_grouped_batches(True, steps=120)
    straight = ExcessObjective(["a", "b"], {}, ExpGrad(2, eta=0.05), method="ama-r")
    _drive(straight, batches, noise=0.5)
    first = ExcessObjective(["a", "b"], {}, ExpGrad(2, eta=0.05), method="ama-r")
    _drive(first, batches[:50], noise=0.5)
    state = json.loads(json.dumps(first.state_dict()))  # as objective.json stores it
    resumed = ExcessObjective(["a", "b"], {}, ExpGrad(2, eta=0.05), method="ama-r")
    resumed.load_state_dict(state)
    _drive(resumed, batches[50:], first_step=51, noise=0.5)
    assert [h["step"] for h in resumed.history] == list(range(1, 121))
    for a, b in zip(resumed.history, straight.history, strict=True):
        assert a["weights"] == pytest.approx(b["weights"]) and a["estimate"] == pytest.approx(b["estimate"])
    assert len({round(h["weights"][0], 6) for h in straight.history}) > 10  # the weights moved
    # runs with the earlier rule (keyed without "estimate") are not reused; their checkpoints are refused
    assert "estimate" in straight.key() and "estimate" not in ExcessObjective(
        ["a", "b"], {}, Exp3(2), method="ama-s").key()
    old = {k: v for k, v in state.items() if k not in ("task_draws", "task_excess")}
    with pytest.raises(ValueError, match="predates"):
        ExcessObjective(["a", "b"], {}, ExpGrad(2), method="ama-r").load_state_dict(old)


def test_smoothing_keeps_ama_r_weights_off_zero():
    opt = ExpGrad(2, eta=50.0, smoothing=0.01)
    for _ in range(100):
        opt.update([0.0, 1.0])
    assert opt.weights[0] >= 0.005 - 1e-12


# the clipped excess loss on the fixture model -------------------------------------------------------------
@pytest.fixture(scope="module")
def scorer(tiny_lm):  # noqa: F811
    return LMScorer(tiny_lm, dtype="float32", device="cpu")


def _excess_trainer(scorer, rows: TrainRows, spec: np.ndarray, tmp_path, *, objective="sft", ref=None):
    from transformers import TrainingArguments

    feats = encode_rows(scorer, rows, preference=objective == "dpo")
    names = sorted(set(rows.domains()))
    codes = np.array([names.index(d) for d in rows.domains()])
    obj = ExcessObjective(names, dict(zip(rows.frame["id"].to_list(), spec.tolist(), strict=True)),
                          Exp3(len(names)), method="ama-s")
    row_ref = obj.prepare(rows.frame["id"].to_list(), names)
    ds = EncodedRows(feats, rows.frame["weight"].to_numpy(), codes, ref, row_ref=row_ref)
    sampler = TokenBudgetBatchSampler(feats.lengths, 10_000, seed=0)
    args = TrainingArguments(output_dir=str(tmp_path / "ck"), use_cpu=True, report_to=[], remove_unused_columns=False)
    trainer = CurateTrainer(model=scorer.model, args=args, train_dataset=ds, data_collator=Collator(scorer.pad_id),
                            batch_sampler=sampler, objective=objective, domain_names=names, log_path=None,
                            row_objective=obj)
    batches = [Collator(scorer.pad_id)([(ds[key] | {"sample_prob": 0.5}) for key in b]) for b in sampler]
    return trainer, batches, feats


def _step(trainer, batches):
    num = trainer._get_num_items_in_batch(batches, "cpu")
    return sum(trainer.compute_loss(trainer.model, b, num_items_in_batch=num) for b in batches)


def test_clipped_excess_loss_equals_a_hand_computation_and_rows_below_their_specialist_give_no_gradient(
        scorer, tmp_path):
    rows = from_selection(train_pool_run(tmp_path / "run", 16), "sel")
    sums, counts = scorer.conversation_nll(rows.messages())
    per_row = sums / counts
    below = np.arange(len(per_row)) % 3 == 0
    spec = np.where(below, per_row + 0.5, per_row - 0.25 * (1 + np.arange(len(per_row)) % 2))
    w = rows.frame["weight"].to_numpy()
    hand = float(np.sum(w * np.maximum(per_row - spec, 0)) / w.sum())
    trainer, batches, feats = _excess_trainer(scorer, rows, spec, tmp_path)
    model = scorer.model
    model.zero_grad()
    assert len(batches) == 1
    loss = _step(trainer, batches)
    assert float(loss.detach()) == pytest.approx(hand, rel=1e-5)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    # the same gradient from the rows above their specialist alone (the others must contribute nothing)
    model.zero_grad()
    b = batches[0]
    s, c = row_nll(model, b["input_ids"], b["attention_mask"], b["labels"])
    keep = ~torch.as_tensor(below[[feats.ids.index(b["input_ids"][r, : int(b["attention_mask"][r].sum())].tolist())
                                   for r in range(b["input_ids"].shape[0])]])
    manual = (b["weight"] * (s / c - b["ref_loss"]) * keep).sum() / b["weight"].sum()
    assert float(manual.detach()) == pytest.approx(hand, rel=1e-5)
    manual.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-7), n
    model.zero_grad()

    # every row already below its specialist: loss 0 and no gradient at all
    trainer, batches, _ = _excess_trainer(scorer, rows, per_row + 1.0, tmp_path)
    loss = _step(trainer, batches)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    model.zero_grad()


def test_dpo_excess_is_the_dpo_loss_over_the_specialists(scorer, tmp_path):
    rows = from_selection(train_pool_run(tmp_path / "run", 8, preference=True), "sel")
    feats = encode_rows(scorer, rows, preference=True)
    from curate.signals.lm import Encoded

    pc, _ = scorer.nll([Encoded(x, int(p)) for x, p in zip(feats.ids, feats.n_prompt, strict=True)])
    pr, _ = scorer.nll([Encoded(x, int(p)) for x, p in zip(feats.rejected_ids, feats.rejected_n_prompt, strict=True)])
    n = rows.frame.height
    spec = np.log(2) - np.where(np.arange(n) % 2 == 0, 0.1, -0.2)  # policy = reference: DPO loss log 2
    trainer, batches, _ = _excess_trainer(scorer, rows, spec, tmp_path, objective="dpo", ref=(-pc, -pr))
    w = rows.frame["weight"].to_numpy()
    with torch.no_grad():
        got = float(_step(trainer, batches))
    assert got == pytest.approx(float(np.sum(w * np.maximum(np.log(2) - spec, 0)) / w.sum()), rel=1e-5)


# end to end -----------------------------------------------------------------------------------------------
def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_ama_s_end_to_end_leaves_complete_reloadable_artefacts(tiny_lm, tmp_path):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 32)
    res = ama(run, "sel", method="ama-s", model=str(tiny_lm), eta=0.5, floor=0.1, max_steps=6, heldout_split=8,
              specialist={"max_steps": 4}, **FAST)
    mix = json.loads((run / "mixtures" / "ama.json").read_text())
    assert res.mixture == run / "mixtures" / "ama.json" and mix["method"] == "ama-s"
    assert mix["domains"] == ["math", "text"] and mix["params"]["optimiser"]["floor"] == 0.1
    r0, r1 = mix["rounds"]
    assert r0["weights"] == {"math": 0.5, "text": 0.5} and r1["steps"] == 6 == len(mix["updates"])
    for u in mix["updates"]:
        assert sum(u["weights"].values()) == pytest.approx(1.0) and min(u["weights"].values()) >= 0.05 - 1e-12
    assert r1["final"] == mix["updates"][-1]["weights"] and r1["weights"] == res.weights
    used = [r0["weights"]] + [u["weights"] for u in mix["updates"][:-1]]
    assert r1["weights"]["math"] == pytest.approx(np.mean([w["math"] for w in used]))
    assert [u["weights"] for u in mix["updates"]] != [r0["weights"]] * 6  # the weights did move

    # every update logged in the generalist's log.jsonl, and the run's own artefacts complete
    out = run / "train" / "ama"
    logged = [x for x in _lines(out / "log.jsonl") if "ama" in x]
    assert [x["step"] for x in logged] == list(range(1, 7)) and logged[0]["ama"]["method"] == "ama-s"
    assert history_from_log(out / "log.jsonl") == [{"step": u["step"], "weights": u["weights"], "excess":
                                                    u["excess"], "estimate": u["estimate"]} for u in mix["updates"]]
    for f in ("config.json", "train_ids.parquet", "heldout_ids.parquet", "metrics.json", "model/model.safetensors"):
        assert (out / f).exists(), f
    assert json.loads((out / "config.json").read_text())["key"]["params"]["row_objective"]["method"] == "ama-s"
    assert set(res.train.metrics["heldout"]["per_domain"]) == {"math", "text"}

    # the specialists: one per task, their per-row losses cached and equal to a rescoring of their models
    sel = from_selection(run, "sel")
    spec_dirs = sorted((run / "mix" / "ama" / "specialists").iterdir())
    assert [d.name.split("-")[0] for d in spec_dirs] == ["math", "text"]
    for d, task in zip(spec_dirs, ["math", "text"], strict=True):
        losses = pl.read_parquet(d / "losses.parquet")
        task_ids = sel.frame.filter(pl.col("domain") == task)["id"].to_list()
        assert sorted(losses["id"]) == sorted(task_ids)
        assert json.loads((d / "train" / "metrics.json").read_text())["steps"] == 4
        scorer = LMScorer(d / "train" / "model", dtype="float32", device="cpu")
        msgs = sel.frame.filter(pl.col("id").is_in(losses["id"].to_list()))
        s, c = scorer.conversation_nll(msgs["messages"].to_list())
        mine = dict(zip(msgs["id"].to_list(), (s / c).tolist(), strict=True))
        assert [mine[i] for i in losses["id"]] == pytest.approx(losses["loss"].to_list(), rel=1e-5)

    # the model reloads, the mixture trains through `curate train --mixture ama`
    assert np.isfinite(LMScorer(out / "model", dtype="float32", device="cpu").conversation_nll(
        sel.messages()[:2])[0]).all()
    assert load_mixture(res.mixture)["weights"] == r1["weights"]
    from curate.viz import load_mixture as report_mixture

    assert report_mixture(res.mixture).weights.shape == (2, 2)  # the report reads it too
    again = train(run, "sel", model=str(tiny_lm), mixture="ama", name="from_ama", max_steps=2, **FAST)
    assert again.metrics["steps"] == 2

    # a second call reuses everything; a lost mixture file is rebuilt from the log
    before = (out / "log.jsonl").read_text()
    (run / "mixtures" / "ama.json").unlink()
    res2 = ama(run, "sel", method="ama-s", model=str(tiny_lm), eta=0.5, floor=0.1, max_steps=6, heldout_split=8,
               specialist={"max_steps": 4}, **FAST)
    assert (out / "log.jsonl").read_text() == before and json.loads(res2.mixture.read_text()) == mix


def test_baselines_run_through_the_same_code_and_dpo_ama_r_trains(tiny_lm, tmp_path):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 24, preference=True)
    for method, name in (("uniform", "ama-uniform"), ("stratified", "ama-stratified")):
        res = ama(run, "sel", method=method, model=str(tiny_lm), max_steps=2, **FAST)
        mix = json.loads((run / "mixtures" / f"{name}.json").read_text())
        assert mix["method"] == method and len(mix["rounds"]) == 1 and res.train.metrics["objective"] == "dpo"
    assert json.loads((run / "mixtures" / "ama-stratified.json").read_text())["rounds"][0]["weights"] == {
        "math": 0.5, "text": 0.5}
    res = ama(run, "sel", method="ama-r", model=str(tiny_lm), eta=1.0, max_steps=3, specialist={"max_steps": 3},
              **FAST)
    mix = json.loads(res.mixture.read_text())
    assert len(mix["updates"]) == 3 and mix["params"]["optimiser"]["kind"] == "expgrad"
    assert all(e is None or e >= 0 for u in mix["updates"] for e in u["excess"].values())
    # DPO specialists' losses: -log sigmoid(beta * margin) of the specialist against the base model
    d = next(p for p in (run / "mix" / "ama" / "specialists").iterdir() if p.name.startswith("math"))
    losses = pl.read_parquet(d / "losses.parquet")
    assert (losses["loss"] > 0).all() and not np.allclose(losses["loss"].to_numpy(), np.log(2))
    res = ama(run, "sel", method="doremi", model=str(tiny_lm), max_steps=2, specialist={"max_steps": 2}, **FAST)
    assert (run / "mix" / "ama" / "specialists").glob("_all-*") and len(json.loads(res.mixture.read_text())["updates"]) == 2
    with pytest.raises(ValueError, match="at least 2 domains"):
        pl.read_parquet(run / "selections" / "sel.parquet").head(1).write_parquet(run / "selections" / "one.parquet")
        ama(run, "one", model=str(tiny_lm), **FAST)
    with pytest.raises(ValueError, match="unknown AMA method"):
        ama(run, "sel", method="nope", model=str(tiny_lm))


def test_a_killed_ama_s_run_resumes_to_the_same_weights_and_mixture(tiny_lm, tmp_path):  # noqa: F811
    run = train_pool_run(tmp_path / "run", 24)
    kw = {"method": "ama-s", "eta": 0.5, "max_steps": 8, "save_every": 2, "specialist": {"max_steps": 3},
          **{**FAST, "batch_tokens": 48}}
    run_until_killed(f"from curate.mix.ama import ama\nama({str(run)!r}, 'sel', model={str(tiny_lm)!r}, "
                     f"name='killed', callbacks=[Kill()], **{kw!r})")
    ck = run / "train" / "killed" / "checkpoints" / "checkpoint-4"
    assert (ck / "COMPLETE").exists() and (ck / "objective.json").exists()
    assert not (run / "mixtures" / "killed.json").exists()

    resumed = ama(run, "sel", model=str(tiny_lm), name="killed", **kw)
    straight = ama(run, "sel", model=str(tiny_lm), name="straight", **kw)
    assert resumed.train.metrics["resumed_from"] == "checkpoint-4"
    a, b = json.loads(resumed.mixture.read_text()), json.loads(straight.mixture.read_text())
    assert len(a["updates"]) == 8
    assert [u["weights"]["math"] for u in a["updates"]] == pytest.approx([u["weights"]["math"] for u in b["updates"]])
    assert len({u["weights"]["math"] for u in a["updates"]}) > 2  # the weights moved during the run
    wa = load_file(str(resumed.train.out / "model" / "model.safetensors"))
    wb = load_file(str(straight.train.out / "model" / "model.safetensors"))
    for k in wa:
        assert np.allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-6), k


def test_cli_mix_ama_writes_the_mixture_and_reports_errors_in_one_line(tiny_lm, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from curate.cli import app

    run = train_pool_run(tmp_path / "run", 24)
    base = ["mix", "ama", "--run", str(run), "--selection", "sel", "--model", str(tiny_lm), "--max-steps", "2",
            "--batch-tokens", "128", "-p", "progress=false"]
    result = CliRunner().invoke(app, [*base, "--method", "stratified", "--heldout-split", "6"])
    assert result.exit_code == 0, result.output
    assert "stratified" in result.output and "math" in result.output
    assert load_mixture(run / "mixtures" / "ama-stratified.json")["weights"] == {"math": 0.5, "text": 0.5}
    bad = CliRunner().invoke(app, [*base, "--method", "nope"])
    assert bad.exit_code == 2 and "unknown AMA method" in bad.output and "Traceback" not in bad.output
