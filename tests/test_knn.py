from __future__ import annotations

import numpy as np
import pytest
from vectors import clustered, unit_rows

from index.knn import KnnGraph, exact_knn, knn_graph, recall_at_k


def _clustered(rng, n, d, n_clusters, spread=0.5):
    return clustered(rng, n, d, n_clusters, spread)


def _numpy_knn(x, k):
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    nb = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return nb, np.take_along_axis(s, nb, axis=1)


def test_flat_graph_equals_numpy_and_excludes_self():
    x = unit_rows(np.random.default_rng(0), 300, 16)
    g = knn_graph(x, k=5, kind="flat", progress=False)
    nb, sims = _numpy_knn(x, 5)
    assert g.neighbors.dtype == np.int64 and g.sims.dtype == np.float32 and g.k == 5
    np.testing.assert_array_equal(g.neighbors, nb)
    np.testing.assert_allclose(g.sims, sims, atol=1e-5)
    assert not (g.neighbors == np.arange(300)[:, None]).any()
    assert (np.diff(g.sims, axis=1) <= 1e-6).all()


def test_duplicates_keep_each_other_and_drop_self():
    rng = np.random.default_rng(1)
    x = unit_rows(rng, 50, 8)
    x[10] = x[20] = x[30] = x[5]  # four identical rows
    for kind in ("flat", "cells"):
        g = knn_graph(x, k=4, kind=kind, progress=False, n_cells=4, probe=4)
        for i in (5, 10, 20, 30):
            others = {5, 10, 20, 30} - {i}
            assert set(g.neighbors[i, :3]) == others, (kind, i, g.neighbors[i])
            assert i not in g.neighbors[i]
            np.testing.assert_allclose(g.sims[i, :3], 1.0, atol=1e-5)


def test_tiny_pool_pads_missing_neighbours():
    x = unit_rows(np.random.default_rng(2), 3, 4)
    g = knn_graph(x, k=4, kind="flat", progress=False)
    assert (g.neighbors[:, 2:] == -1).all() and (g.sims[:, 2:] == 0).all()
    assert (g.neighbors[:, :2] >= 0).all()
    m = g.to_csr()
    assert m.nnz == 6 and m.shape == (3, 3)


def test_cells_method_recall_and_exact_scores():
    rng = np.random.default_rng(3)
    x = _clustered(rng, 8000, 32, 60)
    g = knn_graph(x, k=10, kind="cells", progress=False, seed=0)
    r = recall_at_k(g, x, sample=500, seed=1)
    assert r >= 0.9
    # similarities are exact float32 cosines of the listed neighbours, descending
    rows = np.arange(0, 8000, 97)
    ref = np.einsum("id,ikd->ik", x[rows], x[g.neighbors[rows]])
    np.testing.assert_allclose(g.sims[rows], ref, atol=1e-5)
    assert (np.diff(g.sims, axis=1) <= 1e-6).all()
    # the partition comes with the graph (for a search index on it): unit centroids, each row in its nearest
    cent, labels = g.cells
    assert cent.shape == (g.info["cells"], 32) and labels.shape == (8000,)
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-5)
    assert np.mean(np.argmax(x @ cent.T, axis=1) == labels) > 0.999
    assert knn_graph(x[:500], k=5, kind="flat", progress=False).cells is None
    # probing every cell is exact
    full = knn_graph(x[:2000], k=10, kind="cells", progress=False, n_cells=8, probe=8, spill=1)
    ref = knn_graph(x[:2000], k=10, kind="flat", progress=False)
    assert recall_at_k(full, x[:2000], sample=2000) == 1.0
    np.testing.assert_allclose(full.sims, ref.sims, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_faiss_approximate_kinds(kind):
    x = _clustered(np.random.default_rng(4), 3000, 16, 20)
    g = knn_graph(x, k=5, kind=kind, progress=False)
    assert recall_at_k(g, x, sample=300) >= 0.9
    assert not (g.neighbors == np.arange(3000)[:, None]).any()


def test_exact_knn_and_recall_of_perfect_graph():
    x = unit_rows(np.random.default_rng(5), 200, 8)
    nb, sims = exact_knn(x, np.array([0, 7, 199]), 3)
    ref_nb, ref_s = _numpy_knn(x, 3)
    np.testing.assert_array_equal(nb, ref_nb[[0, 7, 199]])
    g = KnnGraph(ref_nb, ref_s)
    assert recall_at_k(g, x, sample=50) == 1.0
    bad = KnnGraph(np.roll(ref_nb, 1, axis=0), ref_s)
    assert recall_at_k(bad, x, sample=200) < 0.2


def test_recall_counts_tied_neighbours_as_found():
    rng = np.random.default_rng(11)
    x = unit_rows(rng, 100, 8)
    x[:30] = x[0]  # 30 exact duplicates: any 10 of the other 29 are row 0's exact neighbours
    nb, sims = _numpy_knn(x, 10)
    assert nb[0].tolist() == list(range(1, 11))  # the exact search breaks the tie by position
    tied = nb.copy()
    tied[:30] = [[j for j in range(29, 0, -1) if j != i][:10] for i in range(30)]  # other duplicates
    assert recall_at_k(KnnGraph(tied, sims), x, sample=100) == 1.0
    worse = tied.copy()
    worse[:30, -1] = 50  # one non-duplicate among each duplicate's ten
    assert recall_at_k(KnnGraph(worse, sims), x, sample=100) == pytest.approx(1 - 30 / 1000)


def test_save_load_and_csr(tmp_path):
    x = unit_rows(np.random.default_rng(6), 40, 8)
    g = knn_graph(x, k=3, progress=False)
    p = tmp_path / "knn.npz"
    g.save(p)
    back = KnnGraph.load(p)
    np.testing.assert_array_equal(back.neighbors, g.neighbors)
    np.testing.assert_array_equal(back.sims, g.sims)
    m = g.to_csr()
    assert m.shape == (40, 40) and m.nnz == 120
    assert m[0, g.neighbors[0, 0]] == pytest.approx(g.sims[0, 0])
    s = g.to_csr(symmetric=True)
    assert (s != s.T).nnz == 0
    with pytest.raises(FileNotFoundError):
        KnnGraph.load(tmp_path / "nope.npz")


def test_block_maxima_topk_equals_a_full_topk():
    """The top-k via block maxima (blocks of adjacent columns) returns the k largest of the first m columns, with
    the width padded to whole blocks (the cells method) or not (exact search: columns left over after the last
    whole block)."""
    import torch

    from index.faiss_index import TOPK_BLOCK, topk_columns

    gen = torch.Generator().manual_seed(0)
    for q, m, kk, pad in [(7, 5000, 16, True), (3, 4096, 11, True), (5, 300, 16, True), (4, 2000, 1, True),
                          (6, 5003, 12, False), (2, 4127, 3, False), (3, 4096 + 31, 16, False)]:
        mp = -(-m // TOPK_BLOCK) * TOPK_BLOCK if pad else m
        sc = torch.randn(q, mp, generator=gen).to(torch.bfloat16)  # bf16: many exact ties
        sc[:, m:] = 100.0  # padding columns past m must never be picked
        sc[0, m - 1] = 50.0  # the last real column (left over after the whole blocks when unpadded) is the best
        want = torch.topk(sc[:, :m].float(), kk, dim=1).values
        cols = topk_columns(sc.clone(), m, kk)
        assert cols.shape == (q, kk) and int(cols.max()) < m
        got = torch.sort(torch.gather(sc[:, :m].float(), 1, cols), dim=1, descending=True).values
        assert torch.equal(got, want)
        assert all(len(set(r.tolist())) == kk for r in cols)  # no column twice


def test_probe_groups_follow_rank_and_threshold():
    from index.knn import _probe_groups

    csim = np.array([[np.inf, 0.9, 0.1, 0.5], [0.9, np.inf, 0.2, 0.6], [0.1, 0.2, np.inf, 0.3],
                     [0.5, 0.6, 0.3, np.inf]])
    rank = np.argsort(-csim, axis=1, kind="stable")
    starts = np.array([0, 2, 4, 4, 7])  # cell 2 is empty: it queries nothing
    groups = {tuple(cs): tuple(js) for cs, js in _probe_groups(csim, rank, 1, 0.55, starts)}
    # cell 0: itself + cell 1 (0.9); cell 1: itself + 0 (0.9) + 3 (0.6); cell 3: itself + 1 (0.6)
    assert groups == {(0,): (0, 1), (1,): (0, 1, 3), (3,): (1, 3)}
    same = {tuple(cs): tuple(js) for cs, js in _probe_groups(csim, rank, 4, np.inf, starts)}
    assert same == {(0, 1, 3): (0, 1, 2, 3)}  # identical lists share one candidate block


@pytest.mark.parametrize("bf16", [True, False])
def test_cells_method_reaches_a_higher_target_and_reports_how(bf16, monkeypatch):
    import index.knn

    monkeypatch.setattr(index.knn, "native_bf16", lambda: bf16)  # both scoring dtypes, whatever this CPU has
    rng = np.random.default_rng(5)
    x = _clustered(rng, 6000, 32, 40)
    g = knn_graph(x, k=10, kind="cells", progress=False, seed=0, target_recall=0.99)
    assert g.info["score_dtype"] == ("bfloat16" if bf16 else "float32")
    assert g.info["method"] == "cells" and g.info["estimated_recall"] >= 0.99
    assert recall_at_k(g, x, sample=600, seed=2) >= 0.98
    assert 0 < g.info["candidates_per_row"] <= 6000 * g.info["spill"]


def test_exact_search_equals_a_numpy_oracle_across_row_blocks_with_ties():
    from index.faiss_index import exact_search

    rng = np.random.default_rng(7)
    x = unit_rows(rng, 300, 16)
    x[100:104] = x[5]  # exact ties: broken by lower position
    q = x[[5, 0, 250]]
    sims, idx = exact_search(x, q, 6, block=64, query_block=2)
    s = q @ x.T
    want = np.lexsort((np.broadcast_to(np.arange(300), s.shape), -s), axis=1)[:, :6]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(sims, np.take_along_axis(s, want, axis=1), atol=1e-6)
    assert idx[0].tolist()[:5] == [5, 100, 101, 102, 103]



def test_exact_search_reads_a_read_only_memmap_quietly(tmp_path):
    import warnings

    from index.faiss_index import exact_search

    x = unit_rows(np.random.default_rng(9), 50, 8)
    np.save(tmp_path / "x.npy", x)
    m = np.load(tmp_path / "x.npy", mmap_mode="r")  # read-only, as the stored vectors are
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, idx = exact_search(m, m[:3], 2)
    assert idx[:, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize(("probe", "threshold", "query_step"), [(1, 0.2, 4096), (1, 0.5, 64), (3, None, 64)])
def test_pairs_scored_once_give_the_neighbours_of_scoring_every_cell_apart(probe, threshold, query_step,
                                                                           monkeypatch):
    """With float32 products and spill 1 the probe lists are made symmetric and each pair of cells is multiplied
    once, read by rows and by columns: the graph must be the one `_score_groups` builds from the same groups
    (also with groups cut into many query chunks, and with rank lists, which symmetry extends)."""
    import torch

    import index.knn
    from index.faiss_index import read_only_tensor

    def apart(x, k, groups, order, starts, progress, desc):
        with torch.inference_mode():
            return index.knn._score_groups(read_only_tensor(x), k, groups, order, starts, order, starts, False,
                                           torch.float32, progress, desc)

    monkeypatch.setattr(index.knn, "native_bf16", lambda: False)
    monkeypatch.setattr(index.knn, "QUERY_STEP", query_step)
    rng = np.random.default_rng(11)
    x = _clustered(rng, 5000, 24, 30, spread=0.9)
    x[77] = x[3]  # an exact duplicate pair
    kw = dict(k=10, kind="cells", progress=False, n_cells=40, probe=probe, spill=1, threshold=threshold)
    once = knn_graph(x, **kw)
    monkeypatch.setattr(index.knn, "_score_pairs", apart)
    ref = knn_graph(x, **kw)
    assert once.info["pairs_once"] and once.info["groups"] == ref.info["groups"] > 1
    assert once.info["candidates_per_row"] < 0.9 * 5000  # probes some cells, not all
    np.testing.assert_allclose(once.sims, ref.sims, atol=1e-6)
    assert (once.neighbors == ref.neighbors).mean() > 0.999  # equal but for float32 ties
    assert once.neighbors[3, 0] == 77 and once.neighbors[77, 0] == 3


def test_symmetric_probe_lists_add_the_cells_that_probe_a_cell():
    from index.knn import _probe_groups

    csim = np.array([[np.inf, 0.9, 0.1, 0.5], [0.9, np.inf, 0.2, 0.6], [0.1, 0.2, np.inf, 0.3],
                     [0.5, 0.6, 0.3, np.inf]])
    rank = np.argsort(-csim, axis=1, kind="stable")
    starts = np.array([0, 2, 4, 4, 7])  # cell 2 is empty
    lists = {tuple(cs): tuple(js) for cs, js in _probe_groups(csim, rank, 2, np.inf, starts)}
    assert lists == {(0, 1): (0, 1), (3,): (1, 3)}  # two nearest each: 3 probes 1, but 1 not 3
    sym = {tuple(cs): tuple(js) for cs, js in _probe_groups(csim, rank, 2, np.inf, starts, symmetric=True)}
    assert sym == {(0,): (0, 1), (1,): (0, 1, 3), (3,): (1, 3)}
    # threshold-only lists are symmetric already
    thr = _probe_groups(csim, rank, 1, 0.55, starts)
    assert [(c.tolist(), j.tolist()) for c, j in thr] == [
        (c.tolist(), j.tolist()) for c, j in _probe_groups(csim, rank, 1, 0.55, starts, symmetric=True)]


def test_merge_keeps_the_best_per_row_across_calls():
    from index.knn import _merge, _per_row

    best_s = np.full((3, 2), -np.inf, dtype=np.float32)
    best_i = np.full((3, 2), -1, dtype=np.int64)
    bound = np.full(3, -np.inf, dtype=np.float32)
    rows, s, i = _per_row(np.array([2, 0, 0, 0]), np.array([0.1, 0.5, 0.7, 0.2], np.float32), np.array([6, 4, 5, 3]), 2)
    assert rows.tolist() == [0, 2] and i.tolist() == [[5, 4], [6, -1]]  # each row's 2 best, padded
    _merge(best_s, best_i, bound, rows, s, i)
    np.testing.assert_allclose(bound, [0.5, -np.inf, -np.inf])  # row 2's list still has room
    _merge(best_s, best_i, bound, np.array([0, 2]), np.array([[0.6], [0.3]], np.float32), np.array([[7], [8]]))
    np.testing.assert_allclose(bound, [0.6, -np.inf, 0.1])
    order = np.argsort(-best_s, axis=1)
    np.testing.assert_array_equal(np.take_along_axis(best_i, order, axis=1), [[5, 7], [-1, -1], [8, 6]])
    np.testing.assert_allclose(np.take_along_axis(best_s, order, axis=1), [[0.7, 0.6], [-np.inf, -np.inf], [0.3, 0.1]])


def test_reaching_finds_every_entry_at_or_above_its_column_bound():
    from index.knn import HIT_BLOCK, _reaching

    rng = np.random.default_rng(12)
    full = rng.standard_normal((3 * HIT_BLOCK + 5, 40)).astype(np.float32)  # rows past the last whole block too
    sc = full[:, 3:]  # a strided view, as the products are read
    bound = np.quantile(sc, 0.97, axis=0).astype(np.float32)
    bound[:4] = -np.inf  # columns with no bound yet take every entry
    bound[4] = sc[7, 4]  # an entry exactly at its bound counts
    r, c = _reaching(sc, bound)
    got = {(int(a), int(b)) for a, b in zip(r, c, strict=True)}
    want = np.nonzero(sc >= bound)
    assert got == {(int(a), int(b)) for a, b in zip(*want, strict=True)} and r.size == want[0].size  # each once
    assert (7, 4) in got


def test_pairs_once_can_be_turned_off_or_forced():
    rng = np.random.default_rng(13)
    x = _clustered(rng, 3000, 16, 20)
    kw = dict(k=5, kind="cells", progress=False, n_cells=20)
    off = knn_graph(x, pairs_once=False, **kw)
    on = knn_graph(x, pairs_once=True, **kw)
    assert not off.info["pairs_once"] and on.info["pairs_once"] and on.info["spill"] == 1
    assert on.info["score_dtype"] == "float32"
    assert recall_at_k(off, x, sample=300) >= 0.9 and recall_at_k(on, x, sample=300) >= 0.9
    with pytest.raises(ValueError, match="pairs_once needs spill 1"):
        knn_graph(x, pairs_once=True, spill=2, **kw)
