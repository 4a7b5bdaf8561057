"""Campaign clustering benchmark: quality on edited real photos, id stability, and cost at 100k items.

1. **Quality** — builds synthetic campaigns from the real photos in tests/data: each campaign is many
   edited variants (re-encodes, resizes, crops, mirrors, rotations, colour changes, captions, watermarks,
   letterboxes, screenshot frames, noise …) of one original or of a few overlapping framings of it, posted
   from several sources; plus unrelated singletons (the photos no campaign uses, and seeded synthetic
   scenes). Adds 5/6 of them to a fresh bank, runs campaigns, adds the last sixth (+20%), runs again, and
   prints B-cubed precision/recall/F1 and ARI against the truth, and the share of the first run's campaign
   members that kept their campaign id.
2. **Scale** — the same pipeline on N synthetic embeddings (default 100k: campaigns of power-law sizes, one
   giant near-duplicate group, the rest singletons) written straight into a bank: time and peak memory of
   clustering, quality, and id stability after +20%.

    python scripts/bench_campaigns.py [--weights untrained:vit_small_patch16_384:0] [--scale 100000]
                                      [--skip-images] [--skip-scale] [--compare]

`--compare` also prints the quality of the alternative clusterings that were measured against the default.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from fakebank.grid import GRID_CELLS, GRID_WIDTH, PatchGrid

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SOURCES = ("telegram", "x.com", "facebook", "tiktok", "vk", "forum")

# Originals of the campaigns: (photo, number of framings). Two framings = two overlapping crops of the photo.
CAMPAIGN_PHOTOS = [
    ("commfor/00000274.png", 1), ("commfor/00000420.png", 2), ("commfor/00000845.png", 1),
    ("commfor/00000916.png", 2), ("commfor/00000989.png", 1), ("pdq/reg-test-input/dih/bridge-1-original.jpg", 2),
    ("pdq/reg-test-input/labelme-subset/q0003.jpg", 1), ("pdq/reg-test-input/labelme-subset/q0004.jpg", 1),
    ("pdq/reg-test-input/labelme-subset/q0122.jpg", 1), ("pdq/reg-test-input/labelme-subset/q0291.jpg", 1),
]
CAMPAIGN_SIZES = [48, 36, 30, 24, 20, 16, 12, 10, 8, 6]
# Campaigns of flat photos (PDQ quality 3–4, few keypoints, smooth patch grids): nothing but close embeddings
# links their copies, the same evidence that links distinct look-alikes (scripts/bench_hard_negatives.py);
# scripts/bench_dedup.py leaves these photos out. F1 is also printed without them.
FLAT_CAMPAIGNS = {f"truth-{c}" for c, (photo, _) in enumerate(CAMPAIGN_PHOTOS) if Path(photo).stem in ("q0003", "q0004")}
SINGLETON_PHOTOS = [
    "pdq/reg-test-input/labelme-subset/q0746.jpg", "pdq/reg-test-input/labelme-subset/q1050.jpg",
    "pdq/reg-test-input/labelme-subset/q2821.jpg", "pdq/misc-images/small.jpg",
    "pdq/python-threatexchange-resources/rgb.jpeg",
]
N_SYNTHETIC_SINGLETONS = 55


# -- edits ------------------------------------------------------------------------------------------------

def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _caption(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    bar = max(24, h // 7)
    out = Image.new("RGB", (w, h + bar), "white")
    out.paste(img, (0, bar if rng.random() < 0.5 else 0))
    y = 0 if out.getpixel((w // 2, 1)) == (255, 255, 255) else h
    words = rng.sample(["BREAKING", "SHARE", "they don't want you to see", "REAL?", "wake up", "100%", "truth"], 2)
    ImageDraw.Draw(out).text((8, y + bar // 5), " ".join(words), fill="black", font=_font(int(bar * 0.55)))
    return out


def _watermark(img: Image.Image, rng: random.Random) -> Image.Image:
    img = img.convert("RGBA")
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    w, h = img.size
    ImageDraw.Draw(layer).text((rng.randint(0, w // 2), rng.randint(0, h * 3 // 4)), f"@user{rng.randint(1, 999)}",
                               fill=(255, 255, 255, 150), font=_font(max(12, w // 12)))
    return Image.alpha_composite(img, layer).convert("RGB")


def _letterbox(img: Image.Image, rng: random.Random, hard: bool) -> Image.Image:
    w, h = img.size
    side = int(max(w, h) * rng.uniform(1.05, 1.35 if hard else 1.2))
    colour = rng.choice([(0, 0, 0), (255, 255, 255), (30, 30, 30)])
    out = Image.new("RGB", (side, side) if rng.random() < 0.5 else (int(side * (16 / 9 if hard else 4 / 3)), side), colour)
    out.paste(img, ((out.width - w) // 2, (out.height - h) // 2))
    return out


def _screenshot(img: Image.Image, rng: random.Random, hard: bool) -> Image.Image:
    w, h = img.size
    top, side, bottom = max(20, h // 8), max(6, w // 30), max(30, h // 5)
    out = Image.new("RGB", (w + 2 * side, h + top + bottom), rng.choice([(245, 245, 245), (21, 32, 43)]))
    out.paste(img, (side, top))
    d = ImageDraw.Draw(out)
    d.text((side, top // 4), f"{rng.randint(9, 23)}:{rng.randint(10, 59)}", fill="grey", font=_font(max(10, top // 2)))
    d.text((side, top + h + bottom // 5), "♥ 1.2k  ↻ 356  reply", fill="grey", font=_font(max(10, bottom // 3)))
    return out


def _crop(img: Image.Image, rng: random.Random, hard: bool) -> Image.Image:
    w, h = img.size
    area = rng.uniform(0.6 if hard else 0.7, 0.95)
    aspect = rng.uniform(0.8, 1.25)
    cw, ch = min(w, int(w * (area * aspect) ** 0.5)), min(h, int(h * (area / aspect) ** 0.5))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


def _rotate_small(img: Image.Image, rng: random.Random, hard: bool) -> Image.Image:
    angle = rng.choice([-1, 1]) * rng.uniform(2, 10 if hard else 6)
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=rng.random() < 0.5)


def _noise(img: Image.Image, rng: random.Random, hard: bool = False) -> Image.Image:
    a = np.asarray(img, np.int16)
    n = np.random.default_rng(rng.randint(0, 2**31)).normal(0, rng.uniform(4, 14), a.shape)
    return Image.fromarray(np.clip(a + n, 0, 255).astype(np.uint8))


def _colour(img: Image.Image, rng: random.Random, hard: bool) -> Image.Image:
    lo, hi = (0.7, 1.3) if hard else (0.85, 1.15)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(lo, hi))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(lo, hi))
    return ImageEnhance.Color(img).enhance(rng.uniform(0.5, 1.5) if hard else rng.uniform(lo, hi))


def _resize(img: Image.Image, rng: random.Random, hard: bool) -> Image.Image:
    s = rng.uniform(0.35, 1.3)
    return img.resize((max(32, int(img.width * s)), max(32, int(img.height * s))), Image.Resampling.BICUBIC)


# What re-posters do to an image. Each takes (image, rng, hard): `hard` widens the ranges.
EDITS = {
    "resize": _resize,
    "crop": _crop,
    "mirror": lambda im, r, hard: ImageOps.mirror(im),
    "rotate_small": _rotate_small,
    "colour": _colour,
    "blur": lambda im, r, hard: im.filter(ImageFilter.GaussianBlur(r.uniform(1, 3 if hard else 2))),
    "sharpen": lambda im, r, hard: im.filter(ImageFilter.UnsharpMask(radius=2, percent=r.randint(80, 200))),
    "caption": lambda im, r, hard: _caption(im, r),
    "watermark": lambda im, r, hard: _watermark(im, r),
    "letterbox": _letterbox,
    "screenshot": _screenshot,
    "noise": _noise,
}
# Only in the hard tier: edits that change what an untrained ViT mostly sees (global colour, orientation).
HARD_EDITS = {
    "grayscale": lambda im, r, hard: ImageOps.grayscale(im).convert("RGB"),
    "rotate_90": lambda im, r, hard: im.transpose(r.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270])),
}
TIERS = ("reposts", "hard")


def edit(img: Image.Image, rng: random.Random, hard: bool = False) -> tuple[Image.Image, list[str]]:
    """A re-post: 0–3 random edits (0 = a plain re-encode)."""
    table = {**EDITS, **HARD_EDITS} if hard else EDITS
    names = rng.sample(sorted(table), rng.choice([0, 1, 1, 2, 2, 3]))
    for name in names:
        img = table[name](img, rng, hard)
    return img, names


def synthetic_scene(seed: int, size: int = 512) -> Image.Image:
    """An unrelated image: seeded gradient background, shapes, texture and text."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    coarse = nrng.integers(0, 256, (rng.randint(2, 6), rng.randint(2, 6), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 25)):
        box = sorted(rng.sample(range(size), 2))
        box2 = sorted(rng.sample(range(size), 2))
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        shape = rng.choice(["ellipse", "rectangle", "line"])
        if shape == "line":
            d.line((box[0], box2[0], box[1], box2[1]), fill=colour, width=rng.randint(1, 12))
        else:
            getattr(d, shape)((box[0], box2[0], box[1], box2[1]), fill=colour)
    if rng.random() < 0.5:
        d.text((rng.randint(0, size // 2), rng.randint(0, size - 40)), hashlib.md5(str(seed).encode()).hexdigest()[:8],
               fill=tuple(rng.randint(0, 255) for _ in range(3)), font=_font(rng.randint(16, 60)))
    return _noise(img, rng) if rng.random() < 0.5 else img


def make_dataset(folder: Path, seed: int = 0, tier: str = "reposts") -> list[dict]:
    """Write the benchmark images; returns one record per image: path, truth (campaign or None), source.

    Tier `reposts`: the edits of EDITS at their usual strength; a campaign with two originals uses two
    reframings of the photo (each 85% of its area). Tier `hard`: wider ranges, grayscale and 90° turns,
    and reframings of 70% of the area each."""
    hard = tier == "hard"
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    seen: set[str] = set()  # the bank keeps one item per file content: every variant must differ
    for c, ((photo, framings), size) in enumerate(zip(CAMPAIGN_PHOTOS, CAMPAIGN_SIZES)):
        img = Image.open(DATA / photo).convert("RGB")
        if max(img.size) > 1024:
            img.thumbnail((1024, 1024))
        if framings == 1:
            originals = [img]
        else:  # a series: overlapping reframings of one scene
            w, h = img.size
            fx, fy = (0.8, 0.88) if hard else (0.92, 0.92)
            originals = [img.crop((0, 0, int(w * fx), int(h * fy))), img.crop((int(w * (1 - fx)), int(h * (1 - fy)), w, h))]
        sources = rng.sample(SOURCES, rng.randint(1, 3))
        for k in range(size):
            path = folder / f"c{c:02d}_{k:03d}.jpg"
            while True:
                variant, names = edit(originals[k % len(originals)], rng, hard)
                variant.save(path, quality=rng.randint(35, 92))
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    break
            records.append({"path": str(path), "truth": f"truth-{c}", "source": rng.choice(sources),
                            "edits": names})
    singles = [Image.open(DATA / p).convert("RGB") for p in SINGLETON_PHOTOS]
    singles += [synthetic_scene(seed * 1000 + i) for i in range(N_SYNTHETIC_SINGLETONS)]
    for k, img in enumerate(singles):
        path = folder / f"s{k:03d}.jpg"
        img.save(path, quality=rng.randint(60, 95))
        records.append({"path": str(path), "truth": None, "source": rng.choice(SOURCES), "edits": []})
    rng.shuffle(records)
    return records


# -- metrics --------------------------------------------------------------------------------------------------

def bcubed(pred: list, truth: list) -> tuple[float, float, float]:
    """B-cubed precision, recall, F1 over all items (each label list gives every item a cluster label)."""
    n = len(pred)
    pairs, cp, ct = Counter(zip(pred, truth)), Counter(pred), Counter(truth)
    p = sum(c * c / cp[a] for (a, _), c in pairs.items()) / n
    r = sum(c * c / ct[b] for (_, b), c in pairs.items()) / n
    return p, r, 2 * p * r / (p + r)


def ari(pred: list, truth: list) -> float:
    """Adjusted Rand index (Hubert & Arabie), from the contingency table."""
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    n = len(pred)
    index = sum(comb(c) for c in Counter(zip(pred, truth)).values())
    a = sum(comb(c) for c in Counter(pred).values())
    b = sum(comb(c) for c in Counter(truth).values())
    expected = a * b / comb(n)
    top = (a + b) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


def labels_of(result, ids: list[int]) -> list[str]:
    """Each item's campaign, or a label of its own when it is in none."""
    name = {m: c.name for c in result.campaigns for m in c.members}
    return [name.get(i, f"single-{i}") for i in ids]


def kept_ids(first, second) -> tuple[int, int]:
    """(members of run-1 campaigns that are in the same-named campaign in run 2, members of run-1 campaigns)."""
    now = {m: c.name for c in second.campaigns for m in c.members}
    old = [(m, c.name) for c in first.campaigns for m in c.members]
    return sum(now.get(m) == name for m, name in old), len(old)


def quality_line(tag: str, result, ids: list[int], truth: list[str]) -> str:
    pred = labels_of(result, ids)
    p, r, f = bcubed(pred, truth)
    keep = [k for k, t in enumerate(truth) if t not in FLAT_CAMPAIGNS]
    f_solid = bcubed([pred[k] for k in keep], [truth[k] for k in keep])[2]
    return (f"{tag}: B-cubed P={p:.3f} R={r:.3f} F1={f:.3f} (without the flat photos' campaigns {f_solid:.3f})  "
            f"ARI={ari(pred, truth):.3f}  "
            f"campaigns={len(result.campaigns)} (truth {len({t for t in truth if not t.startswith('single-')})})")


# -- 1. quality on edited real photos ---------------------------------------------------------------------

def bench_images(weights: str, tier: str, compare: bool, workdir: Path) -> None:
    """Quality and id stability on one tier. The banks before run 1 and before run 2 are kept in the workdir
    (``bank-TIER-before-run{1,2}``, with ``records-TIER.json``): a rerun on the same --workdir clusters
    copies of them and extracts nothing (extractions differ by ±0.005 in F1 from run to run)."""
    import json
    import shutil

    from fakebank.api import Fakebank
    from fakebank.bank import Bank

    snaps = [workdir / f"bank-{tier}-before-run{k}" for k in (1, 2)]
    saved = workdir / f"records-{tier}.json"
    if saved.exists() and all(s.exists() for s in snaps):
        record_of = {int(k): v for k, v in json.loads(saved.read_text()).items()}
        records = list(record_of.values())
        print(f"\n== quality, tier {tier!r}: reusing the banks in {workdir} (no extraction)")
    else:
        records = make_dataset(workdir / f"images-{tier}", tier=tier)
        record_of = _build_banks(weights, records, workdir / f"bank-{tier}-building", snaps)
        saved.write_text(json.dumps({str(k): v for k, v in record_of.items()}))
    n_camp = len({r["truth"] for r in records if r["truth"]})
    print(f"\n== quality, tier {tier!r}: {len(records)} images ({n_camp} campaigns of edited copies + "
          f"{sum(r['truth'] is None for r in records)} unrelated singletons), weights {weights}")

    def truth(ids: list[int]) -> list[str]:
        return [record_of[i]["truth"] or f"single-{i}" for i in ids]

    bank_path = workdir / f"bank-{tier}"
    shutil.rmtree(bank_path, ignore_errors=True)
    shutil.copytree(snaps[0], bank_path)
    fb = Fakebank(bank_path, weights=weights)
    t = time.perf_counter()
    _, first = fb.campaign_run()
    ids1 = Bank.open(bank_path).ids.tolist()
    print(f"  run 1 ({len(ids1)} items, {time.perf_counter() - t:.2f} s) " + quality_line("", first, ids1, truth(ids1))[2:]
          + _stats_line(first))
    # run 2: the bank after the +20 %, holding run 1's campaigns as the previous run
    shutil.rmtree(bank_path)
    shutil.copytree(snaps[1], bank_path)
    fb = Fakebank(bank_path, weights=weights)
    with fb.writer(with_model=False) as w:
        w.commit_campaigns(first.assignments(), {"params": first.params.to_dict(), "next_number": first.next_number,
                                                 "generation_clustered": w.bank.manifest["generation"],
                                                 "campaigns": len(first.campaigns)})
    _, second = fb.campaign_run()
    ids2 = Bank.open(bank_path).ids.tolist()
    print(f"  run 2 (+{len(ids2) - len(ids1)} items = +{(len(ids2) / len(ids1) - 1) * 100:.0f}%) "
          + quality_line("", second, ids2, truth(ids2))[2:] + _stats_line(second))
    print("  run 2 with --embedding-attach (close embeddings alone add an item to a group of verified copies, the "
          "rule before such edges had to pass dedup's embedding-copy rule): "
          + _loose_quality(Bank.open(bank_path), truth, attach_only=True))
    print("  run 2 with every grid-checked embedding edge standing alone (the rule before embedding edges between "
          "items no PDQ/local edge links had to pass dedup's embedding-copy rule): "
          + _loose_quality(Bank.open(bank_path), truth))
    kept, total = kept_ids(first, second)
    print(f"  id stability: {kept}/{total} = {100 * kept / max(total, 1):.1f}% of run-1 campaign members kept their id; "
          f"run-2 events: {dict(sorted(Counter(e['event'] for e in second.events).items()))}")
    print("  found, by edit (share of edited copies in their campaign's main cluster):\n    "
          + per_edit(record_of, second))
    if compare:
        compare_methods(Bank.open(bank_path), truth(ids2))


def _loose_quality(bank, truth, attach_only: bool = False) -> str:
    """B-cubed F1 of the default graph clustered with every embedding edge standing alone (`attach_only`:
    with CampaignParams.embedding_attach instead)."""
    from dataclasses import replace

    from fakebank import campaigns as cp

    ids, graph = cp.selected_graph(bank, cp.CampaignParams())
    seeds = np.full(len(ids), None, object)
    if attach_only:
        labels, _ = cp.cluster_graph(graph, seeds, attach=True)
    else:
        labels, _ = cp.cluster_graph(replace(graph, standalone=np.ones(graph.edges, bool)), seeds)
    size = np.bincount(labels)
    pred = [f"c{lab}" if size[lab] > 1 else f"single-{i}" for i, lab in zip(ids.tolist(), labels)]
    t = dict(zip(bank.ids.tolist(), truth(bank.ids.tolist())))
    want = [t[i] for i in ids.tolist()]
    p, r, f = bcubed(pred, want)
    keep = [k for k, w in enumerate(want) if w not in FLAT_CAMPAIGNS]
    f_solid = bcubed([pred[k] for k in keep], [want[k] for k in keep])[2]
    return f"B-cubed P={p:.3f} R={r:.3f} F1={f:.3f} (without the flat photos' campaigns {f_solid:.3f})"


def _stats_line(result) -> str:
    s = result.stats
    return (f"; edges: {s.get('edges')} ({s.get('pdq_edges')} PDQ, {s.get('local_edges')} local), "
            f"embedding edges dropped: {s.get('embedding_edges_unverified')}")


def _build_banks(weights: str, records: list[dict], building: Path, snaps: list[Path]) -> dict[int, dict]:
    """Add 5/6 of the records to a fresh bank, keep a copy (the bank before run 1), add the rest, keep a copy
    (before run 2); returns item id → record."""
    import shutil

    from fakebank.api import Fakebank

    for p in (building, *snaps):
        shutil.rmtree(p, ignore_errors=True)
    fb = Fakebank(building, weights=weights)
    record_of: dict[int, dict] = {}
    n_first = round(len(records) / 1.2)
    for batch, snap in ((records[:n_first], snaps[0]), (records[n_first:], snaps[1])):
        t = time.perf_counter()
        by_path = {r["path"]: r for r in batch}
        for source in SOURCES:
            files = [r["path"] for r in batch if r["source"] == source]
            for out in fb.add(files, label="fake", source=source) if files else ():
                assert out["status"] == "added", out
                record_of[out["id"]] = by_path[out["path"]]
        print(f"  added {len(batch)} images in {time.perf_counter() - t:.1f} s")
        shutil.copytree(building, snap)
    shutil.rmtree(building)
    return record_of


def per_edit(record_of: dict[int, dict], result) -> str:
    name = {m: c.name for c in result.campaigns for m in c.members}
    clusters_of: dict[str, Counter] = defaultdict(Counter)
    for item_id, r in record_of.items():
        if r["truth"] and item_id in name:
            clusters_of[r["truth"]][name[item_id]] += 1
    main = {t: c.most_common(1)[0][0] for t, c in clusters_of.items()}
    found, total = Counter(), Counter()
    for item_id, r in record_of.items():
        if r["truth"]:
            for e in r["edits"] or ["none"]:
                total[e] += 1
                found[e] += name.get(item_id) is not None and name.get(item_id) == main.get(r["truth"])
    return "  ".join(f"{e} {found[e] / total[e]:.2f}" for e in sorted(total, key=lambda e: (found[e] / total[e], e)))


def compare_methods(bank, truth: list[str]) -> None:
    """B-cubed F1 of the alternatives measured against connected components (dense steps are fine at this size)."""
    import scipy.sparse as sp

    from fakebank import campaigns as cp

    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = np.arange(len(bank))
    v = cp.combined_vectors(bank, rows)
    codes, usable, owner = cp.pdq_hashes(bank, rows)
    ids = bank.ids.tolist()

    def f1(labels) -> float:
        lab = [f"x{l}" for l in labels]
        size = Counter(lab)
        return bcubed([l if size[l] > 1 else f"single-{i}" for i, l in zip(ids, lab)], truth)[2]

    print("  compare (B-cubed F1 on the run-2 bank):")
    line = []
    for t in (0.98, 0.985, 0.9875, 0.99, 0.9925, 0.995):
        params = cp.CampaignParams(similarity=t)
        lab, _ = cp.cluster_graph(cp.similarity_graph(v, codes, usable, params, pdq_owner=owner),
                                  np.full(len(bank), None, object))
        line.append(f"{t}:{f1(lab):.3f}")
    print("    connected components (kNN ≥ t ∪ PDQ), by t: " + "  ".join(line))
    graph = cp.similarity_graph(v, codes, usable, cp.CampaignParams(similarity=0.9), pdq_owner=owner)
    try:
        from sklearn.cluster import HDBSCAN, AgglomerativeClustering
    except ImportError:
        print("    (scikit-learn not installed: HDBSCAN and average linkage skipped)")
        return
    dist = np.ones((len(bank), len(bank)))
    dist[graph.i, graph.j] = dist[graph.j, graph.i] = np.clip(1 - graph.similarity, 1e-6, None)
    np.fill_diagonal(dist, 0)
    def hdbscan(m: int, s: int) -> np.ndarray:
        lab = HDBSCAN(metric="precomputed", min_cluster_size=m, min_samples=s).fit(dist).labels_
        return np.where(lab >= 0, lab, -1 - np.arange(len(lab)))  # noise: each item alone

    best = max((f1(hdbscan(m, s)), m, s) for m in (2, 3, 4) for s in (1, 2, 3, 5))
    print(f"    HDBSCAN on the kNN distance graph (best of min_cluster_size × min_samples): {best[0]:.3f} "
          f"(mcs={best[1]}, ms={best[2]})")
    conn = sp.coo_matrix((np.ones(graph.edges), (graph.i, graph.j)), shape=(len(bank),) * 2)
    avg = max((f1(AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average", connectivity=conn + conn.T,
                                          distance_threshold=1 - t).fit(v).labels_), t)
              for t in (0.97, 0.975, 0.98, 0.985, 0.99))
    print(f"    average linkage on the kNN graph (best threshold): {avg[0]:.3f} (t={avg[1]})")


# -- 2. scale on synthetic embeddings -----------------------------------------------------------------------

SCALE_CAMPAIGN_SHARE = 0.40  # of items, in campaigns of power-law sizes 2..2000
SCALE_GIANT_SHARE = 0.05  # one giant near-duplicate group (exact and near re-posts)
SCALE_DIM = 384


class SyntheticWorld:
    """Embeddings shaped like an untrained ViT's (every vector close to one common direction, distinct
    images at cosine ≈ 0.94, edited copies at 0.995–0.9998) with PDQ hashes that match for half the copies,
    and patch grids (grid.py) that agree for copies (the campaign's own grid plus noise, agreement ≈ 0.9) and
    not between distinct images (independent random grids, agreement ≈ 0.1): embedding edges are verified."""

    def __init__(self, seed: int = 0, dim: int = SCALE_DIM) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        self.mean = {k: self._unit(self.rng.normal(size=dim)) for k in ("cls", "patch")}
        self.campaigns: list[dict] = []
        self.n = 0

    def _detail(self, n: int = 16) -> bytes:
        """Stored ORB keypoints of a photo with some detail but too little for ORB to judge a pair (8 ≤ n < 64,
        random descriptors that match nothing): without any, embedding edges would not count
        (dedup.EMBEDDING_MIN_KEYPOINTS) and the synthetic bank would have only PDQ edges."""
        from fakebank.signals import LOCAL_SIDE, LocalFeatures

        xy = self.rng.uniform(0, LOCAL_SIDE, size=(n, 2))
        return LocalFeatures(xy=xy, desc=self.rng.integers(0, 256, size=(n, 32), dtype=np.uint8)).to_bytes()

    @staticmethod
    def _unit(v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)

    def _noise(self, count: int, scale) -> np.ndarray:
        return self.rng.normal(size=(count, self.dim)) / np.sqrt(self.dim) * np.asarray(scale).reshape(-1, 1)

    def _new_campaign(self, size: int, eps: float | None = None) -> dict:
        c = {"truth": f"t{len(self.campaigns)}", "target": size, "eps": eps or self.rng.uniform(0.02, 0.07),
             "pdq": self.rng.integers(0, 256, 32, dtype=np.uint8),
             "grid": self.rng.normal(size=(GRID_CELLS, GRID_CELLS, GRID_WIDTH))}
        c.update({k: self._unit(self.mean[k] + self._noise(1, 0.25)[0]) for k in ("cls", "patch")})
        self.campaigns.append(c)
        return c

    def items(self, n: int, grow: bool = False) -> list[tuple[object, str | None]]:
        """n new items: the giant group, campaign members (new campaigns, and on `grow` old ones too), singletons."""
        from fakebank.bank import NewItem

        plan: list[dict | None] = []
        if not self.campaigns:
            giant = self._new_campaign(int(n * SCALE_GIANT_SHARE), eps=0.005)
            plan += [giant] * giant["target"]
        else:
            plan += [self.campaigns[0]] * int(n * SCALE_GIANT_SHARE)
        members = int(n * SCALE_CAMPAIGN_SHARE)
        if grow:  # half to campaigns that exist, in proportion to their size, half to new ones
            old = self.campaigns[1:]
            weights = np.array([c["target"] for c in old], float)
            for i in self.rng.choice(len(old), members // 2, p=weights / weights.sum()):
                plan.append(old[i])
            members -= members // 2
        while members > 0:
            size = int(min(2000, max(2, self.rng.zipf(1.8))))
            size = min(size, members) if members >= 2 else 2
            c = self._new_campaign(size)
            plan += [c] * size
            members -= size
        plan += [None] * (n - len(plan))
        out = []
        for c in plan:
            self.n += 1
            if c is None:
                vec = {k: self._unit(self.mean[k] + self._noise(1, 0.25)[0]) for k in ("cls", "patch")}
                code = self.rng.integers(0, 256, 32, dtype=np.uint8)
                grid = self.rng.normal(size=(GRID_CELLS, GRID_CELLS, GRID_WIDTH))
            else:
                grid = c["grid"] + 0.4 * self.rng.normal(size=c["grid"].shape)
                vec = {k: self._unit(c[k] + self._noise(1, c["eps"])[0]) for k in ("cls", "patch")}
                if self.rng.random() < 0.5:  # PDQ survives this edit: a few bits flipped
                    code = np.unpackbits(c["pdq"]) ^ (self.rng.random(256) < self.rng.uniform(0, 0.08))
                    code = np.packbits(code.astype(np.uint8))
                else:
                    code = self.rng.integers(0, 256, 32, dtype=np.uint8)
            item = NewItem(
                sha256=hashlib.sha256(f"synthetic-{self.n}".encode()).hexdigest(), path=f"/synthetic/{self.n}.jpg",
                label="fake", p_fake=float(self.rng.uniform(0.5, 1)), logit=0.0, pdq=code.tobytes(), pdq_quality=90,
                cls=vec["cls"], patch=vec["patch"], width=512, height=512,
                source=str(self.rng.choice(SOURCES)), patch_grid=PatchGrid.quantise(grid).to_bytes(),
                local=self._detail(),
            )
            out.append((item, None if c is None else c["truth"]))
        order = self.rng.permutation(len(out))
        return [out[i] for i in order]


_RUN = """
import json, resource, sys, time
t = time.perf_counter()
from fakebank.api import Fakebank
fb = Fakebank(sys.argv[1])
bank, result = fb.campaign_run()
records = fb.campaign_records(bank, result)
total = time.perf_counter() - t
assign = {m: c.name for c in result.campaigns for m in c.members}
json.dump({"seconds": total, "stats": result.stats, "campaigns": len(records),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "assign": assign}, sys.stdout)
"""


def bench_scale(n: int, workdir: Path) -> None:
    import json
    import subprocess
    import sys

    from fakebank.bank import BankWriter
    from fakebank.campaigns import LOCAL_EDGE_MAX_ITEMS

    print(f"\n== scale: {n} synthetic items (dim {SCALE_DIM}; {SCALE_GIANT_SHARE:.0%} one near-duplicate group, "
          f"{SCALE_CAMPAIGN_SHARE:.0%} in campaigns of 2..2000, the rest singletons), then +20%")
    world = SyntheticWorld(0)
    path = workdir / "bank-scale"
    truth_of: dict[int, str | None] = {}
    model = {"spec": "synthetic", "name": "synthetic", "revision": "0", "trained": False, "arch": "synthetic",
             "identity_hash": "5" * 64, "identity": {"arch": "synthetic"}}

    def write(items) -> None:
        t = time.perf_counter()
        with BankWriter(path, model_info=model, embedding_dim=SCALE_DIM) as w:
            for a in range(0, len(items), 20_000):
                chunk = items[a : a + 20_000]
                for item_id, (_, truth) in zip(w.add([it for it, _ in chunk]), chunk):
                    truth_of[item_id] = truth
        print(f"  wrote {len(items)} items to the bank in {time.perf_counter() - t:.1f} s (incl. its own indexes)")

    def run(tag: str) -> dict:
        proc = subprocess.run([sys.executable, "-c", _RUN, str(path)], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout)
        r["assign"] = {int(k): v for k, v in r["assign"].items()}
        ids = sorted(truth_of)
        pred = [r["assign"].get(i, f"single-{i}") for i in ids]
        truth = [truth_of[i] or f"single-{i}" for i in ids]
        p, rec, f = bcubed(pred, truth)
        s = r["stats"]
        print(f"  {tag}: {len(ids)} items clustered in {r['seconds']:.1f} s end to end (graph {s['seconds']['graph']:.1f} s, "
              f"components {s['seconds']['cluster']:.1f} s, local-feature edges "
              f"{'off above %d items' % LOCAL_EDGE_MAX_ITEMS if s['local_edges'] is None else s['local_edges']}), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, {s['edges']} edges "
              f"({s['pdq_edges']} PDQ); {r['campaigns']} campaigns; B-cubed P={p:.3f} R={rec:.3f} F1={f:.3f} "
              f"ARI={ari(pred, truth):.3f}")
        return r

    write(world.items(n))
    first = run("run 1")
    write(world.items(n // 5, grow=True))
    second = run("run 2")
    old = first["assign"]
    kept = sum(second["assign"].get(m) == name for m, name in old.items())
    print(f"  id stability: {kept}/{len(old)} = {100 * kept / max(len(old), 1):.2f}% of run-1 campaign members kept their id")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="untrained:vit_small_patch16_384:0")
    ap.add_argument("--tiers", default="reposts,hard", help="comma-separated: " + ", ".join(TIERS))
    ap.add_argument("--scale", type=int, default=100_000, help="synthetic items for the scale run")
    ap.add_argument("--skip-images", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--compare", action="store_true", help="also score the alternative clusterings (needs scikit-learn)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep images and banks here (default: a temp folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_campaigns_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if not args.skip_images:
            for tier in args.tiers.split(","):
                if tier not in TIERS:
                    raise SystemExit(f"--tiers: unknown tier {tier!r}; pick from {', '.join(TIERS)}")
                bench_images(args.weights, tier, args.compare, workdir)
        if not args.skip_scale:
            bench_scale(args.scale, workdir)


if __name__ == "__main__":
    main()
