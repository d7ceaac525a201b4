"""DaaR's selector: rank every pool row by the entropy that probes fitted on the pool predict, highest first.

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
- Probe training: Adam lr 1e-3, batch 64, 30 epochs, features standardised with the training mean/std; a 10%
  holdout (`holdout`) only with `folds=1`: the default cross-fitted probes (`folds`=3) hold out whole folds
  instead and ignore it. The paper's batch 1 / lr 1e-5 / 1 epoch (97/3 split) does not converge on pools of a
  few thousand rows.
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

Stages and modules (as DSIR's fit -> weights -> resample): the seeds give domain centroids
(`curate.select.daar_seed_io`, generation in `curate.select.daar_seeds`); the rows' texts and features come
from `curate.select.daar_features`; `curate.select.daar_fit` fits the pseudo-labels and the probes
(`curate.select.daar_probe`) and predicts every row's entropy, a fit cached in the run like a signal; this
module ranks on it. The contrastive inter/intra bands of the paper's analysis are `curate.select.daar_band`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from curate.select.budget import Budget
from curate.select.daar_features import pool_features
from curate.select.daar_fit import fit_daar
from curate.select.daar_seed_io import SeedSource
from curate.select.selector import Ranking, Selector, register_selector
from curate.view import PoolView


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
    probe training; probe training `epochs`, `lr`, `batch_size`, `holdout` (only with `folds=1`: cross-fitted
    probes are judged out of fold); `kmeans_seed` (42, as the paper).
    `generate_seeds` (off by default): an instruct LM (`generator_model`, default `model`) writes
    `seeds_per_domain` seeds per domain of `domain_descriptions` (a dict, or a JSON/YAML file, domain ->
    one-sentence description), kept by cosine rejection at `seed_threshold` (a float or {domain: float});
    cached as <run>/features/daar_seeds-<hash>.jsonl and used like a seed file. The fitted probes' predicted
    entropy is cached under <run>/probes/ (`curate.select.daar_fit`): another budget or name trains no probe.
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
        executor: Any = None,
        executor_options: dict[str, Any] | None = None,
    ) -> None:
        from curate.executors import get_executor

        get_executor(executor, executor_options)  # bad names fail before any work
        self.executor, self.executor_options = executor, executor_options
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

    def _seed_source(self) -> SeedSource:
        return SeedSource(
            seeds=self.seeds,
            generate_seeds=self.generate_seeds,
            domain_descriptions=self.domain_descriptions,
            seeds_per_domain=self.seeds_per_domain,
            seed_threshold=self.seed_threshold,
            generator_model=self.generator_model,
            model=self.model,
            cluster_features=self.cluster_features,
            max_length=self.max_length,
            lm_batch_size=self.lm_batch_size,
            device=self.device,
        )

    def _features(self, view: PoolView, kind: str) -> np.ndarray:
        from curate.executors import get_executor

        return pool_features(
            view,
            kind,
            model=self.model,
            layer=self.layer,
            max_length=self.max_length,
            batch_size=self.lm_batch_size,
            device=self.device,
            executor=get_executor(self.executor, self.executor_options),
        )

    def rank(self, view: PoolView, k: int, *, seed: int, budget: Budget) -> Ranking:
        source = self._seed_source()
        source.check(view)
        cluster = self._features(view, self.cluster_features)
        names, centroids, seed_note = source.centroids(view, cluster, seed)
        probe = (
            self._features(view, self.probe_features)
            if self.probe_features != self.cluster_features
            else cluster
        )
        res = fit_daar(
            cluster,
            probe,
            centroids,
            probe_size=self.probe_size,
            seed=seed,
            kmeans_seed=self.kmeans_seed,
            kmeans_iter=self.kmeans_iter,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            holdout=self.holdout,
            folds=self.folds,
            cache_dir=None if view.run is None else view.run.probes_dir,
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
            "pseudo_label_kmeans": res.kmeans,
            "daar_domains": names,
            "seeds": seed_note,
            "probe_rows": int(res.probe_rows.size),
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
