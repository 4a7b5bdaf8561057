"""Per-image near-duplicate signals beyond the whole-image PDQ hash, computed in the decode threads.

Where it sits in the flow::

    preprocess.load_rgb ──► signals.image_signals ──► embed (Embedding.signals) ──► bank ──► dedup

For each upright RGB image:

- the **content box**: the image with letterbox/pillarbox bars, caption bars and screenshot frames cut off
  (:func:`fakebank.preprocess.content_box`), and the **PDQ hash of that box** when it differs from the
  whole image (``pdq_trim``): a letterboxed or screenshotted copy hashes like its original again;
- **local features**: ORB keypoints and binary descriptors of the content box (grayscale, longer side at
  most ``LocalInput.side``), which survive crops, overlays, small rotations and re-framing that move every
  PDQ bit. A query also gets the features of its mirror image (ORB descriptors are not mirror-invariant).
  How a bank item's ORB input is made is a bank setting (:class:`LocalInput`, manifest key
  ``"local_input"``): a bank keeps the way it was built with, so that its items' keypoints compare alike
  (``dupes --within``, campaigns); queries make theirs as ``QUERY_LOCAL_INPUT``.

Nothing here depends on the classifier, so matching works the same with ``untrained:`` weights. Never
imports torch or the model; OpenCV runs with one thread per call (the decode pool supplies parallelism).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from fakebank.pdq import PdqHash, pdq_hash, pdq_view
from fakebank.preprocess import content_box

# Longer side of the grayscale image ORB runs on by default (LocalInput); also the frame dedup's RANSAC
# threshold is given in. 640 px keeps enough detail in a screenshot whose photo fills half the frame.
LOCAL_SIDE = 640
# Keypoints kept per bank item (strongest Harris response first). 36 bytes each on disk and in the index
# (32-byte descriptor + 2 float16 coordinates). Measured on the bench's 60–90 % crops: 128 finds every
# crop of a textured image with ≥ 40 inliers; more mainly costs memory (≈ 4.6 KB per item at 128).
LOCAL_BANK_FEATURES = 128
# Keypoints per query image (and as many again for its mirror): more than the bank keeps, so that a crop,
# whose strongest corners are not the original's, still re-detects enough of the original's keypoints.
LOCAL_QUERY_FEATURES = 384
_DESC_BYTES = 32
LOCAL_DESC_BYTES = _DESC_BYTES
LOCAL_FEATURE_BYTES = _DESC_BYTES + 4  # packed: descriptor, then two float16 coordinates

cv2.setNumThreads(1)


@dataclass(frozen=True)
class LocalFeatures:
    """ORB keypoints of one image: ``xy`` [n, 2] float32 in ORB's input frame (``LocalInput``), ``desc`` [n, 32] uint8."""

    xy: np.ndarray
    desc: np.ndarray

    def __len__(self) -> int:
        return len(self.desc)

    def to_bytes(self) -> bytes:
        """Packed form stored in the bank: n × 32 descriptor bytes, then n × 2 float16 coordinates."""
        return self.desc.astype(np.uint8).tobytes() + self.xy.astype(np.float16).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> LocalFeatures:
        if not data:
            return EMPTY_LOCAL
        n = len(data) // (_DESC_BYTES + 4)
        if n * (_DESC_BYTES + 4) != len(data):
            raise ValueError(f"packed local features must be a multiple of {_DESC_BYTES + 4} bytes, got {len(data)}")
        desc = np.frombuffer(data, np.uint8, n * _DESC_BYTES).reshape(n, _DESC_BYTES)
        xy = np.frombuffer(data, np.float16, 2 * n, offset=n * _DESC_BYTES).reshape(n, 2).astype(np.float32)
        return cls(xy=xy, desc=desc)

    def strongest(self, n: int) -> LocalFeatures:
        """The first n (features are stored strongest first)."""
        return self if len(self) <= n else LocalFeatures(self.xy[:n], self.desc[:n])


EMPTY_LOCAL = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, _DESC_BYTES), np.uint8))


@dataclass(frozen=True)
class LocalInput:
    """How the grayscale image ORB runs on is made: the content box, shrunk (area-averaged) to a longer side
    of at most ``side``, cut from the shared PDQ view (``from_view``: ``pdq.pdq_view``, the image
    box-averaged to ≤ 768 px, which the decode makes anyway) or from the full image.

    The default is the full image at 640 px (what every bank built before this setting holds). The view at
    512 px (``VIEW_LOCAL_INPUT``) costs 3.7 instead of 8.7 core-ms for a 1024-px JPEG (ORB 3.6 instead of
    5.4, its input 0.1 instead of 3.3) and finds the same photo copies (scripts/bench_dedup.py: recall
    0.987 against 0.988, no false match against 1), but at 512 px ORB loses text and fine detail:
    scripts/bench_hard_negatives.py's copies of texts, chat screens and star fields were found by `local`
    3–63 % of the time instead of 57–63 % (all look-alike kinds 0.103 against 0.403), and bench_campaigns'
    crops joined their campaign 0.71 of the time instead of 0.86. So it is not the default."""

    side: int = 640
    from_view: bool = False

    def __post_init__(self) -> None:
        if self.side < 64:
            raise ValueError(f"the ORB input's side must be ≥ 64 px, not {self.side}")

    def to_dict(self) -> dict:
        return {"side": self.side, "from": "view" if self.from_view else "image"}

    @classmethod
    def from_dict(cls, d: dict | None) -> LocalInput:
        """The manifest's record; None (a bank from before the setting) is the legacy input. Strict: a record
        this version does not fully understand (a newer fakebank's) raises ValueError rather than being
        read as something it is not."""
        if d is None:
            return LEGACY_LOCAL_INPUT
        if not isinstance(d, dict) or set(d) != {"side", "from"}:
            raise ValueError(f"an ORB input record has exactly the keys 'side' and 'from', got {d!r}")
        if d["from"] not in ("view", "image"):
            raise ValueError(f"unknown ORB input source {d['from']!r}")
        if type(d["side"]) is not int:
            raise ValueError(f"the ORB input's side must be a whole number of pixels, got {d['side']!r}")
        return cls(side=d["side"], from_view=d["from"] == "view")

    def gray(self, img: Image.Image, box: tuple[int, int, int, int], view: Image.Image | None = None) -> np.ndarray:
        """Luma of the content box, shrunk so that its longer side is at most ``side``."""
        l, t, r, b = box
        content = None
        if self.from_view:
            target = min(self.side, max(r - l, b - t))
            view = view if view is not None else pdq_view(img)
            sx, sy = view.width / img.width, view.height / img.height
            vbox = (math.floor(l * sx), math.floor(t * sy), min(view.width, math.ceil(r * sx)),
                    min(view.height, math.ceil(b * sy)))
            # Only where the view holds the box at ORB's resolution: a box that fills a fraction of a tall
            # screenshot is a few hundred view pixels, and ORB finds half the inliers there.
            if max(vbox[2] - vbox[0], vbox[3] - vbox[1]) >= target:
                content = view.crop(vbox)
        if content is None:
            content = img.crop(box) if box != (0, 0, img.width, img.height) else img
        scale = self.side / max(content.size)
        if scale < 1:  # shrunk in RGB, then converted, as banks already hold features made this way
            content = content.resize((max(1, round(content.width * scale)), max(1, round(content.height * scale))),
                                     Image.Resampling.BOX)
        return np.asarray(content.convert("L"))


LOCAL_INPUT = LocalInput()
LOCAL_INPUT_KEY = "local_input"  # the bank manifest's record of its LocalInput
LEGACY_LOCAL_INPUT = LocalInput(side=LOCAL_SIDE, from_view=False)  # banks with images and no record
VIEW_LOCAL_INPUT = LocalInput(side=512, from_view=True)
# Queries make their keypoints from the full image at 640 px, whatever their bank's input. Measured on
# scripts/bench_dedup.py's suite (local signal alone, 987 copies of 21 items, 470 of 10 distractors):
# bank and queries at the full image 945 found / 1 false; both at the 512-px view 944 / 0 (overlays
# 61 → 58); bank at the view, queries at 640 from the full image 945 / 0; the reverse 940 / 1. A query
# also runs ORB on its mirror image, and queries are not the bulk work that `add` is.
QUERY_LOCAL_INPUT = LocalInput(side=LOCAL_SIDE, from_view=False)


@dataclass(frozen=True)
class ImageSignals:
    """What dedup needs of one image besides its whole-image PDQ hash and embeddings."""

    box: tuple[int, int, int, int]  # content box (left, top, right, bottom) in image pixels
    pdq_trim: PdqHash | None  # PDQ of the content box; None when the box is the whole image
    local: LocalFeatures  # strongest first, up to LOCAL_QUERY_FEATURES
    local_mirror: LocalFeatures  # the same of the left-right mirror image

    @property
    def trimmed(self) -> bool:
        return self.pdq_trim is not None


def image_signals(img: Image.Image, *, view: Image.Image | None = None, n_features: int = LOCAL_QUERY_FEATURES,
                  mirror: bool = True, local_input: LocalInput = LOCAL_INPUT) -> ImageSignals:
    """Content box, its PDQ hash and ORB features (and the mirror's) of an upright RGB image.

    ``view``: the image box-averaged for PDQ (``pdq.pdq_view``), when the caller has it: the content box
    is looked for on it (≈ 2.5 ms cheaper for a 1024-px photo; scripts/bench_dedup.py: the same recall and
    false matches per family), and ORB reads it (``local_input``: the bank's way of making ORB's input).
    """
    if img.mode != "RGB":
        raise ValueError(f"image_signals needs an RGB image (use preprocess.load_rgb), got mode {img.mode!r}")
    box = content_box(img, view)
    whole = box == (0, 0, img.width, img.height)
    content = img if whole else img.crop(box)
    gray = local_input.gray(img, box, view)
    local = orb_features(gray, n_features)
    local_mirror = orb_features(np.ascontiguousarray(gray[:, ::-1]), n_features) if mirror else EMPTY_LOCAL
    # The de-bordered copy is hashed like the whole image (box-averaged to at most PDQ_MAX_SIDE), so that
    # a letterboxed copy's trimmed hash and its original's hash are computed alike.
    trim = None if whole else pdq_hash(content)
    return ImageSignals(box=box, pdq_trim=trim, local=local, local_mirror=local_mirror)


def orb_features(gray: np.ndarray, n_features: int) -> LocalFeatures:
    """ORB (oriented FAST + rotated BRIEF) keypoints of a uint8 grayscale image, strongest first."""
    if min(gray.shape) < 32:
        return EMPTY_LOCAL
    orb = cv2.ORB_create(nfeatures=n_features, scaleFactor=1.2, nlevels=8, edgeThreshold=15, patchSize=31,
                         fastThreshold=10)
    keypoints, desc = orb.detectAndCompute(gray, None)
    if desc is None or not keypoints:
        return EMPTY_LOCAL
    order = np.argsort([-k.response for k in keypoints], kind="stable")
    xy = np.array([keypoints[i].pt for i in order], np.float32)
    return LocalFeatures(xy=xy, desc=np.ascontiguousarray(desc[order]))
