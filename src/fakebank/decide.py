"""kNN-augmented verdicts (DESIGN §1.5): pure numpy over a query's model logit and its bank neighbours.

Sits after the bank; knows nothing of files, FAISS or torch. Given the model's logit and the neighbours
the api looked up, it decides:

1. **near_duplicate** — the strongest known copy labelled fake/real (an `unknown` copy does not hide it):
   that label is the verdict, the item is the `match`. Neighbours the api judged with dedup (``judged``) are copies exactly when dedup found a
   signal (embedding-only copies verified by the patch grid); hand-built ones fall back to PDQ ≤ 31 or
   cls similarity ≥ ``duplicate_similarity``. The `match` record names the signal and its evidence;
2. **knn** — labelled neighbours with similarity ≥ ``min_similarity`` vote (weighted by similarity, with a
   Laplace prior of one half-vote each way) → ``p_knn``; the fused score is
   ``sigmoid(w_model · logit + w_knn · logit(p_knn) + bias)``;
3. **model** — no close labelled neighbour: the score is the model's own probability.
4. **provenance** — only when the caller read the file's provenance (``provenance.read_provenance``) and it
   claims AI generation: if steps 1–3 end `uncertain` (no labelled known copy, and the model/kNN score
   within ``uncertain_band`` of the threshold), the verdict is `fake` with reason `provenance`. A known
   copy and a confident model/kNN verdict (either way) come first; the score is never changed (metadata
   is reported beside it, not blended in), and no metadata is never evidence of anything.

A verdict within ``uncertain_band`` of the threshold is `uncertain`. Relabelling a bank item changes the
verdicts of its near-copies at the next query, with no retraining.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from fakebank.pdq import PDQ_MATCH_THRESHOLD


@dataclass(frozen=True)
class FusionParams:
    """Documented defaults; `fakebank calibrate` fits w_model, w_knn and bias on a labelled folder."""

    w_model: float = 1.0  # the model's logit enters as is: with no neighbours the score is the model's
    # One clean neighbour at similarity 0.95 gives p_knn = (0.95 + 0.5) / (0.95 + 1) = 0.74 (log-odds
    # 1.05); at w_knn = 3 that moves the score by 3.2 log-odds, enough to overturn a model that is
    # confidently wrong (p 0.05 → 0.56) but not alone a very confident one. Three such neighbours → 6.6.
    w_knn: float = 3.0
    bias: float = 0.0
    # Neighbours below this cls cosine do not vote. Set on the bank's own scale: `calibrate` refits it.
    min_similarity: float = 0.80
    # cls cosine at or above which an item is taken as the same picture (re-encoded/resized copy).
    # Measured on 12 distinct real photos with untrained vit_small_patch16_384: distinct pairs reach 0.981,
    # re-encoded/resized/mirrored copies 0.998–1.000; 0.99 sits between. Trained weights: recalibrate.
    duplicate_similarity: float = 0.99
    pdq_threshold: int = PDQ_MATCH_THRESHOLD
    threshold: float = 0.5
    uncertain_band: float = 0.10  # |score − threshold| < band → uncertain
    prior_votes: float = 0.5  # Laplace prior: half a vote for each class
    source: str = "defaults"  # or "calibrate DIR on DATE"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "FusionParams":
        if not d:
            return cls()
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# What a record of a hash-only item says in place of a similarity: it was judged on its PDQ hash alone.
HASH_ONLY_RECORD = {"similarity": None, "media": "hash", "judged_on": ["pdq"]}


@dataclass(frozen=True)
class Neighbor:
    id: int
    path: str
    label: str
    campaign: str | None
    similarity: float  # cls cosine
    pdq_distance: int | None  # min dihedral Hamming distance, None when either hash is unusable
    # Set by the api from dedup.find, the one near-duplicate decision: `judged` says dedup looked at this
    # neighbour, `signal` which of its signals matched (None: not a near-duplicate). Unjudged neighbours
    # (built by hand) fall back to the PDQ/similarity thresholds of FusionParams.
    signal: str | None = None
    judged: bool = False
    # A hash-only item (a shared PDQ hash, no pixels) can be judged on `pdq` alone: it has no similarity
    # (0.0 here, so it never votes) and its record says so.
    hash_only: bool = False
    # The evidence behind a near-duplicate judgement (dedup.Match): RANSAC inliers of a `local` match, and
    # the patch-grid agreement (grid.agreement) wherever both sides have a grid.
    inliers: int | None = None
    spatial_agreement: float | None = None

    def to_dict(self) -> dict:
        """The JSON contract of a neighbour (DESIGN §2): how it was judged is not part of it."""
        rec = {k: getattr(self, k) for k in ("id", "path", "label", "campaign", "similarity", "pdq_distance")}
        return rec | HASH_ONLY_RECORD if self.hash_only else rec

    def match_dict(self) -> dict:
        """The JSON of a `match`: a neighbour's fields plus the evidence strength of the copy decision —
        `signal` (pdq | pdq_trim | local | embedding; None for a match not judged by dedup), `pdq_distance`,
        `inliers` and `spatial_agreement` (see README, "Near-duplicates")."""
        return self.to_dict() | {"signal": self.signal, "inliers": self.inliers,
                                 "spatial_agreement": self.spatial_agreement}


@dataclass(frozen=True)
class Decision:
    verdict: str  # fake | real | uncertain
    reason: str  # near_duplicate | knn | model | provenance
    score: float
    p_model: float
    p_knn: float | None
    match: Neighbor | None
    neighbors: list[Neighbor] = field(default_factory=list)
    disputed_by: list[int] = field(default_factory=list)  # copies labelled the other way (`disputed_by`)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def logit_of(p: float, eps: float = 1e-6) -> float:
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


def is_near_duplicate(n: Neighbor, params: FusionParams) -> bool:
    if n.judged:
        return n.signal is not None
    pdq_hit = n.pdq_distance is not None and n.pdq_distance <= params.pdq_threshold
    return pdq_hit or n.similarity >= params.duplicate_similarity


# dedup.EXACT and dedup.SIGNALS, strongest evidence first (decide does not import dedup: it stays free of
# FAISS and OpenCV)
SIGNAL_ORDER = ("sha256", "pdq", "pdq_trim", "local", "embedding")


def best_match(neighbors: list[Neighbor], params: FusionParams) -> Neighbor | None:
    """The strongest near-duplicate that carries a verdict (labelled fake or real; an `unknown` copy only
    where no copy is labelled, so an unlabelled copy never hides a labelled one): by the signal that judged
    it (dedup's order, so a global-look `embedding` match never outranks a PDQ or keypoint one), then
    smallest PDQ distance, most inliers, highest similarity; between equals, `fake` before `real`."""
    dupes = [n for n in neighbors if is_near_duplicate(n, params)]
    dupes = [n for n in dupes if n.label in ("fake", "real")] or dupes
    if not dupes:
        return None
    rank = {s: k for k, s in enumerate(SIGNAL_ORDER)}
    # Equally strong copies labelled both ways (one hash shared as fake by one source, real by another):
    # `fake` wins, whatever order they were added in — a bank of known fakes errs towards flagging, and
    # the record names the disagreeing copies (`disputed_by`) for an analyst to settle.
    return min(dupes, key=lambda n: (rank.get(n.signal, len(rank)),
                                     n.pdq_distance if n.pdq_distance is not None else 257,
                                     -(n.inliers or 0), -n.similarity, n.label != "fake"))


def disputed_by(match: Neighbor | None, neighbors: list[Neighbor], params: FusionParams) -> list[int]:
    """Ids of the near-duplicates labelled the other way from `match` (fake vs real): the bank holds
    contradicting words about this picture."""
    if match is None or match.label not in ("fake", "real"):
        return []
    other = "real" if match.label == "fake" else "fake"
    return [n.id for n in neighbors if n.label == other and is_near_duplicate(n, params)]


def knn_vote(neighbors: list[Neighbor], params: FusionParams) -> float | None:
    """Similarity-weighted P(fake) from labelled neighbours above min_similarity; None when none vote."""
    fake = real = 0.0
    for n in neighbors:
        if n.similarity < params.min_similarity or n.label not in ("fake", "real"):
            continue
        if n.label == "fake":
            fake += n.similarity
        else:
            real += n.similarity
    if fake + real == 0:
        return None
    return (fake + params.prior_votes) / (fake + real + 2 * params.prior_votes)


def fuse(logit: float, p_knn: float | None, params: FusionParams) -> float:
    if p_knn is None:
        return sigmoid(logit)
    return sigmoid(params.w_model * logit + params.w_knn * logit_of(p_knn) + params.bias)


def verdict_of(score: float, params: FusionParams) -> str:
    if abs(score - params.threshold) < params.uncertain_band:
        return "uncertain"
    return "fake" if score > params.threshold else "real"


def decide(logit: float, neighbors: list[Neighbor], params: FusionParams | None = None, *,
           ai_claim: bool = False) -> Decision:
    """The verdict for one query; `ai_claim`: the file's provenance claims AI generation (rule 4 above)."""
    params = params or FusionParams()
    p_model = sigmoid(logit)
    match = best_match(neighbors, params)
    p_knn = knn_vote(neighbors, params)
    if match is not None and match.label in ("fake", "real"):
        score = 1.0 if match.label == "fake" else 0.0
        return Decision(match.label, "near_duplicate", score, p_model, p_knn, match, neighbors,
                        disputed_by(match, neighbors, params))
    score = fuse(logit, p_knn, params)
    reason = "model" if p_knn is None else "knn"
    verdict = verdict_of(score, params)
    if ai_claim and verdict == "uncertain":
        verdict, reason = "fake", "provenance"
    return Decision(verdict, reason, score, p_model, p_knn, match, neighbors)


def fit_fusion(logits: np.ndarray, p_knn: list[float | None], y: np.ndarray, base: FusionParams,
               l2: float = 1e-2, steps: int = 2000) -> FusionParams:
    """Logistic regression of y (1 = fake) on [logit, logit(p_knn)] (0 where no neighbour votes)."""
    knn_feat = np.array([logit_of(p) if p is not None else 0.0 for p in p_knn], np.float64)
    X = np.stack([np.asarray(logits, np.float64), knn_feat, np.ones(len(y))], axis=1)
    w = np.array([base.w_model, base.w_knn, base.bias], np.float64)
    y = np.asarray(y, np.float64)
    lr = 0.1
    for _ in range(steps):  # plain gradient descent: 3 parameters, convex, a few hundred samples
        p = 1 / (1 + np.exp(-np.clip(X @ w, -30, 30)))
        grad = X.T @ (p - y) / len(y) + l2 * np.array([w[0] - 1.0, w[1], 0.0])
        w -= lr * grad
    return FusionParams(**{**base.to_dict(), "w_model": float(w[0]), "w_knn": float(w[1]), "bias": float(w[2])})


MIN_CALIBRATION_PER_CLASS = 20  # below this a fit of three weights is mostly noise


def fit_problems(fitted: FusionParams, before: dict, after: dict, n_fake: int, n_real: int) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a calibration fit. A problem means the fit would make verdicts worse or
    contradicts the model (it is not stored without --force); a warning is worth saying but harmless."""
    problems, warnings = [], []
    if fitted.w_model <= 0:
        problems.append(f"the fit weighs the model's fake logit at {fitted.w_model:.3f} (≤ 0): on these images a "
                        "higher fake score means real — are fake/ and real/ swapped, or the weights or "
                        "--positive-label not those of the model?")
    if fitted.w_knn < 0:
        problems.append(f"the fit weighs the neighbours' vote at {fitted.w_knn:.3f} (< 0): the bank's labels "
                        "disagree with these images' — check the bank's labels")
    if after["accuracy"] < before["accuracy"] or after["average_precision"] < before["average_precision"]:
        problems.append(f"the fit scores worse on its own images than the weights in use (accuracy "
                        f"{before['accuracy']:.4f} → {after['accuracy']:.4f}, AP {before['average_precision']:.4f} "
                        f"→ {after['average_precision']:.4f})")
    if min(n_fake, n_real) < MIN_CALIBRATION_PER_CLASS:
        warnings.append(f"only {n_fake} fake and {n_real} real images: a fit needs ≥ {MIN_CALIBRATION_PER_CLASS} "
                        "of each to be more than noise")
    return problems, warnings

