"""Per-image near-duplicate signals beyond the whole-image PDQ hash, computed in the decode threads.

Where it sits in the flow::

    preprocess.load_rgb ──► signals.image_signals ──► embed (Embedding.signals) ──► bank ──► dedup

For each upright RGB image:

- the **content box**: the image with letterbox/pillarbox bars, caption bars and screenshot frames cut off
  (:func:`fakebank.preprocess.content_box`), and the **PDQ hash of that box** when it differs from the
  whole image (``pdq_trim``): a letterboxed or screenshotted copy hashes like its original again;
- **local features**: ORB keypoints and binary descriptors of the content box (grayscale, longer side
  ``LOCAL_SIDE``), which survive crops, overlays, small rotations and re-framing that move every PDQ bit.
  A query also gets the features of its mirror image (ORB descriptors are not mirror-invariant).

Nothing here depends on the classifier, so matching works the same with ``untrained:`` weights. Never
imports torch or the model; OpenCV runs with one thread per call (the decode pool supplies parallelism).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from fakebank.pdq import PdqHash, pdq_hash
from fakebank.preprocess import content_box

# Longer side of the grayscale image ORB runs on. 640 px keeps ≈ 10 ms per image (ORB, one core) and
# enough detail in a screenshot whose photo fills half the frame (measured: scripts/bench_dedup.py).
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
    """ORB keypoints of one image: ``xy`` [n, 2] float32 in the ``LOCAL_SIDE`` frame, ``desc`` [n, 32] uint8."""

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
class ImageSignals:
    """What dedup needs of one image besides its whole-image PDQ hash and embeddings."""

    box: tuple[int, int, int, int]  # content box (left, top, right, bottom) in image pixels
    pdq_trim: PdqHash | None  # PDQ of the content box; None when the box is the whole image
    local: LocalFeatures  # strongest first, up to LOCAL_QUERY_FEATURES
    local_mirror: LocalFeatures  # the same of the left-right mirror image

    @property
    def trimmed(self) -> bool:
        return self.pdq_trim is not None


def image_signals(img: Image.Image, *, n_features: int = LOCAL_QUERY_FEATURES, mirror: bool = True) -> ImageSignals:
    """Content box, its PDQ hash and ORB features (and the mirror's) of an upright RGB image.

    The content box is looked for on the full image, as banks already hold boxes found that way: found on
    the shared PDQ view it was ≈ 2 ms cheaper, but 10 of 60 framed and letterboxed test images got another
    box, their de-bordered hashes 42–124 bits from the ones the earlier code stored.
    """
    if img.mode != "RGB":
        raise ValueError(f"image_signals needs an RGB image (use preprocess.load_rgb), got mode {img.mode!r}")
    box = content_box(img)
    whole = box == (0, 0, img.width, img.height)
    content = img if whole else img.crop(box)
    gray = _gray(content)
    local = orb_features(gray, n_features)
    local_mirror = orb_features(np.ascontiguousarray(gray[:, ::-1]), n_features) if mirror else EMPTY_LOCAL
    # The de-bordered copy is hashed like the whole image (box-averaged to at most PDQ_MAX_SIDE), so that
    # a letterboxed copy's trimmed hash and its original's hash are computed alike.
    trim = None if whole else pdq_hash(content)
    return ImageSignals(box=box, pdq_trim=trim, local=local, local_mirror=local_mirror)


def _gray(img: Image.Image) -> np.ndarray:
    """Luma of the image shrunk (area-averaged) so that its longer side is at most LOCAL_SIDE.

    Shrunk in RGB, then converted, as banks already hold features made this way. (Luma first, in Pillow or
    OpenCV, is 1.5–2 ms cheaper per 1024-px photo, but the ±1 rounding moves ORB's keypoints: on
    scripts/bench_dedup.py one more or one fewer copy found and false match, depending on the variant.)"""
    scale = LOCAL_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BOX)
    return np.asarray(img.convert("L"))


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
