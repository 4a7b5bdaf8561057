"""Thumbnails: a decoded RGB image → a small WebP (longest side 256) kept in the bank beside each item.

Sits beside preprocess at the image stage (Pillow only; never imports torch, the bank or the model). The
bank stores what this makes at `add` time, so the web UI and the campaign report can show an item after
its original file moved or when it was uploaded over HTTP.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image

from fakebank.errors import FakebankError, InputError
from fakebank.preprocess import load_rgb

THUMB_MAX_SIDE = 256  # px, longest side: a card in the UI, a cell of the campaign report
# WebP quality 60, method 2 (measured on tests/data and ../shared/data/pdq, one core of the project's EPYC):
# 2–7 KB for 1024-px and 1600×1004 photos, ≈ 5 ms each (resize ≈ 3 ms, encode ≈ 2 ms). Method 4 (Pillow's
# default) saved 3 % of bytes for 2.4× the encode time; method 6, 7 % for 6×.
THUMB_QUALITY = 60
THUMB_METHOD = 2
THUMB_MIME = "image/webp"


def make_thumbnail(img: Image.Image, max_side: int = THUMB_MAX_SIDE) -> bytes:
    """WebP bytes of `img` scaled so that its longest side is at most `max_side` (never enlarged)."""
    w, h = img.size
    scale = min(1.0, max_side / max(w, h, 1))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # reducing_gap: a box-filter pre-shrink before the bilinear pass (≈ 3× faster on big photos, same look)
    small = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0) if size != img.size else img
    if small.mode != "RGB":
        small = small.convert("RGB")
    buf = io.BytesIO()
    small.save(buf, format="WEBP", quality=THUMB_QUALITY, method=THUMB_METHOD)
    return buf.getvalue()


def thumbnail_of_file(path: str | None, sha256: str | None = None) -> bytes:
    """The thumbnail of an item's original file, when it is still there and unchanged (same sha256).

    Raises InputError saying why not: a different image at the same path must never stand for the item."""

    if not path:
        raise InputError("the item has no stored path; it was added without a file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e}); the original moved or was uploaded") from e
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(f"{path}: the file changed since it was added (sha256 differs); not the item's image")
    return make_thumbnail(load_rgb(data, name=path))


def stored_or_fresh(bank, item_id: int) -> bytes | None:
    """The item's stored thumbnail, else one made now from its original file while that is still there
    unchanged (not stored: `fakebank thumbnails` stores them); None when neither exists."""
    thumb = bank.thumbnail(item_id)
    if thumb is not None:
        return thumb
    try:
        return thumbnail_of_file(bank.value(item_id, "path"), bank.value(item_id, "sha256"))
    except FakebankError:  # gone, changed, or no longer decodable
        return None
