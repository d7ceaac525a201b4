"""MIW-style selector: exact ranking on synthetic indicators with given weights; file and signal paths agree."""

from __future__ import annotations

import numpy as np
import pytest

from curate.select import PoolView, make_selector
from curate.select.miw import rank_by_score
from index.io import write_json


def _indicators() -> dict[str, np.ndarray]:
    # 6 rows; ranks (0..5) chosen so the expected scores are easy to compute by hand
    return {
        "a": np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0]),  # percentile 0, .2, .4, .6, .8, 1
        "b": np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0]),  # percentile 1, .8, .6, .4, .2, 0
    }


def test_exact_ranking_with_given_weights() -> None:
    ind = _indicators()
    view = PoolView.from_arrays([f"r{i}" for i in range(6)], signals=ind)
    # score = 0.8 * pa + 0.2 * pb: row i -> 0.8 * i/5 + 0.2 * (5 - i)/5, increasing in i
    sel = make_selector("miw", weights={"a": 0.8, "b": 0.2}).select(view, 6)
    assert sel.positions.tolist() == [5, 4, 3, 2, 1, 0]
    # reversed weights reverse the ranking; equal weights tie every row -> pool order
    assert make_selector("miw", weights={"a": 0.2, "b": 0.8}).select(view, 3).positions.tolist() == [0, 1, 2]
    assert make_selector("miw", weights={"a": 1, "b": 1}).select(view, 4).positions.tolist() == [0, 1, 2, 3]
    assert sel.reasons[0] == "miw: score=0.8"


def test_top_fraction_and_nan_rows() -> None:
    score = np.array([0.3, np.nan, 0.9, 0.1, 0.9, 0.5, 0.2, 0.8, 0.7, 0.4])
    view = PoolView.from_arrays([f"r{i}" for i in range(10)], signals={"miw_score": score})
    sel = make_selector("miw").select(view, "30%")
    assert sel.positions.tolist() == [2, 4, 7]  # tie 0.9: lower position first
    assert rank_by_score(score).tolist() == [2, 4, 7, 8, 5, 9, 0, 6, 3]
    with pytest.raises(ValueError, match="only 9 rows"):
        make_selector("miw").select(view, 10)


def test_weights_file_matches_the_stored_signal(tmp_path) -> None:
    import polars as pl

    from curate.signals import weighted_score

    rng = np.random.default_rng(0)
    ind = {"x": rng.random(50), "y": rng.random(50), "z": rng.random(50)}
    w = {"x": 0.5, "y": 0.3, "z": 0.2}
    ids = [f"{i:032x}" for i in range(50)]
    run = tmp_path / "run"
    (run / "pool").mkdir(parents=True)
    pl.DataFrame(
        {
            "id": ids,
            "domain": [None] * 50,
            "kind": ["sft"] * 50,
            "prompt": [""] * 50,
            "response": [""] * 50,
            "n_duplicates": [0] * 50,
        },
        schema_overrides={"domain": pl.String},
    ).write_parquet(run / "pool" / "shard-00000.parquet")
    write_json(run / "signals" / "miw_weights.json", {"indicators": list(w), "weights": w})
    view = PoolView.from_run(run)
    for name, vals in ind.items():
        view._signals[name] = vals
    view._signals["miw_score"] = weighted_score(ind, w)
    by_file = make_selector("miw", weights="file").select(view, 15)
    by_signal = make_selector("miw").select(view, 15)
    expected = np.argsort(-weighted_score(ind, w), kind="stable")[:15]
    assert by_file.positions.tolist() == by_signal.positions.tolist() == expected.tolist()
    assert by_file.stats["weights"] == w


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="weights"):
        make_selector("miw", weights="nope")
    view = PoolView.from_arrays(["a", "b"], signals={"a": np.ones(2)})
    with pytest.raises(ValueError, match="run directory"):
        make_selector("miw", weights="file").select(view, 1)
    with pytest.raises(KeyError, match="miw_score"):
        make_selector("miw").select(view, 1)


def test_given_weights_rank_indicators_over_the_pool_as_miw_score_does() -> None:
    """Within a stratum (default stratify="domain") or the rows left after exclusions, the indicators were
    percentile-ranked among those rows only, so given weights and `miw_score` (ranked over the pool) disagreed."""
    from curate.signals import weighted_score

    x = np.array([4.0, 5.0, 2.0, 7.0, 0.0, 6.0, 3.0, 1.0])  # pool percentiles x / 7
    y = np.array([6.0, 2.0, 3.0, 1.0, 0.0, 4.0, 7.0, 5.0])  # y / 7
    w = {"x": 0.7, "y": 0.3}
    # pool scores (0.7 x + 0.3 y) / 7: a (rows 0-3) .657 .586 .329 .743, b (rows 4-7) 0 .771 .6 .314;
    # ranked within a alone, row 1 (.567) came before row 0 (.533)
    score = weighted_score({"x": x, "y": y}, w)
    np.testing.assert_allclose(score, (0.7 * x + 0.3 * y) / 7)
    view = PoolView.from_arrays([f"r{i}" for i in range(8)], domains=["a"] * 4 + ["b"] * 4,
                                signals={"x": x, "y": y, "miw_score": score})
    given = make_selector("miw", weights=w).select(view, 4, stratify="domain")
    assert given.positions.tolist() == [3, 5, 0, 6]
    assert given.reasons[2] == "domain a: miw: score=0.6571"
    assert make_selector("miw").select(view, 4, stratify="domain").positions.tolist() == [3, 5, 0, 6]
    for stratify in ("none", "domain"):
        got = make_selector("miw", weights=w).select(view, 3, exclude=np.array([3]), stratify=stratify)
        ref = make_selector("miw").select(view, 3, exclude=np.array([3]), stratify=stratify)
        assert got.positions.tolist() == ref.positions.tolist()
    assert make_selector("miw", weights=w).select(view, 3, exclude=np.array([3])).positions.tolist() == [5, 0, 6]
