"""Image file → upright 8-bit RGB PIL image → normalised float32 array for the model.

Where it sits in the flow::

    image file ──► preprocess.load_rgb ──► preprocess.to_array ──► embed (model)
                        └──────────────────► pdq.pdq_hash

``load_rgb`` is the one place that decodes untrusted files: it bounds the decoded size before any pixel
is decoded (decompression bombs), takes the first frame of animations, applies EXIF orientation and
converts every Pillow mode to 8-bit RGB. Every failure is an :class:`~fakebank.errors.InputError` that
names the file and says what to do, so a batch can skip that file and go on.

``to_array`` reproduces torchvision's ``Resize → CenterCrop → ToTensor → Normalize`` on a PIL image
with Pillow and numpy only (same resampling, same rounding, same float32 arithmetic in the same order).

This module never imports the model, torch or torchvision, and never changes Pillow's global settings
(``ImageFile.LOAD_TRUNCATED_IMAGES``, ``Image.MAX_IMAGE_PIXELS``, warning filters): it is called from
several threads at once.
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fakebank.errors import InputError, TooLargeError

try:  # HEIC/HEIF, the iPhone's photo format: Pillow reads it through this plugin
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - a dependency; without it HEIC is refused as unreadable
    pass
else:
    register_heif_opener()

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bound on width × height, checked from the header before any pixel is decoded. 50 M pixels is a
# 8660×5773 photo (150 MB as RGB); Pillow's own bomb limit (Image.MAX_IMAGE_PIXELS, ≈ 89.5 M) still
# applies on top of it.
DEFAULT_MAX_PIXELS = 50_000_000

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _is_positive_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x > 0


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input (torchvision semantics, applied on PIL images).

    ``resize``: an int resizes the shorter side to it and the longer side to
    ``int(resize * long / short)`` (torchvision ``Resize(int)``); ``(h, w)`` resizes to exactly that.
    ``crop``: centre crop to ``crop × crop`` (torchvision ``CenterCrop``, zero padding where the image is
    smaller), or ``None``. ``interpolation``: ``"bilinear"`` or ``"bicubic"``, Pillow's resampling, which
    antialiases when shrinking as torchvision does on PIL images. ``mean``/``std``: per RGB channel,
    applied to pixel values scaled to [0, 1].
    """

    resize: int | tuple[int, int]
    crop: int | None
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        resize = self.resize
        if isinstance(resize, (list, tuple)):
            if len(resize) != 2 or not all(_is_positive_int(s) for s in resize):
                raise ValueError(f"Preprocessing.resize must be a positive int or (height, width), got {resize!r}")
            object.__setattr__(self, "resize", (int(resize[0]), int(resize[1])))
        elif not _is_positive_int(resize):
            raise ValueError(f"Preprocessing.resize must be a positive int or (height, width), got {resize!r}")
        if self.crop is not None and not _is_positive_int(self.crop):
            raise ValueError(f"Preprocessing.crop must be a positive int or None, got {self.crop!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(
                f"Preprocessing.interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}"
            )
        for field in ("mean", "std"):
            value = getattr(self, field)
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"Preprocessing.{field} must be 3 numbers (R, G, B), got {value!r}") from None
            if len(value) != 3 or not all(np.isfinite(value)):
                raise ValueError(f"Preprocessing.{field} must be 3 finite numbers (R, G, B), got {value!r}")
            object.__setattr__(self, field, value)
        if not all(s > 0 for s in self.std):
            raise ValueError(f"Preprocessing.std must be > 0 for every channel, got {self.std!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples as lists); ``Preprocessing.from_dict`` reads it back unchanged."""
        return {
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        keys = {"resize", "crop", "interpolation", "mean", "std"}
        if not isinstance(d, dict) or set(d) != keys:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"preprocessing record must have exactly the keys {sorted(keys)}, got {got}")
        resize = d["resize"]
        return cls(
            resize=tuple(resize) if isinstance(resize, (list, tuple)) else resize,
            crop=d["crop"],
            interpolation=d["interpolation"],
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
        )

    @property
    def input_size(self) -> int:
        """Side of the square the model sees: the crop, or the resize when it is an exact square."""
        if self.crop is not None:
            return self.crop
        if isinstance(self.resize, tuple) and self.resize[0] == self.resize[1]:
            return self.resize[0]
        raise ValueError(
            f"preprocessing {self.to_dict()} gives no fixed square input: set crop, or resize to (n, n)"
        )


# The authors' reference recipe (Community-Forensics models.py): Resize(440), CenterCrop(384), ToTensor,
# Normalize(ImageNet mean/std).
COMMFOR_PREPROCESSING = Preprocessing(
    resize=440, crop=384, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD
)


# ---------------------------------------------------------------------------------------------------------
# file → RGB


def image_mime(data: bytes) -> str | None:
    """The media type of encoded image bytes by their signature: JPEG, PNG or WebP; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def load_rgb(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_side: int | None = None,
    draft_min_side: int = 0,
) -> Image.Image:
    """Decode an image file (a path, or the raw bytes of an upload) to an upright 8-bit RGB image.

    ``draft_side``: for a JPEG whose longer side is at least ``draft_min_side`` (and twice
    ``draft_side``), let libjpeg scale it by 1/2, 1/4 or 1/8 while decoding (DCT scaling, several times
    cheaper) keeping the longer side ≥ ``draft_side``; the image's ``info["fakebank_draft"]`` then holds
    the upright full-resolution (width, height). Those pixels are not the reference decode: for hashes
    and signals, never for the model's input.

    ``name`` labels the file in error messages (default: the path, or ``"<bytes>"``). Images with more
    than ``max_pixels`` pixels are refused from their header, before decoding; so is anything Pillow
    itself flags as a decompression bomb (more than ``Image.MAX_IMAGE_PIXELS``). Animated images give
    their first frame. EXIF orientation is applied. Alpha is dropped, not composited (as Meta's PDQ tools
    do). Raises :class:`InputError` for any file that cannot be used.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(source)
        if not data:
            raise InputError(f"{label}: empty (0 bytes), not an image; check the file or what was sent")
        fp: Any = io.BytesIO(data)
    else:
        label = name or os.fspath(source)
        fp = os.fspath(source)
        try:
            st = os.stat(fp)
        except FileNotFoundError:
            raise InputError(f"{label}: no such file; check the path") from None
        except OSError as e:
            reason = e.strerror or e
            raise InputError(f"{label}: cannot be read ({reason}); check the path and its permissions") from e
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{label}: is a folder, not an image file; pass the image files inside it")
        if st.st_size == 0:
            raise InputError(f"{label}: the file is empty (0 bytes); re-download or re-export it")

    try:
        with Image.open(fp) as im:
            _check_pixels(im, label, max_pixels)
            full = _draft(im, draft_side, draft_min_side) if draft_side else None
            im.load()  # the first frame only; Pillow opens animations at frame 0
            _upright(im)
            rgb = _to_rgb(im, label)
            if full is not None:
                rgb.info["fakebank_draft"] = full
            return rgb
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise TooLargeError(
            f"{label}: too many pixels for Pillow's decompression-bomb guard ({e}); "
            "downscale it before indexing"
        ) from e
    except UnidentifiedImageError as e:
        raise InputError(
            f"{label}: not an image Pillow can read (unknown format or damaged header); "
            "check that it is a JPEG, PNG, WebP, GIF, BMP or TIFF file, or re-download it"
        ) from e
    except FileNotFoundError:
        raise InputError(f"{label}: no such file; check the path") from None
    except PermissionError as e:
        raise InputError(f"{label}: permission denied; check the file's permissions") from e
    except MemoryError as e:
        raise InputError(f"{label}: not enough memory to decode it; downscale it before indexing") from e
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise OSError, SyntaxError, ValueError,
        # struct.error, EOFError, IndexError … on damaged input; each is one unusable file, cause kept.
        raise InputError(
            f"{label}: is truncated or corrupt ({type(e).__name__}: {e}); re-download or re-export it"
        ) from e


def _draft(im: Image.Image, side: int, min_side: int) -> tuple[int, int] | None:
    """Ask the JPEG decoder for a DCT-scaled decode; the stored (width, height) when it will scale."""
    w, h = im.size
    k = max(w, h) // side
    if im.format != "JPEG" or max(w, h) < min_side or k < 2 or im.mode not in ("RGB", "L"):
        return None
    try:
        turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap width and height
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, IndexError):  # damaged EXIF: as _upright
        turned = False
    im.draft(im.mode, (-(-w // k), -(-h // k)))
    if im.size == (w, h):
        return None
    return (h, w) if turned else (w, h)


def _check_pixels(im: Image.Image, label: str, max_pixels: int) -> None:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise InputError(f"{label}: has no pixels ({width}×{height}); re-export it")
    pixels = width * height
    if pixels > max_pixels:
        raise TooLargeError(
            f"{label}: {width}×{height} = {pixels:,} pixels is more than the limit of {max_pixels:,} "
            "(decompression-bomb guard); downscale it, or raise the limit (--max-pixels) if the file is trusted"
        )
    # Pillow has already warned (DecompressionBombWarning) when pixels > Image.MAX_IMAGE_PIXELS; refuse
    # those too, so that its warning always ends as this error (silencing it would mean changing the
    # process-wide warning filters, which is not thread-safe).
    if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
        raise TooLargeError(
            f"{label}: {width}×{height} = {pixels:,} pixels is more than Pillow's decompression-bomb limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}); downscale it, or raise both limits "
            "if the file is trusted"
        )


def _upright(im: Image.Image) -> None:
    """Apply the EXIF orientation tag, in place (no copy of an image that is already upright). An
    unreadable EXIF block leaves the image as stored, which is what any viewer that ignores EXIF shows;
    it does not make the pixels unusable."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, IndexError):  # damaged EXIF block
        pass


def _to_rgb(im: Image.Image, label: str) -> Image.Image:
    """Any Pillow mode → 8-bit RGB, with the right scaling for high-bit-depth and float modes."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("1", "L", "LA", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        # CMYK: Pillow's JPEG decoder already undoes Adobe's inverted CMYK, so this is not inverted.
        # Alpha (LA, RGBA) is dropped, as Meta's PDQ tools drop it.
        return im.convert("RGB")
    if mode in ("P", "PA"):
        # Palette with transparency goes through RGBA (Pillow's recommended path), then drops alpha.
        palette_alpha = im.palette is not None and "A" in im.palette.mode
        has_alpha = mode == "PA" or "transparency" in im.info or palette_alpha
        return im.convert("RGBA").convert("RGB") if has_alpha else im.convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit range (mode I is what older Pillows and TIFF give for 16-bit files) → 8 bits by dropping
        # the low byte. Pillow's own I→RGB conversion clips at 255: a 16-bit image turns almost all white.
        values = np.asarray(im).astype(np.int64)
        gray = np.clip(values >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:  # a [0, 1] float image
            values = values * np.float32(255.0)
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise InputError(
            f"{label}: pixel mode {mode!r} cannot be converted to RGB; re-save it as PNG or JPEG"
        ) from e


# ---------------------------------------------------------------------------------------------------------
# RGB → normalised array


def to_array(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """RGB PIL image → float32 ``[3, H, W]`` C-contiguous array, as torchvision's
    ``Compose([Resize, CenterCrop, ToTensor, Normalize])`` computes it on the same image."""
    chw = np.asarray(model_view(img, pre)).transpose(2, 0, 1).astype(np.float32, order="C")
    # ToTensor: x / 255; Normalize: (x - mean) / std, all float32, in torchvision's order. (≈ 0.3 ms at
    # 384²: the resize is the cost; a table look-up, as the device path does, is 3× slower here.)
    chw /= np.float32(255.0)
    chw -= np.asarray(pre.mean, dtype=np.float32)[:, None, None]
    chw /= np.asarray(pre.std, dtype=np.float32)[:, None, None]
    return chw


@functools.lru_cache(maxsize=16)
def normalise_table(pre: Preprocessing) -> np.ndarray:
    """[3, 256] float32: ToTensor then Normalize of every 8-bit value, per channel, in torchvision's
    float32 arithmetic (x / 255, then - mean, then / std), exactly what ``to_array`` computes per pixel.
    The device path normalises by looking values up in it, so no device arithmetic can differ. Read-only."""
    x = np.arange(256, dtype=np.float32)[None, :].repeat(3, axis=0)
    x /= np.float32(255.0)
    x -= np.asarray(pre.mean, dtype=np.float32)[:, None]
    x /= np.asarray(pre.std, dtype=np.float32)[:, None]
    x.flags.writeable = False
    return x


def model_view(img: Image.Image, pre: Preprocessing) -> Image.Image:
    """The RGB picture the model sees (resized and centre-cropped, not yet normalised): what a heat map
    is drawn over, patch for patch."""
    if img.mode != "RGB":
        raise ValueError(f"to_array needs an RGB image (use load_rgb), got mode {img.mode!r}")
    resample = _RESAMPLE[pre.interpolation]
    new = _resized_size(img.size, pre.resize)
    if pre.crop is not None and new[0] != img.width and new[1] != img.height and min(new) >= pre.crop:
        vertical_first = _pil_vertical_first(img.size, new)
        if new[1 if vertical_first else 0] >= _CROP_FIRST_MIN * pre.crop:  # else the copy costs what the crop saves
            return _resize_crop(img, new, pre.crop, resample, vertical_first)
    img = _resize(img, pre.resize, resample)
    if pre.crop is not None:
        img = _center_crop(img, pre.crop)
    return img


# The first pass's output must be at least this many times the crop (the crop drops a fifth of it or more)
# for `_resize_crop` to pay. Measured on one core of the project's EPYC, commfor recipe: 1024×768 3.99 →
# 3.64 ms, 1600×900 7.31 → 6.07, but a 1024-px square, whose crop keeps 384 of 440 columns, 4.86 → 5.04.
_CROP_FIRST_MIN = 1.25


def _resize_crop(img: Image.Image, new: tuple[int, int], crop: int, resample: Image.Resampling,
                 vertical_first: bool) -> Image.Image:
    """``img.resize(new).crop(centre crop)``, bit for bit, without resampling what the crop drops along the
    first pass's axis: Pillow resamples one axis, rounds to 8 bits, then the other (`_pil_vertical_first`),
    so its first pass is run alone on the whole image, cut to the crop along that axis, and the second pass
    run alone on what is left. Same coefficients, same rounding; the second pass skips the cropped-off
    part (a landscape photo's columns, when Pillow starts with the rows)."""
    (w, h), (new_w, new_h) = img.size, new
    left, top = _crop_offsets(new, crop)
    if vertical_first:
        rows = img.resize((w, new_h), resample).crop((0, top, w, top + crop))
        return rows.resize((new_w, crop), resample).crop((left, 0, left + crop, crop))
    cols = img.resize((new_w, h), resample).crop((left, 0, left + crop, h))
    return cols.resize((crop, new_h), resample).crop((0, top, crop, top + crop))


def _resize(img: Image.Image, size: int | tuple[int, int], resample: Image.Resampling) -> Image.Image:
    new = _resized_size(img.size, size)
    if new == img.size:
        return img
    return img.resize(new, resample)


def _resized_size(wh: tuple[int, int], size: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) after ``Resize(size)``."""
    w, h = wh
    if isinstance(size, tuple):
        new_h, new_w = size
    else:  # torchvision _compute_resized_output_size: the shorter side to `size`, the longer truncated
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_w, new_h


def _center_crop(img: Image.Image, crop: int) -> Image.Image:
    """torchvision CenterCrop: round((size - crop) / 2) offset; a side shorter than the crop is padded with
    zeros, ``(crop - size) // 2`` before it (Pillow's crop fills outside the image with zeros)."""
    if img.size == (crop, crop):
        return img
    left, top = _crop_offsets(img.size, crop)
    return img.crop((left, top, left + crop, top + crop))


def _crop_offsets(wh: tuple[int, int], crop: int) -> tuple[int, int]:
    """(left, top) of torchvision's centre crop; negative where the image is padded."""
    w, h = wh
    left = -((crop - w) // 2) if crop > w else int(round((w - crop) / 2.0))
    top = -((crop - h) // 2) if crop > h else int(round((h - crop) / 2.0))
    return left, top


@dataclass(frozen=True)
class ResizePlan:
    """How ``model_view`` turns a ``size`` image into the model's picture, as Pillow computes it, so that
    another device (``fakebank.device_input``) can repeat it bit for bit.

    ``rows``/``cols``: Pillow's fixed-point filter for each axis (:func:`resample_coeffs`), already cut
    to the output rows/columns that the centre crop keeps (each output pixel depends only on its own
    coefficients, so computing just those is exact). ``pad``: (top, left) zero padding when the resized
    image is smaller than the crop, and ``out``: the (height, width) of the result. ``vertical_first``:
    which pass Pillow runs first (it rounds to 8 bits between the passes, so the order matters).
    """

    rows: tuple[np.ndarray, np.ndarray] | None  # (first source row [n], weights [n, k] int64); None: no pass
    cols: tuple[np.ndarray, np.ndarray] | None
    vertical_first: bool
    pad: tuple[int, int]
    out: tuple[int, int]


# Pillow's fixed-point resampling (libImaging/Resample.c): coefficients scaled by 2**22, accumulated in
# int32 from 2**21 (rounding), shifted back and clipped to 0..255 after each pass.
PIL_PRECISION_BITS = 22
_FILTER_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def _filter(name: str, x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    if name == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5  # Pillow's bicubic, written in the same operation order as Resample.c
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


@functools.lru_cache(maxsize=256)
def resample_coeffs(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's filter for resizing one axis of an 8-bit image from ``in_size`` to ``out_size`` pixels:
    (first source pixel [out], integer weights [out, k] scaled by 2**PIL_PRECISION_BITS, zero past each
    pixel's support). Reproduces ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` in the same double
    arithmetic; tests check it against Pillow's own resize. Read-only arrays."""
    support_1 = _FILTER_SUPPORT[interpolation]
    scale = float(np.float32(in_size)) / out_size  # Pillow passes the box as C floats
    filterscale = max(scale, 1.0)
    support = support_1 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    n = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    w = _filter(interpolation, ((taps[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5)
                * (1.0 / filterscale))
    w = np.where(taps[None, :] < n[:, None], w, 0.0)
    total = np.zeros(out_size)
    for k in range(ksize):  # summed tap by tap, in Pillow's order (a pairwise sum rounds differently)
        total = total + w[:, k]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    fixed = w * (1 << PIL_PRECISION_BITS)
    weights = np.where(w < 0, np.trunc(-0.5 + fixed), np.trunc(0.5 + fixed)).astype(np.int64)
    xmin.flags.writeable = False
    weights.flags.writeable = False
    return xmin, weights


def _pil_vertical_first(size: tuple[int, int], new: tuple[int, int]) -> bool:
    """Pillow ≥ 13 runs the vertical pass first when the height shrinks by more than twice as many pixels
    as the width (Resample.c, ImagingResampleInner); older Pillows always start with the horizontal one."""
    if _PIL_MAJOR < 13:
        return False
    (w, h), (new_w, new_h) = size, new
    return (h - new_h) > 0 and (h - new_h) > (w - new_w) * 2


_PIL_MAJOR = int(Image.__version__.split(".")[0])


def resize_plan(size: tuple[int, int], pre: Preprocessing) -> ResizePlan:
    """The :class:`ResizePlan` of ``model_view`` for an image of ``size`` = (width, height)."""
    w, h = size
    new_w, new_h = _resized_size(size, pre.resize)
    out_h, out_w = (pre.crop, pre.crop) if pre.crop is not None else (new_h, new_w)
    top, left = (0, 0)
    pad_top = pad_left = 0
    if pre.crop is not None:
        left, top = _crop_offsets((new_w, new_h), pre.crop)
    # the output rows/columns inside the resized image; the rest of the crop is zero padding
    r0, r1 = max(top, 0), min(top + out_h, new_h)
    c0, c1 = max(left, 0), min(left + out_w, new_w)
    pad_top, pad_left = r0 - top, c0 - left
    rows = cols = None
    if (new_w, new_h) != (w, h):
        if new_h != h:
            first, weights = resample_coeffs(h, new_h, pre.interpolation)
            rows = (first[r0:r1], weights[r0:r1])
        if new_w != w:
            first, weights = resample_coeffs(w, new_w, pre.interpolation)
            cols = (first[c0:c1], weights[c0:c1])
    if rows is None:  # no vertical resampling: the identity on the kept rows
        rows = (np.arange(r0, r1), np.full((r1 - r0, 1), 1 << PIL_PRECISION_BITS, np.int64))
    if cols is None:
        cols = (np.arange(c0, c1), np.full((c1 - c0, 1), 1 << PIL_PRECISION_BITS, np.int64))
    return ResizePlan(rows=rows, cols=cols, vertical_first=_pil_vertical_first(size, (new_w, new_h)),
                      pad=(pad_top, pad_left), out=(out_h, out_w))


# ---------------------------------------------------------------------------------------------------------
# borders: letterbox/pillarbox bars, caption bars, screenshot frames

# A band is a run of rows (or columns) from an edge inward that share one colour: its first line must be
# near-uniform (≥ BORDER_EDGE_UNIFORM of its pixels within BORDER_TOLERANCE of the line's median on every
# channel), and each further line needs only BORDER_LINE_UNIFORM of its pixels at that colour, so that text
# and icons on a caption bar or a phone's status bar stay inside the band. Up to BORDER_GAP of the side may
# fail in a row (a line of large glyphs). Bands are peeled one side at a time: top and bottom until neither
# moves, then left and right, again and again (a status bar, then the app's background, then …); a band
# that would leave under a tenth of the image is not peeled.
#
# Where the values come from (scripts/bench_dedup.py, 21 originals × letterbox/caption/screenshot copies):
# - BORDER_TOLERANCE 3 (was 20): a UI frame or a bar is *flat* (rendered, one value; JPEG at q40–60 keeps a
#   flat area within ±1–2), a photo's "flat" sky, paper or night is not. With 20, a dark app background
#   (18,18,18) ran on through a star field, a light one (250) through a white-background product shot and a
#   grey page, and the band ate the photo: 9 of 42 screenshot copies kept no usable box (recall 0.786).
#   With 3 the band stops at the photo's edge. Bench (untrained ViT-S/384): screenshot recall 0.786 → 0.976,
#   overlay 0.905 → 0.984, combo 0.867 → 0.914, letterbox 1.000 → 0.984, false-match 0.21 % → 0 %. The one
#   screenshot still missed is a thin chain on a white (≈ 246) product background in the light (250) theme:
#   its background is the frame's, within any tolerance that survives JPEG.
# - rows before columns (was all four sides at once): a column through a tall screenshot crosses mostly
#   frame, so it passed the line test even where it crossed the photo and the pillar band ran through the
#   picture; once the frame's rows are gone, columns only cross the photo, as they do in the original.
# - BORDER_MIN_KEEP 0.08 (was 0.2): a landscape photo in a portrait phone screenshot fills 15–20 % of it
#   (448×172 px → 19 %), and a box below 0.2 was thrown away for the whole frame.
# A lower line fraction eats into photos; a higher one stops at bold captions.
BORDER_TOLERANCE = 3
BORDER_EDGE_UNIFORM = 0.9
BORDER_LINE_UNIFORM = 0.35
BORDER_GAP = 0.03
# One band peels at most this share of what is left on its axis: more is a flat-background photo with
# sparse content (a thin chain on white) being eaten, whose original keeps its whole frame. Measured: the
# deepest frame band on the bench is 0.68 (the bottom of a screenshot around a 448×172 photo); a 60 % crop
# of the chain photo had a 0.74 band and lost its local match (tests/test_dedup.py).
BORDER_MAX_BAND = 0.7
BORDER_MIN_KEEP = 0.08  # a box under this fraction of the image is not trusted: keep the whole image
# A frame's colour stops where the picture starts. A band that is only partly its colour (under
# BORDER_FRAME_UNIFORM of its lines' pixels on average: a chat's background between its bubbles, a picture's
# flat ground between its shapes) while that colour still fills more than BORDER_MAX_INSIDE of the box that is
# left is the picture's own background, not a frame: the box is looked for again without that colour.
# Measured (scripts/bench_hard_negatives.py, scripts/bench_dedup.py, tests/test_dedup.py): a chat's
# background band, peeled through its narrower bubbles down to the last ones and the input bar, is 64–79 %
# its colour and that colour fills 32–73 % of the box, and two different chats' boxes hashed alike (PDQ
# distance 28: false `pdq_trim` copies); now the box is the chat below its header (different chats ≥ 36 bits
# apart). A frame is clean: the phone frames of tests/test_dedup.py are ≥ 90 % their colour (text and icons
# on a flat bar), letterbox bars 100 %; and on bench_dedup's edits a peeled colour fills ≤ 28 % of the box,
# except where the photo shares it (a chain on white in a white theme: 74 %, its frame still clean, so still
# peeled). Of bench_dedup's 1,488 images 3 boxes change (a crop, a recolour and a blur of photos whose own
# flat ground was peeled), none of their matches.
BORDER_FRAME_UNIFORM = 0.85
BORDER_MAX_INSIDE = 0.3
_BORDER_SIDE = 256  # analysed on a copy with this longer side (a box to within 0.4 %)
_BORDER_ROUNDS = 12  # the 1-px blends between a status bar, the background and the photo are bands too
_BORDER_RETRIES = 4  # searches for a box, each without the colours the last one found inside its box


def content_box(img: Image.Image) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the image without uniform border bands; the whole image if none.

    Deterministic in the pixels, so a bank image and its copy are cut alike: a photo that ends in flat sky
    loses the sky on both sides of the comparison.
    """
    w, h = img.size
    scale = min(1.0, _BORDER_SIDE / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # most photos: no edge line of the small copy is one colour, so nothing to peel (RGB only: other modes
    # are resized in their own mode, then converted, as they always were)
    if scale < 1 and img.mode == "RGB" and not any(_uniform_edge(line) for line in _edge_lines(img, size)):
        return (0, 0, w, h)
    return _search_box(img, scale, size)


def _search_box(img: Image.Image, scale: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`content_box`'s search on the whole small copy (`size`, `scale` of the image)."""
    w, h = img.size
    small = img if scale == 1 else img.resize(size, Image.Resampling.BILINEAR)
    a = np.asarray(small.convert("RGB"), dtype=np.int16)
    H, W = a.shape[:2]
    banned: list[np.ndarray] = []
    for _ in range(_BORDER_RETRIES):
        (t, b, l, r), colours = _peel(a, banned)
        if (t, b, l, r) == (0, H, 0, W) or (b - t) * (r - l) < BORDER_MIN_KEEP * H * W:
            return (0, 0, w, h)
        inside = [c for c, uniform in colours
                  if uniform < BORDER_FRAME_UNIFORM and _near(a[t:b, l:r], c).mean() > BORDER_MAX_INSIDE]
        if not inside:
            return (round(l / scale), round(t / scale), min(w, round(r / scale)), min(h, round(b / scale)))
        banned += inside
    return (0, 0, w, h)


def _peel(a: np.ndarray, banned: list[np.ndarray]) -> tuple[list[int], list[tuple[np.ndarray, float]]]:
    """[top, bottom, left, right] of `a` [H, W, 3] without its border bands (none of a `banned` colour), and
    per band peeled its colour and the mean share of its lines' pixels at that colour."""
    by_axis = (a, np.ascontiguousarray(a.transpose(1, 0, 2)))  # columns scanned as contiguous rows
    H, W = a.shape[:2]
    gap_h, gap_w = max(1, round(BORDER_GAP * H)), max(1, round(BORDER_GAP * W))
    box = [0, H, 0, W]  # top, bottom, left, right
    colours: list[tuple[np.ndarray, float]] = []
    for _ in range(_BORDER_ROUNDS):
        before = list(box)
        for axis in (0, 1):  # rows to a standstill, then columns: a band never runs through the other frame
            for _ in range(_BORDER_ROUNDS):
                moved = False
                for far in (False, True):
                    t, b, l, r = box
                    v = by_axis[0][t:b, l:r] if axis == 0 else by_axis[1][l:r, t:b]
                    d, colour, uniform = _band(v[::-1] if far else v, gap_h if axis == 0 else gap_w, banned)
                    if d == 0 or d > BORDER_MAX_BAND * len(v) or len(v) - d < 0.1 * (H if axis == 0 else W):
                        continue  # nothing to peel, or the band would eat the image: keep this side
                    box[2 * axis + far] += -d if far else d
                    colours.append((colour, uniform))
                    moved = True
                if not moved:
                    break
        if box == before:
            break
    return box, colours


def _near(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Which pixels [..., 3] are within BORDER_TOLERANCE of `colour` on every channel."""
    return (np.abs(pixels - colour) <= BORDER_TOLERANCE).all(axis=-1)


def _colour_bounds(colour: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """|x − colour| ≤ tolerance on integers x, as integer bounds (cheaper than float differences)."""
    return np.ceil(colour - BORDER_TOLERANCE).astype(dtype), np.floor(colour + BORDER_TOLERANCE).astype(dtype)


def _uniform_edge(line: np.ndarray, low: np.ndarray | None = None, high: np.ndarray | None = None) -> bool:
    """Whether a line [length, 3] is near-uniform enough to start a band (at its median colour unless the
    bounds are given)."""
    if low is None:
        low, high = _colour_bounds(np.median(line, axis=0), line.dtype)
    near = (line >= low) & (line <= high)
    return bool((near[:, 0] & near[:, 1] & near[:, 2]).mean() >= BORDER_EDGE_UNIFORM)


def _edge_lines(img: Image.Image, size: tuple[int, int]) -> list[np.ndarray]:
    """The top, bottom, left and right lines [length, 3] (int16) of the RGB ``img.resize(size, BILINEAR)``,
    bit for bit, from the few source lines each depends on (0.5–0.7 ms against 2.8–3.9 ms for the whole copy
    of a 1024-px photo). Pillow resamples one axis, rounds to 8 bits, then the other (:func:`resample_coeffs`,
    `_pil_vertical_first`). When Pillow starts along the line, that pass runs on a strip of the source with
    Pillow itself and the pass across it here, in the same fixed-point arithmetic; when it starts across the
    line, both run here. Each output pixel depends only on its own coefficients and the first pass's
    outputs it reads."""
    w, h = img.size
    coeffs = [resample_coeffs(n, m, "bilinear") if m != n else None for n, m in ((h, size[1]), (w, size[0]))]
    along_first = {0: not _pil_vertical_first(img.size, size), 1: _pil_vertical_first(img.size, size)}
    lines = []
    for axis, out in ((0, 0), (0, size[1] - 1), (1, 0), (1, size[0] - 1)):  # axis 0: a row; 1: a column
        other = 1 - axis
        index, weights = _taps(coeffs[axis], np.array([out]), (h, w)[axis])
        lo, hi = int(index.min()), int(index.max()) + 1
        strip = img.crop((0, lo, w, hi) if axis == 0 else (lo, 0, hi, h))
        if along_first[axis] and coeffs[other] is not None:
            strip = strip.resize((size[0], hi - lo) if axis == 0 else (hi - lo, size[1]), Image.Resampling.BILINEAR)
            line = _fixed_point_pass(np.asarray(strip), axis, index - lo, weights)
        else:
            line = _fixed_point_pass(np.asarray(strip), axis, index - lo, weights)
            line = _fixed_point_pass(line, other, *_taps(coeffs[other], np.arange(size[axis]), (h, w)[other]))
        lines.append(line.reshape(-1, 3).astype(np.int16))
    return lines


def _taps(coeffs: tuple[np.ndarray, np.ndarray] | None, out: np.ndarray, n: int):
    """(source index [m, k], weights [m, k]) of the outputs `out` (weights None: the axis is not resampled,
    output i is source i)."""
    if coeffs is None:
        return out[:, None], None
    first, weights = coeffs
    return np.minimum(first[out][:, None] + np.arange(weights.shape[1]), n - 1), weights[out]  # past n: weight 0


def _fixed_point_pass(x: np.ndarray, axis: int, index: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """One of Pillow's 8-bit passes along `axis`: Σ pixel × weight from 2**21, shifted by 22, clipped."""
    if weights is None:
        return np.take(x, index[:, 0], axis=axis)
    taken = np.moveaxis(np.take(x, index, axis=axis), (axis, axis + 1), (0, 1))  # [m, k, rest…]
    # int64 (Pillow sums in int32; the same integers): weights × pixels < 2**31 per output either way
    acc = np.einsum("mk,mk...->m...", weights, taken.astype(np.int64)) + (1 << (PIL_PRECISION_BITS - 1))
    return np.moveaxis(np.clip(acc >> PIL_PRECISION_BITS, 0, 255).astype(np.uint8), 0, axis)


def _band(lines: np.ndarray, gap: int, banned: list[np.ndarray] = ()) -> tuple[int, np.ndarray | None, float]:
    """How many lines from index 0 of ``lines`` [n, length, 3] belong to the band of line 0's colour, that
    colour, and the mean share of the band's lines' pixels at it; no band for a colour near a `banned` one."""
    if len(lines) == 0:
        return 0, None, 0.0
    colour = np.median(lines[0], axis=0)  # per channel: an integer or a half
    if any(_near(colour, c) for c in banned):
        return 0, colour, 0.0
    low, high = _colour_bounds(colour, lines.dtype)
    if not _uniform_edge(lines[0], low, high):
        return 0, colour, 0.0  # most edges: line 0 is not one colour (decided before looking deeper)
    end = run = 0
    total = band_total = 0.0  # sums of the lines' shares at the colour: all looked at, up to `end`
    chunk = 16
    for start in range(0, len(lines), chunk):  # most bands are short: look only as deep as needed
        part = lines[start:start + chunk]
        near = (part >= low) & (part <= high)
        frac = (near[..., 0] & near[..., 1] & near[..., 2]).mean(axis=1)  # all 3 channels near the colour
        for i, f in enumerate(frac.tolist(), start):
            total += f
            if f >= BORDER_LINE_UNIFORM:
                end, run, band_total = i + 1, 0, total
            else:
                run += 1
                if run > gap:
                    return end, colour, band_total / end if end else 0.0
    return end, colour, band_total / end if end else 0.0
