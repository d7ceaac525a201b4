"""Batch samplers: token budgets, every row once per epoch, mixture proportions, seeds, resumption, the
proportion hook and the importance correction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curate.train.sampler import MixtureBatchSampler, TokenBudgetBatchSampler, load_mixture

RNG = np.random.default_rng(5)
LENGTHS = RNG.integers(5, 120, size=600)
DOMAINS = np.repeat([0, 1, 2], [300, 200, 100])


def _flat(batches):
    return [i for b in batches for i, _ in b]


def test_token_budget_batches_hold_every_row_once_within_the_budget():
    s = TokenBudgetBatchSampler(LENGTHS, 512, seed=0)
    for epoch in (0, 1):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        assert sorted(_flat(batches)) == list(range(LENGTHS.size))
        for b in batches:
            idx = [i for i, _ in b]
            assert len(idx) * LENGTHS[idx].max() <= 512 or len(idx) == 1
    # the batch of most padded tokens comes first
    first = [i for i, _ in batches[0]]
    assert len(first) * LENGTHS[first].max() == max(len(b) * LENGTHS[[i for i, _ in b]].max() for b in batches)


def test_token_budget_same_seed_same_order_and_epochs_differ():
    a, b = TokenBudgetBatchSampler(LENGTHS, 512, seed=3), TokenBudgetBatchSampler(LENGTHS, 512, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)


def test_length_grouping_pads_less_than_random_batches():
    s = TokenBudgetBatchSampler(LENGTHS, 1024, seed=0)
    padded = sum(len(b) * LENGTHS[[i for i, _ in b]].max() for b in s)
    assert padded < 1.15 * LENGTHS.sum()


def test_mixture_proportions_match_the_target_over_many_draws():
    q = [0.2, 0.3, 0.5]  # far from the pool's 0.5 / 0.33 / 0.17
    s = MixtureBatchSampler(LENGTHS, DOMAINS, q, 512, seed=1, num_batches=2000)
    rows = _flat(s)
    share = np.bincount(DOMAINS[rows], minlength=3) / len(rows)
    assert np.allclose(share, q, atol=0.015)


def test_mixture_same_seed_same_stream_and_other_seed_another():
    def stream(seed):
        return list(MixtureBatchSampler(LENGTHS, DOMAINS, [1, 1, 1], 512, seed=seed, num_batches=50))

    assert stream(0) == stream(0)
    assert stream(0) != stream(1)


def test_mixture_resumed_run_continues_the_same_stream():
    s = MixtureBatchSampler(LENGTHS, DOMAINS, [1, 2, 1], 512, seed=0, num_batches=80)
    s.set_epoch(2)
    full = list(s)
    again = MixtureBatchSampler(LENGTHS, DOMAINS, [1, 2, 1], 512, seed=0, num_batches=80)
    again.load_state_dict(json.loads(json.dumps(s.state_dict())))
    # accelerate's skip_first_batches replays the epoch from its start and drops the first k batches
    resumed = [b for k, b in enumerate(again) if k >= 30]
    assert resumed == full[30:]


def test_a_change_of_proportions_takes_effect_and_is_replayed_on_resume():
    s = MixtureBatchSampler(LENGTHS, DOMAINS, [1, 0, 0], 512, seed=0, num_batches=120, megabatch_rows=64)
    got = []
    for k, b in enumerate(s):
        got.append(b)
        if k == 20:
            s.set_proportions({"0": 0.0, "1": 0.0, "2": 1.0})
    doms = [set(DOMAINS[[i for i, _ in b]]) for b in got]
    assert all(d == {0} for d in doms[:21])
    assert all(d == {2} for d in doms[21:])  # from the very next batch
    replay = MixtureBatchSampler(LENGTHS, DOMAINS, [1, 0, 0], 512, seed=0, num_batches=120, megabatch_rows=64)
    replay.load_state_dict(s.state_dict())
    assert list(replay) == got


def test_importance_factor_is_objective_over_sampling_proportion():
    q, w = np.array([0.5, 0.25, 0.25]), np.array([1 / 3, 1 / 3, 1 / 3])
    s = MixtureBatchSampler(LENGTHS, DOMAINS, q, 512, seed=0, objective=w, num_batches=30)
    for b in s:
        for i, f in b:
            assert f == pytest.approx(w[DOMAINS[i]] / q[DOMAINS[i]])


def test_mixture_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no training rows"):
        MixtureBatchSampler(LENGTHS, DOMAINS, [1, 1, 1, 1], 512, domain_names=["a", "b", "c", "empty"])
    with pytest.raises(ValueError, match="expected 3 values"):
        MixtureBatchSampler(LENGTHS, DOMAINS, [1, 1], 512)
    with pytest.raises(ValueError, match="not all 0"):
        MixtureBatchSampler(LENGTHS, DOMAINS, [0, 0, 0], 512)
    bad = tmp_path / "m.json"
    bad.write_text('{"method": "x"}')
    with pytest.raises(ValueError, match="rounds"):
        load_mixture(bad)
    good = tmp_path / "g.json"
    good.write_text(json.dumps({"domains": ["a", "b"], "rounds": [{"round": 0, "weights": {"a": 1, "b": 1}},
                                                                 {"round": 1, "weights": {"a": 3, "b": 1}}]}))
    assert load_mixture(good) == {"weights": {"a": 3.0, "b": 1.0}, "objective": None}
