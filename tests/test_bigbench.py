"""BIG-bench converter: exact rows from a tiny archive shaped like the real one, and the committed demo."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from curate.pool import bigbench as bb

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "bigbench_demo.jsonl"
ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks"

TASKS = {
    # free response, string targets; task_prefix prepended
    "alpha": {
        "keywords": ["zero-shot", "mathematics", "arithmetic"],
        "task_prefix": "Compute.\n",
        "examples": [
            {"input": "1+1=", "target": "2"},
            {"input": "2+2=", "target": "4"},
            {"input": "   ", "target": "5"},  # empty input, no choices -> prompt is only the prefix
            {"input": "3+3=", "target": ""},  # empty response -> skipped
        ],
    },
    # target as a list: the first one is the response; only non-topical keywords -> task name
    "beta": {
        "keywords": ["many-shot", "json", "non-English"],
        "examples": [
            {"input": "hello", "target": ["bonjour", "salut"]},
            {"input": "cat", "target": []},  # empty list -> skipped
        ],
    },
    # multiple choice with a task prefix; one example with an empty input (content in the choices)
    "gamma": {
        "keywords": ["multiple choice", "Answering", "commonsense", "logical reasoning"],
        "task_prefix": "Pick the right one.",
        "examples": [
            {"input": "Sky colour?", "target_scores": {"green": 0, "blue": 1, "red": 0}},
            {"input": "", "target_scores": {"The sun is cold.": 0.0, "Ice is cold.": 1.0}},
            {"input": "Both?", "target_scores": {"x": 1, "y": 1}, "target": "y"},  # tie -> first; scores win
        ],
    },
    # programmatic task: no examples
    "delta": {"keywords": ["algorithms"], "description": "programmatic"},
    # subtask folder, example-level task_prefix overriding the task's
    "eps/sub1": {
        "keywords": ["translation"],
        "task_prefix": "TASK PREFIX",
        "examples": [{"input": "a", "target": "b", "task_prefix": "OWN PREFIX"}],
    },
}


def _make_archive(path: Path, tasks: dict[str, dict]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        readme = tarfile.TarInfo(f"{ROOT}/README.md")
        body = b"not a task"
        readme.size = len(body)
        tf.addfile(readme, io.BytesIO(body))
        for name, data in tasks.items():
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(f"{ROOT}/{name}/task.json")
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return _make_archive(tmp_path / "bigbench-1.0.0.tar.gz", TASKS)


def test_exact_rows(archive: Path) -> None:
    stats = bb.ConversionStats()
    rows = list(bb.iter_rows(archive, stats=stats))
    got = [(r["task"], r["domain"], r["prompt"], r["response"]) for r in rows]
    assert got == [
        ("alpha", "mathematics", "Compute.\n\n1+1=", "2"),
        ("alpha", "mathematics", "Compute.\n\n2+2=", "4"),
        ("alpha", "mathematics", "Compute.", "5"),
        ("beta", "beta", "hello", "bonjour"),
        ("gamma", "common sense", "Pick the right one.\n\nSky colour?\n\nA. green\nB. blue\nC. red", "B. blue"),
        ("gamma", "common sense", "Pick the right one.\n\nA. The sun is cold.\nB. Ice is cold.", "B. Ice is cold."),
        ("gamma", "common sense", "Pick the right one.\n\nBoth?\n\nA. x\nB. y", "A. x"),
        ("eps/sub1", "translation", "OWN PREFIX\n\na", "b"),
    ]
    assert rows[0]["keywords"] == ["zero-shot", "mathematics", "arithmetic"]
    assert set(rows[0]) == {"prompt", "response", "domain", "task", "keywords"}
    assert stats.task_files == 5
    assert stats.tasks_without_examples == 1
    assert stats.tasks_used == 4
    assert stats.examples == 10
    assert stats.rows == 8
    assert stats.skipped_empty == 2
    assert stats.rows_per_domain == Counter({"mathematics": 3, "common sense": 3, "beta": 1, "translation": 1})


def test_task_filter_and_unknown_task(archive: Path) -> None:
    assert {r["task"] for r in bb.iter_rows(archive, tasks=["eps", "beta"])} == {"eps/sub1", "beta"}
    assert [r["task"] for r in bb.iter_rows(archive, tasks=["eps/sub1"])] == ["eps/sub1"]
    with pytest.raises(KeyError, match="nope"):
        list(bb.iter_rows(archive, tasks=["beta", "nope"]))


def test_choose_domain() -> None:
    assert bb.choose_domain(["many-shot", "Multiple Choice", "emotional understanding"], "t") == "emotional understanding"
    assert bb.choose_domain(["questions", "commonsense"], "ni/sub") == "common sense"
    assert bb.choose_domain(["zero-shot", ""], "fam/sub") == "fam"
    assert bb.choose_domain([], "solo") == "solo"


def test_choice_letters() -> None:
    assert [bb.choice_letter(i) for i in (0, 1, 25, 26, 27, 51, 52, 117)] == [
        "A", "B", "Z", "AA", "AB", "AZ", "BA", "DN"
    ]


def test_cap_is_seeded_ordered_and_deterministic(tmp_path: Path) -> None:
    big = {"big": {"keywords": ["physics"], "examples": [{"input": f"q{i}", "target": f"a{i}"} for i in range(50)]}}
    arch = _make_archive(tmp_path / "big.tar.gz", big)
    a = [r["prompt"] for r in bb.iter_rows(arch, cap_per_task=10, seed=1)]
    b = [r["prompt"] for r in bb.iter_rows(arch, cap_per_task=10, seed=1)]
    c = [r["prompt"] for r in bb.iter_rows(arch, cap_per_task=10, seed=2)]
    assert a == b
    assert len(a) == 10 and len(set(a)) == 10
    assert a != c
    idx = [int(p[1:]) for p in a]
    assert idx == sorted(idx)  # emitted in the file's order
    assert a != [f"q{i}" for i in range(10)]  # a sample, not the head
    stats = bb.ConversionStats()
    assert len(list(bb.iter_rows(arch, cap_per_task=100, stats=stats))) == 50
    assert stats.skipped_over_cap == 0
    assert len(list(bb.iter_rows(arch, cap_per_task=0))) == 0


def test_cap_fills_past_skipped_rows(tmp_path: Path) -> None:
    ex = [{"input": f"q{i}", "target": "" if i % 2 else "x" * (i + 1)} for i in range(40)]
    arch = _make_archive(tmp_path / "c.tar.gz", {"t": {"keywords": [], "examples": ex}})
    stats = bb.ConversionStats()
    rows = list(bb.iter_rows(arch, cap_per_task=8, max_chars=25, stats=stats))
    # usable: even i with len("q{i}") + i + 1 <= 25 -> i in 0..20 even (11 rows); the cap takes 8 of them
    assert len(rows) == 8
    assert all(len(r["prompt"]) + len(r["response"]) <= 25 for r in rows)
    assert stats.skipped_empty + stats.skipped_long + stats.skipped_over_cap + stats.rows == 40


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        raw = b"{not json"
        info = tarfile.TarInfo(f"{ROOT}/broken/task.json")
        info.size = len(raw)
        tf.addfile(info, io.BytesIO(raw))
    with pytest.raises(ValueError, match="broken/task.json"):
        list(bb.iter_rows(path))
    with pytest.raises(FileNotFoundError):
        list(bb.iter_rows(tmp_path / "missing.tar.gz"))


def test_fetch_archive_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = tmp_path / bb.ARCHIVE_NAME
    cached.write_bytes(b"x")

    def boom(*a, **k):
        raise AssertionError("must not download when the archive is cached")

    monkeypatch.setattr(bb, "_pip_download", boom)
    assert bb.fetch_archive(tmp_path) == cached


def test_build_pool_script_writes_parquet(archive: Path, tmp_path: Path) -> None:
    import importlib.util

    import pyarrow.parquet as pq

    spec = importlib.util.spec_from_file_location("build_bigbench_pool", REPO / "scripts" / "build_bigbench_pool.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "pool"
    summary = mod.build(out, archive, cap_per_task=2, shard_rows=3, progress=False)
    assert summary["n_rows"] == 6  # alpha and gamma capped to 2 rows each
    shards = sorted(out.glob("shard-*.parquet"))
    assert [p.name for p in shards] == ["shard-00000.parquet", "shard-00001.parquet"]
    table = [r for p in shards for r in pq.read_table(p).to_pylist()]
    assert table == list(bb.iter_rows(archive, cap_per_task=2))
    again = mod.build(out, archive, cap_per_task=2, shard_rows=3, progress=False)
    assert again["shards_written"] == 0 and again["shards_kept"] == 2
    with pytest.raises(SystemExit):
        mod.build(out, archive, cap_per_task=5, shard_rows=3, progress=False)


def test_committed_demo_pool() -> None:
    lines = DEMO.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3000
    rows = [json.loads(line) for line in lines]
    for i, r in enumerate(rows):
        assert set(r) == {"prompt", "response", "domain", "task", "keywords"}, i
        for key in ("prompt", "response", "domain", "task"):
            assert isinstance(r[key], str) and r[key].strip(), (i, key)
        assert isinstance(r["keywords"], list) and r["keywords"], i
        assert len(r["prompt"]) + len(r["response"]) <= 1500, i
    domains = Counter(r["domain"] for r in rows)
    assert len(domains) >= 10
    assert set(Counter(r["task"] for r in rows).values()) == {250}
    assert DEMO.stat().st_size < 5_000_000
