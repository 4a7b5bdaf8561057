"""Near-duplicate benchmark: fakebank's dedup vs PDQ alone (python-threatexchange's own matcher).

Builds a transformation suite from real photos (Meta's PDQ test photos and the Community Forensics samples
in ../shared/data, scikit-image's bundled photos), adds the "originals" to a fresh bank and keeps the
"distractors" out of it. Every original and distractor goes through every family of edits below; then:

  recall       share of an original's edited copies whose matches include that original
  wrong        share of an original's edited copies matched to another bank item
  false-match  share of the distractors' edited copies matched to any bank item (the issue's ≤ 0.5 %)

for fakebank (all signals) and for PDQ alone: python-threatexchange 1.2.17's PdqSignal hasher and its
PDQ index at distance ≤ 31 (no EXIF orientation, no rotations/mirrors, quality < 50 not hashed). Also
per-signal ablations, queries/s, the per-image cost of the extra signals at `add`, and the matching cost
per query at a synthetic bank of --synthetic items (100k by default).

    pip install -e '.[bench]'
    python scripts/bench_dedup.py [--weights untrained:vit_small_patch16_384:0] [--originals 21] [--synthetic 100000]
    python scripts/bench_dedup.py --store milvus-lite --synthetic 10000   # the same bank on Milvus Lite too:
        its matches next to the folder's, and insert/query rates at a synthetic bank on Milvus Lite

Images left out of the suite: two photos of the same coaster (misc-images/c.png vs pen-and-coaster.png)
and the two halves of a stereo pair (motorcycle_left/right) are the same scene photographed twice, not
copies; small.jpg (all black) and labelme q0003/q0004 (flat blue, PDQ quality 3-4) have no content to
tell a copy from any other flat image.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import pickle
import random
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from fakebank.api import Fakebank
from fakebank.bank import Bank, NewItem
from fakebank.dedup import SIGNALS, DedupParams, Probe, find
from fakebank.embed import Embedding, Source
from fakebank.preprocess import load_rgb
from fakebank.signals import LOCAL_BANK_FEATURES, image_signals
from fakebank.store import open_store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
EXCLUDED = {"c", "motorcycle_right", "small", "q0003", "q0004"}
SKIMAGE_PHOTOS = ["astronaut", "brick", "camera", "cell", "chelsea", "clock_motion", "coffee", "coins", "grass",
                  "gravel", "hubble_deep_field", "ihc", "moon", "motorcycle_left", "page", "retina", "rocket", "text"]


def photos() -> dict[str, Image.Image]:
    """name → upright RGB photo (longer side ≤ 1600), in a fixed order."""
    files = sorted((SHARED / "commfor-samples").glob("*.png"))
    pdq = SHARED / "pdq"
    files += [pdq / "reg-test-input/dih/bridge-1-original.jpg", pdq / "reg-test-input/pen-and-coaster.png",
              pdq / "reg-test-input/exif-rotn/exif-rotn-1.jpg"]
    files += sorted((pdq / "reg-test-input/labelme-subset").glob("*.jpg"))
    spec = importlib.util.find_spec("skimage")
    if spec is None:
        print("scikit-image not installed (pip install -e '.[bench]'): using the shared photos only", file=sys.stderr)
    else:
        data = Path(spec.submodule_search_locations[0]) / "data"
        files += [next(data.glob(f"{n}.*")) for n in SKIMAGE_PHOTOS]
    out = {}
    for f in files:
        if f.stem in EXCLUDED:
            continue
        im = load_rgb(f)
        if max(im.size) > 1600:
            s = 1600 / max(im.size)
            im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BILINEAR)
        out[f.stem] = im
    return out


# -- the transformation suite: each function (image, rng) → encoded file bytes ---------------------------

def _enc(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _dec(b):
    return load_rgb(b)


def jpeg(q): return lambda im, r: _enc(im, 'JPEG', quality=q)
def resize(f): return lambda im, r: _enc(im.resize((max(8,round(im.width*f)), max(8,round(im.height*f))), Image.Resampling.BICUBIC), 'JPEG', quality=90)
def _crop(im, area, r, centred):
    s = area ** 0.5
    w, h = im.size
    cw, ch = round(w*s), round(h*s)
    if centred: x0, y0 = (w-cw)//2, (h-ch)//2
    else:
        x0, y0 = r.randint(0, w-cw), r.randint(0, h-ch)
    return im.crop((x0, y0, x0+cw, y0+ch))
def crop(area, centred=True): return lambda im, r: _enc(_crop(im, area, r, centred), 'JPEG', quality=90)
def transpose(t): return lambda im, r: _enc(im.transpose(t), 'JPEG', quality=90)
def rotate(deg): return lambda im, r: _enc(im.rotate(deg, Image.Resampling.BICUBIC, expand=True, fillcolor=(0,0,0)), 'JPEG', quality=90)
def enhance(kind, f): return lambda im, r: _enc(getattr(ImageEnhance, kind)(im).enhance(f), 'JPEG', quality=90)
def grayscale(): return lambda im, r: _enc(ImageOps.grayscale(im).convert('RGB'), 'JPEG', quality=90)
def blur(rad): return lambda im, r: _enc(im.filter(ImageFilter.GaussianBlur(rad * max(im.size) / 1000)), 'JPEG', quality=90)
def noise(sigma):
    def f(im, r):
        a = np.asarray(im, np.float32) + np.random.default_rng(r.randint(0, 2**31)).normal(0, sigma, (im.height, im.width, 3))
        return _enc(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), 'JPEG', quality=90)
    return f
def _font(size):
    return ImageFont.load_default(size=max(8, size))
WORDS = "BREAKING you won't believe what happened next share before they delete this".split()
def _text(r, n=6): return " ".join(r.choice(WORDS) for _ in range(n))
def caption_overlay(frac=0.15):
    def f(im, r):
        im = im.copy(); w, h = im.size; bh = round(h*frac)
        d = ImageDraw.Draw(im); d.rectangle((0, h-bh, w, h), fill=(255,255,255))
        d.text((w*0.04, h-bh*0.8), _text(r), fill=(0,0,0), font=_font(round(bh*0.45)))
        return _enc(im, 'JPEG', quality=90)
    return f
def caption_meme(frac=0.2):
    def f(im, r):
        w, h = im.size; bh = round(h*frac)
        c = Image.new('RGB', (w, h+bh), (255,255,255)); c.paste(im, (0, bh))
        ImageDraw.Draw(c).text((w*0.04, bh*0.3), _text(r), fill=(0,0,0), font=_font(round(bh*0.35)))
        return _enc(c, 'JPEG', quality=90)
    return f
def watermark(frac=0.25):
    def f(im, r):
        im = im.convert('RGBA'); w, h = im.size
        ov = Image.new('RGBA', im.size, (0,0,0,0)); d = ImageDraw.Draw(ov)
        ww, wh = round(w*frac), round(h*frac*0.35)
        corner = r.choice([(0,0),(w-ww,0),(0,h-wh),(w-ww,h-wh)])
        d.rectangle((corner[0], corner[1], corner[0]+ww, corner[1]+wh), fill=(255,255,255,110))
        d.text((corner[0]+ww*0.08, corner[1]+wh*0.2), "@fakenews24", fill=(0,0,0,200), font=_font(round(wh*0.5)))
        return _enc(Image.alpha_composite(im, ov).convert('RGB'), 'JPEG', quality=90)
    return f
def letterbox(aspect=16/9, color=(0,0,0)):
    def f(im, r):
        w, h = im.size
        if w/h < aspect: W, H = round(h*aspect), h
        else: W, H = w, round(w/aspect) if w/h > aspect else round(w/aspect)+round(h*0.25)
        if (W, H) == (w, h): H = round(h*1.3)
        c = Image.new('RGB', (W, H), color); c.paste(im, ((W-w)//2, (H-h)//2))
        return _enc(c, 'JPEG', quality=90)
    return f
def screenshot(dark=False):
    def f(im, r):
        W, H = 1080, 2160
        bg = (18,18,18) if dark else (250,250,250); fg = (230,230,230) if dark else (20,20,20)
        c = Image.new('RGB', (W, H), bg); d = ImageDraw.Draw(c)
        d.rectangle((0, 0, W, 70), fill=(0,0,0) if not dark else (40,40,40))
        d.text((30, 15), "9:41", fill=(255,255,255), font=_font(40))
        d.text((W-200, 15), "5G 87%", fill=(255,255,255), font=_font(36))
        d.ellipse((30, 110, 120, 200), fill=(120,120,200)); d.text((140, 130), "@someone · 2h", fill=fg, font=_font(40))
        d.text((30, 230), _text(r, 5), fill=fg, font=_font(40))
        s = W / im.width; ih = round(im.height*s)
        if ih > 1500: s = 1500/im.height; ih = 1500
        iw = round(im.width*s)
        y0 = 320; c.paste(im.resize((iw, ih), Image.Resampling.BICUBIC), ((W-iw)//2, y0))
        y1 = y0+ih+40
        for i, t in enumerate(["♡ 1.2k", "↻ 340", "share"]): d.text((60+i*330, y1), t, fill=fg, font=_font(40))
        d.text((30, y1+100), _text(r, 7), fill=fg, font=_font(36))
        c = c.resize((W//2, H//2), Image.Resampling.BICUBIC)
        return _enc(c, 'PNG')
    return f
def png(): return lambda im, r: _enc(im, 'PNG')
def webp(q=80): return lambda im, r: _enc(im, 'WEBP', quality=q)
def exif_rotation(orient):
    # stored pixels turned so that applying the EXIF Orientation tag shows the original upright
    inv = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orient]
    def f(im, r):
        ex = Image.Exif(); ex[0x0112] = orient
        return _enc(im.transpose(inv), 'JPEG', quality=92, exif=ex.tobytes())
    return f
def chain(*fs):
    def f(im, r):
        for g in fs: im = _dec(g(im, r))
        return _enc(im, 'JPEG', quality=85)
    return f
T = Image.Transpose
FAMILIES = {
    'jpeg': [jpeg(90), jpeg(50), jpeg(30)],
    'resize': [resize(0.75), resize(0.5), resize(0.25)],
    'crop_centre': [crop(0.9), crop(0.8), crop(0.7), crop(0.6)],
    'crop_offcentre': [crop(0.9, False), crop(0.8, False), crop(0.7, False), crop(0.6, False)],
    'mirror': [transpose(T.FLIP_LEFT_RIGHT), transpose(T.FLIP_TOP_BOTTOM)],
    'rot90_180_270': [transpose(T.ROTATE_90), transpose(T.ROTATE_180), transpose(T.ROTATE_270)],
    'rot_small': [rotate(3), rotate(-5)],
    'colour': [enhance('Brightness', 1.3), enhance('Contrast', 0.7), enhance('Color', 1.6), grayscale()],
    'blur_noise': [blur(2), blur(4), noise(8), noise(16)],
    'overlay': [caption_overlay(), caption_meme(), watermark()],
    'letterbox': [letterbox(16/9), letterbox(1.0, (255,255,255)), letterbox(9/16)],
    'screenshot': [screenshot(False), screenshot(True)],
    'format': [png(), webp(80)],
    'exif_rotation': [exif_rotation(6), exif_rotation(3), exif_rotation(8)],
    'combo': [chain(crop(0.8, False), jpeg(50), resize(0.5)), chain(transpose(T.FLIP_LEFT_RIGHT), crop(0.75), enhance('Contrast', 0.8)),
              chain(letterbox(16/9), jpeg(40)), chain(screenshot(False), jpeg(60)), chain(crop(0.85), caption_overlay(0.12), resize(0.6))],
}
TARGETS = {f: 0.98 for f in ("jpeg", "resize", "colour", "blur_noise", "mirror", "rot90_180_270", "letterbox",
                             "screenshot", "format", "exif_rotation")} | {f: 0.9 for f in ("crop_centre",
                                                                                           "crop_offcentre", "overlay")}


def variants(im, seed, families=FAMILIES):
    r = random.Random(seed)  # one stream over every family, so a family's edits do not depend on the others run
    for fam, fs in FAMILIES.items():
        for i, f in enumerate(fs):
            data = f(im, r)
            if fam in families:
                yield fam, i, data


# -- the run ---------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="untrained:vit_small_patch16_384:0")
    ap.add_argument("--originals", type=int, default=21, help="photos put in the bank; the rest are distractors")
    ap.add_argument("--synthetic", type=int, default=100_000, help="items of the synthetic bank timed (0: skip)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="comma-separated families of edits to run (default: all)")
    ap.add_argument("--store", choices=["folder", "milvus-lite"], default="folder",
                    help="milvus-lite: also copy the bank to Milvus Lite (export → import) and match there")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the bank and the query embeddings here; a rerun on it skips the extraction")
    args = ap.parse_args()
    families = args.families.split(",")
    unknown = set(families) - set(FAMILIES)
    if unknown:
        ap.error(f"unknown families {sorted(unknown)}; choose from {', '.join(FAMILIES)}")

    pool = photos()
    names = list(pool)
    rng = random.Random(0)
    rng.shuffle(names)
    bank_names, distractors = names[: args.originals], names[args.originals:]
    print(f"{len(bank_names)} originals in the bank, {len(distractors)} distractors; "
          f"{sum(len(v) for v in FAMILIES.values())} edits each; weights {args.weights}", file=sys.stderr)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_dedup-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "queries.pkl"
    fb = Fakebank(work / "bank", weights=args.weights, batch_size=args.batch_size)
    originals = {n: _enc(pool[n], "PNG") for n in bank_names}
    t = time.perf_counter()
    ids = {}
    for r in fb.add([], sources=[Source(f"{n}.png", b) for n, b in originals.items()]):
        ids[r["path"][:-4]] = r["id"]  # added, or already there (a rerun on the same --workdir)
    add_s = time.perf_counter() - t
    bank = fb.open_bank()
    id_name = {v: k for k, v in ids.items()}
    print(f"bank: {len(bank)} items in {add_s:.1f} s", file=sys.stderr)

    # PDQ alone: python-threatexchange's hasher and index, as HMA would run it.
    from threatexchange.signal_type.pdq.signal import PdqSignal

    ptx_entries = [(PdqSignal.hash_from_bytes(b), n) for n, b in originals.items()]
    ptx_index = PdqSignal.get_index_cls().build([(h, n) for h, n in ptx_entries if h])

    queries = []  # (owner name, in bank?, family, file bytes)
    for n in bank_names + distractors:
        for fam, i, data in variants(pool[n], seed=zlib.crc32(n.encode()), families=families):
            queries.append((n, n in ids, fam, data))
    print(f"{len(queries)} edited copies; extracting (model forward + signals) …", file=sys.stderr)

    # the cache holds the embeddings of exactly these queries, made with these weights
    key = (args.weights, zlib.crc32(b"".join(q[3] for q in queries)))
    cached = pickle.loads(cache.read_bytes()) if cache.exists() else None
    if cached is not None and len(cached) == 3 and cached[2] == key:  # a rerun: the same queries, no extraction
        embs, extract_s, _ = cached
        print(f"reusing {len(embs)} query embeddings from {cache}", file=sys.stderr)
    else:
        t = time.perf_counter()
        embs: list[Embedding | None] = []
        sources = (Source(f"q{k}", q[3]) for k, q in enumerate(queries))
        for k, e in enumerate(fb.extractor.extract(sources)):
            embs.append(e if isinstance(e, Embedding) else None)
            if (k + 1) % 100 == 0:
                print(f"  {k + 1}/{len(queries)}", file=sys.stderr)
        extract_s = time.perf_counter() - t
        by_name = {e.path: e for e in embs if e is not None}
        embs = [by_name.get(f"q{k}") for k in range(len(queries))]
        if args.workdir:
            cache.write_bytes(pickle.dumps((embs, extract_s, key)))

    params = DedupParams()
    t = time.perf_counter()
    probes = [Probe.of_embedding(e) if e is not None else None for e in embs]
    found = [find(bank, p, params) if p is not None else [] for p in probes]
    match_s = time.perf_counter() - t
    t = time.perf_counter()
    ptx = []
    for _, _, _, data in queries:
        h = PdqSignal.hash_from_bytes(data)
        ptx.append({m.metadata for m in ptx_index.query(h)} if h else set())
    ptx_s = time.perf_counter() - t

    rows = defaultdict(lambda: defaultdict(int))
    mistakes = []
    for (owner, in_bank, fam, _), ms, pm in zip(queries, found, ptx, strict=True):
        got = {id_name[m.id] for m in ms}
        mistakes += [(fam, owner, id_name[m.id], m.signal, m.pdq_distance, m.inliers, m.spatial_agreement)
                     for m in ms if id_name[m.id] != owner]
        r = rows[fam]
        if in_bank:
            r["n"] += 1
            r["fb"] += owner in got
            r["fb_wrong"] += bool(got - {owner})
            r["ptx"] += owner in pm
            r["ptx_wrong"] += bool(pm - {owner})
            if owner in got:
                r["sig_" + next(m.signal for m in ms if id_name[m.id] == owner)] += 1
        else:
            r["d"] += 1
            r["fb_fp"] += bool(got)
            r["ptx_fp"] += bool(pm)

    print()
    print(f"{'family':15} {'copies':>6} | {'fakebank':>8} {'PDQ':>6} | {'target':>6} | {'wrong fb/PDQ':>12} | "
          f"{'distractor':>10} {'false fb':>8} {'PDQ':>6} | first signal (fakebank)")
    tot = defaultdict(int)
    for fam in families:
        r = rows[fam]
        for k, v in r.items():
            tot[k] += v
        sig = " ".join(f"{s}={r['sig_' + s]}" for s in SIGNALS if r["sig_" + s])
        target = f"{TARGETS[fam]:.2f}" if fam in TARGETS else "≥PDQ"
        print(f"{fam:15} {r['n']:6d} | {r['fb'] / r['n']:8.3f} {r['ptx'] / r['n']:6.3f} | {target:>6} | "
              f"{r['fb_wrong']:5d}/{r['ptx_wrong']:<6d} | {r['d']:10d} {r['fb_fp'] / r['d']:8.4f} "
              f"{r['ptx_fp'] / r['d']:6.4f} | {sig}")
    print(f"{'all':15} {tot['n']:6d} | {tot['fb'] / tot['n']:8.3f} {tot['ptx'] / tot['n']:6.3f} | {'':6} | "
          f"{tot['fb_wrong']:5d}/{tot['ptx_wrong']:<6d} | {tot['d']:10d} {tot['fb_fp'] / tot['d']:8.4f} "
          f"{tot['ptx_fp'] / tot['d']:6.4f} |")
    for fam, owner, other, signal, distance, inliers, agreement in mistakes:
        print(f"  false copy: a {fam} copy of {owner} matched {other} by {signal} (PDQ distance {distance}, "
              f"inliers {inliers}, spatial agreement {agreement})")

    print("\nablation (fakebank recall / false-match rate with only some signals):")
    subsets = [("pdq",), ("pdq", "pdq_trim"), ("pdq", "pdq_trim", "embedding"), ("pdq", "pdq_trim", "local"), SIGNALS]
    for sub in subsets:
        p = DedupParams(signals=sub)
        hit = fp = n = d = 0
        per = defaultdict(lambda: [0, 0])
        for (owner, in_bank, fam, _), pr in zip(queries, probes, strict=True):
            got = {id_name[m.id] for m in find(bank, pr, p)} if pr is not None else set()
            if in_bank:
                n += 1
                hit += owner in got
                per[fam][0] += owner in got
                per[fam][1] += 1
            else:
                d += 1
                fp += bool(got)
        worst = sorted(per.items(), key=lambda kv: kv[1][0] / kv[1][1])[:3]
        print(f"  {'+'.join(sub):32} recall {hit / n:.3f}  false-match {fp / d:.4f}  lowest: "
              + ", ".join(f"{f} {a / b:.2f}" for f, (a, b) in worst))

    if args.store == "milvus-lite":
        _milvus_parity(fb, work, queries, probes, found, match_s, id_name, params)

    nq = len(queries)
    print(f"\nqueries/s: fakebank end to end {nq / (extract_s + match_s):.2f} (extraction {nq / extract_s:.2f}/s, "
          f"matching {1000 * match_s / nq:.2f} ms/query at {len(bank)} items); "
          f"PDQ alone (hash + match) {nq / ptx_s:.1f}/s")
    _add_cost(pool)
    if args.synthetic:
        _synthetic(args.synthetic, bank, [p for p in probes if p is not None], params, args.store)


def _milvus_parity(fb: Fakebank, work: Path, queries, probes, found, match_s: float, id_name, params) -> None:
    """The bench bank moved to Milvus Lite the way a user moves one (fakebank export → import), then every
    edited copy matched there: recall and false matches next to the folder's, and identical match sets."""
    export = work / "bank.parquet"
    fb.export_list(export, fmt="fakebank", labels=("fake", "real", "unknown"), min_quality=0)
    mfb = Fakebank(work / "unused", store=f"milvus-lite:{work / 'bank.db'}", weights=fb.weights_spec())
    imp = mfb.import_list(export)
    mbank = mfb.open_bank()
    name_of = {mbank.id_of_sha256(fb.open_bank().value(i, "sha256")): n for i, n in id_name.items()}
    t = time.perf_counter()
    mfound = [find(mbank, p, params) if p is not None else [] for p in probes]
    mmatch_s = time.perf_counter() - t
    stats = {"folder": [0, 0, 0, 0], "milvus-lite": [0, 0, 0, 0]}  # hits, copies, false, distractors
    same = 0
    for (owner, in_bank, _, _), a, b in zip(queries, found, mfound, strict=True):
        ga, gb = {id_name[m.id] for m in a}, {name_of[m.id] for m in b}
        same += ga == gb and [m.signal for m in a] == [m.signal for m in b]
        for key, got in (("folder", ga), ("milvus-lite", gb)):
            st = stats[key]
            if in_bank:
                st[0] += owner in got
                st[1] += 1
            else:
                st[2] += bool(got)
                st[3] += 1
    print(f"\nstores: the bank copied to Milvus Lite by export → import ({imp['added']} items)")
    for key, ms in (("folder", match_s), ("milvus-lite", mmatch_s)):
        h, n, f, d = stats[key]
        print(f"  {key:12} recall {h / n:.3f}  false-match {f / d:.4f}  matching {1000 * ms / len(queries):.2f} ms/query")
    print(f"  identical matches (items and signals) on {same}/{len(queries)} edited copies")


def _add_cost(pool: dict[str, Image.Image]) -> None:
    """Per-image cost at `add` of the extra signals (content box, de-bordered PDQ, ORB and its mirror)."""
    ims = list(pool.values())
    t = time.perf_counter()
    for im in ims:
        image_signals(im)
    ms = 1000 * (time.perf_counter() - t) / len(ims)
    print(f"extra signals at add: {ms:.1f} ms/image on one core (content box + de-bordered PDQ + ORB ×2), "
          f"photos of {min(max(i.size) for i in ims)}–{max(max(i.size) for i in ims)} px")


def _synthetic(n: int, real: Bank, probes: list[Probe], params: DedupParams, store: str = "folder") -> None:
    """Matching cost per query at a bank of n items: the real items plus synthetic ones (random unit
    embeddings, random PDQ hashes, 1 in 5 with a de-bordered hash, ORB descriptors drawn from the real
    items' with a quarter of their bits flipped, so the local index sees ORB-like clustering)."""
    rng = np.random.default_rng(0)
    dim = real.dim
    pool_desc = np.concatenate([np.frombuffer(b, np.uint8)[: (len(b) // 36) * 32].reshape(-1, 32)
                                for b in (real.value(i, "local") for i in real.ids.tolist()) if b])
    print(f"\nsynthetic bank of {n:,} items: building …", file=sys.stderr)
    path = Path(tempfile.mkdtemp(prefix="bench_dedup_syn-"))
    st = open_store(f"milvus-lite:{path / 'bank.db'}" if store == "milvus-lite" else "folder", path)
    t = time.perf_counter()
    with st.writer(model_info=real.manifest["model"], embedding_dim=dim) as w:
        for start in range(0, n, 10_000):
            items = []
            for k in range(start, min(n, start + 10_000)):
                v = rng.normal(size=(2, dim)).astype(np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                desc = pool_desc[rng.integers(0, len(pool_desc), LOCAL_BANK_FEATURES)]
                flips = np.packbits(rng.random((LOCAL_BANK_FEATURES, 256)) < 0.25, axis=1)
                xy = rng.uniform(0, 640, (LOCAL_BANK_FEATURES, 2)).astype(np.float16)
                items.append(NewItem(
                    sha256=f"{k:064x}", path=f"/synthetic/{k}.jpg", label="fake", p_fake=0.5, logit=0.0,
                    pdq=rng.integers(0, 256, 32, dtype=np.uint8).tobytes(), pdq_quality=100, cls=v[0], patch=v[1],
                    width=640, height=480,
                    pdq_trim=rng.integers(0, 256, 32, dtype=np.uint8).tobytes() if k % 5 == 0 else None,
                    pdq_trim_quality=100 if k % 5 == 0 else None,
                    local=(desc ^ flips).tobytes() + xy.tobytes()))
            w.add(items)
            print(f"  {min(n, start + 10_000):,}", file=sys.stderr)
    build_s = time.perf_counter() - t
    bank = st.open()
    bank.search("cls", np.zeros((1, dim), np.float32), 1)  # shards mapped, as a reader has them
    probes = probes[:200]
    find(bank, probes[0], params)
    timings = {}
    for label, sub in [("pdq+pdq_trim", ("pdq", "pdq_trim")), ("local", ("local",)), ("embedding", ("embedding",)),
                       ("all signals", SIGNALS)]:
        p = DedupParams(signals=sub)
        t = time.perf_counter()
        for pr in probes:
            find(bank, pr, p)
        timings[label] = 1000 * (time.perf_counter() - t) / len(probes)
    t = time.perf_counter()
    for pr in probes:
        bank.search("cls", pr.cls[None, :], 10)
    knn = 1000 * (time.perf_counter() - t) / len(probes)
    t = time.perf_counter()
    for pr in probes:
        bank.pdq_within(np.frombuffer(pr.pdq.hash, np.uint8)[None, :], 31)
    hamming = 1000 * (time.perf_counter() - t) / len(probes)
    if store == "folder":
        local = sum(seg.shard("local").ntotal for seg in bank.segments)
        where = f"in {len(bank.segments)} segments ({local:,} local descriptors indexed"
    else:
        where = f"on Milvus Lite ({bank.store.count(bank.store.local):,} local descriptors"
    print(f"matching at {len(bank):,} items {where}, built in {build_s:.0f} s, "
          f"{len(bank) / build_s:,.0f} items/s): " + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items())
          + f" per query; the cls top-10 search `query` already does: {knn:.2f} ms; PDQ range ≤ 31: {hamming:.2f} ms")


if __name__ == "__main__":
    main()
