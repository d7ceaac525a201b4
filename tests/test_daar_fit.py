"""DaaR's fit stage: a fit is saved under the run and loaded back bit for bit when its key (features,
centroids, probe sample, parameters, versions) is the same, so a second selection trains no probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_lm import SENTENCES, sentence_pool_run, tiny_lm  # noqa: F401  (fixture)

from curate.select import daar_fit
from curate.select.daar_fit import DaaRResult, daar_entropy, fit_daar


def _pool(n: int = 120, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, d)) * 3
    x = (centres[rng.integers(0, 3, n)] + rng.standard_normal((n, d))).astype(np.float32)
    return x, centres.astype(np.float32)


def test_a_cached_fit_is_loaded_bit_for_bit_and_trains_nothing(tmp_path, monkeypatch) -> None:
    x, cents = _pool()
    kw = {"probe_size": 90, "epochs": 3, "folds": 3, "seed": 1}
    fresh = fit_daar(x, x, cents, **kw)
    saved = fit_daar(x, x, cents, cache_dir=tmp_path, **kw)
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".npz"]
    monkeypatch.setattr(daar_fit, "train_probe", lambda *a, **k: pytest.fail("trained a probe on a cache hit"))
    loaded = fit_daar(x, x, cents, cache_dir=tmp_path, **kw)
    for res in (saved, loaded):
        for name in ("predicted_entropy", "probe_rows", "pseudo_labels"):
            a, b = getattr(fresh, name), getattr(res, name)
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        assert json.dumps(res.stats) == json.dumps(fresh.stats)  # same values, same key order
        assert res.kmeans == fresh.kmeans and res.kmeans["rows"] == 90


def test_another_input_or_parameter_is_another_fit(tmp_path) -> None:
    x, cents = _pool()
    kw = {"probe_size": 60, "epochs": 2, "folds": 1, "seed": 0}
    fit_daar(x, x, cents, cache_dir=tmp_path, **kw)
    fit_daar(x, x, cents, cache_dir=tmp_path, **{**kw, "epochs": 3})
    fit_daar(x, x, cents * 1.01, cache_dir=tmp_path, **kw)
    y = x.copy()
    y[0, 0] += 1e-3
    fit_daar(x, y, cents, cache_dir=tmp_path, **kw)
    assert len(list(tmp_path.glob("daar-*.npz"))) == 4
    side = json.loads(next(tmp_path.glob("daar-*.json")).read_text())
    assert set(side) == {"key", "n", "stats", "kmeans", "n_classes"} and side["n"] == 120 and side["n_classes"] == 3
    assert {"cluster_features", "probe_features", "centroids", "probe_rows", "params", "libraries"} <= set(side["key"])
    # a sidecar whose key differs (or whose arrays are gone) is not used
    path = next(tmp_path.glob("daar-*.npz")).with_suffix("")
    assert DaaRResult.load(path, {"version": -1}) is None
    path.with_suffix(".npz").unlink()
    assert DaaRResult.load(path, side["key"]) is None


def test_selector_on_a_run_reuses_its_fit_for_another_budget(tiny_lm, tmp_path, monkeypatch) -> None:  # noqa: F811
    from curate.select import select

    run = sentence_pool_run(tmp_path / "run", 36)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(
        json.dumps({"domain": dom, "prompt": SENTENCES[i], "response": SENTENCES[i]}) + "\n"
        for dom, i in (("math", 0), ("math", 7), ("code", 2), ("code", 3))
    ))
    kw = {"model": str(tiny_lm), "layer": 1, "max_length": 64, "seeds": str(seeds), "epochs": 2, "folds": 2}
    first = select(run, "daar", 12, seed=0, stratify="none", **kw)
    assert len(list((run / "probes").glob("daar-*.npz"))) == 1
    monkeypatch.setattr(daar_fit, "train_probe", lambda *a, **k: pytest.fail("trained a probe on a cache hit"))
    fewer = select(run, "daar", 6, seed=0, name="fewer", stratify="none", **kw)
    assert fewer.ids == first.ids[:6]
    assert fewer.stats["probe_heldout_r2"] == first.stats["probe_heldout_r2"]


def _probe_widths(monkeypatch) -> list[int]:
    """Record the output width of every domain probe fit_daar / daar_entropy trains."""
    widths: list[int] = []
    real = daar_fit.train_probe

    def recording(*a, **k):
        fit = real(*a, **k)
        if k.get("task") == "classify":
            widths.append(int(fit.model[-1].out_features))
        return fit

    monkeypatch.setattr(daar_fit, "train_probe", recording)
    return widths


def _labels_lacking_last_class_in_one_fold(n: int, probe_rows: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Pseudo-labels 0/1 alternating, and 2 only on the probe rows of fold 0: fold 0's domain probe trains on
    the other folds' rows, which hold no row of pseudo-domain 2."""
    fold = daar_fit._folds(n, probe_rows, folds, np.random.default_rng(seed))[probe_rows]
    labels = np.arange(probe_rows.size) % 2
    labels[np.flatnonzero(fold == 0)[::2]] = 2
    return labels


def test_every_domain_probe_has_one_output_per_centroid(monkeypatch) -> None:
    """A fold whose training rows lacked the last pseudo-domain gave a probe of K - 1 outputs (sized by the
    largest training label), so its rows' entropy targets were on another scale (at most log 2, not log 3)."""
    x, cents = _pool(n=60)
    rows = np.arange(60)
    labels = _labels_lacking_last_class_in_one_fold(60, rows, 3, seed=0)
    widths = _probe_widths(monkeypatch)
    res = daar_entropy(x, labels, rows, epochs=1, folds=3, seed=0, n_classes=3)
    assert widths == [3, 3, 3]
    # the whole probe sample lacks the last of 3 centroids: fit_daar still fits 3 outputs
    widths.clear()
    monkeypatch.setattr(daar_fit, "pseudo_label_fit", lambda c, *a, **k: (np.arange(len(c)) % 2, {"rows": len(c)}))
    res = fit_daar(x, x, cents, probe_size=60, epochs=1, folds=3, seed=0)
    assert widths == [3, 3, 3] and res.n_classes == 3
    assert res.stats["pseudo_label_sizes"] == [30, 30, 0] and res.stats["entropy_max"] == pytest.approx(np.log(3))
    widths.clear()
    fit_daar(x, x, cents, probe_size=60, epochs=1, folds=1, seed=0)
    assert widths == [3]


def test_a_cached_fit_with_fewer_probe_outputs_is_made_again(tmp_path, monkeypatch) -> None:
    """Fits cached before the fix carry no `n_classes`: reused when no probe of theirs lacked a class, made
    again when one did (their entropies were on mixed scales); default keys are unchanged either way."""
    x, cents = _pool(n=60)
    kw = {"probe_size": 60, "epochs": 1, "folds": 3, "seed": 0, "cache_dir": tmp_path}
    labels = _labels_lacking_last_class_in_one_fold(60, np.arange(60), 3, seed=0)
    widths = _probe_widths(monkeypatch)
    monkeypatch.setattr(daar_fit, "pseudo_label_fit", lambda c, *a, **k: (labels, {"rows": len(c)}))
    fit_daar(x, x, cents, **kw)
    assert widths == [3, 3, 3]
    side_path = next(tmp_path.glob("daar-*.json"))
    side = json.loads(side_path.read_text())
    assert side["n_classes"] == 3
    fit_daar(x, x, cents, **kw)
    assert len(widths) == 3  # current fit: loaded
    del side["n_classes"]  # as an older fit was saved
    side_path.write_text(json.dumps(side))
    fit_daar(x, x, cents, **kw)
    assert len(widths) == 6 and json.loads(side_path.read_text())["n_classes"] == 3  # made again, saved
    # an older fit where every probe saw every class is reused
    monkeypatch.setattr(daar_fit, "pseudo_label_fit", lambda c, *a, **k: (np.arange(len(c)) % 3, {"rows": len(c)}))
    fit_daar(x, x, cents, **{**kw, "seed": 1})
    side_path = next(p for p in tmp_path.glob("daar-*.json") if json.loads(p.read_text())["key"]["params"]["seed"] == 1)
    side = json.loads(side_path.read_text())
    del side["n_classes"]
    side_path.write_text(json.dumps(side))
    fit_daar(x, x, cents, **{**kw, "seed": 1})
    assert len(widths) == 9


def test_holdout_is_not_in_the_key_of_a_cross_fitted_fit(tmp_path, monkeypatch) -> None:
    """Cross-fitted probes (folds > 1) ignore `holdout`: fits differing only in it are one fit, keyed as the
    default (0.1) so existing default fits keep their key; with folds=1 it is used and keyed."""
    x, cents = _pool(n=60)
    kw = {"probe_size": 60, "epochs": 1, "seed": 0, "cache_dir": tmp_path}
    fit_daar(x, x, cents, folds=3, **kw)
    side = json.loads(next(tmp_path.glob("daar-*.json")).read_text())
    assert side["key"]["params"] == {"probe_size": 60, "seed": 0, "kmeans_seed": 42, "kmeans_iter": 20, "epochs": 1,
                                     "lr": 0.001, "batch_size": 64, "holdout": 0.1, "folds": 3}
    monkeypatch.setattr(daar_fit, "train_probe", lambda *a, **k: pytest.fail("trained a probe on a cache hit"))
    fit_daar(x, x, cents, folds=3, holdout=0.3, **kw)
    assert len(list(tmp_path.glob("daar-*.npz"))) == 1
    monkeypatch.undo()
    fit_daar(x, x, cents, folds=1, holdout=0.1, **kw)
    fit_daar(x, x, cents, folds=1, holdout=0.3, **kw)
    assert len(list(tmp_path.glob("daar-*.npz"))) == 3
