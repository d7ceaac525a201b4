"""Baseline selectors: golden outputs for a fixed seed, known answers, balance and determinism."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from fixtures_pool import make_run

from curate.select import PoolView, make_selector, select


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("pool"), n=24)


@pytest.fixture(scope="module")
def view(run):
    return PoolView.from_run(run)


# golden: fixture pool of 24 rows, seed 42 (ids are the fixture's content hashes)
GOLDEN = {
    ("random", (), "5"): [
        "46d6375b0ef5454130014bcb61aebf05",
        "37b15fee1304f3c2f0fe9d4642373d52",
        "dab11b5f822e9f3f2e40391367d1511f",
        "a80c59487223ef0bdad10db3c61a7016",
        "5c83c375551bfca80b54d9f2d038ef06",
    ],
    ("balanced-random", (), "10"): [
        "37b15fee1304f3c2f0fe9d4642373d52",
        "81f83dc989ed000f745da17c7d3c2bd5",
        "66cca42b722ef1fb7689750588642315",
        "a641a91557c85e018e54f8308ba6314a",
        "dab11b5f822e9f3f2e40391367d1511f",
        "29bf248c7dfef441b4b5f8c327d8713f",
        "46d6375b0ef5454130014bcb61aebf05",
        "971e4004c629ae26681b5144128b1fe9",
        "cb0bfc12be5fc243d82d4b9a145a2bf2",
        "26fefead232cb890219961037644aa76",
    ],
    ("longest", (), "5"): [
        "dab11b5f822e9f3f2e40391367d1511f",
        "15785fef272bca7ad2ecb70cbb81d262",
        "a38f7746b803939ad7d2cdf8f57596c3",
        "0e647ab01c9ce55247083a52c6cd2aa9",
        "b38da4ccb357f5ddde9fed53d7a56c14",
    ],
    ("top-signal", (("signal", "quality"),), "4"): [
        "46d6375b0ef5454130014bcb61aebf05",
        "a80c59487223ef0bdad10db3c61a7016",
        "971e4004c629ae26681b5144128b1fe9",
        "0e647ab01c9ce55247083a52c6cd2aa9",
    ],
    ("top-signal", (("signal", "quality"), ("descending", False)), "4"): [
        "15785fef272bca7ad2ecb70cbb81d262",
        "cb0bfc12be5fc243d82d4b9a145a2bf2",
        "24267818484797076c1029a55bf61a8e",
        "66cca42b722ef1fb7689750588642315",
    ],
}


@pytest.mark.parametrize("key", list(GOLDEN), ids=lambda k: f"{k[0]}{dict(k[1])}")
def test_golden(view, key):
    method, params, budget = key
    sel = make_selector(method, **dict(params)).select(view, budget, seed=42)
    assert sel.ids == GOLDEN[key]
    again = make_selector(method, **dict(params)).select(view, budget, seed=42)
    assert again.ids == sel.ids and again.reasons == sel.reasons and np.array_equal(again.weights, sel.weights)


def test_random_is_the_seeded_permutation(view):
    sel = make_selector("random").select(view, "7", seed=3)
    assert sel.positions.tolist() == np.random.default_rng(3).permutation(24)[:7].tolist()
    assert make_selector("random").select(view, "7", seed=4).ids != sel.ids


def test_same_seed_same_bytes_on_disk(run, tmp_path):
    for method in ["random", "balanced-random", "longest"]:
        select(run, method, "9", seed=11, name="a")
        select(run, method, "9", seed=11, name="b")
        assert run.selection_path("a").read_bytes() == run.selection_path("b").read_bytes()


def test_balanced_random_quota_and_leftovers(tmp_path):
    # domains of sizes a:2, b:5, c:9 (+ 3 without domain), budget 16: an equal level t per domain capped by
    # size: t=5 gives 2+5+5+3 = 15, t=6 gives 2+5+6+3 = 16 -> a 2, b 5, c 6, none 3.
    domains = ["a"] * 2 + ["b"] * 5 + ["c"] * 9 + [None] * 3
    v = PoolView.from_arrays([f"r{i}" for i in range(len(domains))], domains=domains)
    sel = make_selector("balanced-random").select(v, "16", seed=0)
    got = {d: int(sum(1 for p in sel.positions if domains[p] == d)) for d in ["a", "b", "c", None]}
    assert got == {"a": 2, "b": 5, "c": 6, None: 3}
    # a smaller budget: level 3 -> a 2, b 3, c 3, none 3 = 11; budget 12 -> one extra for b or c
    sel = make_selector("balanced-random").select(v, "12", seed=0)
    got = {d: int(sum(1 for p in sel.positions if domains[p] == d)) for d in ["a", "b", "c", None]}
    assert got["a"] == 2 and got[None] == 3 and sorted([got["b"], got["c"]]) == [3, 4]
    assert sel.stats["quota"] == {"(none)": 3, "a": 2, "b": got["b"], "c": got["c"]}
    # every prefix is balanced: counts of any two domains with rows left differ by at most one
    full = make_selector("balanced-random").select(v, "19", seed=5)
    for k in range(1, 20):
        pref = full.positions[:k]
        counts = {d: sum(1 for p in pref if domains[p] == d) for d in ["a", "b", "c", None]}
        sizes = {"a": 2, "b": 5, "c": 9, None: 3}
        open_ = [counts[d] for d in counts if counts[d] < sizes[d]]
        if open_:
            assert max(open_) - min(open_) <= 1
            # a domain may be exhausted below the level of the others only by running out of rows
            assert all(counts[d] == sizes[d] for d in counts if counts[d] < min(open_))
    assert len(set(full.positions.tolist())) == 19


def test_longest_uses_characters_without_tokens_signal():
    prompts = ["a", "abcd", "ab", "abc"]
    responses = ["xxxxx", "", "x", "x"]  # lengths 6, 4, 3, 4
    v = PoolView.from_arrays(["p", "q", "r", "s"], prompts=prompts, responses=responses)
    sel = make_selector("longest").select(v, "3")
    assert sel.ids == ["p", "q", "s"]  # tie q/s broken by position
    assert sel.reasons[0] == "longest: 6 characters"
    assert sel.stats["length_unit"] == "characters"
    v2 = PoolView.from_arrays(["p", "q", "r", "s"], prompts=prompts, responses=responses, signals={"tokens": [1, 2, 9, 3]})
    sel2 = make_selector("longest").select(v2, "2")
    assert sel2.ids == ["r", "s"] and sel2.reasons[0] == "longest: 9 tokens"


def test_top_signal_nan_and_errors():
    v = PoolView.from_arrays(["a", "b", "c", "d"], signals={"s": [0.5, np.nan, 0.9, 0.1]})
    sel = make_selector("top-signal", signal="s").select(v, "3")
    assert sel.ids == ["c", "a", "d"] and sel.stats["n_nan"] == 1
    assert make_selector("top-signal", signal="s", descending=False).select(v, "2").ids == ["d", "a"]
    with pytest.raises(ValueError, match="NaN"):
        make_selector("top-signal", signal="s").select(v, "4")
    with pytest.raises(TypeError, match="signal=NAME"):
        make_selector("top-signal")
    with pytest.raises(KeyError, match="signal 'zzz'"):
        make_selector("top-signal", signal="zzz").select(v, "1")


def test_top_signal_token_budget(view):
    sel = make_selector("top-signal", signal="quality").select(view, "40tok", seed=0)
    tokens = view.signal("tokens")
    assert tokens[sel.positions].sum() <= 40
    # everything skipped would have overflowed at its turn
    order = np.argsort(-view.signal("quality"), kind="stable")
    used = 0.0
    taken = []
    for p in order:
        if used + tokens[p] <= 40:
            taken.append(int(p))
            used += tokens[p]
    assert sel.positions.tolist() == taken


def _farthest_first_ok(vectors: np.ndarray, order: np.ndarray) -> bool:
    """Each chosen row after the first is (one of) the farthest from those chosen before it."""
    for t in range(1, len(order)):
        prev = vectors[order[:t]]
        d = np.sqrt(np.maximum(0.0, ((vectors[:, None, :] - prev[None, :, :]) ** 2).sum(-1))).min(1)
        if d[order[t]] < d.max() - 1e-5:
            return False
    return True


def test_k_center_is_farthest_first(view):
    sel = make_selector("k-center").select(view, "8", seed=1)
    assert sel.positions.tolist() == [11, 16, 18, 13, 19, 15, 5, 1]  # golden, fixture pool, seed 1
    assert len(sel) == 8 and len(set(sel.ids)) == 8
    vec = np.asarray(view.vectors(), dtype=np.float64)
    assert _farthest_first_ok(vec, sel.positions)
    assert all(r.startswith("k-center: radius ") for r in sel.reasons)
    radii = [float(r.split()[-1]) for r in sel.reasons[1:]]
    assert radii == sorted(radii, reverse=True)  # covering radius never grows
    assert make_selector("k-center").select(view, "8", seed=1).ids == sel.ids


def test_facility_location_greedy_gains(tmp_path):
    run = make_run(tmp_path, n=24, knn=5)
    v = PoolView.from_run(run)
    sel = make_selector("facility-location").select(v, "6", seed=0)
    assert sel.positions.tolist() == [14, 0, 5, 3, 13, 8]  # golden, fixture pool with a 5-NN graph
    assert len(sel) == 6 and len(set(sel.ids)) == 6
    gains = [float(r.split()[-1]) for r in sel.reasons]
    assert all(g >= 0 for g in gains)
    assert gains == sorted(gains, reverse=True)  # submodular greedy: gains never grow
    assert make_selector("facility-location").select(v, "6", seed=0).ids == sel.ids


def test_balanced_random_falls_back_to_clusters_without_domains(tmp_path):
    run = make_run(tmp_path / "run", n=24, domains=[None], map_=True)
    sel = select(run, "balanced-random", budget=6, seed=0)
    clusters = pl.read_parquet(run.map_dir / "clusters.parquet")["cluster"].to_numpy()
    groups = np.unique(clusters)
    assert sel.stats["groups"] == "cluster" and "balanced over" in sel.stats["note"]
    assert set(sel.stats["domain_sizes"]) == {f"cluster {int(c)}" for c in groups}
    counts = np.bincount(np.searchsorted(groups, clusters[sel.positions]), minlength=groups.size)
    assert counts.max() - counts.min() <= 1  # as balanced as possible over the clusters
    side = json.loads(run.selection_path("balanced-random").with_suffix(".json").read_text())
    assert side["stats"]["groups"] == "cluster"
