from __future__ import annotations

import numpy as np
import pytest
from vectors import clustered, unit_rows

from index.faiss_index import build_index, load_index, save_index, search


def _clustered(rng, n, d, n_clusters, spread=0.3):
    return clustered(rng, n, d, n_clusters, spread)


def test_flat_search_equals_numpy_bruteforce():
    rng = np.random.default_rng(0)
    x = unit_rows(rng, 500, 32)
    q = unit_rows(rng, 20, 32)
    idx = build_index(x, "flat")
    sims, ids = search(idx, q, 5)
    full = q @ x.T
    ref = np.argsort(-full, axis=1)[:, :5]
    assert ids.dtype == np.int64 and sims.dtype == np.float32
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(sims, np.take_along_axis(full, ref, axis=1), rtol=1e-5, atol=1e-6)


def test_auto_is_flat_for_small_pools():
    import faiss

    x = unit_rows(np.random.default_rng(1), 100, 8)
    assert isinstance(build_index(x), faiss.IndexFlatIP)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_on_clustered_data(kind):
    rng = np.random.default_rng(2)
    x = _clustered(rng, 6000, 32, 40)
    q = x[rng.choice(6000, 200, replace=False)]
    idx = build_index(x, kind, seed=0)
    _, got = search(idx, q, 10)
    _, exact = search(build_index(x, "flat"), q, 10)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(got, exact, strict=True)])
    assert recall >= 0.9


def test_ivf_tunes_nprobe_and_roundtrips(tmp_path):
    rng = np.random.default_rng(3)
    x = _clustered(rng, 4000, 16, 30)
    idx = build_index(x, "ivf", nlist=64, seed=0)
    assert 1 <= idx.nprobe <= 64
    q = x[:50]
    s1, i1 = search(idx, q, 7)
    path = tmp_path / "sub" / "pool.faiss"
    save_index(idx, path)
    assert path.exists() and not list(path.parent.glob(".*tmp"))
    back = load_index(path)
    assert back.ntotal == 4000 and back.nprobe == idx.nprobe
    s2, i2 = search(back, q, 7)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


def test_bad_input_errors(tmp_path):
    x = np.ones((10, 4), dtype=np.float32)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        build_index(x)
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(np.ones((5, 4), dtype=np.float32), "lsh")
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "missing.faiss")
    idx = build_index(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="dimension"):
        search(idx, np.ones((1, 3), dtype=np.float32), 1)


def test_ivf_from_cells_lists_the_given_partition_and_tunes_nprobe(tmp_path):
    """The lists are exactly the given cells (no k-means of its own); nprobe reaches the target recall on the
    tuning sample; the index saves and loads like any other."""
    import faiss

    from index.faiss_index import TARGET_RECALL, exact_search, ivf_from_cells

    rng = np.random.default_rng(4)
    x = _clustered(rng, 3000, 16, 25)
    cent = x[rng.choice(3000, 40, replace=False)]
    labels = np.argmax(x @ cent.T, axis=1)
    idx = ivf_from_cells(x, cent, labels, seed=2)
    invlists = faiss.extract_index_ivf(idx).invlists
    for j in range(40):
        got = faiss.rev_swig_ptr(invlists.get_ids(j), invlists.list_size(j)).copy()
        np.testing.assert_array_equal(np.sort(got), np.flatnonzero(labels == j))
    q = x[np.sort(np.random.default_rng(3).choice(3000, 1000, replace=False))]  # tune_nprobe's sample (seed + 1)
    _, exact = exact_search(x, q, 10)
    _, got = search(idx, q, 10)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(got, exact, strict=True)])
    assert recall >= TARGET_RECALL and 1 <= idx.nprobe < 40
    save_index(idx, tmp_path / "cells.faiss")
    back = load_index(tmp_path / "cells.faiss")
    np.testing.assert_array_equal(search(back, q[:20], 5)[1], got[:20, :5])
    assert ivf_from_cells(x, cent, labels, nprobe=3).nprobe == 3
    with pytest.raises(ValueError, match="list numbers"):
        ivf_from_cells(x, cent, np.full(3000, 40))
    with pytest.raises(ValueError, match="dimension"):
        ivf_from_cells(x, cent[:, :8], labels)


def test_tune_nprobe_counts_tied_duplicates_as_found():
    """50 distinct rows, each 20 times: any 10 copies are a row's exact 10 nearest. The lists hold the copies in
    reverse id order, so the index returns other copies than exact search does (which breaks ties by lower id);
    counted by ids that would look like recall 0 and push nprobe to every list, counted with ties it is 1."""
    import faiss

    from index.faiss_index import exact_search, tune_nprobe

    x = np.repeat(unit_rows(np.random.default_rng(5), 50, 16), 20, axis=0)
    quantizer = faiss.IndexFlatIP(16)
    ivf = faiss.IndexIVFFlat(quantizer, 16, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    order = np.arange(x.shape[0])[::-1].copy()
    ivf.add_with_ids(x[order], order.astype(np.int64))
    q = x[np.sort(np.random.default_rng(1).choice(x.shape[0], 1000, replace=False))]  # tune_nprobe's sample
    _, exact = exact_search(x, q, 10)
    ivf.nprobe = 8
    _, got = ivf.search(q, 10)
    by_ids = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(got, exact, strict=True)])
    assert by_ids < 0.5  # the ids differ: the test can tell the two counts apart
    assert tune_nprobe(ivf, x, target_recall=0.95) == 1
