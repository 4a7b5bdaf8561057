"""FAISS (and numpy) only: the index shards of one bank segment, built, saved, mapped and searched.

Sits under the bank (the bank owns meaning; this module only maps rows or int64 ids to vectors and codes).
Every approximate index is checked in tests against ``exact_search`` or a flat scan, the brute-force oracles.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

# DESIGN §5: below this batch size FAISS skips BLAS for flat search and runs ≈8× slower.
faiss.cvar.distance_compute_blas_threshold = 20

# Searches of up to this many queries run on one OpenMP thread. Measured with the other core busy (as it
# is while the model runs): HNSW at 100k, 1 query 1.51 → 0.32 ms; exact 100k × 384, 64 queries 148 → 49
# ms; 384 ORB descriptors against a 1M-descriptor BinaryIVF 8.0 → 2.3 ms; 128 against a 31k BinaryFlat
# 102 → 3.4 ms (OpenMP's spinning threads wait on a busy core). FAISS shares torch's OpenMP runtime, so the
# setting is made and undone on the calling thread only.
SINGLE_THREAD_MAX_QUERIES = 4096
HNSW_EF_SEARCH = 128  # cls recall@10 0.983 at 1M items in 10 segments (64: 0.953; scripts/bench_scale.py)


# Segment shards (bank.py): a segment of at least ANN_MIN_ROWS items gets an HNSW graph over 8-bit scalar
# codes (≈ 650 B an item resident instead of 1.8 KB for HNSW over floats), whose ANN_RERANK × k best are
# re-ranked exactly on the float vectors; smaller segments are searched exactly on their mapped vectors.
ANN_MIN_ROWS = 20_000
ANN_FACTORY = "HNSW32,SQ8"
ANN_RERANK = 4
SMALL_BATCH = 20  # FAISS's BLAS threshold (above): fewer queries than this go through numpy's BLAS


def build_ann(vectors: np.ndarray) -> faiss.Index:
    """The approximate inner-product index of one segment; its labels are row positions."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.index_factory(x.shape[1], ANN_FACTORY, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    _tune(index)
    return index


def search_segment(ann: faiss.Index | None, vectors: np.ndarray, queries: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """(exact inner products [Q, k], rows [Q, k]) of a segment: exhaustive when `ann` is None, else the
    ANN's candidates re-ranked on the float vectors. Missing rows are -1."""
    q, n = len(queries), len(vectors)
    k_eff = min(k, n)
    out_s, out_r = np.full((q, k), -np.inf, np.float32), np.full((q, k), -1, np.int64)
    if k_eff == 0 or q == 0:
        return out_s, out_r
    with _threads_for(q):
        if ann is None and q < SMALL_BATCH:
            # one BLAS matrix-vector product per query over the mapped vectors, then a partial sort
            sims_all = queries @ vectors.T
            top = np.argpartition(-sims_all, k_eff - 1, axis=1)[:, :k_eff] if k_eff < n else \
                np.broadcast_to(np.arange(n), (q, n)).copy()
            part = np.take_along_axis(sims_all, top, 1)
            order = np.argsort(-part, axis=1, kind="stable")
            sims, rows = np.take_along_axis(part, order, 1), np.take_along_axis(top, order, 1)
        elif ann is None:
            sims, rows = faiss.knn(queries, vectors, k_eff, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            _, cand = ann.search(queries, min(n, ANN_RERANK * k_eff))
            sims = np.full(cand.shape, -np.inf, np.float32)
            ok = cand >= 0
            for j in range(q):
                c = cand[j][ok[j]]
                sims[j, : len(c)] = vectors[c] @ queries[j]
            order = np.argsort(-sims, axis=1, kind="stable")[:, :k_eff]
            sims, rows = np.take_along_axis(sims, order, 1), np.take_along_axis(np.where(ok, cand, -1), order, 1)
    out_s[:, :k_eff], out_r[:, :k_eff] = sims, rows
    out_r[~np.isfinite(out_s)] = -1
    return out_s, out_r


# PDQ at scale: multi-index hashing. A 256-bit code is cut into 16 chunks of 16 bits; two codes within 31
# bits agree, by pigeonhole, on some chunk up to one flipped bit, so looking up each query chunk and its 16
# one-bit neighbours finds every match exactly, touching ≈ 272 × n/65536 candidates instead of n codes.
# Segments of at least MIH_MIN_ROWS keep the buckets as one uint32 array: MIH_BUCKETS + 1 bucket starts,
# then the rows of every (chunk, value) bucket in order (64 B an item, plus 4 MB a segment).
MIH_MIN_ROWS = 20_000
MIH_MAX_DISTANCE = 31
MIH_BUCKETS = 16 << 16
_MIH_FLIPS = np.array([0] + [1 << b for b in range(16)], np.uint32)
_MIH_CHUNK_BASE = (np.arange(16, dtype=np.uint32) << 16)


def build_mih(codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The bucket array (see above) of codes [n, 32] stored at the given rows."""
    sub = np.ascontiguousarray(codes, dtype=np.uint8).view(">u2").astype(np.uint32)  # [n, 16]
    keys = (sub | _MIH_CHUNK_BASE[None, :]).ravel()
    order = np.argsort(keys, kind="stable")
    starts = np.zeros(MIH_BUCKETS + 1, np.uint32)
    np.cumsum(np.bincount(keys, minlength=MIH_BUCKETS), out=starts[1:])
    return np.concatenate([starts, rows.astype(np.uint32)[order // 16]])


def mih_within(table: np.ndarray, codes: np.ndarray, queries: np.ndarray,
               max_distance: int) -> list[list[tuple[int, int]]]:
    """Per query, every (row, Hamming distance ≤ max_distance ≤ 31) of the codes [rows, 32] `table` indexes."""
    if max_distance > MIH_MAX_DISTANCE:
        raise ValueError(f"multi-index hashing is exact up to {MIH_MAX_DISTANCE} bits")
    nq = len(queries)
    out: list[list[tuple[int, int]]] = [[] for _ in range(nq)]
    if nq == 0 or len(table) <= MIH_BUCKETS + 1:
        return out
    q = np.ascontiguousarray(queries, dtype=np.uint8)
    sub = q.view(">u2").astype(np.uint32)  # [Q, 16]
    keys = ((sub | _MIH_CHUNK_BASE[None, :])[:, :, None] ^ _MIH_FLIPS[None, None, :]).ravel()
    lo = table[keys].astype(np.int64)
    counts = table[keys + 1].astype(np.int64) - lo
    total = int(counts.sum())
    if total == 0:
        return out
    owner = np.repeat(np.repeat(np.arange(nq, dtype=np.int64), 16 * 17), counts)
    pos = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(total) + (MIH_BUCKETS + 1)
    rows = table[pos].astype(np.int64)
    # every candidate is verified (cheaper than de-duplicating them first); only matches are de-duplicated
    words = np.ascontiguousarray(codes).view(np.uint64)
    dist = np.bitwise_count(words[rows] ^ q.view(np.uint64)[owner]).sum(axis=1, dtype=np.int32)
    keep = dist <= max_distance
    for o, r, d in sorted(set(zip(owner[keep].tolist(), rows[keep].tolist(), dist[keep].tolist()))):
        out[o].append((r, d))
    return out


def build_binary_flat(codes: np.ndarray) -> faiss.IndexBinary:
    """Exact Hamming index over 256-bit codes whose labels are row positions."""
    index = faiss.IndexBinaryFlat(256)
    if len(codes):
        index.add(np.ascontiguousarray(codes, dtype=np.uint8))
    return index


def load_mapped(path: Path, binary: bool = False) -> faiss.Index | faiss.IndexBinary:
    """An index file memory-mapped (FAISS's IO_FLAG_MMAP_IFC): opening costs nothing, pages are read as
    searches touch them and shared between processes through the page cache."""
    flag = faiss.IO_FLAG_MMAP_IFC
    index = faiss.read_index_binary(str(path), flag) if binary else faiss.read_index(str(path), flag)
    if binary:
        _tune_binary(index)
    else:
        _tune(index)
    return index


@contextmanager
def _threads_for(n_queries: int) -> Iterator[None]:
    """One OpenMP thread for a small search (SINGLE_THREAD_MAX_QUERIES), on this thread only."""
    if n_queries > SINGLE_THREAD_MAX_QUERIES:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def exact_search(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force oracle: (similarities [Q, k], ids [Q, k]), missing neighbours -1 / -inf."""
    sims = queries @ vectors.T
    k_eff = min(k, len(ids))
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k_eff]
    out_s = np.full((len(queries), k), -np.inf, np.float32)
    out_i = np.full((len(queries), k), -1, np.int64)
    out_s[:, :k_eff] = np.take_along_axis(sims, order, axis=1)
    out_i[:, :k_eff] = ids[order]
    return out_s, out_i


def build_binary(codes: np.ndarray, ids: np.ndarray) -> faiss.IndexBinary:
    """Exact Hamming index over 256-bit codes (BinaryFlat: exact, ≈1 ms/query at 1M; DESIGN §5).

    Not IndexBinaryMultiHash: holding one vector, it loses it after a save/load round trip.
    """
    index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(256))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(codes, dtype=np.uint8), ids.astype(np.int64))
    return index


def binary_within(index: faiss.IndexBinary, queries: np.ndarray, max_distance: int) -> list[list[tuple[int, int]]]:
    """Per query, every (id, hamming distance) with distance ≤ max_distance (inclusive)."""
    if index.ntotal == 0 or len(queries) == 0:
        return [[] for _ in range(len(queries))]
    # FAISS binary range search keeps distances strictly below the radius.
    with _threads_for(len(queries)):
        lims, dist, ids = index.range_search(np.ascontiguousarray(queries, dtype=np.uint8), max_distance + 1)
    return [
        [(int(ids[j]), int(dist[j])) for j in range(lims[i], lims[i + 1])] for i in range(len(queries))
    ]


# Local-feature (ORB descriptor) index: exact below this many descriptors (≈ 1k bank items at 128 each),
# then an inverted file over binary k-means cells (`local_factory`).
LOCAL_EXACT_LIMIT = 1 << 17
# Cells scanned per descriptor. At 100k items (12.8M descriptors, 4096 cells) the edited copies' `local`
# matches (276 crops/overlays/screenshots/rotations/combos of 12 photos) were the same at 4 and 2 cells as
# with exact search on the small bank (recall 0.790 for `local` alone), one fewer at 1; 2 halves the scan
# (local look-up 24.0 → 12.6 ms per query with the other core busy).
LOCAL_NPROBE = 2


def local_factory(n: int) -> str:
    """The local-descriptor index for `n` descriptors: a pure function of the count (tested on a table).

    ≈ √n cells (a power of two, at most 8192) keeps both the coarse assignment and the scanned lists
    short; each descriptor only has to find its match often enough to vote, not every time.
    """
    if n < LOCAL_EXACT_LIMIT:
        return "BIDMap2,BFlat"
    nlist = int(min(8192, 2 ** round(np.log2(np.sqrt(n)))))
    return f"BIDMap2,BIVF{nlist}"


def build_local(codes: np.ndarray, ids: np.ndarray, *, seed: int = 0) -> faiss.IndexBinary:
    """Hamming index over 256-bit local descriptors keyed by int64 ids (many per bank item)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    factory = local_factory(len(codes))
    if factory == "BIDMap2,BFlat":
        return build_binary(codes, ids)
    nlist = int(factory.removeprefix("BIDMap2,BIVF"))
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(256), 256, nlist)  # the wrapper keeps the quantizer alive
    sample = codes
    if len(codes) > 40 * nlist:  # k-means needs tens of points a cell, not millions
        sample = codes[np.random.default_rng(seed).choice(len(codes), 40 * nlist, replace=False)]
    ivf.train(sample)
    ivf.nprobe = LOCAL_NPROBE
    index = faiss.IndexBinaryIDMap2(ivf)
    index.add_with_ids(codes, ids.astype(np.int64))
    return index


# A bank trains one coarse quantizer for its local descriptors, once (bank.py), and every segment's local
# shard is an inverted file over those cells: shards are built without training, and a query assigns its
# descriptors to cells once for all shards (`local_assign`, then `local_search_preassigned` per shard).
LOCAL_MAX_NLIST = 4096
LOCAL_GROWTH = 64  # the quantizer is sized for a bank this many times larger than when it is trained


def local_nlist(n_descriptors: int) -> int:
    """Cells of the shared quantizer trained on a bank of `n_descriptors`: ≈ √ of LOCAL_GROWTH times that."""
    return int(min(LOCAL_MAX_NLIST, max(256, 2 ** round(np.log2(np.sqrt(LOCAL_GROWTH * max(1, n_descriptors)))))))


def train_local_quantizer(sample: np.ndarray, nlist: int, *, seed: int = 0) -> np.ndarray:
    """Binary k-means centroids [nlist, 32] of a descriptor sample (a few tens of points a cell suffice)."""
    sample = np.ascontiguousarray(sample, dtype=np.uint8)
    if len(sample) > 20 * nlist:
        sample = sample[np.random.default_rng(seed).choice(len(sample), 20 * nlist, replace=False)]
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(256), 256, nlist)
    ivf.cp.niter = 10
    ivf.cp.seed = seed
    ivf.cp.min_points_per_centroid = 1
    ivf.train(sample)
    return faiss.vector_to_array(faiss.downcast_IndexBinary(ivf.quantizer).xb).reshape(nlist, 32).copy()


def build_local_ivf(centroids: np.ndarray, codes: np.ndarray, ids: np.ndarray) -> faiss.IndexBinaryIVF:
    """An inverted file over the shared cells holding `codes` under `ids` (no training)."""
    quantizer = build_binary_flat(centroids)
    ivf = faiss.IndexBinaryIVF(quantizer, 256, len(centroids))
    quantizer.this.disown()
    ivf.own_fields = True
    ivf.is_trained = True
    ivf.nprobe = LOCAL_NPROBE
    if len(ids):
        ivf.add_with_ids(np.ascontiguousarray(codes, dtype=np.uint8), ids.astype(np.int64))
    return ivf


def local_assign(quantizer: faiss.IndexBinary, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distances, cells) [Q, LOCAL_NPROBE] of each descriptor's nearest cells, for every IVF shard."""
    with _threads_for(len(desc)):
        return quantizer.search(np.ascontiguousarray(desc, dtype=np.uint8), LOCAL_NPROBE)


def local_search_preassigned(shard: faiss.IndexBinaryIVF, desc: np.ndarray, k: int,
                             assigned: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """binary_knn over one IVF shard whose cells the query descriptors were already assigned to."""
    q = len(desc)
    if shard.ntotal == 0 or q == 0:
        return np.full((q, k), 1 << 30, np.int32), np.full((q, k), -1, np.int64)
    ivf = faiss.downcast_IndexBinary(shard)
    ivf.nprobe = LOCAL_NPROBE
    dis, cells = assigned
    with _threads_for(q):
        return ivf.search_preassigned(np.ascontiguousarray(desc, dtype=np.uint8), k, cells, dis)


def binary_knn(index: faiss.IndexBinary, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(hamming distances [Q, k], ids [Q, k]); missing neighbours have id -1."""
    q = len(queries)
    if index.ntotal == 0 or q == 0:
        return np.full((q, k), 1 << 30, np.int32), np.full((q, k), -1, np.int64)
    _tune_binary(index)
    with _threads_for(q):
        return index.search(np.ascontiguousarray(queries, dtype=np.uint8), k)


def _tune_binary(index: faiss.IndexBinary) -> None:
    outer = faiss.downcast_IndexBinary(index)
    inner = faiss.downcast_IndexBinary(outer.index) if hasattr(outer, "index") else outer
    if isinstance(inner, faiss.IndexBinaryIVF) and inner.nprobe != LOCAL_NPROBE:
        inner.nprobe = LOCAL_NPROBE


def save(index: faiss.Index | faiss.IndexBinary, path: Path) -> None:
    if isinstance(index, faiss.IndexBinary):
        faiss.write_index_binary(index, str(path))
    else:
        faiss.write_index(index, str(path))


def _tune(index: faiss.Index) -> None:
    outer = faiss.downcast_index(index)
    inner = faiss.downcast_index(outer.index) if hasattr(outer, "index") else outer
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = HNSW_EF_SEARCH
