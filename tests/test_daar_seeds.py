"""DaaR seed generation: parsing, prompts, sliding window, cosine rejection, stops, determinism, the LM-backed
completer on a tiny random LM, and the `daar` selector's generate_seeds wiring and cache."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fixtures_lm import SENTENCES, sentence_pool_run, tiny_lm  # noqa: F401  (fixture)

from curate.select import daar_seeds
from curate.select.daar_seed_io import load_domain_descriptions, read_seed_files
from curate.select.daar_seeds import (
    LMCompleter,
    generate_seeds,
    parse_pair,
    seed_messages,
    window_examples,
)

DOMAINS = {"math": "Arithmetic and algebra word problems.", "code": "Writing small Python functions."}


def pair(p: str, r: str = "ok") -> str:
    return f"Instruction: {p}\nResponse: {r}"


class Scripted:
    """A completer returning scripted outputs in order, recording the messages and seeds it was given."""

    def __init__(self, outputs: list[str]) -> None:
        self.outputs = list(outputs)
        self.calls: list[tuple[list[dict], int]] = []

    def __call__(self, messages: list[dict], seed: int) -> str:
        self.calls.append((messages, seed))
        return self.outputs[len(self.calls) - 1]


def embed_table(table: dict[str, list[float]]):
    """Fake embed: the vector of each text is looked up by its instruction (first line after 'Instruction: ')."""

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            key = re.match(r"Instruction: (.*)\n", t).group(1)
            v = np.asarray(table[key], dtype=np.float64)
            out.append(v / np.linalg.norm(v))
        return np.array(out)

    return embed


def unit2(cos: float) -> list[float]:
    """A 2-d vector whose cosine to (1, 0) is `cos`."""
    return [cos, float(np.sqrt(1 - cos**2))]


# ---------------------------------------------------------------------------------------------------------
# parsing and prompts


def test_parse_pair_formats_and_junk() -> None:
    assert parse_pair("Instruction: Add 2 and 3.\nResponse: 5") == ("Add 2 and 3.", "5")
    assert parse_pair("Sure! Here it is:\n\n**Instruction:** Sort a list.\n**Response:** Use sorted().\n") == (
        "Sort a list.",
        "Use sorted().",
    )
    assert parse_pair("### Instruction:\nTranslate.\n### Input:\nhello\n### Output:\nbonjour") == (
        "Translate.\nhello",
        "bonjour",
    )
    # only the first pair; multi-line response kept
    two = "Instruction: A?\nResponse: line 1\nline 2\nInstruction: B?\nResponse: b"
    assert parse_pair(two) == ("A?", "line 1\nline 2")
    assert parse_pair("Question: what is 2+2? Answer: 4") == ("what is 2+2?", "4")
    for junk in ("", "no labels at all", "Instruction: only an instruction", "Instruction: ?\nResponse: x",
                 "Instruction: do it\nResponse:   ", "Response: x\nInstruction: y", None):
        assert parse_pair(junk) is None, junk


def test_seed_messages_name_the_domain_exclude_others_and_show_the_window() -> None:
    msgs = seed_messages("math", DOMAINS)
    user = msgs[-1]["content"]
    assert msgs[0]["role"] == "system" and msgs[-1]["role"] == "user"
    assert '"math": Arithmetic and algebra word problems.' in user
    assert "NOT be about" in user and "- code: Writing small Python functions." in user
    assert "- math:" not in user and "Example" not in user
    aug = seed_messages("math", DOMAINS, [("P1", "R1"), ("P2", "R2")])[-1]["content"]
    assert "Example 1:\nInstruction: P1\nResponse: R1" in aug and "Example 2:\nInstruction: P2" in aug
    assert "clearly different" in aug


def test_window_examples_rotate_over_kept_samples() -> None:
    kept = [(f"p{i}", "r") for i in range(5)]
    names, start = [], 0
    for _ in range(3):
        ex, start = window_examples(kept, start, 3)
        names.append([p for p, _ in ex])
    assert names == [["p0", "p1", "p2"], ["p3", "p4", "p0"], ["p1", "p2", "p3"]] and start == 4
    assert window_examples(kept[:2], 7, 3) == (kept[:2], 2)


# ---------------------------------------------------------------------------------------------------------
# rejection sampling and stops


def test_rejection_by_cosine_threshold_and_stats() -> None:
    table = {"A": [1.0, 0.0], "B": unit2(0.8), "C": unit2(0.9), "D": [0.0, 1.0]}
    outs = [pair("A"), pair("A"), "junk", pair("C"), pair("B"), pair("D")]
    fake = Scripted(outs)
    rows = generate_seeds(
        None, {"math": DOMAINS["math"]}, n_per_domain=3, n_initial=1, complete=fake,
        embed=embed_table(table), progress=False,
    )
    # A kept; A again (cos 1) rejected; junk unparsable; C (cos .9 to A) rejected; B (.8) kept;
    # D: cos 0 to A and .6 to B -> kept
    assert [r["prompt"] for r in rows] == ["A", "B", "D"]
    assert rows.stats["math"] == {"attempts": 6, "accepted": 3, "unparsable": 1, "rejected": 2, "threshold": 0.85}
    assert rows[0] == {"domain": "math", "prompt": "A", "response": "ok", "text": "Instruction: A\nOutput: ok"}
    # a per-domain threshold of 0.95 accepts C; then B is rejected by C alone (cos .98 >= .95, cos .8 to A):
    # the test is against EVERY kept sample
    fake = Scripted(outs)
    rows = generate_seeds(
        None, {"math": DOMAINS["math"]}, n_per_domain=3, n_initial=1, complete=fake, threshold={"math": 0.95},
        embed=embed_table(table), progress=False,
    )
    assert [r["prompt"] for r in rows] == ["A", "C", "D"] and rows.stats["math"]["threshold"] == 0.95
    with pytest.raises(ValueError, match="unknown domain"):
        generate_seeds(None, DOMAINS, complete=fake, embed=embed_table(table), threshold={"chat": 0.9})


def test_sliding_window_in_the_prompts() -> None:
    table = {f"P{i}": np.eye(6)[i].tolist() for i in range(6)}
    fake = Scripted([pair(f"P{i}", f"R{i}") for i in range(6)])
    rows = generate_seeds(
        None, {"math": DOMAINS["math"]}, n_per_domain=6, n_initial=2, window=2, complete=fake,
        embed=embed_table(table), progress=False,
    )
    assert len(rows) == 6
    shown = [re.findall(r"Instruction: (P\d)", m[-1]["content"]) for m, _ in fake.calls]
    # first n_initial=2 requests: no examples; then a window of 2 sliding over the (growing) kept list:
    # [P0 P1] (all, next 2) -> 3 kept from 2: [P2 P0] (next 1) -> 4 kept from 1: [P1 P2] -> 5 kept from 3: [P3 P4]
    assert shown == [[], [], ["P0", "P1"], ["P2", "P0"], ["P1", "P2"], ["P3", "P4"]]


def test_max_attempts_warns_and_zero_seeds_is_an_error() -> None:
    table = {"A": [1.0, 0.0]}
    fake = Scripted([pair("A")] * 4 + ["junk"] * 4)
    with pytest.warns(RuntimeWarning, match="'math' stopped at max_attempts=4 with 1 of 3"):
        rows = generate_seeds(
            None, {"math": "m"}, n_per_domain=3, max_attempts=4, complete=fake, embed=embed_table(table),
            progress=False,
        )
    assert len(rows) == 1 and rows.stats["math"]["rejected"] == 3 and len(fake.calls) == 4
    fake = Scripted(["junk"] * 3)
    with pytest.raises(RuntimeError, match="'math' got no usable seed in 3 attempts \\(3 unparsable"):
        generate_seeds(None, {"math": "m"}, max_attempts=3, complete=fake, embed=embed_table(table), progress=False)
    with pytest.raises(ValueError, match="description"):
        generate_seeds(None, {"math": ""}, complete=fake, embed=embed_table(table))
    with pytest.raises(ValueError, match="needs a model"):
        generate_seeds(None, {"math": "m"}, embed=embed_table(table))


def test_same_seed_same_seeds() -> None:
    pool = [f"Q{i}" for i in range(40)]
    table = {q: np.eye(40)[i].tolist() for i, q in enumerate(pool)}

    def random_completer(messages: list[dict], seed: int) -> str:
        return pair(pool[np.random.default_rng(seed).integers(40)])

    def run(seed: int) -> list[str]:
        rows = generate_seeds(
            None, DOMAINS, n_per_domain=4, seed=seed, complete=random_completer, embed=embed_table(table),
            progress=False,
        )
        assert rows.stats["math"]["accepted"] == rows.stats["code"]["accepted"] == 4
        return [r["domain"] + r["prompt"] for r in rows]

    a = run(0)
    assert a == run(0) and a[:4] != a[4:]  # reproducible; the two domains draw different streams
    assert a != run(1)


# ---------------------------------------------------------------------------------------------------------
# the LM-backed completer


def test_lm_completer_on_a_tiny_model_is_seeded_and_junk_is_a_failed_attempt(tiny_lm) -> None:  # noqa: F811
    import torch

    lm = LMCompleter(tiny_lm, max_new_tokens=8)
    msgs = seed_messages("math", DOMAINS)
    state = torch.get_rng_state()
    a, b, c = lm(msgs, 1), lm(msgs, 1), lm(msgs, 2)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert a.startswith("Instruction:") and len(a) > len("Instruction:") and a == b and a != c  # prefilled
    outs: list[str] = []

    def recording(m: list[dict], s: int) -> str:
        outs.append(lm(m, s))
        return outs[-1]

    # the random tiny LM writes word salad: each attempt is counted as unparsable, then a clear error
    with pytest.raises(RuntimeError, match="no usable seed in 2 attempts \\(2 unparsable"):
        generate_seeds(None, DOMAINS, max_attempts=2, complete=recording, embed=embed_table({}), progress=False)
    assert len(outs) == 2 and all(parse_pair(o) is None for o in outs)
    # the default completer (built from `model`) runs end to end as well
    with pytest.raises(RuntimeError, match="no usable seed"):
        generate_seeds(str(tiny_lm), DOMAINS, max_attempts=1, max_new_tokens=4, embed=embed_table({}), progress=False)
    with pytest.raises(ValueError, match="context"):
        LMCompleter(tiny_lm, max_new_tokens=400)(msgs, 0)


# ---------------------------------------------------------------------------------------------------------
# selector wiring


class DomainFake:
    """Completer writing fixture sentences as pairs: per domain its own sentences, with one repeat."""

    plan = {"math": [0, 7, 0, 1], "code": [2, 3, 10]}

    def __init__(self, *a, **k) -> None:
        self.n = {d: 0 for d in self.plan}

    def __call__(self, messages: list[dict], seed: int) -> str:
        dom = re.search(r'domain "(\w+)"', messages[-1]["content"]).group(1)
        i = self.plan[dom][self.n[dom]]
        self.n[dom] += 1
        return pair(SENTENCES[i], SENTENCES[(i + 1) % 12])


def test_selector_generates_caches_and_reuses_seeds(tiny_lm, tmp_path, monkeypatch) -> None:  # noqa: F811
    from curate.select import make_selector, select

    run = sentence_pool_run(tmp_path / "run")
    desc = tmp_path / "domains.yaml"
    desc.write_text("math: Arithmetic word problems.\ncode: Small Python functions.\n")
    kw = {
        "model": str(tiny_lm), "layer": 1, "max_length": 64, "epochs": 3, "folds": 1, "generate_seeds": True,
        "domain_descriptions": str(desc), "seeds_per_domain": 3, "seed_threshold": 0.999,
    }
    monkeypatch.setattr(daar_seeds, "LMCompleter", DomainFake)
    sel = select(run, "daar", 10, seed=0, **kw)
    files = sorted((run / "features").glob("daar_seeds-*.jsonl"))
    assert len(files) == 1 and len(sel) == 10
    domains, texts = read_seed_files(files)
    assert domains == ["code"] * 3 + ["math"] * 3  # by name; the repeated math sentence was rejected (cosine 1)
    assert texts[3] == f"Instruction: {SENTENCES[0]}\nOutput: {SENTENCES[1]}"
    side = json.loads(files[0].with_suffix(".json").read_text())
    assert side["stats"]["math"]["attempts"] == 4 and side["stats"]["math"]["rejected"] == 1
    assert side["key"]["embed"].startswith("input_embeddings:")  # no pool embeddings in this run
    assert sel.stats["daar_domains"] == ["code", "math"] and sel.stats["seeds"].startswith("6 seeds generated")
    # a second run reuses the cache: the completer must not be built
    monkeypatch.setattr(daar_seeds, "LMCompleter", lambda *a, **k: pytest.fail("regenerated cached seeds"))
    again = select(run, "daar", 10, seed=0, name="again", **kw)
    assert again.ids == sel.ids
    # the same seeds given as a file give the same centroids, hence the same selection
    same = select(run, "daar", 10, seed=0, name="file", **{**kw, "generate_seeds": False, "seeds": str(files[0])})
    assert same.ids == sel.ids
    with pytest.raises(ValueError, match="not both"):
        make_selector("daar", model=str(tiny_lm), generate_seeds=True, seeds=str(files[0]), domain_descriptions=DOMAINS)
    with pytest.raises(ValueError, match="needs domain_descriptions"):
        make_selector("daar", model=str(tiny_lm), generate_seeds=True)


def test_domain_descriptions_from_dict_json_yaml_and_errors(tmp_path) -> None:
    assert load_domain_descriptions(DOMAINS) == DOMAINS
    js = tmp_path / "d.json"
    js.write_text(json.dumps(DOMAINS))
    yml = tmp_path / "d.yml"
    yml.write_text("".join(f"{k}: {v}\n" for k, v in DOMAINS.items()))
    assert load_domain_descriptions(str(js)) == load_domain_descriptions(yml) == DOMAINS
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: cannot read"):
        load_domain_descriptions(bad)
    bad.write_text('{"math": ""}')
    with pytest.raises(ValueError, match="'math' needs a non-empty description"):
        load_domain_descriptions(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_domain_descriptions(tmp_path / "missing.yaml")


def test_requests_are_seeded_by_the_domain_name_not_its_place() -> None:
    """Each request was seeded with the domain's position in the descriptions: reordering the file (the same
    cache key: the key sorts them) gave every domain another stream."""
    from curate.select.daar_seeds import request_seed

    def run(domains: dict[str, str]) -> dict[str, list[int]]:
        seeds: dict[str, list[int]] = {}
        fresh = iter(np.eye(20))

        def completer(messages: list[dict], seed: int) -> str:
            dom = re.search(r'domain "(\w+)"', messages[-1]["content"]).group(1)
            seeds.setdefault(dom, []).append(seed)
            return pair(f"{dom} {seed}")

        generate_seeds(None, domains, n_per_domain=3, seed=5, complete=completer,
                       embed=lambda texts: np.stack([next(fresh) for _ in texts]), progress=False)
        return seeds

    given = run(DOMAINS)
    assert given == run(dict(reversed(DOMAINS.items())))
    assert given == {d: [request_seed(5, d, a) for a in range(3)] for d in DOMAINS}
    assert given["math"] != given["code"] and request_seed(5, "math", 0) != request_seed(6, "math", 0)


class SeededFake:
    """Completer whose pair depends only on the request seed."""

    def __init__(self, *a, **k) -> None:
        pass

    def __call__(self, messages: list[dict], seed: int) -> str:
        return pair(SENTENCES[seed % 12], SENTENCES[(seed // 12) % 12])


def test_generated_seeds_do_not_depend_on_the_order_of_the_descriptions(tiny_lm, tmp_path, monkeypatch) -> None:  # noqa: F811
    from curate.select.daar_seed_io import SeedSource
    from curate.view import PoolView

    monkeypatch.setattr(daar_seeds, "LMCompleter", SeededFake)
    made = []
    for i, text in enumerate(["math: Arithmetic word problems.\ncode: Small Python functions.\n",
                              "code: Small Python functions.\nmath: Arithmetic word problems.\n"]):
        run = sentence_pool_run(tmp_path / f"run{i}")
        desc = tmp_path / f"domains{i}.yaml"
        desc.write_text(text)
        src = SeedSource(generate_seeds=True, domain_descriptions=str(desc), seeds_per_domain=2, model=str(tiny_lm),
                         max_length=64, seed_threshold=0.999)
        made.append(src.generated_seed_file(PoolView.from_run(run), seed=0))
    assert made[0].name == made[1].name and made[0].read_text() == made[1].read_text()
    assert [json.loads(x)["domain"] for x in made[0].read_text().splitlines()] == ["code"] * 2 + ["math"] * 2
