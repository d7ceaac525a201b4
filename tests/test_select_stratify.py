"""Stratified selection: largest-remainder quotas, selector-per-stratum equality, token budgets, strata that run
out, seeds, reference-row exclusion, mixtures, the cluster fallback, DaaR's single fit, the domain mix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_pool import make_run

from curate.errors import ParameterError
from curate.select import Budget, PoolView, make_selector, parse_stratify, select
from curate.select.selector import Ranking, Selector
from curate.select.stratify import domain_mix, largest_remainder, mix_divergence

# ---------------------------------------------------------------------------------------------------------
# quotas


@pytest.mark.parametrize(
    "total, weights, caps, expected",
    [
        (10, [1, 1, 1], None, [4, 3, 3]),  # ties in remainder go to the lower index
        (7, [5, 3, 2], None, [4, 2, 1]),  # 3.5, 2.1, 1.4: the one spare seat to the .5
        (25, [60, 30, 20, 10], None, [13, 6, 4, 2]),  # 12.5, 6.25, 4.17, 2.08
        (3, [0.5, 0.25, 0.25], None, [1, 1, 1]),  # 1.5, .75, .75: spare seats to the two .75
        (10, [6, 3, 1], [2, 100, 100], [2, 6, 2]),  # share 6 > cap 2: the other 8 split 3:1
        (10, [1, 1, 1], [1, 1, 1], [1, 1, 1]),  # the caps hold less than the total
        (5, [0, 2, 3], None, [0, 2, 3]),
        (6, [1, 1, 1], [0, 5, 5], [0, 3, 3]),  # an empty stratum gets nothing, its share passes on
        (0, [1, 2], None, [0, 0]),
        (4, [2, 1, 1], [1, 1, 9], [1, 1, 2]),  # shares 2, 1, 1: the first is capped at 1, passing on 1
    ],
)
def test_largest_remainder_hand_examples(total, weights, caps, expected):
    got = largest_remainder(total, weights, caps)
    assert got.tolist() == expected
    assert got.sum() == min(total, sum(caps) if caps else total)


def test_largest_remainder_is_exact_on_floats_and_checks_inputs():
    # 1/3 each of 100: floats would make the three remainders differ in the last bit; fractions keep the tie
    assert largest_remainder(100, [1 / 3, 1 / 3, 1 / 3]).tolist() == [34, 33, 33]
    # a float weight is the decimal it prints as: 0.3 and 0.1 tie (remainders 1/2 each), the lower index wins,
    # as with the integer weights 3 and 1; the binary 0.29999... had given the unit to 0.1
    assert largest_remainder(5, [0.3, 0.1, 0.6]).tolist() == largest_remainder(5, [3, 1, 6]).tolist() == [2, 0, 3]
    with pytest.raises(ValueError, match=">= 0"):
        largest_remainder(3, [1, -1])
    with pytest.raises(ValueError, match="weight 0"):
        largest_remainder(3, [0, 0])
    with pytest.raises(ValueError, match="non-negative integer"):
        largest_remainder(2.5, [1, 1])


# ---------------------------------------------------------------------------------------------------------
# a pool of four domains (sizes 60, 30, 20, 10), each a few clusters of vectors, with every artefact


SIZES = {"a": 60, "b": 30, "c": 20, "d": 10}


def _knn(x: np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nb = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return nb.astype(np.int64), np.take_along_axis(sims, nb, axis=1).astype(np.float32)


def pool(seed: int = 0, sizes: dict[str, int] = SIZES) -> dict:
    rng = np.random.default_rng(seed)
    domains = [d for d, c in sizes.items() for _ in range(c)]
    n = len(domains)
    perm = rng.permutation(n)  # interleave the domains in pool order
    domains = [domains[i] for i in perm]
    centres = rng.standard_normal((12, 16))
    lab = np.array([{"a": 0, "b": 3, "c": 6, "d": 9}[d] for d in domains]) + rng.integers(0, 3, n)
    x = centres[lab] + 0.6 * rng.standard_normal((n, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return {
        "ids": [f"r{i}" for i in range(n)],
        "domains": domains,
        "vectors": x,
        "signals": {
            "quality": rng.random(n),
            "depth": rng.random(n),
            "tokens": rng.integers(5, 60, n).astype(np.float64),
        },
        "cells": rng.integers(0, 9, n),
        "clusters": lab // 4,
        "knn": _knn(x),
    }


def view_of(p: dict) -> PoolView:
    return PoolView.from_arrays(
        p["ids"], domains=p["domains"], vectors=p["vectors"], signals=p["signals"], cells=p["cells"],
        clusters=p["clusters"], knn=p["knn"],
    )


def alone(p: dict, rows: np.ndarray) -> PoolView:
    """The rows of one stratum as a pool of their own; its kNN graph keeps the in-stratum neighbours (a loop)."""
    local = {int(r): i for i, r in enumerate(rows)}
    nb, sims = p["knn"]
    k = nb.shape[1]
    sub_nb = np.full((rows.size, k), -1, dtype=np.int64)
    sub_s = np.zeros((rows.size, k), dtype=np.float32)
    for i, r in enumerate(rows):
        kept = [(local[int(j)], s) for j, s in zip(nb[r], sims[r], strict=True) if int(j) in local]
        for c, (j, s) in enumerate(kept):
            sub_nb[i, c], sub_s[i, c] = j, s
    return PoolView.from_arrays(
        [p["ids"][r] for r in rows],
        domains=[p["domains"][r] for r in rows],
        vectors=p["vectors"][rows],
        signals={name: v[rows] for name, v in p["signals"].items()},
        cells=p["cells"][rows],
        clusters=p["clusters"][rows],
        knn=(sub_nb, sub_s),
    )


def rows_of(p: dict, domain: str) -> np.ndarray:
    return np.flatnonzero(np.asarray(p["domains"]) == domain)


def per_stratum(sel, p: dict) -> dict[str, list[int]]:
    """Selected positions of each domain, in the selection's (within-stratum) order."""
    out: dict[str, list[int]] = {d: [] for d in SIZES}
    for q in sel.positions.tolist():
        out[p["domains"][q]].append(q)
    return out


METHODS = {
    "random": {},
    "k-center": {},
    "facility-location": {},
    "deita": {"signal": "quality"},
    "ila": {"signal": "depth"},
    "top-signal": {"signal": "quality"},
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_stratified_equals_the_selector_run_on_each_stratum_alone(method):
    p = pool()
    sel = make_selector(method, **METHODS[method]).select(view_of(p), 25, seed=3, stratify="domain")
    quotas = {"a": 13, "b": 6, "c": 4, "d": 2}  # largest remainder of 25 over 60:30:20:10
    assert len(sel) == 25
    got = per_stratum(sel, p)
    for d, q in quotas.items():
        rows = rows_of(p, d)
        ref = make_selector(method, **METHODS[method]).select(alone(p, rows), q, seed=3)
        assert got[d] == rows[ref.positions].tolist(), d
        mine = [r for r, pos in zip(sel.reasons, sel.positions.tolist(), strict=True) if p["domains"][pos] == d]
        assert mine == [f"domain {d}: {r}" for r in ref.reasons]
    st = sel.stats["stratify"]
    assert {d: st["strata"][d]["quota"] for d in SIZES} == quotas
    assert {d: st["strata"][d]["selected"] for d in SIZES} == quotas
    assert st["by"] == "domain" and st["passed_on"] == 0 and st["target"] == "pool"
    # rows interleave by within-stratum progress (r + 0.5) / quota: a 0.04, b 0.08, a 0.12, c 0.125, ...
    doms = [p["domains"][q] for q in sel.positions]
    assert doms[:4] == ["a", "b", "a", "c"]
    for length in range(1, 26):  # so every prefix keeps the mix to within a row per stratum
        for d, q in quotas.items():
            assert abs(doms[:length].count(d) - q * length / 25) < 1


def test_unstratified_default_is_unchanged_and_records_the_mix():
    p = pool()
    v = view_of(p)
    plain = make_selector("k-center").select(v, 25, seed=3)
    explicit = make_selector("k-center").select(v, 25, seed=3, stratify="none")
    assert plain.positions.tolist() == explicit.positions.tolist()
    assert "stratify" not in plain.stats
    mix = plain.stats["mix"]
    assert mix["pool"] == SIZES and sum(mix["selected"].values()) == 25
    sel = np.asarray([mix["selected"].get(d, 0) for d in SIZES]) / 25
    assert mix["total_variation"] == pytest.approx(0.5 * np.abs(sel - np.array([60, 30, 20, 10]) / 120).sum())
    strat = make_selector("k-center").select(v, 25, seed=3, stratify="domain")
    # 13/25 vs 1/2, 6/25 vs 1/4, 4/25 vs 1/6, 2/25 vs 1/12: only the rounding of the quotas
    assert strat.stats["mix"]["total_variation"] == pytest.approx(0.5 * (0.02 + 0.01 + 1 / 150 + 1 / 300))


def test_same_seed_same_selection_and_seed_matters():
    v = view_of(pool())
    for method in ("random", "k-center", "ila"):
        a = make_selector(method, **METHODS[method]).select(v, 30, seed=7, stratify="domain")
        b = make_selector(method, **METHODS[method]).select(view_of(pool()), 30, seed=7, stratify="domain")
        assert a.positions.tolist() == b.positions.tolist() and a.reasons == b.reasons
    r0 = make_selector("random").select(v, 30, seed=0, stratify="domain")
    r1 = make_selector("random").select(v, 30, seed=1, stratify="domain")
    assert r0.positions.tolist() != r1.positions.tolist()


@pytest.mark.parametrize("method", ["random", "k-center", "ila"])
def test_token_budget_split_by_largest_remainder_of_tokens(method):
    p = pool()
    tok = p["signals"]["tokens"]
    budget = 800
    sel = make_selector(method, **METHODS[method]).select(view_of(p), f"{budget}tok", seed=2, stratify="domain")
    caps = [int(tok[rows_of(p, d)].sum()) for d in SIZES]
    quotas = largest_remainder(budget, [SIZES[d] for d in SIZES], caps)
    got = per_stratum(sel, p)
    st = sel.stats["stratify"]
    assert st["unit"] == "tokens"
    first_round = 0
    for d, q in zip(SIZES, quotas.tolist(), strict=True):
        rows = rows_of(p, d)
        e = st["strata"][d]
        assert e["quota"] == q
        first_round += int(tok[rows[make_selector(method, **METHODS[method]).select(
            alone(p, rows), f"{q}tok", seed=2).positions]].sum())
        final = e.get("quota_after_passing_on", q)  # the fragments left, offered to the strata again
        ref = make_selector(method, **METHODS[method]).select(alone(p, rows), f"{final}tok", seed=2)
        assert got[d] == rows[ref.positions].tolist()
        assert e["tokens"] == int(tok[got[d]].sum()) <= final
    spent = int(tok[sel.positions].sum())
    assert spent <= budget and sel.stats["tokens"] == spent
    assert st["leftover_filled"] == spent - first_round > 0
    unselected = np.setdiff1d(np.arange(tok.size), sel.positions)
    assert budget - spent < tok[unselected].min()  # no row left out would still fit


def test_a_stratum_that_runs_out_passes_its_leftover_on():
    p = pool()
    # domain d: every quality is NaN but one, so top-signal can rank one row there
    q = p["signals"]["quality"].copy()
    d_rows = rows_of(p, "d")
    q[d_rows[1:]] = np.nan
    p["signals"]["quality"] = q
    v = view_of(p)
    mix = {"a": 1, "b": 1, "c": 1, "d": 1}  # equal quotas: d's 10 of 40 cannot be met from 1 eligible row
    sel = make_selector("top-signal", signal="quality").select(v, 40, seed=0, stratify="domain", mixture=mix)
    st = sel.stats["stratify"]
    # eligible caps 60, 30, 20, 1: quotas 13, 13, 13, 1 (39 over three equal weights)
    assert {d: st["strata"][d]["quota"] for d in SIZES} == {"a": 13, "b": 13, "c": 13, "d": 1}
    assert len(sel) == 40 and per_stratum(sel, p)["d"] == [int(d_rows[0])]
    assert st["target"] == "mixture"

    # Deita: domain c is ten copies of one row, so its filter keeps one and the stratum runs out mid-run
    p = pool()
    c_rows = rows_of(p, "c")
    p["vectors"][c_rows] = p["vectors"][c_rows[0]]
    sel = make_selector("deita", signal="quality").select(view_of(p), 25, seed=0, stratify="domain")
    st = sel.stats["stratify"]["strata"]
    assert st["c"]["selected"] == 1 and st["c"]["ran_out"] and st["c"]["quota"] == 4
    assert sel.stats["stratify"]["passed_on"] == 3 and len(sel) == 25
    assert sum(st[d]["selected"] for d in SIZES) == 25
    assert sum(st[d].get("quota_after_passing_on", st[d]["quota"]) for d in SIZES) == 25
    # without stratification the same filter would raise; within strata the shortfall passes on instead
    with pytest.raises(ValueError, match="near-duplicates"):
        make_selector("deita", signal="quality").select(alone(p, c_rows), 4, seed=0)


def test_empty_strata_and_mixture_domains_missing_from_the_pool():
    p = pool()
    v = view_of(p)
    sel = make_selector("random").select(v, 20, seed=0, stratify="domain", mixture={"a": 3, "b": 1, "zzz": 5})
    st = sel.stats["stratify"]
    assert {d: st["strata"][d]["selected"] for d in SIZES} == {"a": 15, "b": 5, "c": 0, "d": 0}
    assert st["mixture_domains_not_in_pool"] == ["zzz"]
    assert st["total_variation_vs_target"] == pytest.approx(0.0)
    # every row of d excluded: d is empty, its share goes to the others
    d_rows = rows_of(p, "d")
    sel = make_selector("random").select(v, 22, seed=0, stratify="domain", exclude=d_rows)
    st = sel.stats["stratify"]["strata"]
    assert st["d"]["eligible"] == 0 and st["d"]["selected"] == 0
    assert {d: st[d]["quota"] for d in "abc"} == {"a": 12, "b": 6, "c": 4}
    with pytest.raises(ValueError, match="no weight"):
        make_selector("random").select(v, 5, stratify="domain", mixture={"zzz": 1})


@pytest.mark.parametrize("method", ["random", "ila", "k-center"])
def test_reference_rows_stay_excluded_within_strata(method):
    p = pool()
    v = view_of(p)
    exclude = np.arange(0, 120, 3)  # 40 rows, in every domain
    sel = make_selector(method, **METHODS[method]).select(v, 30, seed=1, stratify="domain", exclude=exclude)
    assert not np.isin(sel.positions, exclude).any() and len(sel) == 30
    eligible = {d: int((~np.isin(rows_of(p, d), exclude)).sum()) for d in SIZES}
    quotas = largest_remainder(30, list(eligible.values()))
    st = sel.stats["stratify"]["strata"]
    got = per_stratum(sel, p)
    for d, q in zip(SIZES, quotas.tolist(), strict=True):
        assert st[d]["eligible"] == eligible[d] and st[d]["quota"] == q
        rows = rows_of(p, d)
        ref = make_selector(method, **METHODS[method]).select(
            alone(p, rows), q, seed=1, exclude=np.flatnonzero(np.isin(rows, exclude))
        )
        assert got[d] == rows[ref.positions].tolist()


def test_no_domains_falls_back_to_clusters_and_says_so():
    p = pool()
    p["domains"] = [None] * len(p["ids"])
    sel = make_selector("random").select(view_of(p), 12, seed=0, stratify="domain")
    st = sel.stats["stratify"]
    assert st["by"] == "cluster" and "no domains" in st["note"] and "no domains" in sel.stats["note"]
    sizes = np.bincount(p["clusters"])
    assert [st["strata"][f"cluster {c}"]["quota"] for c in range(sizes.size)] == largest_remainder(
        12, sizes.tolist()
    ).tolist()
    bare = PoolView.from_arrays(p["ids"])
    with pytest.raises(ParameterError, match="clusters"):
        make_selector("random").select(bare, 5, stratify="domain")
    by_cluster = make_selector("random").select(view_of(pool()), 12, seed=0, stratify="cluster")
    assert by_cluster.stats["stratify"]["by"] == "cluster" and "note" not in by_cluster.stats["stratify"]


def test_daar_fits_its_probes_once_and_takes_each_stratum_in_pool_order(monkeypatch):
    from curate.select.daar import DaaRSelector

    p = pool()
    calls = []
    real = DaaRSelector.rank

    def counted(self, view, k, *, seed, budget):
        calls.append(view.n)
        return real(self, view, k, seed=seed, budget=budget)

    monkeypatch.setattr(DaaRSelector, "rank", counted)
    kw = {"cluster_features": "embeddings", "probe_features": "embeddings", "probe_size": 120, "epochs": 3}
    v = view_of(p)
    sel = make_selector("daar", **kw).select(v, 25, seed=0, stratify="domain")
    assert calls == [120]  # one fit, on the whole pool
    full = make_selector("daar", **kw).rank_pool(v, seed=0, budget=Budget(rows=25)).positions
    got = per_stratum(sel, p)
    for d, q in {"a": 13, "b": 6, "c": 4, "d": 2}.items():
        assert got[d] == [int(r) for r in full if p["domains"][r] == d][:q]
    assert sel.stats["stratify"]["scope"] == "pool" and "daar_domains" in sel.stats


def test_domain_mix_and_divergence_hand_example():
    v = PoolView.from_arrays([f"r{i}" for i in range(8)], domains=["x"] * 6 + ["y"] * 2)
    mix = domain_mix(v, np.array([6, 7]))
    assert mix["pool"] == {"x": 6, "y": 2} and mix["selected"] == {"x": 0, "y": 2}
    assert mix["total_variation"] == pytest.approx(0.75)
    assert mix["kl"] == pytest.approx(np.log(1 / 0.25))
    assert mix_divergence({"x": 1}, {}) == {"total_variation": None, "kl": None}


def test_parse_stratify():
    assert parse_stratify("none") == ("none", None)
    assert parse_stratify("domain:ideal") == ("domain", "ideal")
    assert parse_stratify("none", "ideal") == ("domain", "ideal")
    for bad in ("domains", "cluster:ideal"):
        with pytest.raises(ParameterError):
            parse_stratify(bad)


def test_select_stage_cli_mixture_file_and_compare_flag(tmp_path):
    from typer.testing import CliRunner

    from curate.cli import app
    from curate.compare import compare

    run = make_run(tmp_path / "run", n=40, map_=True)  # domains cycle code, math, chat, None
    (run.root / "mixtures").mkdir()
    (run.root / "mixtures" / "m.json").write_text(json.dumps(
        {"domains": ["code", "math"], "rounds": [{"round": 0, "weights": {"code": 1}},
                                                  {"round": 1, "weights": {"code": 3, "math": 1}}]}
    ))
    sel = select(run, "random", 8, seed=0, stratify="domain:m", name="mixed")
    st = sel.stats["stratify"]
    assert {d: st["strata"][d]["selected"] for d in ("code", "math", "chat", "(none)")} == {
        "code": 6, "math": 2, "chat": 0, "(none)": 0
    }
    assert st["mixture"].endswith("mixtures/m.json")
    select(run, "random", 8, seed=0, stratify="domain", name="strat")
    res = CliRunner().invoke(app, ["select", "--run", str(run.root), "-m", "random", "-b", "8",
                                   "--stratify", "cluster", "--name", "bycl"])
    assert res.exit_code == 0, res.output
    bad = CliRunner().invoke(app, ["select", "--run", str(run.root), "-m", "random", "-b", "8",
                                   "--stratify", "domians"])
    assert bad.exit_code != 0 and "stratify must be one of" in bad.output
    t = {r["selection"]: r for r in compare(run, ["mixed", "strat", "bycl"]).to_dicts()}
    assert t["strat"]["stratify"] == "domain" and t["bycl"]["stratify"] == "cluster"
    assert t["strat"]["mix_tv"] == pytest.approx(0.0) and t["strat"]["mix_flag"] == ""
    # mixed: 6 code + 2 math against a pool of 10 per domain: tv = 0.5 * (0.5 + 0 + 0.25 + 0.25) = 0.5
    assert t["mixed"]["mix_tv"] == pytest.approx(0.5) and t["mixed"]["mix_flag"] == "DIVERGES"


def test_daar_band_ranks_the_pool_once_and_its_band_caps_each_stratum():
    p = pool()
    v = view_of(p)
    sel_kw = {"metric": "inter", "band": [0, 50], "descending": False}
    full = make_selector("daar_band", **sel_kw).rank_pool(v, seed=0, budget=Budget(rows=40)).positions
    assert full.size == 60  # half of each domain: 30 + 15 + 10 + 5
    sel = make_selector("daar_band", **sel_kw).select(v, 30, seed=0, stratify="domain", mixture={"a": 1, "d": 1})
    st = sel.stats["stratify"]["strata"]
    # equal weights for a and d: 15 each, but d's band holds 5 rows, so a (band of 30) takes the other 10
    assert st["d"]["ran_out"] and st["d"]["selected"] == 5 and st["a"]["selected"] == 25 and len(sel) == 30
    got = per_stratum(sel, p)
    for d in ("a", "d"):
        assert got[d] == [int(r) for r in full if p["domains"][r] == d][: st[d]["selected"]]
    # first quotas 20 / 10 (d holds 10 rows), then d's band gives 5: its other 5 pass on to a
    assert (st["a"]["quota"], st["d"]["quota"], st["a"]["quota_after_passing_on"]) == (20, 10, 25)
    assert sel.stats["stratify"]["passed_on"] == 5


def test_recipe_select_stage_takes_stratify(tmp_path):
    from curate.recipe import call_stage

    run = make_run(tmp_path / "run", n=40)
    sel = call_stage("select", run, {"method": "random", "budget": 8, "stratify": "domain", "name": "r"}, seed=0).value
    assert {d: e["selected"] for d, e in sel.stats["stratify"]["strata"].items()} == {
        "(none)": 2, "chat": 2, "code": 2, "math": 2
    }


def test_passed_on_counts_only_what_strata_gave_up():
    """Token quotas of 150 each: domain a (rows of 100 tokens) can use 100 and passes 50 on; b (rows of 30) takes
    180. `passed_on` is the 50 given up, not 50 less the 30 that b received beyond its first quota."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tokens = np.array([100.0] * 10 + [30.0] * 10)
    v = PoolView.from_arrays([f"r{i}" for i in range(20)], domains=["a"] * 10 + ["b"] * 10, vectors=x,
                             signals={"tokens": tokens})
    sel = make_selector("k-center").select(v, Budget(tokens=300), seed=0, stratify="domain")
    st = sel.stats["stratify"]
    assert tokens[sel.positions].sum() == 280 and st["passed_on"] == 50
    assert (st["strata"]["a"]["tokens"], st["strata"]["b"]["tokens"]) == (100, 180)


class _PoolOrder(Selector):
    """A pool-scope selector for the tests: ranks the whole pool in reverse position order."""

    name = "test-pool-order"
    stratify_scope = "pool"

    def rank(self, view, k, *, seed, budget):
        return Ranking(np.arange(view.n)[::-1].copy())


@pytest.mark.parametrize("selector", [make_selector("random"), _PoolOrder()], ids=["stratum-scope", "pool-scope"])
def test_token_fragments_left_by_the_strata_are_offered_again(selector):
    """Token quotas of 150 each: domain a (rows of 100 tokens) spends 100 and leaves 50 with rows still ranked;
    b (rows of 30) spends 150. The 50 go back to the strata: a cannot use them, b takes one row more (quota 200),
    so 280 of the 300 tokens are spent and 20 are left, less than any row."""
    x = np.eye(20, 8, dtype=np.float32) + 0.01
    tokens = np.array([100.0] * 10 + [30.0] * 10)
    v = PoolView.from_arrays([f"r{i}" for i in range(20)], domains=["a"] * 10 + ["b"] * 10, vectors=x,
                             signals={"tokens": tokens})
    sel = selector.select(v, Budget(tokens=300), seed=0, stratify="domain")
    st = sel.stats["stratify"]
    assert tokens[sel.positions].sum() == 280 and st["leftover_filled"] == 30
    assert (st["strata"]["a"]["tokens"], st["strata"]["b"]["tokens"]) == (100, 180)
    assert st["strata"]["b"]["quota_after_passing_on"] == 200 and "quota_after_passing_on" not in st["strata"]["a"]
    assert not st["strata"]["a"]["ran_out"] and st["passed_on"] == 0


def test_a_relative_mixture_file_is_watched_by_the_select_stage(tmp_path, monkeypatch):
    """A mixture (or validation) file named relative to the working directory is fingerprinted where it is:
    editing it reruns the selection (its key read a run-relative path that never exists)."""
    run = make_run(tmp_path / "run", n=40)
    monkeypatch.chdir(tmp_path)

    def write(code: int, math: int) -> None:
        (tmp_path / "m.json").write_text(json.dumps(
            {"domains": ["code", "math"], "rounds": [{"round": 0, "weights": {"code": code, "math": math}}]}))

    def picked() -> dict:
        st = select(run, "random", 8, seed=0, stratify="domain", mixture="m.json", name="rel").stats["stratify"]
        return {d: st["strata"][d]["selected"] for d in ("code", "math")}

    write(3, 1)
    assert picked() == {"code": 6, "math": 2}
    write(1, 3)
    assert picked() == {"code": 2, "math": 6}
    # the same file named in the stratify spec
    sel = select(run, "random", 8, seed=0, stratify="domain:m.json", name="spec").stats["stratify"]["strata"]
    assert sel["math"]["selected"] == 6
    write(3, 1)
    sel = select(run, "random", 8, seed=0, stratify="domain:m.json", name="spec").stats["stratify"]["strata"]
    assert sel["code"]["selected"] == 6


def test_a_stratum_whose_retake_gains_nothing_is_not_run_again():
    """Candidates a selector cannot rank stay short enough for ever: the fill runs such a stratum once more at
    most, not once per pass."""
    from curate.select.budget import Taken
    from curate.select.stratify import _fill_leftover

    tokens = np.array([5.0] * 6 + [4.0] * 3)  # stratum 0: rows 0-5 (5 tokens); stratum 1: rows 6-8 (4 tokens)

    def taken(pos):
        pos = np.asarray(pos, dtype=np.int64)
        return Taken(pos, np.ones(pos.size), [""] * pos.size, {}, pos.size, False)

    calls = []

    def retake(s, quota):
        calls.append((s, quota))
        if s == 0:  # its free rows cannot be ranked: never gains
            return taken([0])
        return taken(np.arange(6, 6 + min(3, int(quota // 4))))

    got = {0: taken([0]), 1: taken([6])}
    quotas = np.array([25, 5])
    gained = _fill_leftover(got, quotas, retake, tokens, 30, [1, 1], [np.arange(6), np.arange(6, 9)])
    assert gained == 8 and got[1].positions.tolist() == [6, 7, 8] and quotas.tolist() == [25, 25]
    # stratum 0 (the larger shortfall) is offered the 21 left first, once; 13 are left after stratum 1's gain
    assert calls == [(0, 26), (1, 25)]


def test_a_nan_token_count_is_an_error_as_without_strata():
    """A NaN made its stratum's token cap a garbage negative number: the stratum silently got no quota (here
    a took the whole budget, 10 tokens in two rows of 5, and b none)."""
    tok = np.array([5.0, 5.0, 5.0, np.nan, 2.0, 3.0])
    v = PoolView.from_arrays([f"r{i}" for i in range(6)], domains=["a", "a", "a", "b", "b", "b"],
                             signals={"tokens": tok})
    for stratify in ("none", "domain"):
        with pytest.raises(ValueError, match="`tokens` signal has negative or non-finite values"):
            make_selector("random").select(v, "10tok", seed=0, stratify=stratify)
    # an excluded row's count is not spent: its NaN is no error
    sel = make_selector("random").select(v, "10tok", seed=0, stratify="domain", exclude=np.array([3]))
    assert sel.stats["stratify"]["strata"]["b"]["quota"] == 4 and sorted(sel.positions.tolist())[-2:] == [4, 5]
