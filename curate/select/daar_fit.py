"""DaaR's fit stage: pseudo-labels, cross-fitted probes, every row's predicted entropy; cached by its inputs.

Staged like DSIR (fit -> weights -> resample): this module fits (k-means pseudo-labels of a seeded probe sample
of the pool, the domain probe ψ_dom, entropy targets, the diversity probe ψ_div) and gives every pool row a
predicted entropy Ĥ; `curate.select.daar` ranks on it. Like a signal, a fit is saved (<run>/probes/
daar-<digest>.npz with the arrays, and .json with its key and figures) and loaded back when its key is the
same: the digests of the features and centroids it was fitted on, its parameters and the library versions, so
a second selection (another budget, name or stratification) trains no probe.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.select.daar_probe import entropy, predict, train_probe
from index.io import atomic_path, read_json

#: bump when a change to the fit would change its result, so older cached fits are not reused
FIT_VERSION = 1


@dataclass
class DaaRResult:
    """Predicted entropy for every row, the probe sample, its pseudo-labels and the probes' figures."""

    predicted_entropy: np.ndarray
    probe_rows: np.ndarray
    pseudo_labels: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    kmeans: dict[str, Any] = field(default_factory=dict)  # the pseudo-label k-means figures (`fit_daar`)
    n_classes: int | None = None  # the domain probes' outputs (`fit_daar`: the centroids); None in older fits

    def save(self, path: str | Path, key: dict[str, Any]) -> None:
        """Write `path`.npz (the arrays) and then `path`.json (key, stats, k-means figures), both atomically: a
        sidecar means a whole fit. Stats keep their order, so a loaded fit equals the fitted one."""
        path = Path(path)
        with atomic_path(path.with_suffix(".npz"), suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    predicted_entropy=np.asarray(self.predicted_entropy, dtype=np.float64),
                    probe_rows=np.asarray(self.probe_rows, dtype=np.int64),
                    pseudo_labels=np.asarray(self.pseudo_labels, dtype=np.int64),
                )
        side = {"key": key, "n": int(len(self.predicted_entropy)), "stats": self.stats, "kmeans": self.kmeans,
                "n_classes": self.n_classes}
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(side, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, key: dict[str, Any]) -> DaaRResult | None:
        """The fit saved at `path` if it was made with `key` (else None)."""
        path = Path(path)
        side_path, arrays = path.with_suffix(".json"), path.with_suffix(".npz")
        if not (side_path.exists() and arrays.exists()):
            return None
        side = read_json(side_path)
        if side.get("key") != json.loads(json.dumps(key)):
            return None
        with np.load(arrays) as z:
            h, rows, labels = z["predicted_entropy"], z["probe_rows"], z["pseudo_labels"]
        if h.shape != (side["n"],):
            return None
        return cls(h, rows, labels, side["stats"], side["kmeans"], side.get("n_classes"))


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
    n_classes: int | None = None,
) -> DaaRResult:
    """Stages (d) and (e) of DaaR on arrays: ψ_dom on the probe rows' pseudo-`labels`, entropy targets, ψ_div,
    and the predicted entropy of every row of `probe_feats` ([N, d], pool order).

    `folds` > 1 (cross-fitting over the pool): every pool row gets a fold; for each fold f a ψ_dom trained on
    the probe rows of the other folds gives the entropy targets of fold f's probe rows, and a ψ_div trained on
    the other folds' probe rows and targets predicts every pool row of fold f. So no row's Ĥ comes from a
    probe that saw it, and the domain accuracy and ψ_div's R² (`diversity_probe.oof_r2`, against the targets)
    are held out; `holdout` is not used (each probe's held-out rows are its fold). `folds` <= 1 (or fewer
    than 2 x `folds` probe rows): the paper's in-sample targets and one ψ_div for the pool (R² on its `holdout`).
    `n_classes`: the pseudo-domains (DaaR's centroids; default the largest label + 1). Every ψ_dom has that many
    outputs, so the entropy targets of every fold are on one scale even when a fold's training rows lack a
    pseudo-domain.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probe_rows = np.asarray(probe_rows, dtype=np.int64)
    if labels.shape != (len(probe_rows),):
        raise ValueError(f"{labels.shape[0]} pseudo-labels for {len(probe_rows)} probe rows")
    n_classes = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"pseudo-labels must lie in 0..{n_classes - 1}")
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
            fit = train_probe(x[tr], labels[tr], task="classify", seed=seed + 10 + f, n_classes=n_classes,
                              **{**kw, "holdout": 0.0})
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
        dom = train_probe(x, labels, task="classify", seed=seed, n_classes=n_classes, **kw)
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
    return DaaRResult(pred, probe_rows, labels, stats, n_classes=n_classes)


def draw_probe_rows(n: int, probe_size: int, seed: int) -> np.ndarray:
    """The probe sample: `probe_size` pool positions (all when the pool is smaller), seeded, ascending."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(probe_size, n), replace=False))


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for name in ("numpy", "torch", "faiss-cpu", "faiss-gpu"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def fit_key(
    cluster_rows: np.ndarray,
    probe_feats: np.ndarray,
    centroids: np.ndarray,
    probe_rows: np.ndarray,
    params: dict[str, Any],
) -> dict[str, Any]:
    """What a fit depends on: digests of its k-means input, probe features, centroids and probe sample, its
    parameters, this code's `FIT_VERSION` and the numpy / torch / faiss versions."""
    return {
        "version": FIT_VERSION,
        "cluster_features": _digest(cluster_rows),
        "probe_features": _digest(probe_feats),
        "centroids": _digest(centroids),
        "probe_rows": _digest(probe_rows),
        "params": params,
        "libraries": _versions(),
    }


_HOLDOUT_DEFAULT = 0.1  # `fit_daar`'s default holdout


def _had_fewer_outputs(fit: DaaRResult, n: int, k: int, folds: int, seed: int) -> bool:
    """Whether a cached fit made before the domain probes' outputs were fixed at the `k` centroids (no
    `n_classes` saved) had a probe with fewer: sized by the largest label of its training rows, a probe whose
    rows lacked the last pseudo-domain had k - 1 outputs, and its entropies another scale. Such a fit is made
    again; the others are what this code makes."""
    labels, rows = np.asarray(fit.pseudo_labels), np.asarray(fit.probe_rows)
    if not labels.size:
        return False
    if folds > 1 and rows.size >= 2 * folds:
        fold = _folds(n, rows, folds, np.random.default_rng(seed))[rows]
        return any(int(labels[fold != f].max()) + 1 < k for f in range(folds))
    return int(labels.max()) + 1 < k


def fit_daar(
    cluster_feats: np.ndarray,
    probe_feats: np.ndarray,
    centroids: np.ndarray,
    *,
    probe_size: int = 5000,
    seed: int = 0,
    kmeans_seed: int = 42,
    kmeans_iter: int = 20,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    holdout: float = _HOLDOUT_DEFAULT,
    folds: int = 3,
    cache_dir: str | Path | None = None,
) -> DaaRResult:
    """DaaR's fit on a pool's features ([N, d] each, pool order): a seeded probe sample, its pseudo-labels
    (k-means from `centroids`) and the cross-fitted probes' predicted entropy of every row (`daar_entropy`).

    The domain probes have one output per centroid. `holdout` applies only to the in-sample fit (`folds` <= 1,
    or fewer than 2 x `folds` probe rows); cross-fitted probes are judged on the folds they did not train on.
    With `cache_dir`, a fit with the same key (`fit_key`) is loaded from there instead of trained, and a new
    fit is saved there (daar-<digest of the key>.npz/.json).
    """
    probe = np.asarray(probe_feats)
    probe_rows = draw_probe_rows(probe.shape[0], probe_size, seed)
    cluster_rows = np.asarray(cluster_feats)[probe_rows]
    k = int(np.asarray(centroids).shape[0])
    path, key = None, {}
    if cache_dir is not None:
        # cross-fitted probes hold out whole folds and ignore `holdout`: keyed as the default, so fits that
        # differ only in it share a key and default fits keep the key they had
        cross_fit = folds > 1 and probe_rows.size >= 2 * folds
        params = {
            "probe_size": int(probe_size), "seed": int(seed), "kmeans_seed": int(kmeans_seed),
            "kmeans_iter": int(kmeans_iter), "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size),
            "holdout": _HOLDOUT_DEFAULT if cross_fit else float(holdout), "folds": int(folds),
        }
        key = fit_key(cluster_rows, probe, centroids, probe_rows, params)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"daar-{digest}"
        cached = DaaRResult.load(path, key)
        stale = cached is not None and cached.n_classes is None and _had_fewer_outputs(
            cached, probe.shape[0], k, folds, seed)
        if cached is not None and not stale:
            return cached
    labels, km_info = pseudo_label_fit(cluster_rows, centroids, seed=kmeans_seed, niter=kmeans_iter)
    res = daar_entropy(
        probe,
        labels,
        probe_rows,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        holdout=holdout,
        folds=folds,
        seed=seed,
        n_classes=k,
    )
    res.kmeans = km_info
    if path is not None:
        res.save(path, key)
    return res
