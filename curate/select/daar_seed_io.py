"""DaaR's seeds in and out: seed files, domain descriptions, the cached generated seeds, their centroids.

Seeds come from (in this order of precedence) generated seeds (`generate_seeds=True`: `curate.select.daar_seeds`
writes them once, cached as <run>/features/daar_seeds-<hash>.jsonl by a hash of every input), seed files
(jsonl, one {domain, text} or {domain, prompt, response} per line), or the pool rows that have a `domain`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import ParameterError
from curate.select import daar_seeds
from curate.select.daar_features import (
    encode_like_pool,
    input_embedding_features,
    pool_encoder,
    resolve_lm,
    row_texts,
)
from curate.view import PoolView
from index.io import atomic_path, iter_jsonl, write_json


def read_seed_files(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """(domains, texts) from jsonl seed files: one object per line with `domain` and `text` or `prompt`/`response`."""
    domains: list[str] = []
    texts: list[str] = []
    for path in paths:
        for i, obj in iter_jsonl(path, "DaaR seed file"):
            if not isinstance(obj, dict) or not obj.get("domain"):
                raise ValueError(f"{path}:{i}: a seed needs a non-empty 'domain'")
            if "text" in obj:
                text = str(obj["text"])
            elif "prompt" in obj or "response" in obj:
                text = row_texts([obj.get("prompt")], [obj.get("response")])[0]
            else:
                raise ValueError(f"{path}:{i}: a seed needs 'text' or 'prompt'/'response'")
            domains.append(str(obj["domain"]))
            texts.append(text)
    if not texts:
        raise ValueError(f"no seeds in {', '.join(map(str, paths))}")
    return domains, texts



def domain_centroids(feats: np.ndarray, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(domain names, sorted; their mean feature vectors [K, d]) of labelled rows."""
    from index.diversity import domain_centroids

    names, c = domain_centroids(np.asarray(feats, dtype=np.float32), np.asarray(labels, dtype=object))
    return [str(n) for n in names], c


def load_domain_descriptions(spec: str | os.PathLike | Mapping[str, str] | None) -> dict[str, str]:
    """Domain -> one-sentence description, from a dict or a JSON/YAML file holding such a mapping."""
    if spec is None:
        raise ValueError("daar: domain_descriptions is required to generate seeds")
    if isinstance(spec, Mapping):
        data: Any = dict(spec)
        where = "domain_descriptions"
    else:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"daar: domain descriptions file {path} does not exist")
        where = str(path)
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:  # noqa: BLE001  (json and yaml raise different types)
            raise ValueError(f"{path}: cannot read domain descriptions ({e})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{where}: expected a non-empty mapping domain -> description")
    for d, desc in data.items():
        if not isinstance(desc, str) or not desc.strip():
            raise ValueError(f"{where}: domain {d!r} needs a non-empty description string, got {desc!r}")
    return {str(d): str(desc) for d, desc in data.items()}


@dataclass
class SeedSource:
    """Where DaaR's domain seeds come from and how their features are computed: the seed parameters of the
    `daar` selector (seed files, or generation from domain descriptions, else the pool's domains)."""

    seeds: str | list[str] | None = None
    generate_seeds: bool = False
    domain_descriptions: str | dict | None = None
    seeds_per_domain: int = 10
    seed_threshold: float | dict = 0.85
    generator_model: str | None = None
    model: str | None = None
    cluster_features: str = "input_embeddings"
    max_length: int = 1024
    lm_batch_size: int = 16
    device: str = "cpu"

    def seed_paths(self) -> list[str]:
        """The seed files given (not the generated one)."""
        if not self.seeds:
            return []
        return [self.seeds] if isinstance(self.seeds, str) else list(self.seeds)

    def check(self, view: PoolView) -> None:
        """Fail before any feature extraction when the seeds cannot give at least 2 domains."""
        if self.generate_seeds:
            return
        if self.seeds:
            paths = self.seed_paths()
            names = set(read_seed_files(paths)[0])
            where = f"seed files {', '.join(map(str, paths))}"
        else:
            names = {d for d in view.domains() if d is not None}
            where = "the pool's `domain` column"
            if not names:
                raise ParameterError(
                    "daar: no seeds: the pool has no row with a `domain`, and no seed files were given",
                    "pass -p seeds=PATH.jsonl (lines of {domain, text}), or -p generate_seeds=true with "
                    "-p domain_descriptions=FILE, or ingest a pool with a domain column",
                )
        if len(names) < 2:
            raise ParameterError(f"daar: need seeds of at least 2 domains, {where} give {sorted(names)}")

    def centroids(self, view: PoolView, cluster: np.ndarray, seed: int = 0) -> tuple[list[str], np.ndarray, str]:
        """(domain names, centroids [K, d] in the clustering space, a note on where the seeds came from).

        `cluster`: the pool's clustering features ([N, d], pool order), used when the pool's labelled rows
        are the seeds; seed texts are embedded like them (LM input embeddings, or the pool's encoder)."""
        if self.seeds or self.generate_seeds:
            paths = [str(self.generated_seed_file(view, seed))] if self.generate_seeds else self.seed_paths()
            domains, texts = read_seed_files(paths)
            if self.cluster_features == "embeddings":
                feats = encode_like_pool(view, texts)
            else:
                feats = input_embedding_features(
                    resolve_lm(self.model),
                    texts,
                    max_length=self.max_length,
                    device=self.device,
                    batch_size=self.lm_batch_size,
                )
            names, c = domain_centroids(feats, domains)
            src = f"generated ({Path(paths[0]).name})" if self.generate_seeds else f"from {len(paths)} file(s)"
            return names, c, f"{len(texts)} seeds {src}"
        dom = view.domains()
        have = np.flatnonzero(np.array([d is not None for d in dom], dtype=bool))
        if have.size == 0:
            raise ValueError(
                "daar: no seeds: the pool has no row with a `domain`, and no seed files were given (seeds=PATH.jsonl)"
            )
        names, c = domain_centroids(cluster[have], dom[have].tolist())
        if len(names) < 2:
            raise ValueError(f"daar: need seeds of at least 2 domains, got {names}")
        return names, c, f"{have.size} labelled pool rows"

    def generated_seed_file(self, view: PoolView, seed: int) -> Path:
        """Generate seeds with the LM (once: cached under <run>/features/ by a hash of every input)."""
        import hashlib

        from curate.models import model_fingerprint, resolve_model

        if view.run is None:
            raise ValueError("daar: generate_seeds caches its seeds in a run directory; this PoolView is in memory")
        # by name: the key sorts them, and the prompts (which list the other domains) and rows follow this order
        descriptions = dict(sorted(load_domain_descriptions(self.domain_descriptions).items()))
        if len(descriptions) < 2:
            raise ValueError(f"daar: generate_seeds needs at least 2 domains, got {sorted(descriptions)}")
        gen = resolve_model(self.generator_model or self.model)
        embed, embed_key = self.embedder(view)
        key = {
            "version": daar_seeds.SEEDS_VERSION,
            "generator": model_fingerprint(gen, "float32"),
            "domains": descriptions,
            "n_per_domain": self.seeds_per_domain,
            "threshold": self.seed_threshold,
            "seed": int(seed),
            "embed": embed_key,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        out = view.run.features_dir / f"daar_seeds-{digest}.jsonl"
        if out.exists():
            return out
        rows = daar_seeds.generate_seeds(
            str(gen),
            descriptions,
            n_per_domain=self.seeds_per_domain,
            threshold=self.seed_threshold,
            seed=int(seed),
            embed=embed,
            complete=daar_seeds.LMCompleter(gen, device=self.device),
            progress=True,
        )
        write_json(out.with_suffix(".json"), {"key": key, "stats": rows.stats, "n": len(rows)})
        with atomic_path(out) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return out

    def embedder(self, view: PoolView) -> tuple[Callable[[list[str]], np.ndarray], str]:
        """(embed, identity) for seed rejection: the pool's sentence encoder when the run has embeddings,
        else the input-embedding mean of `model` (the paper's e(x)), L2-normalised. The model loads on the
        first call only, so a cached seed file costs no model load."""
        from curate.embed import current_fingerprint
        from curate.models import model_fingerprint

        assert view.run is not None
        try:
            fp = current_fingerprint(view.run.root)
        except FileNotFoundError:
            fp = None
        loaded: list[Any] = []

        if fp is not None:

            def embed(texts: list[str]) -> np.ndarray:
                if not loaded:
                    loaded.append(pool_encoder(view))
                return loaded[0].encode(texts)

            return embed, f"pool-embeddings:{fp}"
        path = resolve_lm(self.model)

        def embed(texts: list[str]) -> np.ndarray:
            from index.features import load_truncated_lm, masked_mean_features

            if not loaded:
                loaded.extend(load_truncated_lm(path, 0, device=self.device))
            tok, base = loaded
            v = masked_mean_features(tok, base, texts, kind="input_embeddings", max_length=self.max_length)
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

        return embed, f"input_embeddings:{model_fingerprint(path, 'float32')}:{self.max_length}"
