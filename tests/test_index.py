"""FAISS wrappers against the brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest

from fakebank import index


@pytest.mark.parametrize(
    "n, dim, budget, expected",
    [
        (0, 384, 8 << 30, "IDMap2,Flat"),
        (99_999, 384, 8 << 30, "IDMap2,Flat"),
        (100_000, 384, 8 << 30, "IDMap2,HNSW32,Flat"),
        (1_000_000, 384, 8 << 30, "IDMap2,HNSW32,Flat"),
        (5_000_000, 384, 8 << 30, "IDMap2,IVF8944,PQ64"),  # 5M × 384 floats exceed 8 GB
        (50_000_000, 384, 1 << 40, "IDMap2,IVF28284,PQ64"),
    ],
)
def test_choose_factory_table(n, dim, budget, expected):
    assert index.choose_factory(n, dim, budget) == expected


def _clustered(n, dim, seed):
    """Unit vectors with a decaying spectrum, like real embeddings (isotropic noise has no true kNN)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(dim, dim))
    x = (rng.normal(size=(n, dim)) / np.arange(1, dim + 1)) @ basis
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_equals_exact_search():
    x = _clustered(2000, 32, 0)
    ids = np.arange(10, 2010, dtype=np.int64)
    q = _clustered(20, 32, 1)
    s, i = index.search(index.build("IDMap2,Flat", x, ids), q, 10)
    es, ei = index.exact_search(x, ids, q, 10)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(s, es, atol=1e-5)


def test_hnsw_recall_against_exact():
    x = _clustered(20_000, 64, 2)
    ids = np.arange(len(x), dtype=np.int64)
    q = _clustered(200, 64, 3)
    _, i = index.search(index.build("IDMap2,HNSW32,Flat", x, ids), q, 10)
    _, ei = index.exact_search(x, ids, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ei)])
    assert recall >= 0.95


def test_search_on_empty_index_returns_no_neighbours():
    s, i = index.search(index.build("IDMap2,Flat", np.zeros((0, 8), np.float32), np.zeros(0, np.int64)),
                        np.ones((2, 8), np.float32), 3)
    assert (i == -1).all() and np.isneginf(s).all()


def test_binary_range_is_inclusive_and_survives_a_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    code = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    bits = np.unpackbits(code)
    at31, at32 = bits.copy(), bits.copy()
    at31[:31] ^= 1
    at32[:32] ^= 1
    queries = np.stack([np.packbits(at31), np.packbits(at32)])
    idx = index.build_binary(code, np.array([42]))
    index.save(idx, tmp_path / "pdq.faiss")
    idx = index.load(tmp_path / "pdq.faiss", binary=True)  # one vector: the MultiHash pitfall
    assert index.binary_within(idx, queries, 31) == [[(42, 31)], []]
    assert index.binary_within(idx, code, 0) == [[(42, 0)]]
