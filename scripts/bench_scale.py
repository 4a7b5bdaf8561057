"""The bank at scale: build synthetic banks of growing size and time what users run on them.

For each size (default 10k, 100k, 1M items) it builds a bank through the public writer (random PDQ hashes
with 1 in 5 de-bordered and 128 ORB-like descriptors an item drawn from the bundled photos' own with a
quarter of their bits flipped, as bench_dedup's `_synthetic`; unit embeddings with a decaying spectrum
instead of its isotropic ones, see `embeddings`), then prints

- build time and disk bytes per item;
- each as a fresh process, as a user runs it: `info`, `query` of one photo (model load apart from the
  rest), `label` and `remove` of one item (and whether torch was imported), `add` of 8 photos; wall time
  and peak RSS of each;
- warm matching latency p50/p95 of one query against the open bank (all near-duplicate signals + the kNN
  neighbours, what the service does per request after the model);
- recall@10 of the cls search against exact search, and PDQ ≤ 31 recall against brute force;
- the resident bytes per item of each signal's shards, and a projection to 10M items from the growth
  between the two largest sizes.

    python scripts/bench_scale.py [--sizes 10000,100000,1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
WEIGHTS = "untrained:vit_small_patch16_384:0"
PHOTOS = sorted((DATA / "commfor").glob("*.png")) + sorted((DATA / "pdq" / "reg-test-input" / "dih").glob("*.jpg"))
TEN_M = 10_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--commit-rows", type=int, default=100_000, help="items per writer commit while building")
    ap.add_argument("--queries", type=int, default=200, help="queries for the recall figures")
    ap.add_argument("--keep", type=Path, help="build the banks under this folder and keep them")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_scale.json")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    flags = _cpu_flags()
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"avx512_bf16={'avx512_bf16' in flags}, avx2={'avx2' in flags}")
    from fakebank.api import Fakebank

    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_scale-"))
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_scale_img-"))
    probe_fb = Fakebank(base / "probe-unused", weights=WEIGHTS)
    model_info = probe_fb.model_info
    dim = probe_fb.extractor.model.embed_dim
    from fakebank.embed import Embedding

    embs = [e for e in probe_fb.extractor.extract([str(p) for p in PHOTOS]) if isinstance(e, Embedding)]
    pool = np.concatenate([e.signals.local.desc for e in embs if len(e.signals.local)])
    print(f"model {WEIGHTS} (dim {dim}); {len(embs)} probe photos; descriptor pool {len(pool):,}")
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        path = base / f"bank-{n}"
        shutil.rmtree(path, ignore_errors=True)
        row = {"items": n}
        t = time.perf_counter()
        build(path, n, model_info, dim, pool, args.commit_rows)
        row["build_s"] = round(time.perf_counter() - t, 1)
        row["disk_bytes_per_item"] = round(_du(path) / n)
        print(f"\n== {n:,} items: built in {row['build_s']} s, {row['disk_bytes_per_item']} B/item on disk",
              file=sys.stderr, flush=True)
        row.update(fresh_processes(path, n, work))
        row.update(warm(path, embs))
        row.update(resident(path, n))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.keep is None and n != int(args.sizes.split(",")[-1]):
            shutil.rmtree(path, ignore_errors=True)
    report(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_flags_bf16": "avx512_bf16" in flags, "rows": rows}, indent=2))
    print(f"\nfigures written to {args.out}")
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


# -- building ------------------------------------------------------------------------------------------------

def build(path: Path, n: int, model_info: dict, dim: int, pool: np.ndarray, commit_rows: int) -> None:
    from fakebank.bank import BankWriter, NewItem
    from fakebank.signals import LOCAL_BANK_FEATURES

    rng = np.random.default_rng(n)
    basis = embedding_basis(dim)
    with BankWriter(path, model_info=model_info, embedding_dim=dim) as w:
        for start in range(0, n, commit_rows):
            m = min(n, start + commit_rows) - start
            v = embeddings(rng, 2 * m, basis).reshape(m, 2, dim)
            pdq = rng.integers(0, 256, (m, 32), dtype=np.uint8)
            trim = rng.integers(0, 256, (m, 32), dtype=np.uint8)
            items = []
            for k in range(m):
                desc = pool[rng.integers(0, len(pool), LOCAL_BANK_FEATURES)]
                flips = rng.integers(0, 256, desc.shape, dtype=np.uint8) & rng.integers(0, 256, desc.shape, dtype=np.uint8)
                xy = rng.uniform(0, 640, (LOCAL_BANK_FEATURES, 2)).astype(np.float16)
                i = start + k
                items.append(NewItem(
                    sha256=f"{i:064x}", path=f"/synthetic/{i}.jpg", label="fake" if i % 4 else "real",
                    p_fake=0.5, logit=0.0, pdq=pdq[k].tobytes(), pdq_quality=100, cls=v[k, 0], patch=v[k, 1],
                    width=640, height=480,
                    pdq_trim=trim[k].tobytes() if i % 5 == 0 else None, pdq_trim_quality=100 if i % 5 == 0 else None,
                    local=(desc ^ flips).tobytes() + xy.tobytes()))
            w.add(items)
            print(f"  {start + m:,} / {n:,}", file=sys.stderr, flush=True)


def embedding_basis(dim: int) -> np.ndarray:
    return np.random.default_rng(99).normal(size=(dim, dim)).astype(np.float32)


def embeddings(rng: np.random.Generator, n: int, basis: np.ndarray) -> np.ndarray:
    """Unit vectors with a decaying spectrum (the tests' `_clustered`), like a ViT's embeddings: isotropic
    noise, bench_dedup's `_synthetic` embeddings, has no true nearest neighbours (in 384 dimensions the
    10th and the 1000th neighbour of a random query are equally far), so no approximate index can be
    judged on it; its recall is printed too."""
    dim = len(basis)
    x = (rng.normal(size=(n, dim)).astype(np.float32) / np.arange(1, dim + 1, dtype=np.float32) ** 0.5) @ basis
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- fresh processes -------------------------------------------------------------------------------------------

def fresh_processes(path: Path, n: int, work: Path) -> dict:
    photos = []
    for k, src in enumerate(PHOTOS[:8]):
        im = Image.open(src).convert("RGB")
        im = im.resize((1024, round(1024 * im.height / im.width)))
        out = work / f"add-{n}-{k}.jpg"
        im.save(out, quality=90, comment=f"bench_scale {n} {k}".encode())
        photos.append(str(out))
    query = str(PHOTOS[0])
    out = {}
    for name, argv in [
        ("info", ["info", str(path)]),
        ("query_cold", ["query", str(path), query]),  # the first after the build: pages partly on disk
        ("query", ["query", str(path), query]),  # a fresh process with the bank in the page cache
        ("label", ["label", str(path), str(n // 2)]),
        ("remove", ["remove", str(path), str(n // 3)]),
        ("add8", ["add", str(path), *photos]),
    ]:
        rec = _run_child(argv)
        out[name] = rec
        print(f"  {name:7s} wall {rec['wall_s']:.2f} s, peak RSS {rec['rss_mb']:.0f} MB  {rec.get('detail', '')}",
              file=sys.stderr, flush=True)
    return out


def _run_child(argv: list[str]) -> dict:
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *argv], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    detail = json.loads(proc.stdout.read() or "{}")
    proc.stdout.close()
    if status != 0:
        raise SystemExit(f"child {argv} failed with status {status}")
    # ru_maxrss of a child starts at its parent's size at fork: the child reports its own high-water mark
    return {"wall_s": round(wall, 3), "rss_mb": detail.pop("peak_rss_mb"), "detail": detail}


def child(mode: str, bank: str, *rest: str) -> None:
    """One user command in this fresh process; prints its own split of the time as JSON."""
    t0 = time.perf_counter()
    from fakebank.api import Fakebank

    fb = Fakebank(bank, weights=WEIGHTS)
    detail: dict = {}
    if mode == "info":
        detail["items"] = fb.info()["items"]
    elif mode == "query":
        fb.extractor  # the model load, apart
        t1 = time.perf_counter()
        [rec] = list(fb.query(rest))
        detail = {"import_and_model_s": round(t1 - t0, 3), "query_s": round(time.perf_counter() - t1, 3),
                  "verdict": rec["verdict"], "neighbors": len(rec["neighbors"])}
    elif mode == "label":
        fb.label([int(rest[0])], "unknown")
        detail["torch_imported"] = "torch" in sys.modules
    elif mode == "remove":
        fb.remove([int(rest[0])])
        detail["torch_imported"] = "torch" in sys.modules
    elif mode == "add":
        fb.extractor
        t1 = time.perf_counter()
        recs = list(fb.add(rest))
        detail = {"import_and_model_s": round(t1 - t0, 3), "add_s": round(time.perf_counter() - t1, 3),
                  "added": sum(r["status"] == "added" for r in recs)}
    detail["process_s"] = round(time.perf_counter() - t0, 3)
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    detail["peak_rss_mb"] = round(hwm / 1024, 1)
    print(json.dumps(detail))


# -- warm matching and recall ----------------------------------------------------------------------------------

def warm(path: Path, embs: list) -> dict:
    from fakebank.api import Fakebank
    from fakebank.bank import Bank
    from fakebank.decide import FusionParams
    from fakebank.index import exact_search

    fb = Fakebank(path, weights=WEIGHTS)
    t = time.perf_counter()
    bank = Bank.open(path)
    open_ms = 1000 * (time.perf_counter() - t)
    params = FusionParams.from_dict(bank.manifest.get("fusion"))
    for e in embs:  # warm the mapped pages once, as a running service has
        fb.neighbors(bank, e, 10, params)
    lat = []
    for _ in range(5):
        for e in embs:
            t = time.perf_counter()
            fb.neighbors(bank, e, 10, params)
            lat.append(1000 * (time.perf_counter() - t))
    rng = np.random.default_rng(7)
    vectors, ids = bank.vectors["cls"], bank.ids
    q = embeddings(rng, 200, embedding_basis(bank.dim))
    _, got = bank.search("cls", q, 10)
    _, want = exact_search(vectors, ids, q, 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]))
    iso = rng.normal(size=(200, bank.dim)).astype(np.float32)
    iso /= np.linalg.norm(iso, axis=1, keepdims=True)
    _, got_i = bank.search("cls", iso, 10)
    _, want_i = exact_search(vectors, ids, iso, 10)
    recall_iso = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_i, want_i)]))
    # near-duplicate queries: a bank item's cls plus noise (the case a copy detector is for)
    picks = rng.choice(len(ids), 200, replace=False)
    qn = vectors[picks] + rng.normal(scale=0.02, size=(200, bank.dim)).astype(np.float32)
    qn /= np.linalg.norm(qn, axis=1, keepdims=True)
    _, got_n = bank.search("cls", qn, 10)
    _, want_n = exact_search(vectors, ids, qn, 10)
    recall_top1 = float(np.mean(got_n[:, 0] == ids[picks]))
    del vectors
    codes = bank.pdq_codes
    picks = rng.choice(len(codes), 100, replace=False)
    queries = codes[picks].copy()
    for j, flip in enumerate(rng.integers(0, 32, len(picks))):
        bits = np.unpackbits(queries[j])
        bits[rng.choice(256, flip, replace=False)] ^= 1
        queries[j] = np.packbits(bits)
    got_p = bank.pdq_within(queries, 31)
    words, qwords = codes.view(np.uint64), queries.view(np.uint64)
    found = total = 0
    for j in range(len(queries)):
        d = np.bitwise_count(words ^ qwords[j]).sum(axis=1)
        want_p = set(ids[d <= 31].tolist())
        found += len(want_p & {i for i, _ in got_p[j]})
        total += len(want_p)
    out = {"open_ms": round(open_ms, 2), "warm_match_p50_ms": round(float(np.percentile(lat, 50)), 2),
           "warm_match_p95_ms": round(float(np.percentile(lat, 95)), 2), "cls_recall_at_10": round(recall, 4),
           "cls_recall_at_10_isotropic": round(recall_iso, 4),
           "cls_top1_near_copy": round(recall_top1, 4), "pdq_recall": round(found / total, 4) if total else None}
    print(f"  warm matching p50 {out['warm_match_p50_ms']} ms, p95 {out['warm_match_p95_ms']} ms; cls recall@10 "
          f"{recall:.4f} (isotropic queries on this anisotropic bank: {recall_iso:.4f}), top-1 of noisy copies {recall_top1:.4f}; PDQ ≤ 31 recall "
          f"{out['pdq_recall']} ({total} pairs)", file=sys.stderr, flush=True)
    return out


def resident(path: Path, n: int) -> dict:
    """Bytes per item of each signal's shard files (what a query keeps mapped), and of the segments."""
    m = json.loads((path / "manifest.json").read_text())
    per = {}
    for seg in m["segments"]:
        for kind, name in seg.get("shards", {}).items():
            per[kind] = per.get(kind, 0) + (path / name).stat().st_size
        per["segment_files"] = per.get("segment_files", 0) + (path / seg["file"]).stat().st_size
    return {"shard_bytes_per_item": {k: round(v / n) for k, v in per.items()}, "segments": len(m["segments"])}


# -- report ------------------------------------------------------------------------------------------------------

def report(rows: list[dict]) -> None:
    cols = [("items", lambda r: f"{r['items']:,}"), ("build s", lambda r: r["build_s"]),
            ("disk B/item", lambda r: r["disk_bytes_per_item"]), ("segments", lambda r: r["segments"]),
            ("info s", lambda r: r["info"]["wall_s"]),
            ("query s (model / rest)", lambda r: f"{r['query']['wall_s']} ({r['query']['detail']['import_and_model_s']}"
                                                 f" / {r['query']['detail']['query_s']})"),
            ("first query s", lambda r: r["query_cold"]["detail"]["query_s"]),
            ("query RSS MB", lambda r: r["query"]["rss_mb"]),
            ("label s", lambda r: r["label"]["wall_s"]), ("remove s", lambda r: r["remove"]["wall_s"]),
            ("label RSS MB", lambda r: r["label"]["rss_mb"]),
            ("add 8 s", lambda r: r["add8"]["wall_s"]), ("add RSS MB", lambda r: r["add8"]["rss_mb"]),
            ("warm p50/p95 ms", lambda r: f"{r['warm_match_p50_ms']}/{r['warm_match_p95_ms']}"),
            ("cls R@10", lambda r: r["cls_recall_at_10"]), ("pdq recall", lambda r: r["pdq_recall"])]
    print("\n| " + " | ".join(c for c, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(f(r)) for _, f in cols) + " |")
    torch = any(r[k]["detail"].get("torch_imported") for r in rows for k in ("label", "remove"))
    print(f"\nlabel/remove imported torch: {torch}")
    for r in rows:
        print(f"resident shard bytes/item at {r['items']:,}: {r['shard_bytes_per_item']}")
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        scale = (TEN_M - b["items"]) / (b["items"] - a["items"])

        def project(f):
            return f(b) + (f(b) - f(a)) * scale

        shard = {k: v for k, v in b["shard_bytes_per_item"].items() if k != "segment_files"}
        print(f"\nprojection to 10M items (linear from {a['items']:,} → {b['items']:,}):")
        print(f"  build ≈ {project(lambda r: r['build_s']) / 60:.0f} min; disk ≈ "
              f"{b['disk_bytes_per_item'] * TEN_M / 1e9:.0f} GB")
        print(f"  query process peak RSS ≈ {project(lambda r: r['query']['rss_mb']) / 1024:.1f} GB; "
              f"query (model excluded) ≈ {project(lambda r: r['query']['detail']['query_s']):.2f} s")
        print(f"  label ≈ {project(lambda r: r['label']['wall_s']):.2f} s; warm match p50 ≈ "
              f"{project(lambda r: r['warm_match_p50_ms']):.0f} ms")
        print("  signals resident at 10M: " + ", ".join(f"{k} {v * TEN_M / 1e9:.1f} GB" for k, v in shard.items())
              + f" = {sum(shard.values()) * TEN_M / 1e9:.1f} GB of 24 GB")
        small = rows[0]
        print(f"\ntargets at {b['items']:,} vs {small['items']:,}: query +"
              f"{b['query']['detail']['query_s'] - small['query']['detail']['query_s']:.2f} s (≤ 1.5), label +"
              f"{b['label']['wall_s'] - small['label']['wall_s']:.2f} s (≤ 1), remove +"
              f"{b['remove']['wall_s'] - small['remove']['wall_s']:.2f} s (≤ 1), add8 ×"
              f"{b['add8']['wall_s'] / small['add8']['wall_s']:.2f} (≤ 1.3), query RSS {b['query']['rss_mb']:.0f} MB "
              f"(≤ 3072), warm p50 {b['warm_match_p50_ms']} ms (≤ 20), cls R@10 {b['cls_recall_at_10']} (≥ 0.95)")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
