"""Meta's PDQ perceptual hash (256 bits + quality 0–100) of an image, with its 8 dihedral variants.

Where it sits in the flow::

    image file ──► preprocess.load_rgb ──► pdq.pdq_hash ──► bank (binary index) ──► dedup / decide

The input is the upright 8-bit RGB image from :func:`fakebank.preprocess.load_rgb`, so EXIF orientation,
CMYK, palette, 1-bit and 16-bit images are already handled there (python-threatexchange hashes those raw
and gets them wrong). The bounded view (at most ``PDQ_MAX_SIDE``) is hashed by Meta's algorithm written
here as banded matrix products (4× cheaper than the ``pdqhash`` binding's Python glue; the same bits on
the tested photos, where only a coefficient within rounding of the median can flip); full-resolution hashes
(``max_side=None``) and images under 64 px go to ``pdqhash``, Meta's C++ code.

Hashes are kept as 32 ``bytes`` in Meta's order: ``bytes.hex()`` of them is the 64-character hex string
that Meta's tools print. ``pdqhash`` returns a 0/1 vector whose element 0 is the most significant bit of
the first hex digit (it reverses the C++ ``Hash256`` bit order for you), so ``np.packbits`` gives those
bytes directly; tests check this bit for bit against Meta's reference hashes.

Never imports torch or the model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pdqhash
from PIL import Image

# Meta's recommended Hamming threshold for a match, inclusive: distance <= 31 (pdq/README.md).
PDQ_MATCH_THRESHOLD = 31
# Meta: discard hashes of quality <= 49 for matching (pdq/README.md).
PDQ_MIN_QUALITY = 50
# Longest side an image is hashed at. A larger image is first box-averaged by the integer factor
# k = ceil(longer side / PDQ_MAX_SIDE) (Pillow's `reduce`): each hashed pixel is the plain mean of a k × k
# block, which is what PDQ's own box (Jarosz) filter sums anyway (at 1024 px its window is 8 pixels: a
# 2 × 2 mean followed by a 4-pixel window is the same 8-pixel box), so the hash moves little, where a
# bilinear resize to an arbitrary size moves it more. Measured (one-off check, 2026-12-02: 160
# images of quality ≥ 80 over 512 px from ../shared/data plus crops and upscales, 8 dihedral hashes each,
# distance to the full-resolution hash): this box-reduce mean 6.0 bits (max 26, 7 % over 10) vs bilinear to 512 px
# mean 9.3 (28 % over 10; the previous default, bilinear to 1536 px: mean 2.3). Speed, one core, 1024² JPEG: 34 ms at
# full resolution (pdqhash spends 8 ms of it building float64 luma), 5.4 ms reduced (1 ms of it the
# reduce). Meta's criterion (quality ≥ 80 → within 10 bits of the C++ reference) holds on its images
# (tests/test_pdq.py); scripts/bench_dedup.py: recall 0.987 → 0.988, false matches 1/470 as before. It bounds
# pdqhash's float64 temporaries (24 bytes per pixel: 1.2 GB for a 50-MP image at full resolution).
PDQ_MAX_SIDE = 768

_HASH_BYTES = 32
_N_DIHEDRAL = 8


@dataclass(frozen=True)
class PdqHash:
    """PDQ hash of one image.

    ``hash``: 32 bytes, the image as is. ``quality``: 0–100 (Meta: do not match below 50).
    ``dihedral``: 8 hashes in ``pdqhash.compute_dihedral`` order, each ≈ the hash of the image turned by
    a Pillow ``Image.Transpose`` (measured): 0 original (``dihedral[0] == hash``), 1 ``ROTATE_90``
    (counter-clockwise), 2 ``ROTATE_180``, 3 ``ROTATE_270``, 4 ``FLIP_TOP_BOTTOM`` (Meta's "flip x"),
    5 ``FLIP_LEFT_RIGHT`` (Meta's "flip y"), 6 ``TRANSPOSE`` ("flip +1"), 7 ``TRANSVERSE`` ("flip −1").
    """

    hash: bytes
    quality: int
    dihedral: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.hash, bytes) or len(self.hash) != _HASH_BYTES:
            raise ValueError(f"PdqHash.hash must be {_HASH_BYTES} bytes, got {self.hash!r}")
        if not 0 <= self.quality <= 100:
            raise ValueError(f"PdqHash.quality must be in 0..100, got {self.quality}")
        if len(self.dihedral) != _N_DIHEDRAL or any(
            not isinstance(h, bytes) or len(h) != _HASH_BYTES for h in self.dihedral
        ):
            raise ValueError(f"PdqHash.dihedral must be {_N_DIHEDRAL} hashes of {_HASH_BYTES} bytes")
        if self.dihedral[0] != self.hash:
            raise ValueError("PdqHash.dihedral[0] must equal PdqHash.hash (the untransformed image)")

    @property
    def hex(self) -> str:
        """Meta's 64-character lowercase hex form."""
        return self.hash.hex()

    @property
    def usable(self) -> bool:
        """Quality high enough to match on (>= PDQ_MIN_QUALITY)."""
        return self.quality >= PDQ_MIN_QUALITY


def pdq_view(img: Image.Image, max_side: int | None = PDQ_MAX_SIDE) -> Image.Image:
    """The image PDQ hashes: ``img`` box-averaged by ``ceil(longer side / max_side)`` (itself when that
    is 1, or when ``max_side`` is None). Shared with the dedup signals, so that it is computed once."""
    if max_side is None:
        return img
    if max_side < 64:
        raise ValueError(f"max_side must be >= 64 (PDQ works on a 64×64 grid) or None, got {max_side}")
    k = -(-max(img.size) // max_side)
    return img.reduce(k) if k > 1 else img


def pdq_hash(img: Image.Image, *, max_side: int | None = PDQ_MAX_SIDE) -> PdqHash:
    """PDQ hash, quality and dihedral hashes of an upright RGB image (from ``preprocess.load_rgb``).

    Images whose longer side exceeds ``max_side`` are box-averaged to at most that first
    (:func:`pdq_view`); ``max_side=None`` hashes at full resolution, which reproduces Meta's C++
    reference exactly.
    """
    if img.mode != "RGB":
        raise ValueError(f"pdq_hash needs an RGB image (use preprocess.load_rgb), got mode {img.mode!r}")
    img = pdq_view(img, max_side)
    if max_side is not None and min(img.size) >= _MIN_BANDED_SIDE:
        return _pdq_hash_banded(np.asarray(img))
    # One call gives all 8 hashes: the dihedral variants are cheap transforms of the same 16×16 DCT.
    vectors, quality = pdqhash.compute_dihedral(np.asarray(img))
    dihedral = tuple(np.packbits(np.asarray(v, dtype=np.uint8)).tobytes() for v in vectors)
    return PdqHash(hash=dihedral[0], quality=int(quality), dihedral=dihedral)


# -- Meta's algorithm as matrix products, for the bounded view ------------------------------------------
# pdqhash spends ≈ 4.5 of its 5 ms on a 512² view outside the hash itself (float64 luma in numpy, bits
# through Python lists). The hash is linear up to the 16×16 DCT: the Jarosz filter (two passes of a box
# along rows and columns) followed by sampling 64 rows and columns is, per axis, one 64 × n matrix, so the
# 64×64 image is R @ luma @ Cᵀ (≈ 1 ms with the rest). Same algorithm, float32 like the C++ (sums in another
# order: a coefficient within rounding of the median can flip; tests compare with pdqhash bit for bit).

_MIN_BANDED_SIDE = 64  # below, pixels repeat in the 64×64 grid and near-tied coefficients are left to pdqhash
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@functools.lru_cache(maxsize=1024)  # a few KB each: one per image side seen
def _jarosz_sampler(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Meta's `jaroszFilterFloat` (2 box passes) along an axis of length n, then `decimateFloat`'s 64
    samples (at (k + 0.5) · n / 64), as one banded [64, n] matrix: (first index of each row's band [64],
    the band's weights [64, span] float32). Read-only."""
    window = (n + 2 * 64 - 1) // (2 * 64)  # computeJaroszFilterWindowSize
    half = (window + 2) // 2
    # box1DFloat: out[o] is the mean of in[max(0, o − (window − half)) : min(n, o + half)]
    o = np.arange(n)
    lo, hi = np.maximum(0, o - (window - half)), np.minimum(n, o + half)
    rows = ((np.arange(64) + 0.5) * n / 64).astype(np.int64)
    # Row k of the composition: the sampled row's window of box rows, each a window of pixels.
    first, last = lo[lo[rows]], hi[hi[rows] - 1]
    span = int((last - first).max())
    weights = np.zeros((64, span), np.float64)
    for k, r in enumerate(rows):
        for j in range(lo[r], hi[r]):
            weights[k, lo[j] - first[k]:hi[j] - first[k]] += 1.0 / (hi[r] - lo[r]) / (hi[j] - lo[j])
    weights = weights.astype(np.float32)
    first.flags.writeable = weights.flags.writeable = False
    return first, weights


def _sample(values: np.ndarray, axis_sampler: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Apply a banded sampler along axis 0 of `values` [n, m] → [64, m] (no BLAS: a few taps per row, and
    BLAS's own threads would fight the decode pool's)."""
    first, weights = axis_sampler
    idx = np.minimum(first[:, None] + np.arange(weights.shape[1]), len(values) - 1)
    return np.einsum("ks,ksm->km", weights, values[idx])


def _dct_matrix() -> np.ndarray:
    i, j = np.arange(1, 17)[:, None], np.arange(64)[None, :]
    return (np.sqrt(2.0 / 64) * np.cos((np.pi / 2.0 / 64) * i * (2 * j + 1))).astype(np.float32)


_DCT = _dct_matrix()
_ODD = (np.arange(16) & 1).astype(bool)
_EVEN_SIGN = np.where(_ODD, 1, -1).astype(np.float32)  # +1 on odd indices, −1 on even ones
_CHECKER = np.where((np.arange(16)[:, None] + np.arange(16)[None, :]) & 1, -1, 1).astype(np.float32)


def _pdq_hash_banded(rgb: np.ndarray) -> PdqHash:
    h, w = rgb.shape[:2]
    f = rgb.astype(np.float32)
    luma = f[..., 0] * _LUMA[0] + f[..., 1] * _LUMA[1] + f[..., 2] * _LUMA[2]
    small = _sample(_sample(luma, _jarosz_sampler(h)).T, _jarosz_sampler(w)).T  # [64, 64]
    # pdqImageDomainQualityMetric: int((u − v) · 100 / 255) truncated, summed, / 90, at most 100
    down = np.trunc((small[:-1] - small[1:]) * np.float32(100) / np.float32(255))
    across = np.trunc((small[:, :-1] - small[:, 1:]) * np.float32(100) / np.float32(255))
    quality = min(100, int(np.abs(down).sum() + np.abs(across).sum()) // 90)
    dct = np.einsum("ik,kl,jl->ij", _DCT, small, _DCT, optimize=True)  # [16, 16]
    # compute_dihedral's order: original, rot90, rot180, rot270, flip x, flip y, flip +1, flip −1
    variants = (dct, (dct * _EVEN_SIGN[None, :]).T, dct * _CHECKER, (dct * _EVEN_SIGN[:, None]).T,
                dct * _EVEN_SIGN[:, None], dct * _EVEN_SIGN[None, :], dct.T, (dct * _CHECKER).T)
    hashes = tuple(_bits(v) for v in variants)
    return PdqHash(hash=hashes[0], quality=quality, dihedral=hashes)


def _bits(dct16: np.ndarray) -> bytes:
    """pdqBuffer16x16ToBits: bit i·16 + j set where the coefficient is above the median (Torben's: the
    128th smallest of 256), in Meta's byte order (bit 255 first)."""
    flat = dct16.reshape(-1)
    median = np.partition(flat, 127)[127]
    return np.packbits((flat > median)[::-1]).tobytes()


def hamming(a: bytes, b: bytes) -> int:
    """Number of differing bits between two hashes of the same length."""
    if len(a) != len(b):
        raise ValueError(f"cannot compare hashes of {len(a)} and {len(b)} bytes")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def min_dihedral_distance(query: PdqHash, stored_hash: bytes) -> int:
    """Smallest Hamming distance from any of the query's 8 dihedral hashes to a stored hash, so that a
    rotated or mirrored copy of a stored image matches."""
    return min(hamming(h, stored_hash) for h in query.dihedral)


def hex_to_bytes(h: str) -> bytes:
    """Meta's 64-character hex form → 32 bytes."""
    if len(h) != 2 * _HASH_BYTES:
        raise ValueError(f"a PDQ hash is {2 * _HASH_BYTES} hex characters, got {len(h)}: {h!r}")
    try:
        b = bytes.fromhex(h)
    except ValueError:
        b = b""
    if len(b) != _HASH_BYTES:  # fromhex skips whitespace, so check the result too
        raise ValueError(f"a PDQ hash is {2 * _HASH_BYTES} hex digits, got {h!r}")
    return b


def bytes_to_hex(b: bytes) -> str:
    """32 bytes → Meta's 64-character lowercase hex form."""
    if len(b) != _HASH_BYTES:
        raise ValueError(f"a PDQ hash is {_HASH_BYTES} bytes, got {len(b)}")
    return b.hex()
