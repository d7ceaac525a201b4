"""Notebook helpers return the tables a notebook plots, with known values on a synthetic run."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from fixtures_pool import make_run

from curate.inspect import coverage_curves, map_frame, pool_overview, quarantine_reasons
from curate.select import select
from curate.select.selection import Selection


def test_pool_overview_counts_domains_and_duplicates(tmp_path):
    run = make_run(tmp_path / "run", n=24)  # domains cycle code, math, chat, None; first 3 rows duplicated
    table = pool_overview(run)
    by = dict(zip(table["domain"], table["rows"], strict=True))
    assert by == {"code": 6, "math": 6, "chat": 6, "(none)": 6, "(all)": 24}
    dups = dict(zip(table["domain"], table["duplicates"], strict=True))
    assert dups["(all)"] == 3 and dups["code"] == 1 and dups["math"] == 1 and dups["chat"] == 1
    # prompt-only rows (no response) do not pull the overall mean response length down
    shard = next(run.pool_dir.iterdir())
    pool = pl.read_parquet(shard)
    pool = pool.with_columns(pl.when(pl.col("domain") == "code").then(None).otherwise(pl.col("response"))
                             .alias("response"))
    pool.write_parquet(shard)
    got = dict(zip(pool_overview(run)["domain"], pool_overview(run)["response_chars"], strict=True))
    assert got["(all)"] == pytest.approx(pl.read_parquet(run.pool_dir)["response"].str.len_chars().mean())


def test_quarantine_reasons_group_by_kind(tmp_path):
    run = make_run(tmp_path / "run", n=12, n_quarantined=2)
    q = quarantine_reasons(run)
    assert q["rows"].sum() == 2


def test_map_frame_flags_selected_rows(tmp_path):
    run = make_run(tmp_path / "run", n=24, map_=True)
    select(run, "random", budget=5, seed=3)
    frame = map_frame(run, signals=["tokens"])
    assert frame.height == 24
    assert {"id", "domain", "x", "y", "cell", "cluster", "tokens", "sel:random"} <= set(frame.columns)
    chosen = Selection.load(run, "random").positions
    np.testing.assert_array_equal(np.flatnonzero(frame["sel:random"].to_numpy()), np.sort(chosen))


def test_coverage_curves_follow_rank_order(tmp_path):
    run = make_run(tmp_path / "run", n=24, map_=True)  # one grid cell per domain group: 4 non-empty cells
    select(run, "balanced-random", budget=8, seed=0)
    curve = coverage_curves(run, ["balanced-random"], budgets=[1, 2, 4, 8])
    # balanced-random interleaves the 4 domains, so its first 4 rows hit all 4 cells
    assert curve["coverage"].to_list() == [0.25, 0.5, 1.0, 1.0]
    assert curve.schema["budget"] == pl.Int64
    # a selection with no rows (a token budget under the shortest row) has no curve; the others keep theirs
    select(run, "random", budget="1tok", seed=0, name="none")
    both = coverage_curves(run, ["none", "balanced-random"])
    assert set(both["selection"]) == {"balanced-random"} and both.schema["coverage"] == pl.Float64
    assert coverage_curves(run, ["none"]).height == 0

