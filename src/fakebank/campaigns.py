"""Campaigns: flagged bank items → sparse similarity graph → clusters → stable ids, summaries, HTML report.

Sits after the bank (DESIGN §1.6; bank → decide / dedup / **campaigns** → api). It reads a bank snapshot
and returns plain records; persisting the assignments is the bank writer's job (``commit_campaigns``) and
the api decides when. Never imports torch or the model; never builds a dense N×N matrix.

How items are grouped (measured in ``scripts/bench_campaigns.py``; see README):

1. **Selection** — items labelled ``fake``; optionally ``unknown`` items with ``p_fake ≥ min_p_fake``; and
   every item an analyst put in a campaign at ``add`` time, unless it is now labelled ``real``.
2. **Graph** — kNN search (FAISS) over the concatenated, L2-normalised ``[cls, patch] / √2`` vectors, so an
   edge's similarity is the mean of the cls and patch cosines; an edge is kept at ≥ ``similarity``
   (default 0.99) **and** the two items' patch grids agree spatially (``grid_min_agreement``, dedup's base
   threshold; an item without a stored grid — banked before grids existed — gets no embedding edges at all).
   Above ``EXACT_LIMIT`` items the candidates come from an IVF index over a 64-d PCA
   projection (a projection only shrinks distances, so close pairs stay candidates) and are re-scored
   exactly. Plus PDQ near-duplicate edges (Hamming ≤ 31, both hashes of quality ≥ 50) from an exact
   binary range search over the distinct hashes, each item keeping its ``k`` closest, so one giant
   near-duplicate group costs O(n·k) edges and memory, not O(n²). Plus local-feature edges: each item's
   stored ORB keypoints probe the bank's local index (dedup's ``local`` check, with a spread test against
   shared caption text); they link crops, captions and re-framings that neither of the others links.
   PDQ and local-feature edges are *verified*; an embedding edge needs detail on both items
   (``dedup.EMBEDDING_MIN_KEYPOINTS`` keypoints each: a sky or a grey joins nothing by embeddings), and
   *stands alone* only when it also passes dedup's rules for an embedding-only copy (the bar that rises with
   smooth grids, and fewer than ``dedup.EMBEDDING_MAX_KEYPOINTS`` keypoints on one side), see ``GridCheck``.
3. **Clusters** — connected components of that graph. On edited copies of real photos with untrained
   weights this matched or beat every alternative measured (HDBSCAN, sparse average linkage, Leiden
   community detection, strong/weak hysteresis), and it is deterministic and monotone: a new item can
   join or merge groups but never split them, which is what keeps ids stable. Embedding edges that do not
   stand alone only join two groups of verified copies (``guarded_components``): close embeddings alone
   never chain items that nothing else links, nor add one to a group. Measured (untrained vit_small): on
   scripts/bench_hard_negatives.py's 2,040 distinct look-alikes, 29 false campaigns of 245 items (one
   chain of 146 star fields), all of them with no PDQ or local edge → 0 campaigns (with its flat kinds
   added, skies and overcast greys without keypoints made 27 more of 154 items until embedding edges needed
   detail on both items → 0); on
   scripts/bench_campaigns.py B-cubed F1 (run 2) reposts 0.990 → 0.951 (1.000 → 0.985 without the two
   campaigns below), hard 0.930 → 0.918 (0.951 → 0.951), the loss nearly all in the campaigns of copies of two flat
   blue photos (labelme q0003/q0004: PDQ quality < 50, few keypoints, smooth grids), whose copies nothing
   but close embeddings links — the evidence that links distinct gradients and skies too. Until such an
   edge also had to stand alone to add an item to a group of copies (``embedding_attach`` brings that
   back), look-alikes joined other images' groups of copies: 21 false campaigns of 142 items on the
   hard-negative bench with its edited copies in the bank → 1 of 6 items (three star fields' groups of
   copies, merged through two items on each side); F1 (run 2) reposts 0.943 → 0.907, hard 0.903 → 0.870.
4. **Analyst seeds** — analyst campaigns are ground truth: all items of one analyst campaign are linked;
   a component that holds seeds of several analyst campaigns is split between them, each unseeded item
   going to the seed nearest in the graph (multi-source Dijkstra, edge length 1 − similarity). Seeded
   items always keep their analyst campaign.
5. **Stable ids** — unseeded clusters are matched to the previous run's computed campaigns by overlap,
   largest overlap first; a cluster keeps an old id when it holds at least half of that campaign's
   surviving members. Others get fresh ids (``C0001``…, never reused). Merges, splits, new and retired
   campaigns are reported as events.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, dijkstra

from fakebank import dedup
from fakebank import index as _faiss_setup  # noqa: F401 - sets FAISS's BLAS threshold (DESIGN §5)
from fakebank.bank import CAMPAIGN_ID_PREFIX, CAMPAIGNS_SCHEMA
from fakebank.errors import UsageError
from fakebank.grid import PatchGrid, agreements, required_agreement, smoothnesses
from fakebank.pdq import PDQ_MATCH_THRESHOLD, PDQ_MIN_QUALITY

# Mean cls/patch cosine at or above which two items are linked. Measured on edited copies of real photos
# (scripts/bench_campaigns.py, untrained vit_small_patch16_384): B-cubed F1 peaks at 0.99; distinct photos
# reach 0.98–0.99 under untrained weights, so lower thresholds chain campaigns together. The same scale as
# FusionParams.duplicate_similarity. Trained weights: re-measure with the benchmark and pass --similarity.
DEFAULT_SIMILARITY = 0.99
DEFAULT_K = 15  # neighbours per item in the graph; F1 was identical for k = 10, 15 and 30
EXACT_LIMIT = 20_000  # up to this many items: exact kNN on the full vectors (≈ 4 s at 20k × 768)
PROJECTED_DIM = 64  # PCA width of the IVF candidate search above EXACT_LIMIT
IVF_NPROBE = 16
PCA_TRAIN_MAX = 20_000
# Local-feature edges (dedup's ORB + RANSAC check between bank items): they link the crops, captions,
# letterboxes and re-framings of one photo that neither the embedding nor PDQ links. Bank items keep only
# their 128 strongest keypoints, so two stored copies share fewer inliers than a query (384 keypoints)
# does with an item. Measured on the banks of scripts/bench_campaigns.py (540 items, both tiers, spread
# then taken against the 640² frame): same-photo pairs reach 8–45 inliers; different photos at most 7
# with the spread check, 87 without it (one line of identical caption text on two product shots).
# With 12 inliers over ≥ 10 % of each frame (dedup._frame_area), reposts tier F1 0.899 → 0.980.
LOCAL_EDGE_MIN_INLIERS = 12
LOCAL_EDGE_MIN_SPREAD = 0.1
# Each item probes the bank's local index (≈ 3 ms per item on a 270-item bank, more as the index grows):
# up to this many selected items the edges are on by default; above, pass local=True (CLI --local).
LOCAL_EDGE_MAX_ITEMS = 10_000
# Distinct items needed on each side before close embeddings alone join two groups of verified copies.
# bench_campaigns, untrained vit_small, local edges on: 1 (plain connected components) let one recoloured
# copy merge two campaigns of the hard tier (F1 0.917 → 0.851 after +20 %, id stability 85.6 %); 2 gave
# 0.927 → 0.916 and 100 % (reposts tier 0.980 → 0.971, 100 %); 3 measured the same as 2.
MERGE_MIN_ITEMS = 2
KEEP_FRACTION = 0.5  # a cluster keeps an old id when it holds ≥ this share of its surviving members
ID_PREFIX = CAMPAIGN_ID_PREFIX
COMPUTED, ANALYST = "computed", "analyst"
RESCORE_CHUNK = 4096
PDQ_QUERY_CHUNK = 4096

ASSIGNMENTS_SCHEMA = CAMPAIGNS_SCHEMA


@dataclass(frozen=True)
class CampaignParams:
    """What a campaign run depends on; stored with the assignments so a run can be reproduced."""

    similarity: float = DEFAULT_SIMILARITY
    k: int = DEFAULT_K
    pdq_threshold: int = PDQ_MATCH_THRESHOLD
    min_p_fake: float | None = None  # also cluster `unknown` items the model scores at least this
    local: bool | None = None  # local-feature edges; None: on up to LOCAL_EDGE_MAX_ITEMS selected items
    local_min_inliers: int = LOCAL_EDGE_MIN_INLIERS
    grid_min_agreement: float = dedup.GRID_MIN_AGREEMENT  # embedding edges must be verified (grid.py)
    # let an item join a group of verified copies by close embeddings that fail dedup's copy rule
    # (`guarded_components`): more heavily edited copies found, and look-alikes joining too
    embedding_attach: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.similarity <= 1.0:
            raise UsageError(f"--similarity must be in (0, 1], not {self.similarity}")
        if self.k < 1:
            raise UsageError(f"k must be ≥ 1, not {self.k}")
        if not 0 <= self.pdq_threshold <= 256:
            raise UsageError(f"the PDQ threshold must be in 0..256, not {self.pdq_threshold}")
        if self.min_p_fake is not None and not 0.0 <= self.min_p_fake <= 1.0:
            raise UsageError(f"--min-p-fake must be in [0, 1], not {self.min_p_fake}")
        if not 4 <= self.local_min_inliers <= 1000:
            raise UsageError(f"local min inliers must be in 4..1000, not {self.local_min_inliers}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "CampaignParams":
        if not d:
            return cls()
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Graph:
    """A sparse similarity graph over `n` selected items: undirected edges i < j, local indices."""

    n: int
    i: np.ndarray  # int64
    j: np.ndarray  # int64
    similarity: np.ndarray  # float32, mean cls/patch cosine
    pdq_distance: np.ndarray  # int16, -1 where the edge is not a PDQ match
    verified: np.ndarray  # bool: a PDQ or local-feature match, not only close embeddings
    # bool: the edge may link two items on its own: a verified edge, or close embeddings that pass dedup's
    # rule for an embedding-only copy (smooth grids agree better, ORB and PDQ cannot judge the pair). The
    # other embedding edges only join two groups of verified copies (or, with `embedding_attach`, attach
    # an item to one; `guarded_components`).
    standalone: np.ndarray

    @property
    def edges(self) -> int:
        return len(self.i)


@dataclass(frozen=True)
class Clusters:
    """Groups of item ids found on one snapshot, before naming."""

    ids: np.ndarray  # the selected item ids, int64
    groups: list[np.ndarray]  # each ≥ 2 item ids, sorted; computed groups hold no analyst seed
    seeded: dict[str, np.ndarray]  # analyst campaign → its item ids (seeds and the items they won)
    params: CampaignParams
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Campaign:
    name: str
    members: tuple[int, ...]  # sorted item ids
    origin: str  # computed | analyst


@dataclass(frozen=True)
class CampaignResult:
    campaigns: list[Campaign]  # every campaign of ≥ 2 members, and analyst campaigns of any size
    events: list[dict]  # {"event": new|merged|split|retired, ...}
    params: CampaignParams
    next_number: int
    stats: dict = field(default_factory=dict)

    def assignments(self) -> pa.Table:
        ids, names, origins = [], [], []
        for c in self.campaigns:
            ids.extend(c.members)
            names.extend([c.name] * len(c.members))
            origins.extend([c.origin] * len(c.members))
        return pa.table({"id": pa.array(ids, pa.int64()), "campaign": pa.array(names, pa.string()),
                         "origin": pa.array(origins, pa.string())}, schema=ASSIGNMENTS_SCHEMA)


# -- selection --------------------------------------------------------------------------------------------

def analyst_campaigns(bank) -> np.ndarray:
    """The `campaign` column (analyst ground truth) as an object array, None where unset."""
    return np.asarray(bank.table.column("campaign").to_pylist(), dtype=object)


def select_rows(bank, params: CampaignParams) -> np.ndarray:
    """Rows of the flagged items: label fake, or unknown with p_fake ≥ min_p_fake, or analyst-seeded."""
    labels = bank.labels
    flagged = labels == "fake"
    if params.min_p_fake is not None:
        p = bank.table.column("p_fake").to_numpy(zero_copy_only=False)
        flagged |= (labels == "unknown") & (p >= params.min_p_fake)
    seeded = np.array([c is not None for c in analyst_campaigns(bank)], dtype=bool)
    flagged |= seeded & (labels != "real")
    return np.flatnonzero(flagged)


def combined_vectors(bank, rows: np.ndarray) -> np.ndarray:
    """[cls, patch] / √2 of the given rows: the inner product of two is the mean of their two cosines."""
    out = np.empty((len(rows), 2 * bank.dim), np.float32)
    out[:, : bank.dim] = bank.vectors["cls"][rows]
    out[:, bank.dim :] = bank.vectors["patch"][rows]
    out *= np.float32(1 / math.sqrt(2))
    return out


# -- graph ------------------------------------------------------------------------------------------------

def knn_candidates(vectors: np.ndarray, k: int, min_similarity: float = -1.0) -> np.ndarray:
    """Per row, the local indices of (up to) k nearest other rows; -1 pads. Exact below EXACT_LIMIT.

    Rows are unit vectors. Above EXACT_LIMIT, 2k candidates come from the projection and those that cannot
    reach `min_similarity` (projected squared distance > 2 − 2·min_similarity: a projection only shrinks
    distances) are dropped before the exact re-scoring.
    """
    n, d = vectors.shape
    kk = min(k + 1, n)
    if n <= EXACT_LIMIT:
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        sims, nn = index.search(vectors, kk)
        nn[sims < min_similarity] = -1
        return nn
    # Candidates from a PCA projection (a contraction: close pairs stay close), 2k of them, re-scored later.
    width = min(PROJECTED_DIM, d)
    if width < d:
        sample = vectors[np.random.default_rng(0).choice(n, min(n, PCA_TRAIN_MAX), replace=False)]
        mean, basis = pca_basis(sample, width)
        projected = np.ascontiguousarray((vectors - mean) @ basis, dtype=np.float32)
    else:
        projected = vectors
    nlist = max(1, min(int(2 * math.sqrt(n)), n // 40))  # FAISS wants ≥ 39 training points a list
    quantizer = faiss.IndexFlatL2(width)
    index = faiss.IndexIVFFlat(quantizer, width, nlist, faiss.METRIC_L2)
    index.train(projected[np.random.default_rng(1).choice(n, min(n, 64 * nlist), replace=False)])
    index.add(projected)
    index.nprobe = IVF_NPROBE
    dist2, nn = index.search(projected, min(2 * k + 1, n))
    nn[dist2 > 2.0 - 2.0 * min_similarity + 1e-5] = -1
    return nn


def pca_basis(sample: np.ndarray, width: int, iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Mean and an orthonormal d × width basis of the sample's top principal subspace (subspace iteration).

    Orthonormal columns make the projection a contraction whatever the accuracy; subspace iteration on the
    d × d covariance is used because a full LAPACK eigendecomposition (and FAISS's PCAMatrix) took 7–25 s
    at d = 768 on the project's 2-core machine, against well under a second for this.
    """
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = sample - mean
    cov = (centred.T @ centred).astype(np.float64)
    q = _orthonormal(np.random.default_rng(0).normal(size=(cov.shape[0], width)))
    for _ in range(iterations):
        q = _orthonormal(cov @ q)
    return mean, q.astype(np.float32)


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning y's (CholeskyQR2). Not np.linalg.qr: once FAISS's OpenMP threads have
    run, LAPACK's QR of a 768 × 64 matrix takes ≈ 0.9 s instead of 4 ms on this machine (thread contention)."""
    for _ in range(2):
        y = y / np.linalg.norm(y, axis=0, keepdims=True)
        y = y @ np.linalg.inv(np.linalg.cholesky(y.T @ y)).T
    return y


def similarity_graph(vectors: np.ndarray, pdq_codes: np.ndarray, pdq_ok: np.ndarray,
                     params: CampaignParams, pdq_owner: np.ndarray | None = None,
                     extra: tuple[np.ndarray, np.ndarray] | None = None,
                     verify: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Graph:
    """Edges between rows of `vectors` (combined, normalised): close embeddings ∪ PDQ near-duplicates
    ∪ the `extra` pairs of rows (local-feature matches).

    `pdq_codes[m]` belongs to row `pdq_owner[m]` (default: row m), so a row may bring several hashes.
    `verify(i, j)` → (a mask of the close-embedding pairs to keep, a mask of those that may stand alone)
    (`GridCheck`); None keeps them all, each standing alone."""
    n = len(vectors)
    if n < 2:
        return Graph(n, *(np.zeros(0, t) for t in (np.int64, np.int64, np.float32, np.int16, bool, bool)))
    nn = knn_candidates(vectors, params.k, params.similarity)
    rows = np.repeat(np.arange(n, dtype=np.int64), nn.shape[1])
    cols = nn.ravel().astype(np.int64)
    keep = (cols >= 0) & (cols != rows)
    rows, cols = rows[keep], cols[keep]
    sims = _pair_similarity(vectors, rows, cols)
    # k strongest per row (candidates may number 2k), then the threshold
    order = np.lexsort((-sims, rows))
    rows, cols, sims = rows[order], cols[order], sims[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = (rank < params.k) & (sims >= params.similarity)
    emb_i, emb_j, emb_s = rows[keep], cols[keep], sims[keep]
    emb_alone = np.ones(len(emb_i), bool)
    if verify is not None and len(emb_i):
        ok, alone = verify(emb_i, emb_j)
        emb_i, emb_j, emb_s, emb_alone = emb_i[ok], emb_j[ok], emb_s[ok], alone[ok]

    owner = np.arange(len(pdq_codes), dtype=np.int64) if pdq_owner is None else np.asarray(pdq_owner, np.int64)
    pdq_i, pdq_j, pdq_d = pdq_edges(pdq_codes[pdq_ok], owner[pdq_ok], params.pdq_threshold, params.k)
    pdq_s = _pair_similarity(vectors, pdq_i, pdq_j)
    ext_i, ext_j = extra if extra is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    ext_i, ext_j = np.asarray(ext_i, np.int64), np.asarray(ext_j, np.int64)
    ext_s = _pair_similarity(vectors, ext_i, ext_j)

    i = np.concatenate([emb_i, pdq_i, ext_i])
    j = np.concatenate([emb_j, pdq_j, ext_j])
    s = np.concatenate([emb_s, pdq_s, ext_s])
    d = np.concatenate([np.full(len(emb_i), -1, np.int16), pdq_d.astype(np.int16), np.full(len(ext_i), -1, np.int16)])
    v = np.concatenate([np.zeros(len(emb_i), bool), np.ones(len(pdq_i) + len(ext_i), bool)])
    alone = np.concatenate([emb_alone, np.ones(len(pdq_i) + len(ext_i), bool)])
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key = lo * n + hi
    # one edge per pair: a verified one wins over embeddings alone, a PDQ distance over none
    order = np.lexsort((np.where(d >= 0, d, 999), ~alone, ~v, key))
    key, lo, hi, s, d, v, alone = key[order], lo[order], hi[order], s[order], d[order], v[order], alone[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    return Graph(n, lo[first], hi[first], s[first], d[first], v[first], alone[first])


def _pair_similarity(vectors: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.empty(len(i), np.float32)
    for a in range(0, len(i), RESCORE_CHUNK):
        b = a + RESCORE_CHUNK
        out[a:b] = np.einsum("ij,ij->i", vectors[i[a:b]], vectors[j[a:b]])
    return out


def pdq_edges(codes: np.ndarray, owner: np.ndarray, threshold: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PDQ near-duplicate pairs of rows (distance ≤ threshold) from usable `codes`, code m being row owner[m]'s;
    each code keeps its k closest.

    Identical hashes are collapsed first (rows sharing one are linked in a chain), and the range search runs
    in chunks with a per-code cap, so a giant near-duplicate group costs O(n·k) memory.
    """
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16))
    if len(codes) < 2:
        return empty
    uniq, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    out_i, out_j, out_d = [], [], []
    order = np.lexsort((owner, inverse))
    grouped = owner[order]
    same = (inverse[order][1:] == inverse[order][:-1]) & (grouped[1:] != grouped[:-1])
    out_i.append(grouped[:-1][same])
    out_j.append(grouped[1:][same])
    out_d.append(np.zeros(int(same.sum()), np.int16))
    if len(uniq) > 1:
        rep = np.empty(len(uniq), np.int64)
        rep[inverse[order]] = grouped  # one row represents each distinct code (the rest are chained to it)
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(np.ascontiguousarray(uniq))
        for a in range(0, len(uniq), PDQ_QUERY_CHUNK):
            q = np.ascontiguousarray(uniq[a : a + PDQ_QUERY_CHUNK])
            lims, dist, found = index.range_search(q, threshold + 1)  # FAISS keeps distance < radius
            counts = np.diff(lims).astype(np.int64)
            qi = np.repeat(np.arange(a, a + len(q), dtype=np.int64), counts)
            found = found.astype(np.int64)
            m = found != qi
            qi, found, dist = qi[m], found[m], dist[m]
            o = np.lexsort((dist, qi))
            qi, found, dist = qi[o], found[o], dist[o]
            rank = np.arange(len(qi)) - np.searchsorted(qi, qi, side="left")
            m = (rank < k) & (rep[qi] != rep[found])
            out_i.append(rep[qi[m]])
            out_j.append(rep[found[m]])
            out_d.append(dist[m].astype(np.int16))
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def pdq_hashes(bank, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, usable, owner) of the selected rows: each whole-image hash, plus the hash of the de-bordered
    image where the bank stores one (letterboxes, caption bars, screenshot frames; see dedup.py)."""
    codes = [bank.pdq_codes[rows]]
    ok = [bank.pdq_quality[rows] >= PDQ_MIN_QUALITY]
    owner = [np.arange(len(rows), dtype=np.int64)]
    names = bank.table.schema.names
    if "pdq_trim" in names and "pdq_trim_quality" in names and len(rows):
        trim = bank.table.column("pdq_trim").take(pa.array(rows)).to_pylist()
        quality = bank.table.column("pdq_trim_quality").take(pa.array(rows)).to_pylist()
        have = [k for k, (h, q) in enumerate(zip(trim, quality)) if h and (q or 0) >= PDQ_MIN_QUALITY]
        if have:
            codes.append(np.frombuffer(b"".join(trim[k] for k in have), np.uint8).reshape(len(have), -1))
            ok.append(np.ones(len(have), bool))
            owner.append(np.asarray(have, np.int64))
    return np.concatenate(codes), np.concatenate(ok), np.concatenate(owner)


# -- clustering -------------------------------------------------------------------------------------------

def find_clusters(bank, params: CampaignParams) -> Clusters:
    """Cluster a bank snapshot's flagged items (nothing is named or stored here)."""
    t0 = time.perf_counter()
    rows, ids, graph, built = _build_graph(bank, params)
    n = len(rows)
    seeds = analyst_campaigns(bank)[rows]
    t2 = time.perf_counter()
    cluster_stats: dict = {}
    labels, seeded_of = cluster_graph(graph, seeds, stats=cluster_stats, attach=params.embedding_attach)
    groups: list[np.ndarray] = []
    seeded: dict[str, list] = defaultdict(list)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if not len(members):
            continue
        name = seeded_of.get(int(labels[members[0]]))
        if name is not None:
            seeded[name].extend(ids[members].tolist())
        elif len(members) >= 2:
            groups.append(np.sort(ids[members]))
    t3 = time.perf_counter()
    stats = {"selected": n, "edges": graph.edges, "pdq_edges": int((graph.pdq_distance >= 0).sum()),
             "local_edges": built["local_edges"],
             "embedding_edges_unverified": built["unverified"],
             "embedding_edges_standalone": int((~graph.verified & graph.standalone).sum()),
             **cluster_stats,
             "seconds": {"select": round(built["t_select"] - t0, 3), "local": round(built["t_local"] - built["t_select"], 3),
                         "graph": round(t2 - built["t_local"], 3), "cluster": round(t3 - t2, 3)}}
    return Clusters(ids, groups, {k: np.sort(np.asarray(v, np.int64)) for k, v in seeded.items()}, params, stats)


def selected_graph(bank, params: CampaignParams) -> tuple[np.ndarray, Graph]:
    """The selected items' ids and their similarity graph, as `find_clusters` builds it (for benchmarks and
    tests that cluster it another way)."""
    _, ids, graph, _ = _build_graph(bank, params)
    return ids, graph


def _build_graph(bank, params: CampaignParams) -> tuple[np.ndarray, np.ndarray, Graph, dict]:
    """(selected rows, their ids, the graph, what building it counted and when its stages ended)."""
    rows = select_rows(bank, params)
    ids = bank.ids[rows]
    vectors = combined_vectors(bank, rows)
    codes, usable, owner = pdq_hashes(bank, rows)
    t_select = time.perf_counter()
    use_local = params.local if params.local is not None else len(rows) <= LOCAL_EDGE_MAX_ITEMS
    local = local_pairs(bank, ids, params) if use_local else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    t_local = time.perf_counter()
    checked = GridCheck(bank, ids, params.grid_min_agreement)
    graph = similarity_graph(vectors, codes, usable, params, pdq_owner=owner, extra=local, verify=checked)
    return rows, ids, graph, {"local_edges": int(len(local[0])) if use_local else None, "unverified": checked.dropped,
                              "t_select": t_select, "t_local": t_local}


class GridCheck:
    """`similarity_graph`'s `verify` for close-embedding pairs of selected items (positions in `ids`).

    Keeps a pair only when both have a stored patch grid, both have some detail (at least
    `dedup.EMBEDDING_MIN_KEYPOINTS` stored ORB keypoints: distinct skies and greys have none and agree on
    everything else) and the grids agree (grid.agreements ≥ `min_agreement`, best of the 8
    rotations/mirrors): a campaign never grows by global look alone. Of the kept pairs, marks those that pass
    dedup's rules against look-alikes and so may link two items on their own (`Graph.standalone`): the
    agreement reaches `grid.required_agreement` (the bar rises with the grids' smoothness) and one side has
    fewer than `dedup.EMBEDDING_MAX_KEYPOINTS` ORB keypoints (with more on both, ORB could judge the pair and
    found no geometric agreement). Not dedup's last, that PDQ cannot
    judge the pair: a campaign's copies are mostly photos whose hashes PDQ reads, and the edits that
    embedding edges link are the ones PDQ does not survive; on scripts/bench_hard_negatives.py the two rules
    alone leave no embedding edge standing between distinct look-alikes. Counts what it drops."""

    def __init__(self, bank, ids: np.ndarray, min_agreement: float) -> None:
        self.bank, self.ids, self.min_agreement = bank, ids, min_agreement
        self.dropped = 0

    def __call__(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ends = np.unique(np.concatenate([i, j]))
        # one bulk read (on Milvus, one query per batch of items instead of two per item)
        cols = self.bank.read_columns(self.ids[ends].tolist(), ["patch_grid", "local"])
        grids = [PatchGrid.from_bytes(b) for b in cols["patch_grid"]]
        shape = next((g.values.shape for g in grids if g is not None), None)
        if shape is None:
            self.dropped += len(i)
            return np.zeros(len(i), bool), np.zeros(len(i), bool)
        have = np.array([g is not None and g.values.shape == shape for g in grids], bool)
        table = np.zeros((len(ends),) + shape, np.int8)
        for k, g in enumerate(grids):
            if have[k]:
                table[k] = g.values
        smooth = smoothnesses(table)
        keypoints = np.array([dedup.keypoint_count(b) for b in cols["local"]], np.int64)
        a, b = np.searchsorted(ends, i), np.searchsorted(ends, j)
        # an item without detail (no keypoints: a sky, a grey) joins nothing by embeddings (dedup's
        # EMBEDDING_MIN_KEYPOINTS): distinct ones agree on everything the grids compare
        detailed = keypoints >= dedup.EMBEDDING_MIN_KEYPOINTS
        ok = have[a] & have[b] & detailed[a] & detailed[b]
        alone = ok & dedup.embedding_can_judge(keypoints[a], keypoints[b])
        for start in range(0, len(i), RESCORE_CHUNK):
            sl = slice(start, start + RESCORE_CHUNK)
            m = ok[sl].copy()
            if m.any():
                x, y = a[sl][m], b[sl][m]
                agree = agreements(table[x], table[y])
                ok[sl][m] = agree >= self.min_agreement
                alone[sl][m] &= agree >= required_agreement(self.min_agreement, smooth[x], smooth[y])
        self.dropped += int(len(i) - ok.sum())
        return ok, alone & ok


def local_pairs(bank, ids: np.ndarray, params: CampaignParams) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) positions in `ids` of the selected items whose stored ORB keypoints agree geometrically
    (dedup's `local` check, with the campaign thresholds); each pair once, i < j."""
    if len(ids) < 2 or not bank.has_local():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    position = {int(item): k for k, item in enumerate(ids.tolist())}
    check = dedup.DedupParams(local_min_inliers=params.local_min_inliers, local_min_spread=LOCAL_EDGE_MIN_SPREAD,
                              signals=("local",))
    pairs = set()
    for item, other in dedup.pairs_within(bank, check, ids.tolist()):
        k, m = position[item], position.get(other)
        if m is not None:
            pairs.add((min(k, m), max(k, m)))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a = np.array(sorted(pairs), np.int64)
    return a[:, 0], a[:, 1]


def cluster_graph(graph: Graph, seeds: np.ndarray, stats: dict | None = None,
                  attach: bool = False) -> tuple[np.ndarray, dict[int, str]]:
    """Connected components, with analyst seeds as must-link (same name) and cannot-link (different names).

    Returns a label per node and, for labels that belong to an analyst campaign, its name. `stats`, when
    given, gets the count of embedding edges dropped for touching an item that no verified edge links.
    `attach`: see `guarded_components`.
    """
    n = graph.n
    i, j, w = graph.i, graph.j, np.maximum(1.0 - graph.similarity.astype(np.float64), 1e-9)
    # must-link: chain the seeds of each analyst campaign
    by_name: dict[str, list[int]] = defaultdict(list)
    for node, name in enumerate(seeds):
        if name is not None:
            by_name[name].append(node)
    link_i = [np.asarray(v[:-1], np.int64) for v in by_name.values() if len(v) > 1]
    link_j = [np.asarray(v[1:], np.int64) for v in by_name.values() if len(v) > 1]
    if link_i:
        i = np.concatenate([i, *link_i])
        j = np.concatenate([j, *link_j])
        w = np.concatenate([w, np.full(sum(len(x) for x in link_i), 1e-9)])
    verified = np.concatenate([graph.verified, np.ones(len(i) - graph.edges, bool)])  # analyst links count
    alone = np.concatenate([graph.standalone, np.ones(len(i) - graph.edges, bool)])
    labels = guarded_components(n, i, j, verified, alone, stats, length=w, attach=attach)
    seeded_of: dict[int, str] = {}
    if not by_name:
        return labels, seeded_of
    adj = sp.coo_matrix((w, (i, j)), shape=(n, n)).tocsr()
    names_in: dict[int, set] = defaultdict(set)
    for name, nodes in by_name.items():
        for comp in set(labels[nodes].tolist()):
            names_in[comp].add(name)
    next_label = int(labels.max()) + 1 if n else 0
    sym = None
    for comp, names in names_in.items():
        if len(names) == 1:
            seeded_of[comp] = next(iter(names))
            continue
        # several analyst campaigns meet: each node goes to its nearest seed along the graph
        if sym is None:
            sym = adj.maximum(adj.T).tocsr()
        nodes = np.flatnonzero(labels == comp)
        sub = sym[nodes][:, nodes]
        local_seeds = [k for k, node in enumerate(nodes) if seeds[node] is not None]
        _, _, source = dijkstra(sub, directed=False, indices=local_seeds, min_only=True, return_predecessors=True)
        label_of_name = {}
        for name in sorted(names):
            label_of_name[name] = next_label
            seeded_of[next_label] = name
            next_label += 1
        for k, node in enumerate(nodes):
            name = seeds[node] if seeds[node] is not None else seeds[nodes[source[k]]]
            labels[node] = label_of_name[name]
    return labels, seeded_of


def guarded_components(n: int, i: np.ndarray, j: np.ndarray, verified: np.ndarray,
                       standalone: np.ndarray | None = None, stats: dict | None = None,
                       length: np.ndarray | None = None, attach: bool = False) -> np.ndarray:
    """Connected components in which close embeddings alone may join two verified groups only through
    MERGE_MIN_ITEMS distinct items on each side (or all of the smaller side's items, when it has fewer),
    and link an item that no verified edge links only by an edge that is `standalone`.

    Verified edges (PDQ, local features, analyst links) make groups of copies; embedding edges join them.
    One item whose embedding lands near another campaign's (with untrained weights, a heavily recoloured
    copy can) would otherwise chain its whole group into that campaign. And items that no verified edge
    links (distinct star fields, gradients, chats of one app: close embeddings, patch grids that agree by
    chance) would chain into campaigns of their own, or join a group of another image's copies: an
    embedding edge that touches such an item counts only when it passes dedup's rule for an embedding-only
    copy (`standalone`; default: every edge does). Measured (untrained vit_small): with the edited copies
    of scripts/bench_hard_negatives.py in the bank, look-alikes joined other images' groups of copies in
    21 campaigns of 142 items (star fields, text, one app's screens) when an edge at the base bar was
    enough to attach an item; 1 of 6 items (three star fields' groups merged) with this rule. It costs
    scripts/bench_campaigns.py the copies that only such an edge reaches (B-cubed F1, run 2, reposts
    0.943 → 0.907, hard 0.903 → 0.870): those edges look the same as the look-alikes' (cls ≥ 0.99, grids
    agreeing at the base bar but not the raised one, both with 128 keypoints that ORB matched nowhere).

    `attach=True` (CampaignParams.embedding_attach) takes the earlier rule back for edges from such an item
    to a group of verified copies: the item attaches to one group only, the one its shortest edge reaches
    (`length`: 1 − similarity), so that it cannot bridge two groups of copies.
    """
    _, group = connected_components(sp.coo_matrix((np.ones(int(verified.sum())), (i[verified], j[verified])),
                                                  shape=(n, n)), directed=False)
    group = group.astype(np.int64)
    size = np.bincount(group)
    emb = ~verified
    if standalone is not None:  # embedding edges that touch an unlinked item must stand alone
        unlinked_i, unlinked_j = size[group[i]] < 2, size[group[j]] < 2
        loose = emb & ~standalone & ((unlinked_i & unlinked_j) if attach else (unlinked_i | unlinked_j))
        emb &= ~loose
        if stats is not None:
            stats["embedding_edges_unanchored"] = int(loose.sum())
        attaching = np.flatnonzero(emb & ~standalone & (unlinked_i != unlinked_j))
        if len(attaching) and length is not None:
            item = np.where(unlinked_i[attaching], i[attaching], j[attaching])
            order = np.lexsort((length[attaching], item))  # per unlinked item, its shortest edge first
            later = np.zeros(len(order), bool)
            later[1:] = item[order][1:] == item[order][:-1]
            emb[attaching[order[later]]] = False
    a, b, x, y = group[i[emb]], group[j[emb]], i[emb], j[emb]
    cross = a != b
    a, b, x, y = a[cross], b[cross], x[cross], y[cross]
    swap = a > b
    a, b, x, y = np.where(swap, b, a), np.where(swap, a, b), np.where(swap, y, x), np.where(swap, x, y)
    m = len(size)
    pair = a * m + b
    pairs, a_items = _distinct_per_pair(pair, x)
    _, b_items = _distinct_per_pair(pair, y)
    pa_, pb_ = pairs // m, pairs % m
    need = np.minimum(MERGE_MIN_ITEMS, np.minimum(size[pa_], size[pb_]))
    ok = (a_items >= need) & (b_items >= need)
    _, top = connected_components(sp.coo_matrix((np.ones(int(ok.sum())), (pa_[ok], pb_[ok])), shape=(m, m)),
                                  directed=False)
    return top.astype(np.int64)[group]


def _distinct_per_pair(pair: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each pair key, how many distinct items it has), keys sorted."""
    if not len(pair):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    both = np.unique(np.stack([pair, item], axis=1), axis=0)
    return np.unique(both[:, 0], return_counts=True)


# -- naming: stable ids -----------------------------------------------------------------------------------

def name_clusters(clusters: Clusters, previous: pa.Table | None, next_number: int = 1) -> CampaignResult:
    """Give each cluster a campaign name, keeping the previous run's ids where members mostly persist."""
    prev_name: dict[int, str] = {}
    prev_origin: dict[str, str] = {}
    if previous is not None and len(previous):
        for item_id, name, origin in zip(previous.column("id").to_pylist(), previous.column("campaign").to_pylist(),
                                         previous.column("origin").to_pylist()):
            prev_name[item_id] = name
            prev_origin[name] = origin
    selected = set(clusters.ids.tolist())
    survivors = Counter(name for item_id, name in prev_name.items() if item_id in selected)
    reserved = set(clusters.seeded)

    # greedy by overlap: (overlap, size of the old campaign) largest first, then older ids first
    pairs = []
    for g, members in enumerate(clusters.groups):
        overlap = Counter(prev_name[m] for m in members.tolist() if m in prev_name)
        for name, count in overlap.items():
            if prev_origin.get(name) == COMPUTED and name not in reserved:
                pairs.append((-count, -survivors[name], _id_number(name), name, g))
    pairs.sort()
    name_of_group: dict[int, str] = {}
    used: set[str] = set()
    for neg_count, _, _, name, g in pairs:
        if g in name_of_group or name in used:
            continue
        if -neg_count >= KEEP_FRACTION * survivors[name]:
            name_of_group[g] = name
            used.add(name)
    campaigns: list[Campaign] = []
    # new ids in order of each group's oldest item: C0001 is the campaign seen first
    for g in sorted(range(len(clusters.groups)), key=lambda g: int(clusters.groups[g][0])):
        members = clusters.groups[g]
        if g not in name_of_group:
            while f"{ID_PREFIX}{next_number:04d}" in reserved:
                next_number += 1
            name_of_group[g] = f"{ID_PREFIX}{next_number:04d}"
            next_number += 1
        campaigns.append(Campaign(name_of_group[g], tuple(members.tolist()), COMPUTED))
    for name, members in clusters.seeded.items():
        campaigns.append(Campaign(name, tuple(members.tolist()), ANALYST))
    campaigns.sort(key=lambda c: (-len(c.members), c.name))
    events = change_events(campaigns, prev_name)
    return CampaignResult(campaigns, events, clusters.params, next_number, dict(clusters.stats))


def _id_number(name: str) -> int:
    m = re.fullmatch(rf"{ID_PREFIX}(\d+)", name)
    return int(m.group(1)) if m else 1 << 62


def change_events(campaigns: list[Campaign], prev_name: dict[int, str]) -> list[dict]:
    """What changed since the previous run: new, merged, split and retired campaigns, with member counts."""
    if not prev_name:
        return [{"event": "new", "campaign": c.name, "size": len(c.members)} for c in campaigns]
    now_name = {m: c.name for c in campaigns for m in c.members}
    sizes = {c.name: len(c.members) for c in campaigns}
    old_names = set(prev_name.values())
    into: dict[str, Counter] = defaultdict(Counter)  # old campaign → new campaign → members moved
    for item_id, old in prev_name.items():
        if item_id in now_name:
            into[old][now_name[item_id]] += 1
    events = []
    for c in campaigns:
        sources = Counter(prev_name[m] for m in c.members if m in prev_name)
        if not sources:
            events.append({"event": "new", "campaign": c.name, "size": len(c.members)})
        elif len(sources) > 1:
            events.append({"event": "merged", "campaign": c.name, "size": len(c.members),
                           "from": dict(sorted(sources.items()))})
    for old in sorted(old_names):
        parts = into.get(old, Counter())
        if len(parts) > 1:
            events.append({"event": "split", "campaign": old, "into": dict(sorted(parts.items()))})
        if old not in sizes:
            events.append({"event": "retired", "campaign": old, "members_now_in": dict(sorted(parts.items()))})
    return events


def result_from_stored(bank, stored: pa.Table | None, params: CampaignParams, next_number: int) -> CampaignResult:
    """The campaigns as last stored (no clustering): stored assignments of items still flagged, plus
    analyst campaigns of flagged items."""
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    rows = select_rows(bank, params)
    selected = set(bank.ids[rows].tolist())
    seeds = analyst_campaigns(bank)
    assigned = set()
    for r in rows.tolist():
        if seeds[r] is not None:
            members[(seeds[r], ANALYST)].append(int(bank.ids[r]))
            assigned.add(int(bank.ids[r]))
    if stored is not None:
        for item_id, name, origin in zip(stored.column("id").to_pylist(), stored.column("campaign").to_pylist(),
                                         stored.column("origin").to_pylist()):
            if item_id not in assigned and item_id in selected:
                members[(name, origin)].append(item_id)
    campaigns = [Campaign(name, tuple(sorted(m)), origin) for (name, origin), m in members.items()]
    campaigns.sort(key=lambda c: (-len(c.members), c.name))
    return CampaignResult(campaigns, [], params, next_number, {})


# -- summaries --------------------------------------------------------------------------------------------

class _Columns:
    """The per-item columns summaries need, read once from a snapshot."""

    def __init__(self, bank) -> None:
        t = bank.table
        self.bank = bank
        self.added = t.column("added_at").cast(pa.int64()).to_numpy(zero_copy_only=False)
        self.p_fake = t.column("p_fake").to_numpy(zero_copy_only=False).astype(np.float64)
        self.source = t.column("source").to_pylist()
        self.path = t.column("path").to_pylist()

    def rows(self, ids) -> np.ndarray:
        return np.fromiter((self.bank.row(i) for i in ids), np.int64, count=len(ids))


def summarize(bank, campaigns: list[Campaign], min_size: int = 2) -> list[dict]:
    """One contract record per campaign of ≥ min_size members (DESIGN §2 `campaigns`)."""
    cols = _Columns(bank)
    out = []
    for c in campaigns:
        if len(c.members) < min_size:
            continue
        rows = cols.rows(c.members)
        out.append({
            "campaign": c.name,
            "size": len(c.members),
            "members": list(c.members),
            "exemplar": exemplar(bank, rows),
            "first_seen": _iso(cols.added[rows].min()),
            "last_seen": _iso(cols.added[rows].max()),
            "sources": sorted({cols.source[r] for r in rows.tolist() if cols.source[r] is not None}),
            "mean_p_fake": round(float(np.nanmean(cols.p_fake[rows])), 6),
        })
    return out


def exemplar(bank, rows: np.ndarray) -> int:
    """The medoid under cosine similarity: argmax_i Σ_j v_i·v_j = argmax_i v_i·Σ_j v_j (exact, O(size))."""
    score = np.zeros(len(rows), np.float64)
    for kind in ("cls", "patch"):
        v = bank.vectors[kind][rows].astype(np.float64)
        score += v @ v.sum(axis=0)
    return int(bank.ids[rows[int(np.argmax(score))]])


def _iso(us: int) -> str:
    return datetime.fromtimestamp(int(us) / 1e6, tz=timezone.utc).isoformat()


# -- HTML report ------------------------------------------------------------------------------------------

THUMB_PX = 160  # displayed size; the stored thumbnails are 256 px (thumbnails.THUMB_MAX_SIDE)
EXEMPLAR_PX = 256
REPORT_MAX_CAMPAIGNS = 200
REPORT_MAX_THUMBS = 48


def write_report(path: str | Path, bank, records: list[dict], events: list[dict], *, title: str = "fakebank campaigns",
                 max_campaigns: int = REPORT_MAX_CAMPAIGNS, max_thumbs: int = REPORT_MAX_THUMBS,
                 params: CampaignParams | None = None) -> Path:
    """One self-contained HTML page: a section per campaign with its exemplar and member thumbnails.

    Thumbnails are the bank's stored ones (else made from the item's original file, when still there
    unchanged), embedded as data: URIs; an item with neither gets a placeholder. Nothing in the page refers to the network or to another file.
    """
    path = Path(path)
    cols = _Columns(bank)
    model = bank.manifest.get("model") or {}
    shown = records[:max_campaigns]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{e(title)}</h1><p class='meta'>bank <code>{e(bank.location)}</code> · {len(bank)} items · "
        f"model {e(str(model.get('name')))}{'' if model.get('trained', True) else ' (untrained: p_fake is meaningless)'}"
        f" · generated {now}</p>",
        f"<p class='meta'>{len(records)} campaigns, {sum(r['size'] for r in records)} items"
        + (f" · similarity ≥ {params.similarity}, PDQ ≤ {params.pdq_threshold}" if params else "")
        + (f", local features ≥ {params.local_min_inliers} inliers"
           + (f" (up to {LOCAL_EDGE_MAX_ITEMS:,} items)" if params.local is None else "")
           if params and params.local is not False else "")
        + (", items attached by close embeddings alone" if params and params.embedding_attach else "")
        + (f" · showing the {len(shown)} largest" if len(shown) < len(records) else "") + "</p>",
    ]
    if events:
        parts.append("<details class='events'><summary>" + e(_events_headline(events)) + "</summary><ul>")
        parts.extend(f"<li>{e(_event_text(ev))}</li>" for ev in events)
        parts.append("</ul></details>")
    parts.append("<nav>" + " ".join(
        f"<a href='#{_anchor(r['campaign'])}'>{e(r['campaign'])} <span>{r['size']}</span></a>" for r in shown) + "</nav></header>")
    if not records:
        parts.append("<p class='empty'>No campaigns: no group of two or more flagged items is similar enough.</p>")
    thumbs: dict[int, str] = {}
    for r in shown:
        rows = cols.rows(r["members"])
        ex_row = bank.row(r["exemplar"])
        parts.append(f"<section id='{_anchor(r['campaign'])}'><h2>{e(r['campaign'])}</h2><div class='head'>")
        parts.append(f"<figure class='exemplar'>{_img(bank, r['exemplar'], cols.path[ex_row], EXEMPLAR_PX, thumbs)}"
                     f"<figcaption>exemplar #{r['exemplar']}</figcaption></figure>")
        parts.append("<table class='facts'>"
                     f"<tr><th>members</th><td>{r['size']}</td></tr>"
                     f"<tr><th>first seen</th><td>{e(r['first_seen'][:19].replace('T', ' '))}</td></tr>"
                     f"<tr><th>last seen</th><td>{e(r['last_seen'][:19].replace('T', ' '))}</td></tr>"
                     f"<tr><th>sources</th><td>{e(', '.join(r['sources']) or '—')}</td></tr>"
                     f"<tr><th>mean p_fake</th><td>{r['mean_p_fake']:.3f}</td></tr></table></div><div class='grid'>")
        for item_id, row in list(zip(r["members"], rows.tolist()))[:max_thumbs]:
            src = cols.source[row]
            parts.append(f"<figure>{_img(bank, item_id, cols.path[row], THUMB_PX, thumbs)}<figcaption>#{item_id} · "
                         f"{cols.p_fake[row]:.2f}{' · ' + e(src) if src else ''}<br><span class='when'>"
                         f"{_iso(cols.added[row])[:10]}</span></figcaption></figure>")
        parts.append("</div>")
        if r["size"] > max_thumbs:
            rest = r["members"][max_thumbs:]
            parts.append(f"<p class='more'>+{len(rest)} more: {e(' '.join('#' + str(i) for i in rest[:500]))}"
                         f"{' …' if len(rest) > 500 else ''}</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path


def _img(bank, item_id: int, item_path: str | None, px: int, cache: dict) -> str:
    if item_id not in cache:
        cache[item_id] = thumbnail_uri(bank, item_id)
    uri = cache[item_id]
    alt = html.escape(Path(item_path).name if item_path else "")
    if uri is None:
        return (f"<div class='missing' style='width:{px}px;height:{px}px' title='{html.escape(str(item_path))}'>"
                f"image not readable<br><small>{alt}</small></div>")
    return f"<img src='{uri}' alt='{alt}' title='{html.escape(str(item_path))}' style='max-width:{px}px;max-height:{px}px'>"


def thumbnail_uri(bank, item_id: int) -> str | None:
    """A data: URI of the item's stored thumbnail, else of one made from its original file when that is
    still there unchanged; None when neither."""
    from fakebank.thumbnails import stored_or_fresh, thumbnail_mime

    thumb = stored_or_fresh(bank, item_id)
    return None if thumb is None else f"data:{thumbnail_mime(thumb)};base64," + base64.b64encode(thumb).decode("ascii")


def _anchor(name: str) -> str:
    """A fragment id for a campaign's section. Names that lose characters to it get a digest of the whole
    name, so that two analyst names such as "Op Bridge" and "Op.Bridge" never share one."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if safe != name:
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return "c-" + safe


def _events_headline(events: list[dict]) -> str:
    kinds = Counter(ev["event"] for ev in events)
    return "changes since the last run: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def _event_text(ev: dict) -> str:
    """A one-line human reading of a change event (CLI stderr and the report)."""
    kind, name = ev["event"], ev["campaign"]
    if kind == "new":
        return f"new       {name} ({ev['size']} items)"
    if kind == "merged":
        return f"merged    {name} ({ev['size']} items) ← " + ", ".join(f"{k} ({v})" for k, v in ev["from"].items())
    if kind == "split":
        return f"split     {name} → " + ", ".join(f"{k} ({v})" for k, v in ev["into"].items())
    rest = ev.get("members_now_in") or {}
    return f"retired   {name}" + (" → " + ", ".join(f"{k} ({v})" for k, v in rest.items()) if rest else "")


event_text = _event_text

_CSS = """
:root{color-scheme:light dark;--bg:#f6f7f9;--card:#fff;--fg:#1d2430;--muted:#667085;--line:#d9dee7;--accent:#b42318}
@media (prefers-color-scheme:dark){:root{--bg:#12151b;--card:#1b2029;--fg:#e6e9ef;--muted:#98a2b3;--line:#2c3340}}
body{margin:0;padding:0 24px 48px;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif}
header{padding:20px 0 8px}h1{margin:0 0 4px;font-size:22px}.meta{margin:2px 0;color:var(--muted)}
code{font-size:12px}nav{display:flex;flex-wrap:wrap;gap:6px;margin:12px 0}
nav a{padding:2px 8px;border:1px solid var(--line);border-radius:12px;color:var(--fg);text-decoration:none;background:var(--card)}
nav a span{color:var(--muted);font-size:12px}
.events{margin:8px 0;color:var(--muted)}.events ul{font-family:ui-monospace,monospace;font-size:12px;white-space:pre}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px;margin:16px 0}
h2{margin:0 0 10px;font-size:18px;color:var(--accent)}.head{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap}
.facts th{text-align:left;color:var(--muted);font-weight:500;padding:2px 14px 2px 0}.facts td{padding:2px 0}
.grid{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
figure{margin:0;display:flex;flex-direction:column;align-items:center;width:168px}
figure.exemplar{width:auto}figure img{border-radius:4px;border:1px solid var(--line);background:#888}
figcaption{font-size:12px;color:var(--muted);text-align:center;margin-top:3px;word-break:break-all}
.when{font-size:11px}.more{color:var(--muted);font-size:12px;word-break:break-word}
.missing{display:flex;flex-direction:column;align-items:center;justify-content:center;text-align:center;
border:1px dashed var(--line);border-radius:4px;color:var(--muted);font-size:12px;overflow:hidden}
.empty{color:var(--muted)}
"""
