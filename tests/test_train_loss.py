"""The training losses against hand computations on the tiny fixture model, and training labels against the
scoring layer's labels."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from fixtures_lm import tiny_lm  # noqa: F401
from fixtures_train import train_pool_run

from curate.signals.lm import LMScorer, labels_for
from curate.train import from_selection
from curate.train.data import encode_rows
from curate.train.loss import row_nll
from curate.train.sampler import TokenBudgetBatchSampler
from curate.train.trainer import Collator, CurateTrainer, EncodedRows


@pytest.fixture(scope="module")
def scorer(tiny_lm):  # noqa: F811
    return LMScorer(tiny_lm, dtype="float32", device="cpu")


def _trainer(scorer, rows, tmp_path, *, objective="sft", batch_tokens=64, ref=None):
    from transformers import TrainingArguments

    feats = encode_rows(scorer, rows, preference=objective == "dpo")
    names = sorted(set(rows.domains()))
    codes = np.array([names.index(d) for d in rows.domains()])
    ds = EncodedRows(feats, rows.frame["weight"].to_numpy(), codes, ref)
    sampler = TokenBudgetBatchSampler(feats.lengths, batch_tokens, seed=0)
    args = TrainingArguments(output_dir=str(tmp_path / "ck"), use_cpu=True, report_to=[], remove_unused_columns=False)
    trainer = CurateTrainer(model=scorer.model, args=args, train_dataset=ds, data_collator=Collator(scorer.pad_id),
                            batch_sampler=sampler, objective=objective, domain_names=names, log_path=None)
    batches = [Collator(scorer.pad_id)([ds[key] for key in b]) for b in sampler]
    return trainer, batches, feats


def _naive_nll(model, ids: list[int], n_prompt: int) -> tuple[float, int]:
    """Summed NLL of the labelled tokens of one sequence, position by position, in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    start = max(n_prompt, 1)
    return float(-sum(logp[t - 1, ids[t]] for t in range(start, len(ids)))), len(ids) - start


def _step_loss(trainer, batches) -> float:
    num = trainer._get_num_items_in_batch(batches, "cpu")
    with torch.no_grad():
        return float(sum(trainer.compute_loss(trainer.model, b, num_items_in_batch=num) for b in batches))


def test_weighted_loss_equals_hand_computation_over_accumulated_micro_batches(scorer, tmp_path):
    rows = from_selection(train_pool_run(tmp_path / "run", 16), "sel")
    trainer, batches, feats = _trainer(scorer, rows, tmp_path)
    assert len(batches) > 1  # the step spans several micro-batches
    w = rows.frame["weight"].to_numpy()
    sums = [_naive_nll(scorer.model, feats.ids[i], int(feats.n_prompt[i])) for i in range(len(w))]
    hand = sum(w[i] * s for i, (s, _) in enumerate(sums)) / sum(w[i] * n for i, (_, n) in enumerate(sums))
    assert _step_loss(trainer, batches) == pytest.approx(hand, rel=1e-5)


def test_weight_zero_removes_a_row_exactly(scorer, tmp_path):
    rows = from_selection(train_pool_run(tmp_path / "run", 12), "sel")
    zeroed = rows.frame.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(0.0).otherwise(pl.col("weight")).alias("weight"))
    without = rows.frame.filter(pl.int_range(pl.len()) != 2)
    from curate.train.data import TrainRows

    t1, b1, _ = _trainer(scorer, TrainRows(zeroed, "zeroed"), tmp_path, batch_tokens=10_000)
    t2, b2, _ = _trainer(scorer, TrainRows(without, "without"), tmp_path, batch_tokens=10_000)
    assert _step_loss(t1, b1) == pytest.approx(_step_loss(t2, b2), rel=1e-6)


def test_uniform_weights_equal_the_unweighted_token_mean_loss(scorer, tmp_path):
    rows = from_selection(train_pool_run(tmp_path / "run", 12), "sel")
    from curate.train.data import TrainRows

    uniform = TrainRows(rows.frame.with_columns(pl.lit(3.0).alias("weight")), "uniform")
    trainer, batches, _ = _trainer(scorer, uniform, tmp_path, batch_tokens=10_000)
    assert len(batches) == 1
    b = batches[0]
    with torch.no_grad():
        hf = scorer.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    assert _step_loss(trainer, batches) == pytest.approx(float(hf), rel=1e-5)


def test_training_labels_equal_the_scoring_layers_labels(scorer, tmp_path):
    rows = from_selection(train_pool_run(tmp_path / "run", 12), "sel")
    _, batches, feats = _trainer(scorer, rows, tmp_path, batch_tokens=10_000)
    b = batches[0]
    msgs = rows.messages()
    for r in range(b["input_ids"].shape[0]):
        n = int(b["attention_mask"][r].sum())
        ids = b["input_ids"][r, :n].tolist()
        i = next(k for k in range(len(msgs)) if feats.ids[k] == ids)
        expected = labels_for(scorer.encode(msgs[i]))
        assert b["labels"][r, :n].tolist() == expected
        assert (b["labels"][r, n:] == -100).all()


def test_head_on_labelled_positions_equals_full_logits(scorer, tmp_path):
    from curate.signals.lm import _split_head

    rows = from_selection(train_pool_run(tmp_path / "run", 12), "sel")
    _, batches, _ = _trainer(scorer, rows, tmp_path, batch_tokens=10_000)
    b = batches[0]
    with torch.no_grad():
        full = row_nll(scorer.model, b["input_ids"], b["attention_mask"], b["labels"])
        split = row_nll(scorer.model, b["input_ids"], b["attention_mask"], b["labels"], _split_head(scorer.model))
    assert torch.allclose(full[0], split[0], rtol=1e-5)
    assert torch.equal(full[1], split[1])


def test_dpo_loss_equals_hand_computation(scorer, tmp_path):
    run = train_pool_run(tmp_path / "run", 8, preference=True)
    rows = from_selection(run, "sel")
    n = rows.frame.height
    ref_c, ref_r = -np.linspace(20.0, 30.0, n), -np.linspace(25.0, 18.0, n)
    trainer, batches, feats = _trainer(scorer, rows, tmp_path, objective="dpo", batch_tokens=10_000,
                                       ref=(ref_c, ref_r))
    trainer.beta = 0.3
    w = rows.frame["weight"].to_numpy()
    hand = 0.0
    for i in range(n):
        pc = -_naive_nll(scorer.model, feats.ids[i], int(feats.n_prompt[i]))[0]
        pr = -_naive_nll(scorer.model, feats.rejected_ids[i], int(feats.rejected_n_prompt[i]))[0]
        margin = 0.3 * ((pc - ref_c[i]) - (pr - ref_r[i]))
        hand += w[i] * np.log1p(np.exp(-margin))
    assert _step_loss(trainer, batches) == pytest.approx(hand / w.sum(), rel=1e-5)
