"""Thumbnails: a decoded RGB image → a small JPEG (longest side 256) kept in the bank beside each item.

Sits beside preprocess at the image stage (Pillow only; never imports torch, the bank or the model). The
bank stores what this makes at `add` time, so the web UI and the campaign report can show an item after
its original file moved or when it was uploaded over HTTP.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image

from fakebank.errors import FakebankError, InputError
from fakebank.preprocess import image_mime, load_rgb

THUMB_MAX_SIDE = 256  # px, longest side: a card in the UI, a cell of the campaign report
# JPEG quality 60 from the 512-px PDQ view of a 1024-px JPEG (scripts/bench_extract.py's images, one core
# of the project's EPYC): encode 0.17 ms, 6.9 KB on average. WebP (what banks made before 2026-12-02 hold,
# still served as such) took 1.5 ms at quality 60 and its fastest method 1 for 6.3 KB: a tenth of `add`'s
# CPU work around the model, for 9 % fewer bytes. Shrunk by an integer box average first (`reducing_gap`:
# 0.2 ms instead of 0.7 for the usual exact 2× of a 1024-px photo's view).
THUMB_QUALITY = 60
THUMB_FORMAT = "JPEG"


def make_thumbnail(img: Image.Image, max_side: int = THUMB_MAX_SIDE) -> bytes:
    """JPEG bytes of `img` scaled so that its longest side is at most `max_side` (never enlarged)."""
    w, h = img.size
    scale = min(1.0, max_side / max(w, h, 1))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = img.resize(size, Image.Resampling.BOX, reducing_gap=1.0) if size != img.size else img
    if small.mode != "RGB":
        small = small.convert("RGB")
    buf = io.BytesIO()
    small.save(buf, format=THUMB_FORMAT, quality=THUMB_QUALITY)
    return buf.getvalue()


def thumbnail_mime(data: bytes) -> str:
    """The media type of stored thumbnail bytes: JPEG, or WebP in banks made before thumbnails were JPEG."""
    return image_mime(data) or "application/octet-stream"


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
