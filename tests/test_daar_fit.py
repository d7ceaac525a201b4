"""DaaR's fit stage: a fit is saved under the run and loaded back bit for bit when its key (features,
centroids, probe sample, parameters, versions) is the same, so a second selection trains no probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_lm import SENTENCES, sentence_pool_run, tiny_lm  # noqa: F401  (fixture)

from curate.select import daar_fit
from curate.select.daar_fit import DaaRResult, fit_daar


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
    assert set(side) == {"key", "n", "stats", "kmeans"} and side["n"] == 120
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
