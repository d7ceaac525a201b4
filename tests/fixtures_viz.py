"""A tiny but real run directory for the report, notebook and Atlas tests, built once per session.

60 rows in 4 domains plus 2 unreadable lines go through the real stages: ingest, embed (the tiny random
sentence-transformers model of fixtures_embed), index (k=5), map (PCA, 4 clusters), score (heuristics) and
three selections; a hand-written mixture file stands in for the mixture methods, which do not exist yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DOMAINS = ("math", "code", "chat", "geo")
TOPIC = {
    "math": "number add subtract multiply divide answer",
    "code": "python code function return value list string integer",
    "chat": "people time little very long way find make",
    "geo": "water river road tree house long down over",
}
SELECTIONS = ("random", "balanced-random", "k-center")
MIXTURE = {
    "method": "ideal",
    "domains": list(DOMAINS),
    "rounds": [
        {"round": 0, "weights": {"math": 0.25, "code": 0.25, "chat": 0.25, "geo": 0.25}},
        {"round": 1, "weights": {"math": 0.4, "code": 0.3, "chat": 0.2, "geo": 0.1}},
        {"round": 2, "weights": {"math": 0.55, "code": 0.3, "chat": 0.15}},
    ],
}


def write_pool(path: Path, per_domain: int = 15) -> Path:
    """A jsonl pool: per_domain rows of each domain (topic words, varied lengths) and 2 malformed lines."""
    lines = []
    for i in range(per_domain):
        for d, dom in enumerate(DOMAINS):
            words = TOPIC[dom].split()
            prompt = " ".join(words[(i + j) % len(words)] for j in range(3 + i % 5)) + f" question {i}"
            response = " ".join(words[(i * 3 + j) % len(words)] for j in range(2 + (i + d) % 9))
            lines.append(json.dumps({"instruction": prompt, "output": response, "domain": dom}))
    lines.insert(7, "{not json")
    lines.insert(20, json.dumps({"instruction": "", "output": ""}))
    path.write_text("\n".join(lines) + "\n")
    return path


def build_viz_run(root: Path, model: Path) -> Path:
    """Run the real stages on the tiny pool into `root` and return it."""
    from curate.embed import embed
    from curate.map import build_index, map_pool
    from curate.pool import ingest
    from curate.select import select
    from curate.signals import score

    run = root / "run"
    ingest([str(write_pool(root / "pool.jsonl"))], run, progress=False)
    embed(run, model=str(model), progress=False)
    build_index(run, k=5, progress=False)
    map_pool(run, projection="pca", n_clusters=4, target_cells=12, progress=False)
    score(run, ["tokens", "mtld"], progress=False)
    for method in SELECTIONS:
        select(run, method, budget=12, seed=0)
    (run / "mixtures").mkdir()
    (run / "mixtures" / "ideal.json").write_text(json.dumps(MIXTURE))
    return run


@pytest.fixture(scope="session")
def viz_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """Path of the tiny real run (built once per session; tests must not change it)."""
    return build_viz_run(tmp_path_factory.mktemp("viz_run"), tiny_model)
