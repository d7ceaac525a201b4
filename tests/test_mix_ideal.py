"""IDEAL: EK-FAC against exact damped inverses, the influence sign, volume updates, and rounds end to end."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from fixtures_lm import SENTENCES, tiny_lm  # noqa: F401
from torch import nn

from curate.mix.ideal import EKFAC, new_volumes, step_sizes
from curate.pool.ids import content_id
from curate.pool.schema import POOL_SCHEMA


def _fit_linear(R: int, correct: bool = True):
    torch.manual_seed(0)
    X = torch.randn(400, 4) @ torch.tensor([[1.0, 0.3, 0, 0], [0, 1, 0.5, 0], [0, 0, 1, 0.2], [0.1, 0, 0, 0.5]])
    lin = nn.Linear(4, 3, bias=False)

    def batches():
        for _ in range(R):
            yield from X.split(100)

    def sampled(model, x):  # Gaussian likelihood, labels drawn from the model: the true Fisher is A ⊗ I
        y = model(x)
        return 0.5 * ((y - (y.detach() + torch.randn_like(y))) ** 2).sum()

    return X, EKFAC({"l": lin}, damping=0.1, correct=correct).fit(lin, batches, sampled)


def test_ihvp_equals_the_exact_damped_inverse_where_kronecker_is_exact():
    X, ek = _fit_linear(R=50)
    F = torch.kron(torch.eye(3, dtype=torch.float64), (X.T @ X / X.shape[0]).double())
    delta = 0.1 * ek.lam["l"].mean()
    V = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = torch.linalg.solve(F + delta * torch.eye(12, dtype=torch.float64), V.reshape(-1)).reshape(3, 4)
    got = ek.ihvp({"l": V})["l"]
    assert float((got - exact).norm() / exact.norm()) < 0.04  # label-sampling noise only
    assert torch.allclose(ek.dense_inverse("l") @ V.reshape(-1), got.reshape(-1), rtol=1e-9)


def test_influence_matrix_equals_the_dense_inverse_products():
    """s[r][d] = g_rᵀ H⁻¹ g_d with H⁻¹ the dense damped inverse, for every pair, from generators of gradients."""
    from curate.mix.ideal import influence, influence_matrix

    _, ek = _fit_linear(R=5)
    gen = torch.Generator().manual_seed(4)
    refs = {r: {"l": torch.randn(3, 4, dtype=torch.float64, generator=gen)} for r in ("all", "a")}
    doms = {d: {"l": torch.randn(3, 4, dtype=torch.float64, generator=gen)} for d in ("x", "y", "z")}
    got = influence_matrix(ek, iter(refs.items()), (kv for kv in doms.items()))
    H = ek.dense_inverse("l")
    for r, g_r in refs.items():
        for d, g_d in doms.items():
            want = float(g_r["l"].reshape(-1) @ H @ g_d["l"].reshape(-1))
            assert got[r][d] == pytest.approx(want, rel=1e-5)
            assert influence(ek, g_r, g_d) == pytest.approx(want, rel=1e-5)


def test_the_whole_sets_mean_gradient_is_the_size_weighted_mean_of_its_parts():
    """What lets IDEAL derive the whole reference set's influence row from its domains' rows."""
    from curate.mix.ideal.ekfac import mean_gradient

    torch.manual_seed(2)
    lin, X = nn.Linear(4, 3, bias=False), torch.randn(10, 4)

    def losses(model, x):
        return (model(x) ** 2).sum(-1)

    whole, n = mean_gradient(lin, {"l": lin}, X.split(4), losses)
    a, na = mean_gradient(lin, {"l": lin}, [X[:3]], losses)
    b, nb = mean_gradient(lin, {"l": lin}, X[3:].split(5), losses)
    assert (n, na, nb) == (10, 3, 7)
    assert torch.allclose(whole["l"], 0.3 * a["l"] + 0.7 * b["l"], rtol=1e-6)


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 5, bias=False), nn.Linear(5, 4, bias=False)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


@pytest.fixture(scope="module")
def mlp_case():
    """A tiny classifier, its inputs, and the exact damped inverse of the Gauss-Newton block of each layer."""
    from torch.func import functional_call, jacrev

    torch.manual_seed(1)
    mlp, X = _MLP(), torch.randn(64, 3) * 1.5
    params = {k: v.detach() for k, v in mlp.named_parameters()}
    truth = {}
    for mod in ("l1", "l2"):
        key = f"{mod}.weight"
        F = 0
        for x in X:
            J = jacrev(lambda p, x=x, key=key: functional_call(mlp, {**params, key: p}, (x,)))(params[key])
            J = J.reshape(4, -1).double()
            p = torch.softmax(mlp(x), -1).detach().double()
            F = F + J.T @ (torch.diag(p) - torch.outer(p, p)) @ J
        F = F / len(X)
        delta = 0.1 * torch.trace(F) / F.shape[0]
        truth[mod] = torch.linalg.inv(F + delta * torch.eye(F.shape[0], dtype=torch.float64))
    return mlp, X, truth


def _mlp_error(mlp_case, mod: str, R: int, correct: bool) -> float:
    mlp, X, truth = mlp_case

    def batches():
        torch.manual_seed(0)
        for _ in range(R):
            yield from X.split(16)

    def sampled(model, x):
        logits = model(x)
        drawn = torch.distributions.Categorical(logits=logits.detach()).sample()
        return nn.functional.cross_entropy(logits, drawn, reduction="sum")

    ek = EKFAC({mod: getattr(mlp, mod)}, damping=0.1, correct=correct).fit(mlp, batches, sampled)
    return float((ek.dense_inverse(mod) - truth[mod]).norm() / truth[mod].norm())


def test_ekfac_approaches_the_exact_gauss_newton_inverse_and_beats_kfac(mlp_case):
    # the output layer: sampling error vanishes as label draws grow
    few, many = _mlp_error(mlp_case, "l2", 1, True), _mlp_error(mlp_case, "l2", 100, True)
    assert many < 0.01 and many < few / 3
    # both layers: the eigenvalue-corrected inverse is closer than plain K-FAC (the first layer keeps the
    # Kronecker factorisation's own error, about 20% here)
    for mod in ("l1", "l2"):
        assert _mlp_error(mlp_case, mod, 100, True) < _mlp_error(mlp_case, mod, 100, False)


def test_step_sizes_and_new_volumes_follow_the_rule():
    beta = step_sizes({"a": 2.0, "b": -1.0, "c": 0.5}, 0.15)
    assert beta == pytest.approx({"a": 0.15, "b": -0.075, "c": 0.0375})
    assert step_sizes({"a": 0.0}, 0.15) == {"a": 0.0}
    ids = [f"r{i}" for i in range(30)]
    domains = ["a"] * 10 + ["b"] * 20
    counts = np.ones(30, dtype=np.int64)
    new = new_volumes(ids, counts, domains, {"a": 0.3, "b": -0.25}, seed=0)
    assert new[:10].sum() == 13 and new[10:].sum() == 15
    assert (new[10:] <= 1).all() and (new[:10] >= 1).all()  # shrink drops rows, growth duplicates, keeps all
    assert np.array_equal(new, new_volumes(ids, counts, domains, {"a": 0.3, "b": -0.25}, seed=0))
    # round(1 x (1 - 0.5)) is 0: a domain keeps one instance, so the next round can take its gradient
    assert new_volumes(["x", "y"], np.ones(2, dtype=np.int64), ["a", "b"], {"a": -0.5}, seed=0).tolist() == [1, 1]


def test_statistics_are_reduced_across_processes(tmp_path):
    import torch.multiprocessing as mp

    X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    torch.save(X, tmp_path / "x.pt")
    mp.spawn(_dist_worker, args=(str(tmp_path),), nprocs=2, join=True)
    one = _fit_fixed(X)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"lam{rank}.pt")
        assert torch.allclose(got, one.lam["l"], rtol=1e-9)


def _fit_fixed(X):
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False)
    target = torch.arange(X.shape[0] * 3, dtype=torch.float32).reshape(-1, 3) % 5

    def loss(model, batch):
        x, t = batch
        return 0.5 * ((model(x) - t) ** 2).sum()

    return EKFAC({"l": lin}, damping=0.1).fit(lin, lambda: iter([(X[i : i + 8], target[i : i + 8])
                                                                  for i in range(0, X.shape[0], 8)]), loss)


def _dist_worker(rank: int, folder: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    X = torch.load(f"{folder}/x.pt")
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False)
    target = torch.arange(X.shape[0] * 3, dtype=torch.float32).reshape(-1, 3) % 5
    mine = [(X[i : i + 8], target[i : i + 8]) for i in range(0, X.shape[0], 8)][rank::2]

    def loss(model, batch):
        x, t = batch
        return 0.5 * ((model(x) - t) ** 2).sum()

    ek = EKFAC({"l": lin}, damping=0.1).fit(lin, lambda: iter(mine), loss)
    torch.save(ek.lam["l"], f"{folder}/lam{rank}.pt")
    torch.distributed.destroy_process_group()


def _conflict_run(run, n_per: int = 24):
    """A pool of two domains over the same prompts: 'good' answers one way, 'bad' the opposite way."""
    rows = []
    for i in range(2 * n_per):
        good = i % 2 == 0
        prompt = SENTENCES[(i // 2) % 12] + f" {(i // 2) % 4}"
        response = SENTENCES[((i // 2) + (1 if good else 6)) % 12]
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        rows.append({"id": content_id("sft", msgs, None), "source": "x", "row": i, "kind": "sft",
                     "domain": "good" if good else "bad", "messages": msgs, "prompt": prompt, "response": response,
                     "rejected": None, "meta": "{}", "n_duplicates": 0})
    (run / "pool").mkdir(parents=True)
    pool = pl.DataFrame(rows, schema=POOL_SCHEMA).unique("id", keep="first", maintain_order=True)
    pool.write_parquet(run / "pool" / "shard-00000.parquet")
    (run / "selections").mkdir()
    pl.DataFrame({"id": pool["id"], "weight": [1.0] * pool.height, "rank": list(range(pool.height)),
                  "reason": ["t"] * pool.height}).write_parquet(run / "selections" / "all.parquet")
    ref = run.parent / "reference.jsonl"
    with open(ref, "w") as fh:
        for i in range(12):
            fh.write(json.dumps({"prompt": SENTENCES[i] + f" {i % 4}", "response": SENTENCES[(i + 1) % 12],
                                 "domain": "target"}) + "\n")
    return ref


TRAIN = {"batch_tokens": 256, "progress": False, "lr": 1e-2, "log_every": 50, "max_length": 64}


def test_influence_upweights_the_matching_domain_and_downweights_the_conflicting_one(tiny_lm, tmp_path):  # noqa: F811
    from curate.mix.ideal import ideal

    ref = _conflict_run(tmp_path / "run")
    doc = ideal(tmp_path / "run", "all", ref, model=str(tiny_lm), rounds=2, epochs=15, sample_rate=1.0,
                keep_factors=True, **TRAIN)
    r0 = doc["rounds"][0]
    assert r0["influence"]["all"]["good"] > 0 > r0["influence"]["all"]["bad"]
    assert r0["beta"]["good"] == pytest.approx(0.15) and -0.15 <= r0["beta"]["bad"] < 0
    assert doc["rounds"][1]["counts"]["good"] > r0["counts"]["good"]
    assert doc["rounds"][1]["counts"]["bad"] <= r0["counts"]["bad"]

    # artefacts: three rounds (two influence rounds, then training on the final volumes), all reloadable
    run = tmp_path / "run"
    stored = json.loads((run / "mixtures" / "ideal.json").read_text())
    assert [r["round"] for r in stored["rounds"]] == [0, 1, 2] and stored["final_selection"] == "ideal-r2"
    assert set(stored["rounds"][0]["influence"]) == {"all", "target"}
    assert stored["rounds"][2]["heldout"] is None and (run / "train" / "ideal-r2" / "model").exists()
    sel = pl.read_parquet(run / "selections" / "ideal-r2.parquet")
    assert sel["weight"].sum() == sum(stored["rounds"][2]["counts"].values())
    ek = EKFAC({"x": nn.Linear(1, 1)})  # reload check on the saved factors' names
    keys = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(run / "mix" / "ideal" / "ekfac-r0.safetensors"))
    assert any(k.endswith("::lam") for k in keys) and ek.damping == 0.1

    # a re-run reuses every round (the stored influence is not rewritten); without keep_factors the factors go
    mtime = (run / "mix" / "ideal" / "round-0.json").stat().st_mtime_ns
    again = ideal(run, "all", ref, model=str(tiny_lm), rounds=2, epochs=15, sample_rate=1.0, **TRAIN)
    assert again["rounds"][1]["counts"] == doc["rounds"][1]["counts"]
    assert (run / "mix" / "ideal" / "round-0.json").stat().st_mtime_ns == mtime
    assert not list((run / "mix" / "ideal").glob("ekfac-r*"))

    key0 = json.loads((run / "mix" / "ideal" / "round-0.json").read_text())["key"]
    # other parameters do not reuse the cached factors, influence or volumes of the first run
    other = ideal(run, "all", ref, model=str(tiny_lm), rounds=1, epochs=15, sample_rate=0.5, m=0.05,
                  train_final=False, **TRAIN)
    assert (run / "mix" / "ideal" / "round-0.json").stat().st_mtime_ns != mtime
    assert other["rounds"][0]["beta"]["good"] == pytest.approx(0.05)
    assert other["rounds"][1]["counts"]["good"] < doc["rounds"][1]["counts"]["good"]
    assert json.loads((run / "mix" / "ideal" / "round-0.json").read_text())["key"] != key0

    # the final mixture trains through `curate train --mixture ideal`
    from curate.train import train

    res = train(run, "all", model=str(tiny_lm), mixture="ideal", name="with-mix", max_steps=2, **TRAIN)
    assert res.metrics["steps"] == 2


def test_cli_mix_ideal_reports_a_reference_without_domains_as_one_error_line(tiny_lm, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from curate.cli import app

    _conflict_run(tmp_path / "run")
    ref = tmp_path / "nodomain.jsonl"
    ref.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    out = CliRunner().invoke(app, ["mix", "ideal", "--run", str(tmp_path / "run"), "--selection", "all",
                                   "--reference", str(ref), "--model", str(tiny_lm)])
    assert out.exit_code == 2 and "domain" in out.output and "Traceback" not in out.output


def test_weights_count_as_copies_in_ekfac_and_mean_gradients():
    """A weight of 2 on an example gives the factors, corrected eigenvalues and mean gradient of two copies."""
    from curate.mix.ideal.ekfac import mean_gradient

    torch.manual_seed(3)  # float64: each batch's products then run in float64, so the comparison is exact
    mlp, X = _MLP().double(), torch.randn(12, 3, dtype=torch.float64)
    target = torch.randint(0, 4, (12,))

    def loss(model, batch):  # deterministic labels, so copies and weights see the same losses
        return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="sum")

    def losses(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")

    w = torch.ones(12, dtype=torch.float64)
    w[[0, 5]] = torch.tensor([2.0, 3.0], dtype=torch.float64)
    weighted = [(X[i : i + 4], target[i : i + 4], w[i : i + 4]) for i in range(0, 12, 4)]
    rep = torch.repeat_interleave(torch.arange(12), w.long())
    copies = [(X[rep][i : i + 5], target[rep][i : i + 5]) for i in range(0, rep.numel(), 5)]
    mods = {"l1": mlp.l1, "l2": mlp.l2}
    a = EKFAC(dict(mods), damping=0.1).fit(mlp, lambda: iter(weighted), loss, weights=lambda b: b[2])
    b = EKFAC(dict(mods), damping=0.1).fit(mlp, lambda: iter(copies), loss)
    unweighted = EKFAC(dict(mods), damping=0.1).fit(mlp, lambda: iter(weighted), loss)
    assert a.stats == b.stats == {"tokens": 15.0, "examples": 15.0}
    for m in mods:
        assert torch.allclose(a.dense_inverse(m), b.dense_inverse(m), rtol=1e-9)
        assert not torch.allclose(unweighted.dense_inverse(m), b.dense_inverse(m), rtol=1e-3)
    ga, na = mean_gradient(mlp, mods, weighted, losses, weights=lambda b: b[2])
    gb, nb = mean_gradient(mlp, mods, copies, losses)
    assert na == nb == 15.0 and all(torch.allclose(ga[m], gb[m], rtol=1e-9) for m in mods)
    with pytest.raises(ValueError, match="finite values >= 0"):
        EKFAC(dict(mods)).fit(mlp, lambda: iter(weighted), loss, weights=lambda b: -b[2])


def test_an_ideal_round_weighs_each_row_by_what_training_weighs_its_loss(tiny_lm, tmp_path, monkeypatch):  # noqa: F811
    """influence_round on rows where one has weight 3 equals the round on the same rows with that one written
    three times (labels of the Fisher made deterministic for the comparison); weight 1 differs."""
    from curate.mix.ideal import lm as ideal_lm
    from curate.mix.ideal.rounds import influence_round
    from curate.train import from_files

    monkeypatch.setattr(ideal_lm, "sampled_loss", lambda model, batch: ideal_lm.true_losses(model, batch).sum())
    base = [{"prompt": SENTENCES[i] + f" {i}", "response": SENTENCES[(i + 3) % 12], "domain": "ab"[i % 2]}
            for i in range(10)]
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps({"prompt": SENTENCES[i], "response": SENTENCES[(i + 1) % 12],
                                       "domain": "t"}) + "\n" for i in range(6)))

    def rows(file: str, body: list[dict]):
        (tmp_path / file).write_text("".join(json.dumps(r) + "\n" for r in body))
        return from_files(tmp_path / file)

    kw = dict(layers="mlp", sample_rate=1.0, damping=0.1, correct=True, scaling="mean", batch_tokens=128,
              max_length=48, seed=0)
    refs = from_files(ref)
    heavy = rows("w.jsonl", [{**base[0], "weight": 3.0}, *base[1:]])
    copied = rows("c.jsonl", [{**base[0], "id": f"copy{i}"} for i in range(3)] + base[1:])
    plain = rows("p.jsonl", base)
    got = influence_round(tiny_lm, heavy, np.ones(10, dtype=np.int64), refs, **kw)["influence"]
    want = influence_round(tiny_lm, copied, np.ones(12, dtype=np.int64), refs, **kw)["influence"]
    other = influence_round(tiny_lm, plain, np.ones(10, dtype=np.int64), refs, **kw)["influence"]
    for d in ("a", "b"):
        assert got["all"][d] == pytest.approx(want["all"][d], rel=1e-3)
    assert other["all"]["a"] != pytest.approx(want["all"]["a"], rel=3e-3)  # ~1% apart here
    # multiplicities (IDEAL's own volumes) count as the selection weight does
    counted = influence_round(tiny_lm, plain, np.array([3] + [1] * 9), refs, **kw)["influence"]
    assert counted["all"]["a"] == pytest.approx(want["all"]["a"], rel=1e-3)


def test_ideal_checks_settings_keys_influence_by_reference_text_never_caches_nan(tiny_lm, tmp_path, monkeypatch):  # noqa: F811
    from curate.mix import ideal as ideal_pkg
    from curate.mix.ideal import rounds

    run = tmp_path / "run"
    _conflict_run(run)
    ref = tmp_path / "ref_ids.jsonl"

    def write_ref(answer: str) -> None:  # explicit ids, as an export carries: editing the text keeps them
        ref.write_text("".join(json.dumps({"id": f"r{i}", "prompt": SENTENCES[i], "response": answer,
                                           "domain": "target"}) + "\n" for i in range(4)))

    write_ref(SENTENCES[5])
    for bad in ({"m": -0.1}, {"sample_rate": 1.5}, {"sample_rate": 0}, {"damping": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ideal_pkg.ideal(run, "all", ref, model=str(tiny_lm), **bad, **TRAIN)
    calls, value = [], [0.5]

    def fake_round(model_dir, base, counts, ref_rows, **kw):
        calls.append(ref_rows.frame["messages"][0][-1]["content"])
        return {"influence": {"all": {"good": value[0], "bad": -0.25}}, "reference_loss": 1.0, "timings": {}}

    monkeypatch.setattr(rounds, "influence_round", fake_round)
    kw = dict(model=str(tiny_lm), rounds=1, train_final=False, epochs=1, **TRAIN)
    ideal_pkg.ideal(run, "all", ref, **kw)
    ideal_pkg.ideal(run, "all", ref, force=True, **kw)  # same rows and text: the stored influence is reused
    assert calls == [SENTENCES[5]]
    write_ref(SENTENCES[7])  # same ids, other text: the influence is computed again
    ideal_pkg.ideal(run, "all", ref, **kw)
    assert calls == [SENTENCES[5], SENTENCES[7]]
    stored = (run / "mix" / "ideal" / "round-0.json").read_text()
    value[0] = float("nan")
    write_ref(SENTENCES[8])
    with pytest.raises(ValueError, match="not finite.*damping"):
        ideal_pkg.ideal(run, "all", ref, **kw)
    assert (run / "mix" / "ideal" / "round-0.json").read_text() == stored  # the NaN round was not cached
