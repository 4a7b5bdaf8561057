"""Seeded bank items with controlled embeddings, and seeded pictures, for tests that need no model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fakebank.bank import NewItem
from fakebank.signals import LOCAL_SIDE, LocalFeatures

FORMAT_1_FIXTURE = Path(__file__).parent / "data" / "bank-v1"
FORMAT_2_FIXTURE = Path(__file__).parent / "data" / "bank-v2"

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


def some_detail(rng: np.random.Generator, n: int = 16) -> LocalFeatures:
    """Stored ORB keypoints of a picture with some detail (dedup.EMBEDDING_MIN_KEYPOINTS ≤ n) but too little
    for ORB to judge a pair (n < dedup.EMBEDDING_MAX_KEYPOINTS); random descriptors, which match nothing."""
    return LocalFeatures(xy=rng.uniform(0, LOCAL_SIDE, (n, 2)).astype(np.float32),
                         desc=rng.integers(0, 256, (n, 32), dtype=np.uint8))


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


def format_1_bank(dst: Path) -> Path:
    """A copy of tests/data/bank-v1, the bank format 1's code wrote (its Parquet segment, manifest and the
    answers that code gave), completed with the whole-bank FAISS files its manifest names. Those are
    rebuilt here from the segment, as format 1 built them (IDMap2 over exact indexes, keyed by item id),
    instead of being kept in git: today's code never reads them, it only sweeps them after migrating."""
    import faiss
    import numpy as np
    import pyarrow.parquet as pq

    from fakebank.bank import LOCAL_ID_BITS, local_rows

    shutil.copytree(FORMAT_1_FIXTURE, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    table = pq.read_table(dst / manifest["segments"][0]["file"])
    ids = table.column("id").to_numpy()
    for kind, entry in manifest["indexes"].items():
        if kind in ("cls", "patch"):
            vectors = np.stack(table.column(kind).to_numpy(zero_copy_only=False)).astype(np.float32)
            index = faiss.index_factory(vectors.shape[1], "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
            index.add_with_ids(vectors, ids)
            faiss.write_index(index, str(dst / entry["file"]))
            continue
        if kind == "local":
            codes, rows = local_rows(table.column("local").combine_chunks())
            keys = ids[rows >> LOCAL_ID_BITS] << LOCAL_ID_BITS | (rows & ((1 << LOCAL_ID_BITS) - 1))
        else:
            col = table.column(kind).to_pylist()
            keep = [i for i, c in enumerate(col) if c is not None]
            codes = np.frombuffer(b"".join(col[i] for i in keep), np.uint8).reshape(-1, 32)
            keys = ids[keep]
        index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(256))
        index.add_with_ids(np.ascontiguousarray(codes), keys.astype(np.int64))
        faiss.write_index_binary(index, str(dst / entry["file"]))
    return dst


def format_2_bank(dst: Path) -> Path:
    """A copy of tests/data/bank-v2: a bank written by the code at 13f1544 (format 2 before the columns
    tags, external_id, thumbnail and patch_grid existed; two deltas: a relabel and a removal),
    its edited query images and what that code answered to `query` and `dupes`. What the segments' files
    derive from their rows (the sha256 look-up table, the index shards) is rebuilt by today's builders
    instead of being kept in git."""
    import pyarrow as pa

    from fakebank import index as faiss_index
    from fakebank.bank import MIH_KINDS, Segment, build_shard, sha_keys

    shutil.copytree(FORMAT_2_FIXTURE, dst)
    bank = dst / "bank"
    manifest = json.loads((bank / "manifest.json").read_text())
    for entry in manifest["segments"]:
        rows = pa.ipc.open_file(pa.memory_map(str(bank / entry["file"]))).read_all()
        np.save(bank / entry["sha"], sha_keys(rows.column("sha256").to_pylist()))
        seg = Segment(bank, entry, int(manifest["embedding_dim"]))
        for kind, name in entry["shards"].items():
            shard = build_shard(seg, kind)
            if kind in MIH_KINDS:
                np.save(bank / name, shard)
            else:
                faiss_index.save(shard, bank / name)
    return dst
