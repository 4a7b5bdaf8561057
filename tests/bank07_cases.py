"""The images of tests/data/bank-07dcf39: what was added and what was asked, made from tests/data's photos
(deterministic: the same bytes wherever Pillow is the pinned version)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

DATA = Path(__file__).parent / "data"


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _bars(img: Image.Image, colour, pad: int) -> Image.Image:
    """Letterboxed, and larger than the 768-px PDQ view: where the content box found on the view moved."""
    canvas = Image.new("RGB", (img.width, img.height + 2 * pad), colour)
    canvas.paste(img, (0, pad))
    return canvas


def _photos():
    commfor = [Image.open(p).convert("RGB") for p in sorted((DATA / "commfor").glob("*.png"))[:3]]
    bridge = Image.open(DATA / "pdq/reg-test-input/dih/bridge-1-original.jpg").convert("RGB")  # 1600×1004
    return commfor, bridge


def originals() -> dict[str, bytes]:
    """Name → bytes of the five images the bank holds, in the order they were added."""
    commfor, bridge = _photos()
    out = {f"c{k}.jpg": _jpeg(c, 92) for k, c in enumerate(commfor)}
    out["bridge-letterbox.jpg"] = _jpeg(_bars(bridge, (0, 0, 0), 240), 92)
    out["bridge.jpg"] = _jpeg(bridge, 92)
    return out


def queries() -> dict[str, bytes]:
    """Name → bytes of the edited copies (and one unrelated photo) asked of the bank."""
    commfor, bridge = _photos()
    unrelated = Image.open(sorted((DATA / "pdq/reg-test-input/labelme-subset").glob("*.jpg"))[-1]).convert("RGB")
    return {
        "c0-small.jpg": _jpeg(commfor[0].resize((600, 600)), 60),
        "c1-mirror.jpg": _jpeg(commfor[1].transpose(Image.Transpose.FLIP_LEFT_RIGHT), 85),
        "c2-crop.jpg": _jpeg(commfor[2].crop((80, 80, 944, 944)), 85),
        "bridge-white-bars.jpg": _jpeg(_bars(bridge, (255, 255, 255), 200), 80),
        "bridge-small-letterbox.jpg": _jpeg(_bars(bridge.resize((1200, 753)), (0, 0, 0), 180), 80),
        "bridge-rot90.jpg": _jpeg(bridge.rotate(90, expand=True), 85),
        "unrelated.jpg": _jpeg(unrelated, 85),
    }


def write(folder: Path, images: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in images.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths
