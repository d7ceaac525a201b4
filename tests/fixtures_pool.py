"""A tiny synthetic run directory, written by hand per docs/contracts.md, for tests of later stages.

`make_run(root)` writes pool shards, duplicates.parquet, quarantine.parquet, ingest.json, embeddings
(vectors.npy + meta.json + current.json, as curate.embed reads them), signals (`tokens`, `quality`), and
optionally a kNN graph (index/knn.npz), a map grid (map/grid.parquet), clusters and a projection.
Everything is deterministic: the same arguments give the same bytes, so tests can pin exact outputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from curate.run import RunDir
from curate.select.selector import Ranking, Selector
from index.io import save_npy, write_json


def write_jsonl(path: Path, rows: list) -> Path:
    """Write `rows` as a JSON-lines file (parent folders created); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

DOMAINS = ("code", "math", "chat", None)
SOURCE = "data/in.jsonl"


def row_id(kind: str, messages: list[dict], rejected: str | None) -> str:
    """32-hex blake2b of (kind, messages, rejected), as the contract says."""
    turns = [[m["role"], m["content"]] for m in messages]
    raw = json.dumps([kind, turns, rejected], ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def pool_rows(n: int = 24, domains: Sequence[str | None] = DOMAINS, preference_every: int = 0) -> list[dict]:
    """n deterministic rows; every `preference_every`-th row (if > 0) is a preference row.

    Row 5 has a system turn and row 7 is multi-turn (two user turns), to exercise export layouts.
    """
    rows = []
    for i in range(n):
        dom = domains[i % len(domains)]
        user = f"{dom or 'misc'} question {i}: " + " ".join(["word"] * (i % 7 + 1))
        response = " ".join(["answer"] * ((i * 3) % 11 + 1)) + f" #{i}"
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
        if i == 5:
            messages.insert(0, {"role": "system", "content": "You are terse."})
        if i == 7:
            messages = [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": user},
                {"role": "assistant", "content": response},
            ]
        pref = preference_every > 0 and i % preference_every == 0
        kind = "preference" if pref else "sft"
        rejected = f"bad answer {i}" if pref else None
        prompt = "\n\n".join(m["content"] for m in messages[:-1]) if len(messages) > 2 else user
        rows.append(
            {
                "id": row_id(kind, messages, rejected),
                "source": SOURCE,
                "row": i,
                "kind": kind,
                "domain": dom,
                "messages": messages,
                "prompt": prompt,
                "response": response,
                "rejected": rejected,
                "meta": "{}",
                "n_duplicates": 0,
            }
        )
    return rows


POOL_SCHEMA = {
    "id": pl.String,
    "source": pl.String,
    "row": pl.Int64,
    "kind": pl.String,
    "domain": pl.String,
    "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
    "prompt": pl.String,
    "response": pl.String,
    "rejected": pl.String,
    "meta": pl.String,
    "n_duplicates": pl.Int64,
}


def make_run(
    root: str | Path,
    n: int = 24,
    *,
    domains: Sequence[str | None] = DOMAINS,
    preference_every: int = 0,
    dim: int = 8,
    n_duplicates: int = 3,
    n_quarantined: int = 2,
    signals: bool = True,
    embeddings: bool = True,
    knn: int = 0,
    map_: bool = False,
    shard_rows: int = 10,
) -> RunDir:
    """Write a complete synthetic run directory at `root` and return it.

    Duplicates: the first `n_duplicates` unique rows each have one exact duplicate (input rows n, n+1, ...);
    quarantine: `n_quarantined` unreadable input rows after those. So `read = n + n_duplicates + n_quarantined`.
    `knn > 0` writes index/knn.npz with that many neighbours (exact, cosine, self excluded);
    `map_` writes map/grid.parquet (cell = domain group), map/clusters.parquet and projection.parquet.
    """
    run = RunDir(root)
    rows = pool_rows(n, domains, preference_every)
    for j in range(min(n_duplicates, n)):
        rows[j]["n_duplicates"] = 1
    pool = pl.DataFrame(rows, schema=POOL_SCHEMA)
    run.pool_dir.mkdir(parents=True, exist_ok=True)
    for s, start in enumerate(range(0, n, shard_rows)):
        pool.slice(start, shard_rows).write_parquet(run.pool_dir / f"shard-{s:05d}.parquet")

    dup = pl.DataFrame(
        {
            "source": [SOURCE] * min(n_duplicates, n),
            "row": list(range(n, n + min(n_duplicates, n))),
            "id": [rows[j]["id"] for j in range(min(n_duplicates, n))],
        },
        schema={"source": pl.String, "row": pl.Int64, "id": pl.String},
    )
    dup.write_parquet(run.duplicates_path)
    q0 = n + min(n_duplicates, n)
    quar = pl.DataFrame(
        {
            "source": [SOURCE] * n_quarantined,
            "row": list(range(q0, q0 + n_quarantined)),
            "reason": ["invalid JSON"] * n_quarantined,
            "raw": ["{not json"] * n_quarantined,
        },
        schema={"source": pl.String, "row": pl.Int64, "reason": pl.String, "raw": pl.String},
    )
    quar.write_parquet(run.quarantine_path)
    per_domain: dict[str, int] = {}
    for r in rows:
        key = r["domain"] if r["domain"] is not None else "(none)"
        per_domain[key] = per_domain.get(key, 0) + 1
    write_json(
        run.ingest_path,
        {
            "inputs": [SOURCE],
            "counts": {
                "read": n + min(n_duplicates, n) + n_quarantined,
                "unique": n,
                "duplicate": min(n_duplicates, n),
                "quarantined": n_quarantined,
            },
            "per_domain": per_domain,
            "columns": {},
        },
    )

    ids = [r["id"] for r in rows]
    vectors = synthetic_vectors(rows, dim)
    if embeddings:
        write_embeddings(run, ids, vectors)
    if signals:
        tokens = [len(r["prompt"].split()) + len(r["response"].split()) for r in rows]
        write_signal(run, "tokens", ids, np.asarray(tokens, dtype=np.float64))
        quality = np.round(np.random.default_rng(7).uniform(0, 1, n), 3)
        write_signal(run, "quality", ids, quality)
    if knn:
        write_knn(run, vectors, knn)
    if map_:
        groups = sorted({r["domain"] or "(none)" for r in rows})
        cell = [groups.index(r["domain"] or "(none)") for r in rows]
        pl.DataFrame({"id": ids, "cell": cell}, schema={"id": pl.String, "cell": pl.Int64}).write_parquet(
            _mk(run.map_dir / "grid.parquet")
        )
        pl.DataFrame({"id": ids, "cluster": cell}, schema={"id": pl.String, "cluster": pl.Int64}).write_parquet(
            run.map_dir / "clusters.parquet"
        )
        pl.DataFrame({"id": ids, "x": vectors[:, 0].astype(np.float64), "y": vectors[:, 1].astype(np.float64)}).write_parquet(
            run.projection_path
        )
    return run


def synthetic_vectors(rows: list[dict], dim: int) -> np.ndarray:
    """Unit vectors clustered by domain (deterministic)."""
    rng = np.random.default_rng(0)
    groups = sorted({r["domain"] or "(none)" for r in rows})
    centres = rng.normal(size=(len(groups), dim)) * 2.0
    v = np.stack([centres[groups.index(r["domain"] or "(none)")] for r in rows]) + rng.normal(size=(len(rows), dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32)


def write_embeddings(run: RunDir, ids: list[str], vectors: np.ndarray, fingerprint: str = "fixture-fp") -> None:
    """embeddings/<fp>/vectors.npy + meta.json (complete) + embeddings/current.json, as curate.embed reads them."""
    from curate.embed import ids_hash

    out = run.embeddings_dir(fingerprint)
    save_npy(out / "vectors.npy", vectors.astype(np.float32))
    write_json(
        out / "meta.json",
        {
            "complete": True,
            "n_rows": len(ids),
            "dim": int(vectors.shape[1]),
            "dtype": "float32",
            "fingerprint": fingerprint,
            "meta": {"ids_hash": ids_hash(ids), "fields": ["prompt", "response"], "model_path": "fixture"},
        },
    )
    write_json(run.root / "embeddings" / "current.json", {"fingerprint": fingerprint, "fields": ["prompt", "response"]})


def write_signal(run: RunDir, name: str, ids: list[str], values: np.ndarray, key: dict | None = None) -> None:
    """signals/<name>.parquet (id, value) in pool order + sidecar <name>.json."""
    path = _mk(run.signal_path(name))
    pl.DataFrame({"id": ids, "value": np.asarray(values, dtype=np.float64)}).write_parquet(path)
    write_json(path.with_suffix(".json"), {"name": name, "key": key or {"params": {}}, "n": len(ids)})


def write_knn(run: RunDir, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """index/knn.npz: exact cosine kNN (self excluded), ties by position."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nb = np.argsort(-sims, axis=1, kind="stable")[:, :k].astype(np.int64)
    sv = np.take_along_axis(sims, nb, axis=1).astype(np.float32)
    path = _mk(run.index_dir / "knn.npz")
    np.savez(path, neighbors=nb, sims=sv)
    return nb, sv


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class Fixed(Selector):
    """Test selector (not registered): ranks the given positions in the given order."""

    name = "fixed"

    def __init__(self, order: tuple = ()) -> None:
        self.order = order

    def rank(self, view, k, *, seed, budget):
        return Ranking(np.asarray(self.order))
