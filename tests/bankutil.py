"""Seeded bank items with controlled embeddings, and seeded pictures, for tests that need no model."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fakebank.bank import NewItem

DIM = 16
MODEL_INFO = {
    "spec": "untrained:test_vit:0",
    "name": "untrained:test_vit",
    "revision": "0",
    "trained": False,
    "arch": "test_vit",
    "identity_hash": "a" * 64,
    "identity": {"arch": "test_vit"},
}


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def make_item(seed: int, *, label: str = "fake", cls: np.ndarray | None = None, pdq: bytes | None = None,
              campaign: str | None = None) -> NewItem:
    rng = np.random.default_rng(seed)
    cls = unit(rng.normal(size=DIM)) if cls is None else unit(cls)
    return NewItem(
        sha256=hashlib.sha256(f"item-{seed}".encode()).hexdigest(),
        path=f"/data/item-{seed}.jpg",
        label=label,
        p_fake=float(rng.uniform()),
        logit=float(rng.normal()),
        pdq=pdq if pdq is not None else rng.integers(0, 256, 32, dtype=np.uint8).tobytes(),
        pdq_quality=100,
        cls=cls,
        patch=unit(rng.normal(size=DIM)),
        width=640,
        height=480,
        campaign=campaign,
    )


def meme_picture(seed: int, size: int = 512) -> Image.Image:
    """A smooth diagonal gradient (no border to trim) with a few ellipses and a fixed line of meme text."""
    y, x = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.2, 0.5, 2)
    base = np.stack([(x * a + y * b) % 256, (x * b + y * a + 80) % 256, (x + y) * 0.2 + 40 * seed], -1)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.integers(0, size - 120, 2)
        draw.ellipse((x0, y0, x0 + 100, y0 + 60), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw.text((10, size // 2 - 20), "they don't want you to see", fill="white",
              font=ImageFont.load_default(size=40), stroke_width=3, stroke_fill="black")
    return img
