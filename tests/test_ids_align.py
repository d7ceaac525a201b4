"""curate.pool.ids.align / positions: rows matched by id, in the order asked, with known answers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from curate.pool.ids import DuplicateIdsError, MissingIdsError, align, positions

RIGHT = pl.DataFrame({"id": ["a", "b", "c"], "v": [1.0, 2.0, 3.0], "tag": ["x", "y", "z"]})


def test_align_keeps_the_order_asked_and_repeats():
    out = align(["c", "a", "c", "b"], RIGHT)
    assert out.columns == ["id", "v", "tag"]
    assert out["id"].to_list() == ["c", "a", "c", "b"]
    assert out["v"].to_list() == [3.0, 1.0, 3.0, 2.0]
    assert out["tag"].to_list() == ["z", "x", "z", "y"]


def test_align_gives_nulls_for_missing_ids_or_raises_when_all_are_required():
    out = align(["b", "q", "a", "r"], RIGHT)
    assert out["id"].to_list() == ["b", "q", "a", "r"]
    assert out["v"].to_list() == [2.0, None, 1.0, None]
    with pytest.raises(MissingIdsError) as err:
        align(["b", "q", "a", "r"], RIGHT, require_all=True)
    assert err.value.missing == ["q", "r"] and err.value.first == "q"
    assert str(err.value) == "2 of 4 ids are missing (first: q)"
    assert isinstance(err.value, KeyError)


@pytest.mark.parametrize("ids", [["c", "a"], np.array(["c", "a"]), pl.Series("other", ["c", "a"]), ("c", "a")])
def test_align_takes_any_sequence_of_ids(ids):
    out = align(ids, RIGHT)
    assert out["id"].to_list() == ["c", "a"] and out["v"].to_list() == [3.0, 1.0]


def test_align_with_a_left_frame_keeps_its_columns_first():
    left = pl.DataFrame({"id": ["c", "zz", "a"], "rank": [0, 1, 2]})
    out = align(left, RIGHT.select("id", "v"))
    assert out.columns == ["id", "rank", "v"]
    assert out.rows() == [("c", 0, 3.0), ("zz", 1, None), ("a", 2, 1.0)]


def test_align_on_another_column_and_empty():
    right = RIGHT.rename({"id": "key"})
    assert align(["b"], right, on="key")["v"].to_list() == [2.0]
    empty = align([], RIGHT)
    assert empty.height == 0 and empty.columns == ["id", "v", "tag"]


def test_align_refuses_duplicate_ids_on_the_right():
    right = pl.DataFrame({"id": ["a", "b", "a"], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(DuplicateIdsError, match="id a appears more than once"):
        align(["b"], right)


def test_positions_known_answers():
    pool = ["p0", "p1", "p2", "p3"]
    pos = positions(["p3", "p0", "p3", "p2"], pool)
    assert pos.dtype == np.int64 and pos.tolist() == [3, 0, 3, 2]
    assert positions(pl.Series(["p1"]), pl.Series("id", pool)).tolist() == [1]
    assert positions(np.array(["p2", "p1"]), np.array(pool)).tolist() == [2, 1]
    empty = positions([], pool)
    assert empty.dtype == np.int64 and empty.size == 0


def test_positions_names_the_first_missing_id():
    with pytest.raises(MissingIdsError) as err:
        positions(["p1", "nope", "p0", "gone"], ["p0", "p1"])
    assert err.value.first == "nope" and err.value.missing == ["nope", "gone"]
    assert "first: nope" in str(err.value)


def test_positions_refuses_repeated_ids_in_the_list_looked_in():
    with pytest.raises(DuplicateIdsError, match="id p1 appears more than once"):
        positions(["p0"], ["p0", "p1", "p1"])


def test_positions_agree_with_a_dict_lookup():
    rng = np.random.default_rng(0)
    pool = [f"id{i:05d}" for i in rng.permutation(5000)]
    asked = [pool[i] for i in rng.integers(0, len(pool), 2000)]
    lookup = {x: i for i, x in enumerate(pool)}
    assert positions(asked, pool).tolist() == [lookup[x] for x in asked]
