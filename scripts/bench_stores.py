"""Stores benchmark: the same synthetic bank in the bank folder and in Milvus Lite (or a Milvus server).

Prints, per store: insert rate (items/s through the store's writer, all signals: 128 ORB descriptors an
item, 1 in 5 with a de-bordered hash), cls top-10 search, PDQ range search ≤ 31, and the whole near-duplicate
look-up (dedup.find with every signal) per query; and whether both stores return the same matches for
probes made from stored items with a few PDQ bits flipped.

    pip install -e '.[milvus]'
    python scripts/bench_stores.py [--items 2000] [--probes 100] [--milvus milvus-lite | milvus://HOST:19530/NAME]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fakebank.bank import NewItem
from fakebank.dedup import DedupParams, Probe, find
from fakebank.grid import GRID_CELLS, GRID_WIDTH, PatchGrid
from fakebank.pdq import PdqHash
from fakebank.signals import LOCAL_BANK_FEATURES
from fakebank.store import open_store

DIM = 384
MODEL = {"spec": "synthetic", "name": "synthetic", "revision": "0", "trained": False, "arch": "synthetic",
         "identity_hash": "s" * 64, "identity": {}}


def items(n: int, seed: int = 0) -> list[NewItem]:
    """Random unit embeddings and patch grids, random PDQ hashes (quality 100), 1 in 5 with a de-bordered
    hash, and 128 ORB-like descriptors drawn around 64 shared centres (so the descriptor index sees clusters)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, (64, 32), dtype=np.uint8)
    out = []
    for k in range(n):
        v = rng.normal(size=(2, DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        flips = np.packbits(rng.random((LOCAL_BANK_FEATURES, 256)) < 0.2, axis=1)
        desc = centres[rng.integers(0, 64, LOCAL_BANK_FEATURES)] ^ flips
        xy = rng.uniform(0, 640, (LOCAL_BANK_FEATURES, 2)).astype(np.float16)
        trim = k % 5 == 0
        out.append(NewItem(
            sha256=f"{k:064x}", path=f"/synthetic/{k}.jpg", label="fake", p_fake=0.5, logit=0.0,
            pdq=rng.integers(0, 256, 32, dtype=np.uint8).tobytes(), pdq_quality=100, cls=v[0], patch=v[1],
            width=640, height=480, pdq_trim=rng.integers(0, 256, 32, dtype=np.uint8).tobytes() if trim else None,
            pdq_trim_quality=100 if trim else None, local=desc.tobytes() + xy.tobytes(),
            patch_grid=PatchGrid.quantise(rng.normal(size=(GRID_CELLS, GRID_CELLS, GRID_WIDTH))).to_bytes()))
    return out


def probe_near(bank, item_id: int, rng) -> Probe:
    """A stored item's own signals with 12 of its PDQ bits flipped and a noisy embedding."""
    p = Probe.of_item(bank, item_id)
    code = np.unpackbits(np.frombuffer(p.pdq.hash, np.uint8))
    code[rng.choice(256, 12, replace=False)] ^= 1
    h = np.packbits(code).tobytes()
    cls = p.cls + 0.05 * rng.normal(size=DIM).astype(np.float32)
    # the item's own grid kept: the embedding signal is judged as for a real query
    return replace(p, cls=cls / np.linalg.norm(cls), pdq=PdqHash(h, 100, (h,) * 8), pdq_trim=None, exclude=None)


def run(spec: str, work: Path, data: list[NewItem], n_probes: int) -> tuple[dict, list]:
    store = open_store(spec, work / "bank")
    t = time.perf_counter()
    with store.writer(model_info=MODEL, embedding_dim=DIM) as w:
        for start in range(0, len(data), 1000):
            w.add(data[start:start + 1000])
    insert_s = time.perf_counter() - t
    bank = store.open()
    rng = np.random.default_rng(1)
    ids = rng.choice(bank.ids, n_probes, replace=False).tolist()
    probes = [probe_near(bank, i, np.random.default_rng(i)) for i in ids]
    out = {"insert items/s": len(data) / insert_s}
    t = time.perf_counter()
    for p in probes:
        bank.search("cls", p.cls[None, :], 10)
    out["cls top-10 ms"] = 1000 * (time.perf_counter() - t) / n_probes
    t = time.perf_counter()
    for p in probes:
        bank.pdq_within(np.frombuffer(p.pdq.hash, np.uint8)[None, :], 31)
    out["PDQ ≤ 31 ms"] = 1000 * (time.perf_counter() - t) / n_probes
    params = DedupParams()
    t = time.perf_counter()
    found = [sorted((m.id, m.signal) for m in find(bank, p, params)) for p in probes]
    out["dedup.find ms"] = 1000 * (time.perf_counter() - t) / n_probes
    out["recall"] = sum(i in {m for m, _ in f} for i, f in zip(ids, found)) / n_probes
    return out, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--milvus", default="milvus-lite", help="milvus-lite (a file in a temp folder) or a store spec")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_stores-"))
    data = items(args.items)
    spec = f"milvus-lite:{work / 'milvus.db'}" if args.milvus == "milvus-lite" else args.milvus
    results = {}
    for name, s in (("folder", "folder"), (args.milvus, spec)):
        results[name] = run(s, work, data, args.probes)
        print(f"{name:14} " + "  ".join(f"{k} {v:,.2f}" for k, v in results[name][0].items()), flush=True)
    (_, a), (_, b) = results.values()
    print(f"identical matches on {sum(x == y for x, y in zip(a, b))}/{len(a)} probes; "
          f"{args.items:,} items, {args.items * LOCAL_BANK_FEATURES:,} descriptors")


if __name__ == "__main__":
    main()
