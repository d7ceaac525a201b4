"""DaaR: keep the rows whose domain a probe on a truncated LM is least sure of (methods.md 2.4), and the
contrastive inter/intra diversity bands of its analysis (methods.md 2.2).

Follows Ling et al., "Diversity as a Reward: Fine-Tuning LLMs on a Mixture of Domain-Undetermined Data"
(arXiv 2502.04380, NeurIPS 2025):
(a) domain centroids from labelled seed rows (pool rows with a `domain`, or user seed files);
(b) pseudo-labels: k-means on e(x) (mean of the LM's input token embeddings) seeded with those centroids
    (single init, seed 42), on a probe sample of the pool;
(c) features h(x): the LM cut after decoder layer L (default 3), masked mean of the last kept (normed)
    hidden state, cached under <run>/features/<fingerprint>/ (index.features);
(d) a domain probe ψ_dom (MLP d -> 2d -> d -> d/2 -> 256 -> K, ReLU) trained on the pseudo-labels with a holdout
    accuracy; entropy targets H(x) = -Σ p log p (natural log) of its softmax; a diversity probe ψ_div (same trunk,
    1-d head, MSE) regressing H;
(e) rank every pool row by the predicted entropy Ĥ(x), highest first (the budget is the paper's top-20%).

Deviations (documented, deliberate):
- Probe training: Adam lr 1e-3, batch 64, 30 epochs, features standardised with the training mean/std, 10%
  holdout. The paper's batch 1 / lr 1e-5 / 1 epoch (97/3 split) does not converge on pools of a few thousand rows.
- Masked mean pooling (the released code pools the padding too; methods.md 2.5); one text format
  "Instruction: {prompt}\\nOutput: {response}" for seeds, probe training and inference (the code mixes two).
- The probe set is a seeded sample of the pool itself (the paper uses 5,000 disjoint rows of the same
  distribution), so the probes are cross-fitted over the pool (`folds`=3): every pool row gets a fold; each
  probe row's entropy target comes from a ψ_dom that did not train on it, and each pool row's Ĥ from a ψ_div
  that did not train on it. This fixes the optimistic in-sample targets of the released code (methods.md
  2.5: a converged probe memorises its own training rows, so in-sample entropies collapse to ~0), and the
  ranking no longer favours the probe's own training rows. The domain accuracy and ψ_div's R² are out of fold
  (`probe_heldout_r2` in the selection stats; a warning when it is below 0). `folds=1` gives the paper's
  in-sample targets and one ψ_div.
- Pseudo-label k-means trains on every probe row (faiss's default would subsample to K x 256 rows) for
  `kmeans_iter` Lloyd iterations (20); the stats say whether the labels had converged (equal to
  scikit-learn's Lloyd from the same centroids; tested).
- LLM generation of seeds is optional and off by default (`generate_seeds=True` with `domain_descriptions`;
  `curate.select.daar_seeds`): one pair per request, cosine rejection on the pool's sentence encoder (else the
  LM's input-embedding mean) instead of the instruct model's embedding layer. Otherwise centroids come from
  labelled pool rows or user seed files.
- The pool's sentence embeddings may replace the LM features (`cluster_features` / `probe_features`
  = "embeddings"): cheaper, documented alternative.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import ParameterError
from curate.select.budget import Budget
from curate.select.selector import Ranking, Selector, ShortRankingError, register_selector
from curate.select.view import PoolView
from index.io import iter_jsonl

TEMPLATE = "Instruction: {prompt}\nOutput: {response}"
FEATURE_KINDS = ("truncated", "input_embeddings", "embeddings")


# ---------------------------------------------------------------------------------------------------------
# probes


@dataclass
class ProbeFit:
    """A trained probe and its holdout figures."""

    model: Any
    mean: np.ndarray
    std: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def probe_widths(d: int, out: int) -> list[int]:
    """Layer widths of the DaaR probe scaled to input width d: d, 2d, d, d/2, 256, out."""
    return [d, 2 * d, d, max(1, d // 2), 256, out]


def build_probe(d: int, out: int):
    """The DaaR MLP (ReLU between layers)."""
    import torch

    w = probe_widths(d, out)
    layers: list[Any] = []
    for a, b in zip(w[:-2], w[1:-1], strict=True):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(w[-2], w[-1]))
    return torch.nn.Sequential(*layers)


def _split(n: int, holdout: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    n_hold = int(round(holdout * n)) if n >= 10 else 0
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def train_probe(
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    holdout: float = 0.1,
    seed: int = 0,
    threads: int = 1,
) -> ProbeFit:
    """Train a DaaR probe: task "classify" (y int labels, cross-entropy) or "regress" (y float, MSE).

    Deterministic for a seed (torch's global RNG is forked, not touched). Reports holdout accuracy (classify)
    or holdout MSE and R² (regress) in `info`.
    """
    import torch

    if task not in ("classify", "regress"):
        raise ValueError(f"task must be 'classify' or 'regress', got {task!r}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(y) != x.shape[0] or x.shape[0] == 0:
        raise ValueError(f"probe data: x {x.shape} and y ({len(y)}) must be [n, d] and [n], n > 0")
    if not np.isfinite(x).all():
        raise ValueError(
            f"probe features have a non-finite value at row {int(np.argwhere(~np.isfinite(x))[0, 0])}"
        )
    rng = np.random.default_rng(seed)
    tr, ho = _split(x.shape[0], holdout, rng)
    mean = x[tr].mean(axis=0)
    std = x[tr].std(axis=0) + 1e-6
    xs = torch.from_numpy((x - mean) / std)
    if task == "classify":
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
        out = int(yt.max()) + 1
        loss_fn = torch.nn.CrossEntropyLoss()
    else:
        yt = torch.from_numpy(np.asarray(y, dtype=np.float32)).unsqueeze(1)
        out = 1
        loss_fn = torch.nn.MSELoss()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_probe(x.shape[1], out)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    prev_threads = torch.get_num_threads()
    # small batches of a small MLP: one thread avoids synchronisation costs (20x slower on a busy 2-core box)
    torch.set_num_threads(int(threads))
    try:
        for _ in range(int(epochs)):
            perm = tr[rng.permutation(tr.size)]
            for s in range(0, perm.size, int(batch_size)):
                b = torch.from_numpy(perm[s : s + int(batch_size)])
                opt.zero_grad()
                loss = loss_fn(model(xs[b]), yt[b])
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(prev_threads)
    model.eval()
    info: dict[str, Any] = {
        "n_train": int(tr.size),
        "n_holdout": int(ho.size),
        "epochs": int(epochs),
        "lr": lr,
        "batch_size": int(batch_size),
    }
    with torch.no_grad():
        for name, idx in (("train", tr), ("holdout", ho)):
            if idx.size == 0:
                continue
            pred = model(xs[torch.from_numpy(idx)])
            if task == "classify":
                info[f"{name}_accuracy"] = float((pred.argmax(1) == yt[idx]).float().mean())
            else:
                err = float(((pred - yt[idx]) ** 2).mean())
                var = float(yt[idx].var(unbiased=False)) if idx.size > 1 else 0.0
                info[f"{name}_mse"] = err
                info[f"{name}_r2"] = 1.0 - err / var if var > 0 else None
    return ProbeFit(model, mean, std, info)


def predict(fit: ProbeFit, x: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """Probe outputs [n, out] float64 (logits for a classifier, values for a regressor)."""
    import torch

    outs = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy((np.asarray(x[s : s + batch_size], dtype=np.float32) - fit.mean) / fit.std)
            outs.append(fit.model(xb.float()).double().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 1))


def entropy(logits: np.ndarray) -> np.ndarray:
    """Natural-log entropy of softmax(logits) per row."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(np.exp(logp) * logp).sum(axis=1)


@dataclass
class DaaRResult:
    """Predicted entropy for every row, the probe sample, its pseudo-labels and the probes' figures."""

    predicted_entropy: np.ndarray
    probe_rows: np.ndarray
    pseudo_labels: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def pseudo_label_fit(
    cluster_feats: np.ndarray, centroids: np.ndarray, *, seed: int = 42, niter: int = 20
) -> tuple[np.ndarray, dict[str, Any]]:
    """DaaR's pseudo-labels: k-means on `cluster_feats` initialised at `centroids` (single init, plain Lloyd
    from them: the centroids move), trained on EVERY row (faiss would otherwise subsample to k x 256 rows).

    Returns (labels int64 [n], info): rows trained on, iterations, inertia, and `converged` (one more Lloyd
    step from the final centroids changes no label).
    """
    from index.cluster import assign, kmeans

    x = np.ascontiguousarray(cluster_feats, dtype=np.float32)
    k = int(centroids.shape[0])
    per = max(256, -(-x.shape[0] // max(k, 1)))  # faiss trains on at most k * per rows: here all of them
    res = kmeans(
        x,
        k,
        seed=seed,
        niter=niter,
        init_centroids=np.ascontiguousarray(centroids, dtype=np.float32),
        max_points_per_centroid=per,
    )
    labels = np.asarray(res.labels, dtype=np.int64)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, x.astype(np.float64))
    sizes = np.bincount(labels, minlength=k)
    nxt = np.where(sizes[:, None] > 0, sums / np.maximum(sizes, 1)[:, None], res.centroids)
    again, _ = assign(x, nxt.astype(np.float32))
    info = {
        "rows": int(x.shape[0]),
        "k": k,
        "iterations": int(niter),
        "inertia": float(res.inertia),
        "converged": bool(np.array_equal(again, labels)),
    }
    return labels, info


def pseudo_labels(
    cluster_feats: np.ndarray, centroids: np.ndarray, *, seed: int = 42, niter: int = 20
) -> np.ndarray:
    """k-means cluster ids of `cluster_feats`, initialised at `centroids` (single init): DaaR's pseudo-labels."""
    return pseudo_label_fit(cluster_feats, centroids, seed=seed, niter=niter)[0]


def _folds(n: int, probe_rows: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of every pool row: the probe rows split evenly over `folds`, the other rows too."""
    fold = np.empty(n, dtype=np.int64)
    fold[probe_rows] = rng.permutation(probe_rows.size) % folds
    rest = np.setdiff1d(np.arange(n), probe_rows)
    fold[rest] = rng.permutation(rest.size) % folds
    return fold


def _r2(pred: np.ndarray, y: np.ndarray) -> float | None:
    var = float(np.var(y))
    return 1.0 - float(np.mean((pred - y) ** 2)) / var if y.size > 1 and var > 0 else None


def daar_entropy(
    probe_feats: np.ndarray,
    labels: np.ndarray,
    probe_rows: np.ndarray,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    holdout: float = 0.1,
    folds: int = 3,
    seed: int = 0,
) -> DaaRResult:
    """Stages (d) and (e) of DaaR on arrays: ψ_dom on the probe rows' pseudo-`labels`, entropy targets, ψ_div,
    and the predicted entropy of every row of `probe_feats` ([N, d], pool order).

    `folds` > 1 (cross-fitting over the pool): every pool row gets a fold; for each fold f a ψ_dom trained on
    the probe rows of the other folds gives the entropy targets of fold f's probe rows, and a ψ_div trained on
    the other folds' probe rows and targets predicts every pool row of fold f. So no row's Ĥ comes from a
    probe that saw it, and the domain accuracy and ψ_div's R² (`diversity_probe.oof_r2`, against the targets)
    are held out. `folds` <= 1: the paper's in-sample targets and one ψ_div for the pool (R² on its `holdout`).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probe_rows = np.asarray(probe_rows, dtype=np.int64)
    if labels.shape != (len(probe_rows),):
        raise ValueError(f"{labels.shape[0]} pseudo-labels for {len(probe_rows)} probe rows")
    n_classes = int(labels.max()) + 1
    n = probe_feats.shape[0]
    x = probe_feats[probe_rows]
    kw = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "holdout": holdout}
    if folds > 1 and x.shape[0] >= 2 * folds:
        pool_fold = _folds(n, probe_rows, folds, np.random.default_rng(seed))
        fold = pool_fold[probe_rows]
        h = np.empty(x.shape[0])
        hit = np.empty(x.shape[0], dtype=bool)
        infos = []
        for f in range(folds):
            tr, te = fold != f, fold == f
            fit = train_probe(
                x[tr], labels[tr], task="classify", seed=seed + 10 + f, **{**kw, "holdout": 0.0}
            )
            logits = predict(fit, x[te])
            h[te] = entropy(logits)
            hit[te] = logits.argmax(1) == labels[te]
            infos.append(fit.info)
        dom_info = {
            "folds": folds,
            "oof_accuracy": float(hit.mean()),
            "holdout_accuracy": float(hit.mean()),
            "train_accuracy_mean": float(np.mean([i["train_accuracy"] for i in infos])),
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
        }
        pred = np.empty(n)
        div_infos = []
        for f in range(folds):
            tr = fold != f
            div = train_probe(x[tr], h[tr], task="regress", seed=seed + 1 + 100 * f, **{**kw, "holdout": 0.0})
            rows = np.flatnonzero(pool_fold == f)
            pred[rows] = predict(div, probe_feats[rows])[:, 0]
            div_infos.append(div.info)
        oof = pred[probe_rows]
        r2 = _r2(oof, h)
        div_info = {
            "folds": folds,
            "oof_r2": r2,
            "oof_mse": float(np.mean((oof - h) ** 2)),
            "train_r2_mean": float(np.mean([i["train_r2"] for i in div_infos if i.get("train_r2") is not None]))
            if any(i.get("train_r2") is not None for i in div_infos) else None,
            "n_train_per_fold": [int(i["n_train"]) for i in div_infos],
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
        }
    else:
        dom = train_probe(x, labels, task="classify", seed=seed, **kw)
        h = entropy(predict(dom, x))
        dom_info = {**dom.info, "folds": 1}
        div = train_probe(x, h, task="regress", seed=seed + 1, **kw)
        pred = predict(div, probe_feats)[:, 0]
        r2 = div.info.get("holdout_r2")
        div_info = {**div.info, "folds": 1}
    stats = {
        "domain_probe": dom_info,
        "diversity_probe": div_info,
        "probe_heldout_r2": r2,
        "predicted_out_of_fold": bool(folds > 1 and x.shape[0] >= 2 * folds),
        "pseudo_label_sizes": np.bincount(labels, minlength=n_classes).tolist(),
        "entropy_target_mean": float(h.mean()),
        "entropy_max": float(np.log(n_classes)) if n_classes > 1 else 0.0,
    }
    return DaaRResult(pred, probe_rows, labels, stats)


# ---------------------------------------------------------------------------------------------------------
# features and seeds of a pool


def row_texts(prompts: Sequence[str | None], responses: Sequence[str | None]) -> list[str]:
    """DaaR's text of each row, the same at training and inference time."""
    return [
        TEMPLATE.format(prompt=p or "", response=r or "") for p, r in zip(prompts, responses, strict=True)
    ]


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


def _centroids(feats: np.ndarray, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    from index.diversity import domain_centroids

    names, c = domain_centroids(np.asarray(feats, dtype=np.float32), np.asarray(labels, dtype=object))
    return [str(n) for n in names], c


@register_selector
class DaaRSelector(Selector):
    """DaaR: rank rows by the entropy a domain probe on a truncated LM predicts, highest first.

    paper: Ling et al., Diversity as a Reward (arXiv 2502.04380, NeurIPS 2025), methods.md 2.4.
    deviations: see `curate.select.daar` (practical probe training defaults, masked pooling, one text format,
    probe sample drawn from the pool, optional LLM seed generation, optional sentence-embedding features).

    Parameters: `model` a local HF causal LM directory (needed for "truncated"/"input_embeddings" features);
    `cluster_features` ("input_embeddings" = paper's e(x), or "embeddings" = the pool's sentence vectors);
    `probe_features` ("truncated" = layer-`layer` features, or "embeddings"); `seeds`: jsonl seed files (else the
    pool rows that have a `domain` are the seeds); `probe_size` rows sampled (seeded) for pseudo-labels and
    probe training; probe training `epochs`, `lr`, `batch_size`, `holdout`; `kmeans_seed` (42, as the paper).
    `generate_seeds` (off by default): an instruct LM (`generator_model`, default `model`) writes
    `seeds_per_domain` seeds per domain of `domain_descriptions` (a dict, or a JSON/YAML file, domain ->
    one-sentence description), kept by cosine rejection at `seed_threshold` (a float or {domain: float});
    cached as <run>/features/daar_seeds-<hash>.jsonl and used like a seed file.
    """

    name = "daar"
    default_stratify = "domain"  # won on held-out loss, bench/RESULTS.md (selection quality)
    stratify_scope = "pool"  # stratified: probes fitted once on the pool, each stratum takes its rows by Ĥ
    paper = "DaaR: Ling et al., Diversity as a Reward (arXiv 2502.04380), methods.md 2.4"
    deviations = (
        "probe training Adam lr 1e-3 / batch 64 / 30 epochs on standardised features (paper: lr 1e-5, batch 1, "
        "1 epoch); cross-fitted entropy targets (folds=3); masked mean pooling; one text format; probe sample "
        "from the pool; optional LLM seed generation (one pair per request, rejection on the pool's sentence "
        "encoder)"
    )

    def __init__(
        self,
        model: str | None = None,
        cluster_features: str = "input_embeddings",
        probe_features: str = "truncated",
        layer: int = 3,
        max_length: int = 1024,
        seeds: str | list[str] | None = None,
        probe_size: int = 5000,
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 64,
        holdout: float = 0.1,
        folds: int = 3,
        kmeans_seed: int = 42,
        kmeans_iter: int = 20,
        lm_batch_size: int = 16,
        device: str = "cpu",
        generate_seeds: bool = False,
        domain_descriptions: str | dict | None = None,
        seeds_per_domain: int = 10,
        seed_threshold: float | dict = 0.85,
        generator_model: str | None = None,
    ) -> None:
        if generate_seeds and seeds:
            raise ValueError("daar: give either seeds=PATH.jsonl or generate_seeds=True, not both")
        if generate_seeds and not domain_descriptions:
            raise ValueError(
                "daar: generate_seeds=True needs domain_descriptions (a dict or a JSON/YAML file mapping each "
                "domain to a one-sentence description)"
            )
        if generate_seeds and model is None and generator_model is None:
            raise ValueError(
                "daar: generate_seeds=True needs generator_model (or model): a causal LM folder or 'smollm2'"
            )
        if cluster_features not in ("input_embeddings", "embeddings"):
            raise ValueError(
                f"daar: cluster_features must be 'input_embeddings' or 'embeddings', got {cluster_features!r}"
            )
        if probe_features not in ("truncated", "embeddings"):
            raise ValueError(
                f"daar: probe_features must be 'truncated' or 'embeddings', got {probe_features!r}"
            )
        if model is None and (cluster_features == "input_embeddings" or probe_features == "truncated"):
            raise ValueError(
                "daar: LM features need model=PATH (a local HF causal LM directory); or pass "
                "cluster_features='embeddings', probe_features='embeddings' to use the pool's sentence embeddings"
            )
        if probe_size < 2 or not 0 <= holdout < 1:
            raise ValueError(
                f"daar: probe_size must be >= 2 and holdout in [0, 1), got {probe_size}, {holdout}"
            )
        self.model = model
        self.cluster_features = cluster_features
        self.probe_features = probe_features
        self.layer = int(layer)
        self.max_length = int(max_length)
        self.seeds = seeds
        self.probe_size = int(probe_size)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.holdout = float(holdout)
        self.folds = int(folds)
        self.kmeans_seed = int(kmeans_seed)
        self.kmeans_iter = int(kmeans_iter)
        self.lm_batch_size = int(lm_batch_size)
        self.device = device
        self.generate_seeds = bool(generate_seeds)
        self.domain_descriptions = domain_descriptions
        self.seeds_per_domain = int(seeds_per_domain)
        self.seed_threshold = seed_threshold
        self.generator_model = generator_model

    # features -------------------------------------------------------------------------------------------
    def _model_path(self) -> str:
        """The LM directory: `model` may be a folder or a bundled alias such as "smollm2"."""
        from curate.models import resolve_model

        if self.model is None:
            raise ValueError("daar: LM features need `model` (a causal LM folder or 'smollm2'), "
                             "or set cluster_features/probe_features='embeddings'")
        return str(resolve_model(self.model))

    def _lm_features(self, view: PoolView, kind: str) -> np.ndarray:
        from index.features import cached_features, feature_fingerprint

        if view.run is None:
            raise ValueError("daar: LM features are cached in a run directory; this PoolView is in memory")
        texts = row_texts(view.frame["prompt"].to_list(), view.frame["response"].to_list())
        model = self._model_path()
        fp = feature_fingerprint(model, kind=kind, layer=self.layer, max_length=self.max_length)
        return cached_features(
            texts,
            view.run.root / "features" / fp,
            model,
            kind=kind,
            layer=self.layer,
            max_length=self.max_length,
            batch_size=self.lm_batch_size,
            device=self.device,
            progress=view.n > 1000,
        )

    def _features(self, view: PoolView, kind: str) -> np.ndarray:
        return view.vectors() if kind == "embeddings" else self._lm_features(view, kind)

    def _generated_seed_file(self, view: PoolView, seed: int) -> Path:
        """Generate seeds with the LM (once: cached under <run>/features/ by a hash of every input)."""
        import hashlib

        from curate.models import model_fingerprint, resolve_model
        from curate.select import daar_seeds
        from index.io import atomic_path, write_json

        if view.run is None:
            raise ValueError("daar: generate_seeds caches its seeds in a run directory; this PoolView is in memory")
        descriptions = load_domain_descriptions(self.domain_descriptions)
        if len(descriptions) < 2:
            raise ValueError(f"daar: generate_seeds needs at least 2 domains, got {sorted(descriptions)}")
        gen = resolve_model(self.generator_model or self.model)
        embed, embed_key = self._seed_embedder(view)
        key = {
            "generator": model_fingerprint(gen, "float32"),
            "domains": descriptions,
            "n_per_domain": self.seeds_per_domain,
            "threshold": self.seed_threshold,
            "seed": int(seed),
            "embed": embed_key,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        out = view.run.root / "features" / f"daar_seeds-{digest}.jsonl"
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

    def _seed_embedder(self, view: PoolView):
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
                    loaded.append(_pool_encoder(view))
                return loaded[0].encode(texts)

            return embed, f"pool-embeddings:{fp}"
        path = self._model_path()

        def embed(texts: list[str]) -> np.ndarray:
            from index.features import load_truncated_lm, masked_mean_features

            if not loaded:
                loaded.extend(load_truncated_lm(path, 0, device=self.device))
            tok, base = loaded
            v = masked_mean_features(tok, base, texts, kind="input_embeddings", max_length=self.max_length)
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

        return embed, f"input_embeddings:{model_fingerprint(path, 'float32')}:{self.max_length}"

    def _seed_centroids(
        self, view: PoolView, cluster: np.ndarray, seed: int = 0
    ) -> tuple[list[str], np.ndarray, str]:
        if self.seeds or self.generate_seeds:
            if self.generate_seeds:
                paths = [str(self._generated_seed_file(view, seed))]
            else:
                paths = [self.seeds] if isinstance(self.seeds, str) else list(self.seeds)
            domains, texts = read_seed_files(paths)
            if self.cluster_features == "embeddings":
                feats = _encode_like_pool(view, texts)
            else:
                from index.features import load_truncated_lm, masked_mean_features

                tok, base = load_truncated_lm(self._model_path(), 0, device=self.device)
                feats = masked_mean_features(
                    tok,
                    base,
                    texts,
                    kind="input_embeddings",
                    max_length=self.max_length,
                    batch_size=self.lm_batch_size,
                )
            names, c = _centroids(feats, domains)
            src = f"generated ({Path(paths[0]).name})" if self.generate_seeds else f"from {len(paths)} file(s)"
            return names, c, f"{len(texts)} seeds {src}"
        dom = view.domains()
        have = np.flatnonzero(np.array([d is not None for d in dom], dtype=bool))
        if have.size == 0:
            raise ValueError(
                "daar: no seeds: the pool has no row with a `domain`, and no seed files were given (seeds=PATH.jsonl)"
            )
        names, c = _centroids(cluster[have], dom[have].tolist())
        if len(names) < 2:
            raise ValueError(f"daar: need seeds of at least 2 domains, got {names}")
        return names, c, f"{have.size} labelled pool rows"

    def _check_seed_source(self, view: PoolView) -> None:
        """Fail before any feature extraction when the seeds cannot give at least 2 domains."""
        if self.generate_seeds:
            return
        if self.seeds:
            paths = [self.seeds] if isinstance(self.seeds, str) else list(self.seeds)
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

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        self._check_seed_source(view)
        cluster = self._features(view, self.cluster_features)
        names, centroids, seed_note = self._seed_centroids(view, cluster, seed)
        probe = (
            self._features(view, self.probe_features)
            if self.probe_features != self.cluster_features
            else cluster
        )
        rng = np.random.default_rng(seed)
        probe_rows = np.sort(rng.choice(view.n, size=min(self.probe_size, view.n), replace=False))
        labels, km_info = pseudo_label_fit(
            np.asarray(cluster)[probe_rows], centroids, seed=self.kmeans_seed, niter=self.kmeans_iter
        )
        res = daar_entropy(
            np.asarray(probe),
            labels,
            probe_rows,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            holdout=self.holdout,
            folds=self.folds,
            seed=seed,
        )
        h = res.predicted_entropy
        pos = np.arange(view.n)
        order = pos[np.lexsort((pos, -h))]
        reasons = [f"daar: predicted entropy {v:.4f}" for v in h[order[: max(k, 0)]].tolist()]
        order = order[: max(k, 0)] if budget.kind != "tokens" else order
        if budget.kind == "tokens":
            reasons = [f"daar: predicted entropy {v:.4f}" for v in h[order].tolist()]
        stats = {
            **res.stats,
            "pseudo_label_kmeans": km_info,
            "daar_domains": names,
            "seeds": seed_note,
            "probe_rows": int(probe_rows.size),
            "mean_predicted_entropy_selected": float(h[order[:k]].mean()) if k else None,
            "mean_predicted_entropy_pool": float(h.mean()),
        }
        r2 = res.stats["probe_heldout_r2"]
        if r2 is not None and r2 < 0:
            msg = (
                f"daar: the diversity probe's held-out R^2 is {r2:.3f} (< 0): its predicted entropy ranks rows "
                "worse than a constant would; the selection is close to arbitrary (more probe rows, other "
                "features or fewer epochs may help)"
            )
            warnings.warn(msg, stacklevel=2)
            stats["warnings"] = [msg]
        return Ranking(order, reasons=reasons, stats=stats)


def _pool_encoder(view: PoolView):
    """The sentence encoder (and settings) that embedded the pool."""
    from curate.embed import embedding_meta
    from index.embed import Encoder

    if view.run is None:
        raise ValueError("daar: embedding seed files needs a run directory")
    meta = embedding_meta(view.run.root)
    return Encoder.load(meta.get("model_path"), dtype=meta.get("dtype", "float32"), device="cpu")


def _encode_like_pool(view: PoolView, texts: list[str]) -> np.ndarray:
    """Embed seed texts with the model (and settings) that embedded the pool."""
    return _pool_encoder(view).encode(texts)


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


# ---------------------------------------------------------------------------------------------------------
# contrastive bands


def band_positions(
    scores: np.ndarray, groups: np.ndarray, lower: float, upper: float, *, descending: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose within-group rank (by score, `descending` or ascending; ties by position) lies in
    [floor(lower% * n_g), floor(upper% * n_g)); returns (positions, their quantile rank / n_g).

    Rows whose group is negative are skipped. Output order: by quantile position, then group, then position.
    """
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"band must satisfy 0 <= lower < upper <= 100, got ({lower}, {upper})")
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    pos = np.flatnonzero(groups >= 0)
    key = -scores[pos] if descending else scores[pos]
    o = np.lexsort((pos, key, groups[pos]))
    pos = pos[o]
    g = groups[pos]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, g.size])
    rank = np.arange(g.size) - np.repeat(starts, counts)
    n_g = np.repeat(counts, counts)
    lo = np.floor(lower / 100.0 * n_g + 1e-9).astype(np.int64)
    hi = np.floor(upper / 100.0 * n_g + 1e-9).astype(np.int64)
    keep = (rank >= lo) & (rank < hi)
    pos, rank, g, n_g = pos[keep], rank[keep], g[keep], n_g[keep]
    q = rank / n_g
    o = np.lexsort((pos, g, q))
    return pos[o], q[o]


@register_selector
class DaaRBandSelector(Selector):
    """DaaR's contrastive pools: within each domain, one quantile band of the inter or intra diversity score.

    inter(x in D_k) = Σ_{j≠k} cos(e(x), C_j); intra(x in D_k) = cos(e(x), C_k) (index.diversity.daar_scores).
    Within each domain rows are sorted by the score (`descending` explicit: the paper's text is ambiguous;
    its code sorts inter ascending and intra descending) and ranks [lower%, upper%) of the domain are kept.
    Domains: the pool's `domain` column (`labels="domain"`, rows without one are skipped) or the map's
    clusters (`labels="cluster"`).
    paper: Ling et al., Diversity as a Reward (arXiv 2502.04380), contrastive pools of methods.md 2.2.
    deviations: e(x) is the pool's sentence embedding (the paper: the LM's input-embedding mean); centroids are
    the domain means of the pool's rows.
    """

    name = "daar_band"
    stratify_scope = "pool"  # inter/intra scores need every domain's centroid
    paper = "DaaR contrastive inter/intra diversity pools (arXiv 2502.04380), methods.md 2.2"
    deviations = "pool sentence embeddings as e(x)"

    def __init__(
        self,
        metric: str = "inter",
        band: tuple[float, float] | list[float] = (0.0, 20.0),
        descending: bool | None = None,
        labels: str = "domain",
    ) -> None:
        if metric not in ("inter", "intra"):
            raise ValueError(f"daar_band: metric must be 'inter' or 'intra', got {metric!r}")
        if descending is None:
            raise ParameterError(
                "daar_band needs descending=True or False (the sort direction is explicit; DaaR's code "
                "sorts inter ascending and intra descending)"
            )
        if len(band) != 2 or not 0 <= float(band[0]) < float(band[1]) <= 100:
            raise ValueError(
                f"daar_band: band must be (lower%, upper%) with 0 <= lower < upper <= 100, got {band}"
            )
        if labels not in ("domain", "cluster"):
            raise ValueError(f"daar_band: labels must be 'domain' or 'cluster', got {labels!r}")
        self.metric = metric
        self.band = [float(band[0]), float(band[1])]
        self.descending = bool(descending)
        self.labels = labels

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        from index.diversity import daar_scores

        if self.labels == "cluster":
            groups = np.asarray(view.clusters(), dtype=np.int64)
            names = [str(c) for c in np.unique(groups)]
        else:
            dom = view.domains()
            have = np.array([d is not None for d in dom], dtype=bool)
            if not have.any():
                raise ValueError("daar_band: no row has a domain; use labels='cluster' (after `curate map`)")
            names, codes = np.unique(dom[have].astype(str), return_inverse=True)
            groups = np.full(view.n, -1, dtype=np.int64)
            groups[have] = codes
        ok = groups >= 0
        vec = view.vectors()
        inter, intra = daar_scores(vec[ok], groups[ok])
        score = np.full(view.n, np.nan)
        score[ok] = inter if self.metric == "inter" else intra
        pos, q = band_positions(score, groups, self.band[0], self.band[1], descending=self.descending)
        reasons = [
            f"daar_band: {self.metric}={score[p]:.4f}, domain quantile {qq:.3f}"
            for p, qq in zip(pos, q, strict=True)
        ]
        stats = {
            "metric": self.metric,
            "band": self.band,
            "descending": self.descending,
            "band_rows": int(pos.size),
            "n_unlabelled": int((~ok).sum()),
            "band_domains": [str(n) for n in names],
            f"mean_{self.metric}_selected": float(score[pos[:k]].mean()) if k and pos.size else None,
        }
        if pos.size < k and budget.kind != "tokens":
            raise ShortRankingError(
                f"daar_band: the band {self.band} holds {pos.size} rows, the budget needs {k}: lower the budget "
                f"(e.g. '{self.band[1] - self.band[0]:g}%') or widen the band",
                Ranking(pos, reasons=reasons, stats=stats),
            )
        return Ranking(pos, reasons=reasons, stats=stats)
