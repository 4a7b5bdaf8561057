"""Near-duplicates (DESIGN §1.6): the one decision that `fakebank dupes` and `query`'s `match` share.

Sits after the bank (embed + signals → bank → **dedup** → decide/api); never imports torch or the model.
A bank item is a near-duplicate of an image when one of these signals says so, checked in this order
(the first that fires names the match's ``signal``):

1. ``pdq`` — Meta's PDQ, any of the image's 8 rotations/mirrors within ``pdq_threshold`` bits of the
   item's hash, both hashes of quality ≥ 50 (re-encodes, resizes, colour, blur, 90° turns, mirrors);
2. ``pdq_trim`` — the same with the hashes of the *de-bordered* images on either side
   (letterbox/pillarbox bars, caption bars, screenshot frames; :func:`fakebank.preprocess.content_box`);
3. ``local`` — ORB keypoints: descriptors looked up in the bank's local index vote for items, and the
   best-voted items are checked geometrically (RANSAC similarity transform, ≥ ``local_min_inliers``
   consistent correspondences). Survives crops, overlays, small rotations and screenshots, none of which
   leave PDQ a chance (a 2 % crop already moves a PDQ hash by ≈ 60 bits);
4. ``embedding`` — cls cosine ≥ ``embedding_threshold``, for pairs neither PDQ nor ORB can judge (a hash
   of quality < 50, and fewer than ``EMBEDDING_MAX_KEYPOINTS`` keypoints on one side) but where both have
   some detail (``EMBEDDING_MIN_KEYPOINTS`` each: blank images, distinct skies or greys, agree on everything
   that can be compared): copies of images too flat for both — **verified**: the two images' patch grids
   (:mod:`fakebank.grid`) must agree spatially under the best of the 8 rotations/mirrors,
   ``spatial_agreement ≥ grid_min_agreement``, and closer still for smooth grids
   (``grid.required_agreement``: a grid that agrees with itself one cell over says little). Global cosine
   alone ignores where things are in the frame (every edited copy of a dark star-field photo once matched
   a dark abstract image at cls 0.999). An item banked before grids were stored (a null ``patch_grid``), or
   a query without one, gets no embedding-only match at all: the signal is dropped for it rather than
   trusted unverified.

None of these depends on the classifier's training, so matching is the same with ``untrained:`` weights.
Every step is a FAISS look-up plus work on a few candidates: no pass over the whole bank per query.
A match reports ``signal``, ``similarity`` (cls cosine, as `query`'s neighbours do), ``pdq_distance``
(smallest over the whole and de-bordered hashes; None when no usable pair), for ``local`` its ``inliers``,
and ``spatial_agreement`` (the patch-grid agreement; None where either side has no grid) for every signal:
the evidence an analyst weighs (a PDQ-distance-4 copy against a borderline one).

The thresholds are named constants below with where their values come from; a bank may store its own
(``manifest["dedup"]``, written by ``fakebank dupes --save``), and every call may override them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace

import cv2
import numpy as np

from fakebank.bank import LOCAL_ID_BITS, PDQ_BYTES, Bank
from fakebank.errors import UsageError
from fakebank.grid import PatchGrid, agreement, verified
from fakebank.pdq import PDQ_MATCH_THRESHOLD, PDQ_MIN_QUALITY, PdqHash
from fakebank.signals import EMPTY_LOCAL, LOCAL_FEATURE_BYTES, LOCAL_SIDE, LocalFeatures

SIGNALS = ("pdq", "pdq_trim", "local", "embedding")
# The same bytes as a bank item (sha256): always a copy, whatever `signals` says, and the strongest one. A
# flat or dark image gives none of the signals above anything to judge (PDQ quality < 50, no keypoints), yet
# the very file an analyst relabelled must take that label.
EXACT = "sha256"

# cls cosine at or above which two images are taken as copies. Measured with untrained
# vit_small_patch16_384 (DESIGN §1.5; scripts/bench_dedup.py): distinct photos reach 0.981, re-encoded,
# resized and format-converted copies 0.995–1.000; colour changes, crops and borders fall far below, so
# this signal only adds copies of images too flat for PDQ and ORB. Trained weights: recalibrate.
EMBEDDING_THRESHOLD = 0.99
# Hamming distance between two ORB descriptors (of 256 bits) for them to vote for each other. Measured on
# the bench: corresponding keypoints of a copy sit at 10–45 bits; unrelated descriptors at ≈ 128 ± 16.
LOCAL_MAX_DISTANCE = 48
# RANSAC inliers of a similarity transform (rotation + uniform scale + shift) needed for a `local` match.
# Measured on the bench (31 photos, every transform × every other photo): unrelated pairs reach 14–15
# inliers, a few edited distractors 20–23 (text overlays, repeated texture): 20 let 0.64 % of the
# distractors' copies through, above the 0.5 % target; the bench's crops to 60 % area keep 40+.
LOCAL_MIN_INLIERS = 24
# Smallest share of each image's frame (`_frame_area`) that the box around the RANSAC inliers must cover,
# on both images, for a `local` match to count. It stops a line of identical caption/meme text on two
# different pictures from matching (30–90 inliers in a strip; tests/test_dedup.py) and is on for campaign
# edges (campaigns.LOCAL_EDGE_MIN_SPREAD). Off by default here: on scripts/bench_dedup.py 0.1 lowered recall
# 0.987 → 0.976 (thin objects such as a chain on white bunch their keypoints in a strip too; screenshot
# 0.976 → 0.952, combo 0.914 → 0.876) and removed no false match (0 of 470 distractor copies either way).
# `fakebank dupes --min-spread 0.1` turns it on for banks full of captioned memes.
LOCAL_MIN_SPREAD = 0.0
LOCAL_RANSAC_PX = 8.0  # reprojection error in the 640-px frame (≈ 1.2 % of the side) that counts as inlier
LOCAL_KNN = 2  # nearest bank descriptors looked up per query descriptor
LOCAL_MIN_VOTES = 8  # correspondences an item needs before RANSAC is tried on it
LOCAL_MAX_CANDIDATES = 8  # best-voted items checked geometrically per orientation (bounds the query cost)
# Query keypoints looked up per orientation (plain and mirrored): all of them. With 256, a caption's
# letters (strong corners) crowded the photo's keypoints out of a sparse product shot (tests/test_dedup.py).
LOCAL_SEARCH_FEATURES = 384
# The mirror image's keypoints looked up: fewer, since PDQ's dihedral hashes already find plain mirrored
# copies and only mirrored-and-cropped ones need these. The look-up is most of the matching cost at 100k
# items (the descriptors scanned scale with the keypoints searched).
LOCAL_MIRROR_SEARCH_FEATURES = 192
# Query keypoints looked up (plain; half as many mirrored) in segments that index only each item's
# strongest descriptors (bank.LOCAL_INDEX_FEATURES_LARGE): at 1M items the look-up is most of the matching.
LOCAL_REDUCED_SEARCH_FEATURES = 128
EMBEDDING_K = 16  # nearest items by cls looked at for the embedding signal
# Patch-grid agreement (grid.agreement: cosine of the 6×6 grids, best of 8 rotations/mirrors) an
# embedding-only copy needs: the base of grid.required_agreement, which rises to 1 with the grids'
# smoothness. Measured on scripts/bench_hard_negatives.py (untrained test_vit, 360 generated look-alikes,
# every pair at cls ≥ 0.99 with PDQ unusable): distinct images reach 0.52 (star fields) and 0.55 (gradients),
# 99th percentile 0.28–0.52 by kind; re-encoded copies 0.9–1.0, turned, mirrored and cropped ones 0.3–0.98
# (untrained vit_small on photos). 0.4 let 21 pairs of distinct bank items through (1,714 without the
# check), 0.6 two. With untrained vit_small at 2,040 items a fixed 0.6 let 941 false copies through
# (generated star fields agree at up to 0.97, gradients 0.91, texts whose lines lie outside the centre crop
# at 1.0); the smoothness bar left 27, EMBEDDING_MAX_KEYPOINTS none. Trained weights: re-measure.
GRID_MIN_AGREEMENT = 0.6
# The embedding signal speaks only for pairs where one side has fewer ORB keypoints than this: ORB cannot
# judge those, and where both have more, `local` is the judge. Measured on scripts/bench_hard_negatives.py
# (untrained vit_small): star fields and text carry the full 128 stored keypoints, dark frames 34–128,
# gradients none; at 64 the star-field and plain-text look-alikes that still passed the grid check are gone.
EMBEDDING_MAX_KEYPOINTS = 64
# ... and only where both sides have some detail: at least this many keypoints each. Images with none (a
# sky, an overcast grey, a near-solid colour, a smooth gradient) give an untrained ViT near-constant patch
# tokens, so distinct ones agree on everything the check can compare: on scripts/bench_hard_negatives.py's
# flat kinds (1,020 distinct skies, overcast greys and near-solid colours, almost all with no keypoints)
# the grid check let 375 false copies through (overcast 336, sky 39), and a coarse colour layout (4×4 cell
# means within 12 levels; tried, not kept) still 344: distinct greys lie within 1–5 levels of each other, as
# close as a copy. No signal can
# verify a copy of such an image, so none is claimed (precision first: their own copies are not found
# either; scripts/bench_dedup.py leaves such photos out for the same reason).
EMBEDDING_MIN_KEYPOINTS = 8
_MAX_SCALE = 8.0  # a similarity transform that scales by more (or less than 1/8) is not a copy


@dataclass(frozen=True)
class DedupParams:
    """Thresholds of the near-duplicate decision (defaults: the constants above)."""

    pdq_threshold: int = PDQ_MATCH_THRESHOLD
    embedding_threshold: float = EMBEDDING_THRESHOLD
    local_min_inliers: int = LOCAL_MIN_INLIERS
    local_max_distance: int = LOCAL_MAX_DISTANCE
    local_min_spread: float = LOCAL_MIN_SPREAD
    grid_min_agreement: float = GRID_MIN_AGREEMENT
    signals: tuple[str, ...] = SIGNALS
    source: str = "defaults"

    def __post_init__(self) -> None:
        if not 0 <= self.pdq_threshold <= 128:
            raise UsageError(f"PDQ threshold must be in 0..128 bits (Meta's is {PDQ_MATCH_THRESHOLD}), "
                             f"not {self.pdq_threshold}")
        if not 0.0 < self.embedding_threshold <= 1.0:
            raise UsageError(f"embedding threshold must be a cosine in (0, 1], not {self.embedding_threshold}")
        if not 4 <= self.local_min_inliers <= 1000:
            raise UsageError(f"local min inliers must be in 4..1000, not {self.local_min_inliers}")
        if not 0 <= self.local_max_distance <= 128:
            raise UsageError(f"local max distance must be in 0..128 bits, not {self.local_max_distance}")
        if not -1.0 <= self.grid_min_agreement <= 1.0:
            raise UsageError(f"grid min agreement must be a cosine in [-1, 1], not {self.grid_min_agreement}")
        if not 0.0 <= self.local_min_spread <= 1.0:
            raise UsageError(f"local min spread must be a share of the frame in [0, 1], not {self.local_min_spread}")
        signals = tuple(self.signals)
        unknown = [s for s in signals if s not in SIGNALS]
        if unknown or not signals:
            raise UsageError(f"signals must be a non-empty subset of {', '.join(SIGNALS)}, not {list(signals)}")
        object.__setattr__(self, "signals", tuple(s for s in SIGNALS if s in signals))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["signals"] = list(self.signals)
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> DedupParams:
        if not d:
            return cls()
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "signals" in known:
            known["signals"] = tuple(known["signals"])
        return cls(**known)

    def with_overrides(self, **overrides) -> DedupParams:
        """These parameters with the given ones (None: keep) replaced; source says so when any is."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        return replace(self, **given, source=f"{self.source}, overridden here: " + _settings(sorted(given.items())))

    def describe(self) -> str:
        """The settings for reading: `pdq_threshold=31 … signals=pdq,local`."""
        return _settings((k, v) for k, v in self.to_dict().items() if k != "source")


def _settings(items) -> str:
    return " ".join(f"{k}={','.join(v) if k == 'signals' else v}" for k, v in items)


@dataclass(frozen=True)
class Probe:
    """What dedup needs of one image: the query's, or a bank item's own (for grouping the bank)."""

    cls: np.ndarray
    pdq: PdqHash | None = None  # whole image, with dihedral hashes
    pdq_trim: PdqHash | None = None  # de-bordered image
    local: LocalFeatures = EMPTY_LOCAL
    local_mirror: LocalFeatures = EMPTY_LOCAL
    exclude: int | None = None  # a bank item never matched (the probe's own)
    grid: PatchGrid | None = None  # None: no embedding-only match can be verified
    sha256: str | None = None  # the query file's; a bank item with the same bytes is an EXACT copy

    @classmethod
    def of_embedding(cls, emb) -> Probe:
        sig = getattr(emb, "signals", None)
        grid = getattr(emb, "patch_grid", None)
        sha256 = getattr(emb, "sha256", None)
        if sig is None:
            return cls(cls=emb.cls, pdq=emb.pdq, grid=grid, sha256=sha256)
        return cls(cls=emb.cls, pdq=emb.pdq, pdq_trim=sig.pdq_trim, local=sig.local, local_mirror=sig.local_mirror,
                   grid=grid, sha256=sha256)

    @classmethod
    def of_item(cls, bank: Bank, item_id: int) -> Probe:
        h, quality = bank.pdq_of(item_id)
        dih = bank.value(item_id, "pdq_dihedral")
        variants = (h,) + (tuple(dih[i:i + PDQ_BYTES] for i in range(0, len(dih), PDQ_BYTES)) if dih else (h,) * 7)
        trim = bank.value(item_id, "pdq_trim")
        trim_q = bank.value(item_id, "pdq_trim_quality")
        return cls(
            cls=bank.vector("cls", item_id),
            pdq=PdqHash(hash=h, quality=quality, dihedral=variants),
            pdq_trim=PdqHash(hash=trim, quality=int(trim_q or 0), dihedral=(trim,) * 8) if trim else None,
            local=LocalFeatures.from_bytes(bank.value(item_id, "local")),
            exclude=int(item_id),
            grid=grid_of(bank, item_id),
        )

    def pdq_codes(self) -> list[bytes]:
        """The probe's usable hashes: whole-image dihedral variants, then the de-bordered ones."""
        codes: list[bytes] = []
        for h in (self.pdq, self.pdq_trim):
            if h is not None and h.quality >= PDQ_MIN_QUALITY:
                codes.extend(dict.fromkeys(h.dihedral))  # unique, order kept
        return codes


@dataclass(frozen=True)
class Match:
    """A bank item judged a near-duplicate, and by which signal."""

    id: int
    signal: str
    similarity: float  # cls cosine
    pdq_distance: int | None
    inliers: int | None = field(default=None)
    spatial_agreement: float | None = None  # patch-grid agreement; None where either side has no grid


def reported_cosine(x: float) -> float:
    """A cosine as records report it: float32 sums of unit vectors overshoot ±1 by ~1e-5; clipped, 6 digits."""
    return round(min(max(float(x), -1.0), 1.0), 6)


def find(bank: Bank, probe: Probe, params: DedupParams | None = None,
         cls_hits: tuple[np.ndarray, np.ndarray] | None = None) -> list[Match]:
    """Every bank item judged a near-duplicate of the probe, strongest signal first. `cls_hits`: the
    probe's cls search of at least EMBEDDING_K + 1 neighbours when the caller has already made it."""
    params = params or DedupParams()
    if len(bank) == 0:
        return []
    found: dict[int, tuple[str, int | None]] = {}  # id → (signal, inliers)

    def note(item_id: int, signal: str, inliers: int | None = None) -> None:
        if item_id != probe.exclude and bank.has(item_id) and item_id not in found:
            found[item_id] = (signal, inliers)

    if probe.sha256:
        same = bank.id_of_sha256(probe.sha256)
        if same is not None:
            note(same, EXACT)
    codes = probe.pdq_codes()
    if codes and ("pdq" in params.signals or "pdq_trim" in params.signals):
        whole = len(dict.fromkeys(probe.pdq.dihedral)) if probe.pdq is not None and probe.pdq.quality >= PDQ_MIN_QUALITY else 0
        q = np.frombuffer(b"".join(codes), np.uint8).reshape(-1, PDQ_BYTES)
        for kind in ("pdq", "pdq_trim"):
            for qi, hits in enumerate(bank.binary_within(kind, q, params.pdq_threshold)):
                signal = "pdq" if kind == "pdq" and qi < whole else "pdq_trim"
                if signal not in params.signals:
                    continue
                for item_id, _ in hits:
                    if _stored_quality(bank, kind, item_id) >= PDQ_MIN_QUALITY:
                        note(item_id, signal)
    if "local" in params.signals:
        for item_id, inliers in local_matches(bank, probe, params).items():
            note(item_id, "local", inliers)
    grids: dict[int, float | None] = {}  # id → spatial agreement, computed once

    def spatial(item_id: int) -> float | None:
        if item_id not in grids:
            a = agreement(probe.grid, grid_of(bank, item_id))
            grids[item_id] = None if a is None else round(a, 4)
        return grids[item_id]

    if "embedding" in params.signals and probe.grid is not None and len(probe.local) >= EMBEDDING_MIN_KEYPOINTS:
        # Only where PDQ cannot judge the pair (a hash of quality < 50): with untrained weights distinct
        # photos come within 0.005 of the threshold, and where PDQ can speak it is the better judge
        # (bench: cls ≥ 0.99 alone matched 10 % of the distractors' edits with the 160-px test ViT).
        # And only when the patch grids agree: close global embeddings are not the same picture.
        # Likewise only where ORB cannot judge it: with enough keypoints on both sides `local` is the better
        # judge, and it found no geometric agreement (two texts whose lines lie outside the model's centre
        # crop look the same to the model: cls 1.0, grids identical).
        sims, ids = cls_hits if cls_hits is not None else bank.search("cls", probe.cls[None, :], EMBEDDING_K + 1)
        for s, i in zip(sims[0][: EMBEDDING_K + 1], ids[0][: EMBEDDING_K + 1]):
            if i >= 0 and s >= params.embedding_threshold and bank.has(int(i)) \
                    and pdq_distance(bank, probe, int(i)) is None \
                    and embedding_can_judge(len(probe.local), stored_keypoints(bank, int(i))):
                agree, ok = verified(probe.grid, grid_of(bank, int(i)), params.grid_min_agreement)
                grids[int(i)] = None if agree is None else round(agree, 4)
                if ok:
                    note(int(i), "embedding")
    order = {s: n for n, s in enumerate((EXACT,) + SIGNALS)}
    matches = [
        Match(id=i, signal=sig, similarity=reported_cosine(bank.vector("cls", i) @ probe.cls),
              pdq_distance=pdq_distance(bank, probe, i), inliers=inl, spatial_agreement=spatial(i))
        for i, (sig, inl) in found.items()
    ]
    matches.sort(key=lambda m: (order[m.signal], m.pdq_distance if m.pdq_distance is not None else 257,
                                -(m.inliers or 0), -m.similarity, m.id))
    return matches


def stored_keypoints(bank: Bank, item_id: int) -> int:
    """How many ORB keypoints an item stores."""
    return keypoint_count(bank.value(item_id, "local"))


def embedding_can_judge(keypoints_a: np.ndarray | int, keypoints_b: np.ndarray | int) -> np.ndarray | bool:
    """Whether two images' ORB keypoint counts leave a copy decision to the embedding signal: ORB cannot
    judge the pair (fewer than EMBEDDING_MAX_KEYPOINTS on one side), and both have detail to judge (at least
    EMBEDDING_MIN_KEYPOINTS each). Element-wise on arrays."""
    low = np.minimum(keypoints_a, keypoints_b)
    return (low < EMBEDDING_MAX_KEYPOINTS) & (low >= EMBEDDING_MIN_KEYPOINTS)


def keypoint_count(local: bytes | None) -> int:
    """How many ORB keypoints a stored `local` value holds (counted from the packed bytes, not decoded)."""
    return len(local) // LOCAL_FEATURE_BYTES if local else 0


def grid_of(bank: Bank, item_id: int) -> PatchGrid | None:
    """An item's stored patch grid; None for items banked before grids were stored."""
    return PatchGrid.from_bytes(bank.value(item_id, "patch_grid"))


def _stored_quality(bank: Bank, kind: str, item_id: int) -> int:
    if kind == "pdq":
        return bank.pdq_of(item_id)[1]
    return int(bank.value(item_id, "pdq_trim_quality") or 0)


def pdq_distance(bank: Bank, probe: Probe, item_id: int) -> int | None:
    """Smallest Hamming distance between the probe's usable hashes and the item's (whole, de-bordered)."""
    stored = []
    whole, quality = bank.pdq_of(item_id)
    if quality >= PDQ_MIN_QUALITY:
        stored.append(whole)
    trim = bank.value(item_id, "pdq_trim")
    if trim and (bank.value(item_id, "pdq_trim_quality") or 0) >= PDQ_MIN_QUALITY:
        stored.append(trim)
    codes = probe.pdq_codes()
    if not stored or not codes:
        return None
    return min((int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count() for a in codes for b in stored)


def local_matches(bank: Bank, probe: Probe, params: DedupParams) -> dict[int, int]:
    """item id → RANSAC inliers, for the items whose ORB keypoints agree geometrically with the probe's."""
    orientations = [f.strongest(n) for f, n in ((probe.local, LOCAL_SEARCH_FEATURES),
                                                (probe.local_mirror, LOCAL_MIRROR_SEARCH_FEATURES)) if len(f)]
    if not orientations or len(bank) == 0:
        return {}
    # segments that index only their items' strongest descriptors are probed with the query's strongest
    # (candidates are then verified on every descriptor both sides have)
    strongest = np.concatenate([np.arange(len(f)) < n for f, n in zip(
        orientations, (LOCAL_REDUCED_SEARCH_FEATURES, LOCAL_REDUCED_SEARCH_FEATURES // 2))])
    dist, ids = bank.local_knn(np.concatenate([f.desc for f in orientations]), LOCAL_KNN, reduced_queries=strongest)
    out: dict[int, int] = {}
    cache: dict[int, LocalFeatures] = {}
    start = 0
    for feats in orientations:
        d, i = dist[start:start + len(feats)], ids[start:start + len(feats)]
        start += len(feats)
        for item_id, pairs in _candidates(d, i, params.local_max_distance, probe.exclude):
            if item_id in out and out[item_id] >= params.local_min_inliers:
                continue
            if item_id not in cache:
                if not bank.has(item_id):
                    continue
                cache[item_id] = LocalFeatures.from_bytes(bank.value(item_id, "local"))
            stored = cache[item_id]
            if bank.local_is_reduced(item_id):
                # The index holds only the item's strongest descriptors: match against all it stores.
                pairs = nearest_pairs(feats.desc, stored.desc, params.local_max_distance)
            qi, bj = pairs[:, 0], pairs[:, 1]
            ok = bj < len(stored)
            inliers = ransac_inliers(feats.xy[qi[ok]], stored.xy[bj[ok]], params.local_min_spread,
                                     frames=(_frame_area(feats.xy), _frame_area(stored.xy)))
            if inliers >= params.local_min_inliers:
                out[item_id] = max(out.get(item_id, 0), inliers)
    return out


def nearest_pairs(query: np.ndarray, stored: np.ndarray, max_distance: int) -> np.ndarray:
    """[(query keypoint, stored keypoint)] of each query descriptor's nearest stored one within max_distance."""
    if not len(query) or not len(stored):
        return np.zeros((0, 2), np.int64)
    a = np.ascontiguousarray(query, np.uint8).view(np.uint64)
    b = np.ascontiguousarray(stored, np.uint8).view(np.uint64)
    dist = np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=2, dtype=np.int32)
    nearest = dist.argmin(axis=1)
    keep = np.flatnonzero(dist[np.arange(len(a)), nearest] <= max_distance)
    return np.stack([keep, nearest[keep]], axis=1).astype(np.int64)


def _candidates(dist: np.ndarray, ids: np.ndarray, max_distance: int, exclude: int | None):
    """Per best-voted item: its correspondences [(query keypoint, stored keypoint rank)], one per query
    keypoint (the nearest), items with at least LOCAL_MIN_VOTES, most votes first."""
    q = np.repeat(np.arange(dist.shape[0]), dist.shape[1])
    d, i = dist.ravel(), ids.ravel()
    keep = (i >= 0) & (d <= max_distance)
    q, d, i = q[keep], d[keep], i[keep]
    item = i >> LOCAL_ID_BITS
    rank = i & ((1 << LOCAL_ID_BITS) - 1)
    if exclude is not None:
        other = item != exclude
        q, d, item, rank = q[other], d[other], item[other], rank[other]
    order = np.lexsort((d, item, q))  # per (query keypoint, item): nearest first
    q, item, rank = q[order], item[order], rank[order]
    first = np.ones(len(q), bool)
    first[1:] = (q[1:] != q[:-1]) | (item[1:] != item[:-1])
    q, item, rank = q[first], item[first], rank[first]
    items, counts = np.unique(item, return_counts=True)
    best = items[np.argsort(-counts, kind="stable")][: LOCAL_MAX_CANDIDATES]
    for it in best:
        sel = item == it
        if sel.sum() >= LOCAL_MIN_VOTES:
            yield int(it), np.stack([q[sel], rank[sel]], axis=1)


def ransac_inliers(src: np.ndarray, dst: np.ndarray, min_spread: float = 0.0,
                   frames: tuple[float, float] | None = None) -> int:
    """Correspondences consistent with one similarity transform src → dst (RANSAC, seeded on every call so
    that the count does not depend on earlier calls); 0 when the transform is degenerate or scales
    absurdly, or when the inliers' bounding box covers less than `min_spread` of either image's frame
    (`frames`: each image's frame area, see `_frame_area`; default the LOCAL_SIDE² square)."""
    if len(src) < 4:
        return 0
    cv2.setRNGSeed(0)
    M, inliers = cv2.estimateAffinePartial2D(
        src.astype(np.float32), dst.astype(np.float32), method=cv2.RANSAC,
        ransacReprojThreshold=LOCAL_RANSAC_PX, maxIters=1000, confidence=0.995)
    if M is None or inliers is None:
        return 0
    scale = float(np.hypot(M[0, 0], M[1, 0]))
    if not 1 / _MAX_SCALE < scale < _MAX_SCALE:
        # A collapsed consensus: many query keypoints matched the same few stored ones (a plain strip with
        # few corners), and a tiny scale maps them all onto one spot. Once more with one correspondence per
        # stored keypoint, the query's strongest: callers pass correspondences in query order, strongest
        # first, and a stored keypoint is told by its stored (float16) coordinates (bench_dedup's suite,
        # local signal alone: +1 and +2 copies found of 987, no false match of 470).
        _, first = np.unique(dst, axis=0, return_index=True)
        if len(first) < len(dst):
            keep = np.sort(first)
            return ransac_inliers(src[keep], dst[keep], min_spread, frames)
        return 0
    mask = inliers.ravel().astype(bool)
    if min_spread > 0:
        src_frame, dst_frame = frames or (LOCAL_SIDE ** 2, LOCAL_SIDE ** 2)
        if _box_area(src[mask]) < min_spread * src_frame or _box_area(dst[mask]) < min_spread * dst_frame:
            return 0
    return int(mask.sum())


def _frame_area(xy: np.ndarray) -> float:
    """The square of the longer extent of an image's keypoints: its ORB frame (not stored; smaller images
    are not scaled up to LOCAL_SIDE) as far as its keypoints reach, and never less than the strip that a
    line of text spans, however few other keypoints the picture has."""
    return float(max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]))) ** 2 if len(xy) else 0.0


def _box_area(xy: np.ndarray) -> float:
    return float(np.ptp(xy[:, 0]) * np.ptp(xy[:, 1])) if len(xy) else 0.0


def pairs_within(bank: Bank, params: DedupParams | None = None, ids: Iterable[int] | None = None,
                 progress: Callable[[], None] | None = None) -> Iterator[tuple[int, int]]:
    """(item, its near-duplicate) for every match found when each of `ids` (default: every bank item)
    probes the bank with its own stored hashes and keypoints."""
    params = params or DedupParams()
    for item_id in (bank.ids.tolist() if ids is None else ids):
        for m in find(bank, Probe.of_item(bank, int(item_id)), params):
            yield int(item_id), m.id
        if progress is not None:
            progress()


def groups(bank: Bank, params: DedupParams | None = None,
           progress: Callable[[], None] | None = None) -> list[list[int]]:
    """Groups of near-duplicates inside the bank: every item probes the bank's indexes (range search),
    matches are edges, and the connected components of two or more items are the groups, each sorted,
    largest first."""
    parent = {int(i): int(i) for i in bank.ids}

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for item_id, match_id in pairs_within(bank, params, progress=progress):
        a, b = root(item_id), root(match_id)
        if a != b:
            parent[max(a, b)] = min(a, b)
    comps: dict[int, list[int]] = {}
    for i in parent:
        comps.setdefault(root(i), []).append(i)
    out = [sorted(c) for c in comps.values() if len(c) >= 2]
    out.sort(key=lambda c: (-len(c), c[0]))
    return out
