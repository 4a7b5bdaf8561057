"""FAISS wrappers against the brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest

from fakebank import index


def _clustered(n, dim, seed):
    """Unit vectors with a decaying spectrum, like real embeddings (isotropic noise has no true kNN)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(dim, dim))
    x = (rng.normal(size=(n, dim)) / np.arange(1, dim + 1)) @ basis
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n_queries", [3, 40])  # numpy's BLAS path below SMALL_BATCH, FAISS's above
def test_exact_segment_search_equals_the_oracle(n_queries):
    x = _clustered(2000, 32, 0)
    q = _clustered(n_queries, 32, 1)
    s, rows = index.search_segment(None, x, q, 10)
    es, ei = index.exact_search(x, np.arange(len(x)), q, 10)
    np.testing.assert_array_equal(rows, ei)
    np.testing.assert_allclose(s, es, atol=1e-5)


def test_hnsw_shard_is_reranked_exactly_and_survives_a_mapped_round_trip(tmp_path):
    x = _clustered(20_000, 64, 2)
    q = _clustered(200, 64, 3)
    index.save(index.build_ann(x), tmp_path / "cls.faiss")
    ann = index.load_mapped(tmp_path / "cls.faiss")
    s, rows = index.search_segment(ann, x, q, 10)
    es, ei = index.exact_search(x, np.arange(len(x)), q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, ei)])
    assert recall >= 0.95
    np.testing.assert_allclose(s[:, 0], (x[rows[:, 0]] * q).sum(axis=1), atol=1e-5)  # exact, not SQ8


def test_search_of_an_empty_or_short_segment_pads_with_missing():
    s, rows = index.search_segment(None, np.zeros((0, 8), np.float32), np.ones((2, 8), np.float32), 3)
    assert (rows == -1).all() and np.isneginf(s).all()
    s, rows = index.search_segment(None, np.eye(8, dtype=np.float32)[:2], np.ones((1, 8), np.float32), 3)
    assert sorted(rows[0, :2].tolist()) == [0, 1] and rows[0, 2] == -1


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
    idx = index.load_mapped(tmp_path / "pdq.faiss", binary=True)  # one vector: the MultiHash pitfall
    assert index.binary_within(idx, queries, 31) == [[(42, 31)], []]
    assert index.binary_within(idx, code, 0) == [[(42, 0)]]


def test_multi_index_hashing_equals_brute_force_up_to_31_bits():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (5000, 32), dtype=np.uint8)
    rows = np.arange(5000)
    table = index.build_mih(codes, rows)
    queries = codes[rng.choice(5000, 64, replace=False)].copy()
    for j, flips in enumerate(rng.integers(0, 40, len(queries))):  # around and past the 31-bit edge
        bits = np.unpackbits(queries[j])
        bits[rng.choice(256, flips, replace=False)] ^= 1
        queries[j] = np.packbits(bits)
    queries[0] = codes[7]
    queries[1, :] = codes[9]
    queries[1, :4] ^= 0xFF  # 32 bits: exactly one past the threshold
    queries[2, :] = codes[11]
    queries[2, :4] ^= np.array([0xFF, 0xFF, 0xFF, 0xFE], np.uint8)  # 31 bits, all in two chunks
    got = index.mih_within(table, codes, queries, 31)
    flat = index.build_binary_flat(codes)
    want = index.binary_within(flat, queries, 31)
    assert [sorted(g) for g in got] == [sorted(w) for w in want]
    assert (7, 0) in got[0] and all(r != 9 for r, _ in got[1]) and (11, 31) in got[2]
    assert [sorted(g) for g in index.mih_within(table, codes, queries, 10)] == \
        [sorted(h for h in w if h[1] <= 10) for w in want]
    with pytest.raises(ValueError):
        index.mih_within(table, codes, queries, 32)
