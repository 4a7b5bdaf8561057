"""Seeded bank items with controlled embeddings, for tests that need no model."""

from __future__ import annotations

import hashlib

import numpy as np

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
