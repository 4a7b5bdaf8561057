"""Hard-negative benchmark: no false copies among distinct images that look alike globally.

A near-duplicate verdict hands the query the matched item's label with score 0 or 1, so a false copy is a
confidently wrong answer. This bench generates a bank of distinct images that are hard to tell apart by
global statistics, in nine kinds:

  dark_flat       near-black frames of one tint with a few faint, small marks
  star_field      black skies with random stars (and a faint glow)
  gradient_noise  smooth gradients and low-frequency noise fields, with a few soft shapes
  text_plain      lines of text on a plain background
  ui_template     one chat-app screen (status bar, header, bubbles, tab bar) with different contents
  meme_template   one meme layout (caption bars above and below a picture) with different pictures/captions
  sky             plain skies: a vertical blue gradient with noise, sometimes a faint cloud
  overcast        overcast greys: a near-uniform grey with a slight vertical gradient
  near_solid      one colour with a little noise

(the last three, flat look-alikes: an untrained ViT gives such inputs near-constant patch tokens, so distinct
skies reach cls 0.9999 and patch-grid agreement 0.99 with no ORB keypoint and no usable PDQ hash; they are
drawn from a random stream of their own, so the first six kinds' images and copies are as before)

and, as positives, edited copies of bank images (re-encodes, resizes, crops, mirrors, turns, colour, blur,
noise, formats), as `scripts/bench_dedup.py` makes them; plus edited copies of generated images that are
*not* in the bank. Every image goes through the same extractor as the other benches (default untrained
vit_small_patch16_384, `Fakebank.add` / `Extractor.extract`). Printed:

- per signal (each alone, then all together) and per kind: recall on the positives, and false copies —
  a positive matched to another bank item, a non-bank image's copy matched to anything, and pairs of
  distinct bank items that match each other (each item probing the bank with its stored signals) —
  with precision = right matches / all matches; once with the embedding signal verified by the patch
  grid (the default) and once without that check (the detail rule, ≥ EMBEDDING_MIN_KEYPOINTS ORB keypoints
  on both sides, holds in both);
- the spatial agreement of true and false embedding candidates (cls ≥ the threshold, PDQ unusable);
- the campaigns (`fakebank campaigns`, every bank item selected) among the distinct bank images, all of
  them false, and how many items joined one by close embeddings alone; then again with the edited copies
  added to the bank: how many originals make a campaign with their copy alone, and how many campaigns
  mix distinct images (a look-alike joining another image's group of copies);
- the false-copy count at a bank of --synthetic items (100k by default): the real bank plus *synthetic
  look-alikes*: for each query, items whose cls is within cosine ≈ 0.995 of the query's (so every query has
  dozens of items above the duplicate threshold), whose PDQ hash is unusable (quality 0, so the embedding
  signal is consulted), with 16 random ORB keypoints (detail enough for the embedding signal, too few for
  ORB to judge a pair), and whose patch grid is another generated image's (a random bank item other than the
  query's original, turned/mirrored at random, 20 % noise mixed in). None of them is a copy of anything.
  Only queries with detail of their own can meet the embedding signal; the line says how many.

    python scripts/bench_hard_negatives.py [--per-kind 340] [--heldout 30] [--positives 60] [--synthetic 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import pickle
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont
from scipy.sparse.csgraph import connected_components

from fakebank.api import Fakebank, new_item
from fakebank.bank import Bank, BankWriter, NewItem
from fakebank import campaigns as cp
from fakebank.campaigns import CampaignParams
from fakebank.dedup import EMBEDDING_MIN_KEYPOINTS, EMBEDDING_THRESHOLD, GRID_MIN_AGREEMENT, SIGNALS, DedupParams, Probe, find, grid_of, pdq_distance
from fakebank.embed import Embedding, Source
from fakebank.grid import PatchGrid, agreement, dihedral
from fakebank.signals import LOCAL_SIDE, LocalFeatures

KINDS = ("dark_flat", "star_field", "gradient_noise", "text_plain", "ui_template", "meme_template", "sky", "overcast",
         "near_solid")
FLAT_KINDS = ("sky", "overcast", "near_solid")  # drawn from their own random stream (FLAT_SEED)
FLAT_SEED = 1
WORDS = ("the quick brown fox jumps over lazy dog meeting tonight at nine bring snacks ok see you soon "
         "breaking news this is not a drill share before deleted when you finally understand the assignment "
         "me explaining my code to the rubber duck monday again").split()


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, int(size)))


def _words(r: random.Random, n: int) -> str:
    return " ".join(r.choice(WORDS) for _ in range(n))


def _size(r: random.Random) -> tuple[int, int]:
    return r.choice([(640, 480), (800, 600), (600, 600), (768, 512), (512, 768)])


def dark_flat(r: random.Random) -> Image.Image:
    w, h = _size(r)
    base = np.array([r.randint(0, 25), r.randint(0, 25), r.randint(0, 25)], np.float32)
    a = np.broadcast_to(base, (h, w, 3)).copy()
    a += np.random.default_rng(r.randint(0, 2**31)).normal(0, 1.0, a.shape)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(r.randint(3, 8)):  # a few faint, small marks
        x, y, s = r.randint(0, w), r.randint(0, h), r.randint(4, 30)
        c = tuple(int(v) + r.randint(8, 40) for v in base)
        if r.random() < 0.5:
            d.ellipse((x, y, x + s, y + s), fill=c)
        else:
            d.line((x, y, x + r.randint(-80, 80), y + r.randint(-80, 80)), fill=c, width=r.randint(1, 3))
    return im


def star_field(r: random.Random) -> Image.Image:
    w, h = _size(r)
    rng = np.random.default_rng(r.randint(0, 2**31))
    a = np.zeros((h, w, 3), np.float32)
    if r.random() < 0.5:  # a faint glow somewhere
        yy, xx = np.mgrid[0:h, 0:w]
        cx, cy, s = r.uniform(0, w), r.uniform(0, h), r.uniform(60, 250)
        glow = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)) * r.uniform(10, 40)
        a += glow[..., None] * np.array([r.uniform(0.3, 1), r.uniform(0.3, 1), 1.0])
    n = r.randint(80, 600)
    xs, ys = rng.integers(0, w, n), rng.integers(0, h, n)
    bright = rng.uniform(60, 255, n) ** 1.0
    a[ys, xs] += bright[:, None]
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(r.randint(0, 8)):  # a few bigger stars
        x, y, s = r.randint(0, w), r.randint(0, h), r.randint(2, 5)
        d.ellipse((x - s, y - s, x + s, y + s), fill=(255, 255, r.randint(200, 255)))
    return im.filter(ImageFilter.GaussianBlur(0.6))


def gradient_noise(r: random.Random) -> Image.Image:
    w, h = _size(r)
    rng = np.random.default_rng(r.randint(0, 2**31))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if r.random() < 0.5:
        ang = r.uniform(0, 2 * math.pi)
        t = (xx * math.cos(ang) + yy * math.sin(ang))
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    else:  # low-frequency noise field
        small = rng.random((r.randint(3, 8), r.randint(3, 8))).astype(np.float32)
        t = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC),
                       np.float32) / 255
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    a = c0 + t[..., None] * (c1 - c0) + rng.normal(0, 2, (h, w, 3))
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    for _ in range(r.randint(1, 4)):  # a few soft shapes
        x, y, s = r.randint(0, w), r.randint(0, h), r.randint(30, 160)
        d.ellipse((x, y, x + s, y + s), fill=tuple(int(v) for v in rng.integers(0, 256, 3)) + (r.randint(40, 110),))
    return Image.alpha_composite(im.convert("RGBA"), layer.filter(ImageFilter.GaussianBlur(8))).convert("RGB")


def text_plain(r: random.Random) -> Image.Image:
    w, h = _size(r)
    bg = r.choice([(255, 255, 255), (250, 248, 240), (20, 20, 20), (240, 244, 250), (255, 252, 220)])
    fg = (20, 20, 20) if sum(bg) > 300 else (230, 230, 230)
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    size = r.randint(18, 40)
    y = r.randint(10, 60)
    for _ in range(r.randint(2, 9)):
        d.text((r.randint(10, 60), y), _words(r, r.randint(2, 6)), fill=fg, font=_font(size))
        y += int(size * r.uniform(1.3, 2.5))
        if y > h - size:
            break
    return im


def ui_template(r: random.Random) -> Image.Image:
    """One chat app, always the same chrome; the contents differ."""
    W, H = 540, 960
    im = Image.new("RGB", (W, H), (245, 245, 245))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, W, 40), fill=(30, 30, 30))
    d.text((16, 8), f"{r.randint(1, 12)}:{r.randint(0, 59):02d}", fill=(255, 255, 255), font=_font(22))
    d.text((W - 110, 8), f"5G {r.randint(5, 99)}%", fill=(255, 255, 255), font=_font(20))
    d.rectangle((0, 40, W, 120), fill=(18, 140, 126))
    av = tuple(r.randint(40, 220) for _ in range(3))
    d.ellipse((16, 55, 66, 105), fill=av)
    d.text((80, 62), _words(r, 2).title(), fill=(255, 255, 255), font=_font(26))
    y = 140
    while y < H - 200:
        mine = r.random() < 0.5
        text = _words(r, r.randint(2, 7))
        bw = min(W - 120, 30 + 11 * len(text))
        bh = 50 if bw < W - 120 else 80
        x0 = W - bw - 16 if mine else 16
        d.rounded_rectangle((x0, y, x0 + bw, y + bh), 14, fill=(220, 248, 198) if mine else (255, 255, 255))
        d.text((x0 + 12, y + 12), text, fill=(20, 20, 20), font=_font(20))
        y += bh + r.randint(12, 30)
    d.rectangle((0, H - 90, W, H), fill=(255, 255, 255))
    d.rounded_rectangle((12, H - 75, W - 80, H - 20), 24, fill=(235, 235, 235))
    d.ellipse((W - 68, H - 78, W - 12, H - 22), fill=(18, 140, 126))
    return im


def _picture(r: random.Random, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(r.randint(0, 2**31))
    im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(r.randint(3, 9)):
        x, y = r.randint(-50, w), r.randint(-50, h)
        s = r.randint(20, max(21, w // 2))
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if r.random() < 0.5 else d.rectangle)((x, y, x + s, y + int(s * r.uniform(0.5, 1.5))), fill=c)
    return im.filter(ImageFilter.GaussianBlur(1.5))


def meme_template(r: random.Random) -> Image.Image:
    """One layout: white caption bars above and below a picture, captions in one font."""
    W, H, bar = 600, 700, 110
    im = Image.new("RGB", (W, H), (255, 255, 255))
    im.paste(_picture(r, W - 40, H - 2 * bar - 20), (20, bar + 10))
    d = ImageDraw.Draw(im)
    d.text((30, 30), _words(r, r.randint(3, 6)).upper(), fill=(0, 0, 0), font=_font(30))
    d.text((30, H - bar + 30), _words(r, r.randint(3, 6)).upper(), fill=(0, 0, 0), font=_font(30))
    return im


def sky(r: random.Random) -> Image.Image:
    """A plain sky: blue at the top, paler towards the horizon, noise, sometimes a faint cloud."""
    w, h = _size(r)
    top = np.array([r.uniform(20, 90), r.uniform(60, 140), r.uniform(150, 230)])
    bottom = top + np.array([r.uniform(60, 140), r.uniform(50, 110), r.uniform(10, 40)])
    t = np.linspace(0, 1, h)[:, None, None] ** r.uniform(0.6, 1.6)
    a = top + t * (bottom - top) + np.random.default_rng(r.randint(0, 2**31)).normal(0, r.uniform(0.5, 3), (h, w, 3))
    im = Image.fromarray(np.clip(np.broadcast_to(a, (h, w, 3)), 0, 255).astype(np.uint8))
    if r.random() < 0.5:  # a faint cloud
        layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
        x, y, s = r.randint(0, w), r.randint(0, h), r.randint(60, 300)
        ImageDraw.Draw(layer).ellipse((x, y, x + s, y + s // 2), fill=(255, 255, 255, r.randint(20, 70)))
        im = Image.alpha_composite(im.convert("RGBA"), layer.filter(ImageFilter.GaussianBlur(25))).convert("RGB")
    return im


def overcast(r: random.Random) -> Image.Image:
    """An overcast grey: near-uniform, a slight vertical gradient, a little noise."""
    w, h = _size(r)
    g = r.uniform(120, 220)
    top = np.array([g, g, g + r.uniform(-5, 10)])
    bottom = top * r.uniform(0.8, 1.1)
    t = np.linspace(0, 1, h)[:, None, None]
    a = top + t * (bottom - top) + np.random.default_rng(r.randint(0, 2**31)).normal(0, 1.5, (h, w, 3))
    return Image.fromarray(np.clip(np.broadcast_to(a, (h, w, 3)), 0, 255).astype(np.uint8))


def near_solid(r: random.Random) -> Image.Image:
    """One colour with a little noise."""
    w, h = _size(r)
    c = np.array([r.uniform(0, 255) for _ in range(3)])
    a = c + np.random.default_rng(r.randint(0, 2**31)).normal(0, r.uniform(0.5, 4), (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


GENERATORS = {"dark_flat": dark_flat, "star_field": star_field, "gradient_noise": gradient_noise,
              "text_plain": text_plain, "ui_template": ui_template, "meme_template": meme_template,
              "sky": sky, "overcast": overcast, "near_solid": near_solid}


# -- edits (as bench_dedup's families): image, rng → file bytes ----------------------------------------------

def _enc(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _crop(im: Image.Image, area: float, r: random.Random) -> Image.Image:
    s = area ** 0.5
    w, h = im.size
    cw, ch = round(w * s), round(h * s)
    x0, y0 = r.randint(0, w - cw), r.randint(0, h - ch)
    return im.crop((x0, y0, x0 + cw, y0 + ch))


T = Image.Transpose
EDITS = {
    "jpeg50": lambda im, r: _enc(im, quality=50),
    "resize50": lambda im, r: _enc(im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC), quality=90),
    "crop90": lambda im, r: _enc(_crop(im, 0.9, r), quality=90),
    "crop80": lambda im, r: _enc(_crop(im, 0.8, r), quality=90),
    "mirror": lambda im, r: _enc(im.transpose(T.FLIP_LEFT_RIGHT), quality=90),
    "rot90": lambda im, r: _enc(im.transpose(T.ROTATE_90), quality=90),
    "rot180": lambda im, r: _enc(im.transpose(T.ROTATE_180), quality=90),
    "brightness": lambda im, r: _enc(ImageEnhance.Brightness(im).enhance(1.3), quality=90),
    "contrast": lambda im, r: _enc(ImageEnhance.Contrast(im).enhance(0.7), quality=90),
    "blur": lambda im, r: _enc(im.filter(ImageFilter.GaussianBlur(2)), quality=90),
    "noise": lambda im, r: _enc(Image.fromarray(np.clip(np.asarray(im, np.float32) + np.random.default_rng(
        r.randint(0, 2**31)).normal(0, 8, (im.height, im.width, 3)), 0, 255).astype(np.uint8)), quality=90),
    "png": lambda im, r: _enc(im, "PNG"),
    "webp": lambda im, r: _enc(im, "WEBP", quality=80),
}


# -- the run ---------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="untrained:vit_small_patch16_384:0")
    ap.add_argument("--per-kind", type=int, default=340, help="bank images per kind (6 kinds; ≥ 334 for 2,000)")
    ap.add_argument("--heldout", type=int, default=30, help="images per kind kept out of the bank (their copies: negatives)")
    ap.add_argument("--positives", type=int, default=60, help="bank images per kind given an edited copy")
    ap.add_argument("--synthetic", type=int, default=100_000, help="bank size of the look-alike run (0: skip)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grid-min-agreement", type=float, default=GRID_MIN_AGREEMENT,
                    help="spatial agreement an embedding-only copy needs (default: dedup's)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the bank and the query embeddings here; a rerun on it skips the extraction")
    ap.add_argument("--campaigns-only", action="store_true", help="only the campaigns among the bank images")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_hard-"))
    work.mkdir(parents=True, exist_ok=True)
    r, r_flat = random.Random(0), random.Random(FLAT_SEED)
    stream = {kind: r_flat if kind in FLAT_KINDS else r for kind in KINDS}
    images: dict[str, tuple[str, Image.Image]] = {}  # name → (kind, image)
    for kind in KINDS:
        for k in range(args.per_kind + args.heldout):
            images[f"{kind}-{k:04d}"] = (kind, GENERATORS[kind](stream[kind]))
    bank_names = [n for n in images if int(n.rsplit("-", 1)[1]) < args.per_kind]
    held = [n for n in images if n not in set(bank_names)]
    print(f"{len(bank_names)} bank images, {len(held)} held out, {len(KINDS)} kinds; weights {args.weights}",
          file=sys.stderr)

    bank_dir, cache = work / "bank", work / "queries.pkl"
    fb = None
    ids = {}
    if bank_dir.exists():  # a rerun on the same --workdir: only what is missing is extracted
        bank = Bank.open(bank_dir)
        ids = {Path(bank.value(i, "path")).stem: i for i in bank.ids.tolist()}
    if not set(bank_names) <= set(ids):
        fb = Fakebank(bank_dir, weights=args.weights, batch_size=args.batch_size)
        t = time.perf_counter()
        srcs = (Source(f"{n}.png", _enc(images[n][1], "PNG", compress_level=1)) for n in bank_names if n not in ids)
        for rec in fb.add([], sources=srcs):
            if rec["id"] is not None:
                ids[rec["path"][:-4]] = rec["id"]
        print(f"added up to {len(ids)} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        bank = fb.open_bank()
    else:
        print(f"reusing {len(ids)} bank items from {work}", file=sys.stderr)
    ids = {n: i for n, i in ids.items() if n in images}
    name_of = {v: k for k, v in ids.items()}
    if args.campaigns_only:
        _campaigns(bank, name_of, images)
        return

    queries = []  # (owner, in bank, kind, edit, bytes)
    for kind in KINDS:
        owners = [n for n in bank_names if images[n][0] == kind][: args.positives] + [n for n in held if images[n][0] == kind]
        for n in owners:
            edit = stream[kind].choice(list(EDITS))
            queries.append((n, n in ids, kind, edit, EDITS[edit](images[n][1], stream[kind])))
    # query embeddings by the sha256 of the query's bytes: a rerun extracts only new queries
    embs_by_sha = pickle.loads(cache.read_bytes()) if cache.exists() else {}
    shas = [hashlib.sha256(q[4]).hexdigest() for q in queries]
    missing = [k for k, h in enumerate(shas) if h not in embs_by_sha]
    if missing:
        fb = fb or Fakebank(bank_dir, weights=args.weights, batch_size=args.batch_size)
        t = time.perf_counter()
        for n, e in enumerate(fb.extractor.extract(Source(f"q{k}", queries[k][4]) for k in missing)):
            if isinstance(e, Embedding):
                embs_by_sha[shas[int(e.path[1:])]] = e
            if (n + 1) % 200 == 0:
                print(f"  {n + 1}/{len(missing)} queries", file=sys.stderr)
        cache.write_bytes(pickle.dumps(embs_by_sha))
        print(f"extracted {len(missing)} queries in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    embs = [embs_by_sha.get(h) for h in shas]
    probes = [None if e is None else Probe.of_embedding(e) for e in embs]
    item_probes = {int(i): Probe.of_item(bank, int(i)) for i in bank.ids.tolist()}

    # Each signal alone; `all` is their union (dedup.find reports an item when any signal fires).
    verified = DedupParams(grid_min_agreement=args.grid_min_agreement)
    unverified = DedupParams(grid_min_agreement=-1.0)
    t = time.perf_counter()
    alone = {}
    for sig in SIGNALS:
        for tag, base in (("verified", verified), ("unverified", unverified)):
            if sig != "embedding" and tag == "unverified":
                alone[(sig, tag)] = alone[(sig, "verified")]
                continue
            params = DedupParams(**{**base.to_dict(), "signals": (sig,)})
            alone[(sig, tag)] = ([_ids(bank, pr, params) for pr in probes],
                                 {i: _ids(bank, pr, params) for i, pr in item_probes.items()})
    print(f"matched in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    for tag, title in (("verified", "with the patch-grid verification (default)"),
                       ("unverified", "WITHOUT the patch-grid check (cls cosine and the detail rule)")):
        print(f"\n== {title}")
        print(f"{'signal':10} {'kind':15} {'copies':>6} {'recall':>7} | {'false copies: of positives':>26} "
              f"{'of held-out':>11} {'in-bank pairs':>13} | {'precision':>9}")
        for sig in SIGNALS + ("all",):
            sigs = SIGNALS if sig == "all" else (sig,)
            q_sets = [set().union(*(alone[(s_, tag)][0][k] for s_ in sigs)) for k in range(len(probes))]
            b_sets = {i: set().union(*(alone[(s_, tag)][1][i] for s_ in sigs)) for i in item_probes}
            rows = _score(queries, q_sets, name_of)
            pairs = {(min(i, j), max(i, j)) for i, js in b_sets.items() for j in js}
            tot = defaultdict(int)
            for kind in KINDS:
                row = rows[kind] | {"bank_false": sum(images[name_of[a]][0] == kind for a, _ in pairs)}
                for key, v in row.items():
                    tot[key] += v
                _print_row(sig, kind, row)
            _print_row(sig, "all kinds", tot)

    _agreements(bank, queries, probes, name_of)
    _campaigns(bank, name_of, images)
    _campaigns_with_copies(bank, queries, embs, name_of)
    if args.synthetic:
        _synthetic(args.synthetic, bank, queries, probes, name_of, verified)


def _ids(bank: Bank, probe: Probe | None, params: DedupParams) -> set[int]:
    return {m.id for m in find(bank, probe, params)} if probe is not None else set()


def _score(queries, q_sets: list[set[int]], name_of: dict) -> dict:
    rows: dict = defaultdict(lambda: defaultdict(int))
    for (owner, in_bank, kind, _, _), found in zip(queries, q_sets):
        got = {name_of.get(i) for i in found}
        row = rows[kind]
        if in_bank:
            row["n"] += 1
            row["hit"] += owner in got
            row["pos_false"] += len(got - {owner})
        else:
            row["held_false"] += len(got)
    return rows


def _print_row(sig: str, kind: str, row: dict) -> None:
    false = row["pos_false"] + row["held_false"] + row["bank_false"]
    precision = row["hit"] / (row["hit"] + false) if row["hit"] + false else float("nan")
    print(f"{sig:10} {kind:15} {row['n']:6d} {row['hit'] / max(row['n'], 1):7.3f} | {row['pos_false']:26d} "
          f"{row['held_false']:11d} {row['bank_false']:13d} | {precision:9.4f}")


def _agreements(bank: Bank, queries, probes, name_of: dict) -> None:
    """Spatial agreement of the embedding signal's candidates (cls ≥ threshold, PDQ unusable)."""
    true, false = defaultdict(list), defaultdict(list)
    for (owner, in_bank, kind, edit, _), pr in zip(queries, probes):
        if pr is None:
            continue
        sims, ids = bank.search("cls", pr.cls[None, :], 17)
        for s, i in zip(sims[0], ids[0]):
            if i < 0 or s < EMBEDDING_THRESHOLD or pdq_distance(bank, pr, int(i)) is not None:
                continue
            a = agreement(pr.grid, grid_of(bank, int(i)))
            (true if name_of.get(int(i)) == owner else false)[kind].append(a)
    print("\nembedding candidates (cls ≥ %.2f, PDQ unusable): spatial agreement, true copies vs distinct images"
          % EMBEDDING_THRESHOLD)
    for kind in KINDS:
        t, f = np.array(true[kind]), np.array(false[kind])
        print(f"  {kind:15} true {len(t):5d} (min {t.min() if len(t) else float('nan'):.3f}, "
              f"median {np.median(t) if len(t) else float('nan'):.3f})   distinct {len(f):6d} (max "
              f"{f.max() if len(f) else float('nan'):.3f}, 99th pct {np.percentile(f, 99) if len(f) else float('nan'):.3f})")


def _campaigns(bank: Bank, name_of: dict, images: dict) -> None:
    """Campaigns among the bank's distinct look-alikes (every bank item selected; every campaign false), built
    as `campaigns.find_clusters` builds them; and how many items are in one with no PDQ or local-feature edge
    of their own (joined by close embeddings alone). Once as clustered, once with every embedding edge that
    passed the grid check standing alone (before embedding edges between unverified items had to pass
    dedup's embedding-copy rule)."""
    t = time.perf_counter()
    ids, graph = cp.selected_graph(bank, CampaignParams(min_p_fake=0.0))
    v = graph.verified
    _, group = connected_components(sp.coo_matrix((np.ones(int(v.sum())), (graph.i[v], graph.j[v])),
                                                  shape=(graph.n, graph.n)), directed=False)
    alone_item = np.bincount(group)[group] < 2  # no verified edge of its own
    print(f"\ncampaigns among the {len(ids)} distinct look-alikes (each one false; graph: {graph.edges} edges, "
          f"{int((graph.pdq_distance >= 0).sum())} PDQ, {int(v.sum())} verified, "
          f"{int((~v & graph.standalone).sum())} embedding edges standing alone; {time.perf_counter() - t:.0f} s):")
    seeds = np.full(len(ids), None, object)
    for tag, g in (("as clustered", graph), ("every edge alone", replace(graph, standalone=np.ones(graph.edges, bool)))):
        labels, _ = cp.cluster_graph(g, seeds)
        size = np.bincount(labels)
        members = np.flatnonzero(size[labels] >= 2)
        kinds = defaultdict(int)
        for k in members.tolist():
            kinds[images[name_of[int(ids[k])]][0]] += 1
        print(f"  {tag:17} {int((size >= 2).sum()):4d} campaigns of {len(members):4d} items (largest {size.max()}); "
              f"joined by embeddings alone: {int(alone_item[members].sum())}; items by kind {dict(sorted(kinds.items()))}")


def _campaigns_with_copies(bank: Bank, queries, embs, name_of: dict) -> None:
    """Campaigns when the bank also holds the edited copies: each positive's copy makes a true group with its
    bank original (joined by PDQ, local features or, where both have detail, embeddings), the held-out
    images' copies have no original in it. A look-alike must not join another image's group, by any edge,
    which the bank of distinct images alone never puts to the test: it holds almost no groups of copies.
    Once as clustered, once with --embedding-attach (an edge at the base bar adds an item to a group)."""
    t = time.perf_counter()
    path = Path(tempfile.mkdtemp(prefix="bench_hard_copies-"))
    originals = bank.ids.tolist()
    copies = [(q, e) for q, e in zip(queries, embs) if e is not None]
    with BankWriter(path, model_info=bank.manifest["model"], embedding_dim=bank.dim) as w:
        kept = w.add([_copy_item(bank, i) for i in originals])
        added = w.add([new_item(e, "fake", None, None, None) for _, e in copies])
    owner = {int(new): name_of[int(old)] for old, new in zip(originals, kept)}  # item id → the image it shows
    owner |= {int(item_id): q[0] for (q, _), item_id in zip(copies, added)}
    with_copies = Bank.open(path)
    ids, graph = cp.selected_graph(with_copies, CampaignParams(min_p_fake=0.0))
    in_bank = {q[0] for q, _ in copies if q[1]}
    print(f"\ncampaigns with the {len(copies)} edited copies added ({len(with_copies)} items; graph: {graph.edges} edges, "
          f"{int(graph.verified.sum())} verified; {time.perf_counter() - t:.0f} s):")
    for tag, attach in (("as clustered", False), ("--embedding-attach", True)):
        labels, _ = cp.cluster_graph(graph, np.full(len(ids), None, object), attach=attach)
        shown: dict[int, set[str]] = defaultdict(set)  # campaign → the generated images its items show
        size = np.bincount(labels)
        for k, label in enumerate(labels.tolist()):
            shown[label].add(owner[int(ids[k])])
        mixed = [label for label, names in shown.items() if len(names) > 1]
        kinds = defaultdict(int)
        for label in mixed:
            for name in shown[label]:
                kinds[name.rsplit("-", 1)[0]] += 1
        together = sum(1 for label, names in shown.items() if len(names) == 1 and size[label] >= 2
                       and next(iter(names)) in in_bank)
        print(f"  {tag:19} {together} of {len(in_bank)} originals in a campaign with their copy and nothing else; "
              f"{len(mixed)} campaigns mixing distinct images ({int(size[mixed].sum())} items"
              + (f"; images by kind {dict(sorted(kinds.items()))}" if kinds else "") + ")")


def _synthetic(n: int, real: Bank, queries, probes, name_of: dict, verified: DedupParams) -> None:
    """False copies at a bank of n items: the real bank plus look-alikes of every query (see the docstring)."""
    rng = np.random.default_rng(0)
    live = [(q, p) for q, p in zip(queries, probes) if p is not None]
    extra = n - len(real)
    per = max(1, extra // len(live))
    grids = {i: grid_of(real, i) for i in real.ids.tolist()}
    owner_id = {v: k for k, v in name_of.items()}
    path = Path(tempfile.mkdtemp(prefix="bench_hard_syn-"))
    print(f"\nsynthetic look-alike bank of {n:,} items: building …", file=sys.stderr)
    t = time.perf_counter()
    with BankWriter(path, model_info=real.manifest["model"], embedding_dim=real.dim) as w:
        w.add([_copy_item(real, i) for i in real.ids.tolist()])
        items, made = [], 0
        for (q, pr) in live:
            own = owner_id.get(q[0])
            others = [i for i in grids if i != own]
            for _ in range(per if made + per <= extra else extra - made):
                v = pr.cls + rng.normal(size=real.dim).astype(np.float32) * 0.1 / np.sqrt(real.dim)
                v /= np.linalg.norm(v)
                g = dihedral(grids[others[rng.integers(len(others))]].values.astype(np.float32))[rng.integers(8)]
                g = g / (np.linalg.norm(g) + 1e-6)
                noise = rng.normal(size=g.shape).astype(np.float32)
                g = 0.8 * g + 0.2 * noise / np.linalg.norm(noise)
                made += 1
                items.append(NewItem(sha256=f"{made:064x}", path=f"/synthetic/{made}.png", label="fake", p_fake=0.5,
                                     logit=0.0, pdq=bytes(32), pdq_quality=0, cls=v, patch=v, width=640, height=480,
                                     patch_grid=PatchGrid.quantise(g).to_bytes(), local=_detail(rng)))
                if len(items) == 20_000:
                    w.add(items)
                    items = []
        if items:
            w.add(items)
    bank = Bank.open(path)
    detailed = sum(len(pr.local) >= EMBEDDING_MIN_KEYPOINTS for _, pr in live)
    print(f"  built in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    for title, params in (("verified", verified), ("unverified", DedupParams(grid_min_agreement=-1.0))):
        false = defaultdict(int)
        for (q, pr) in live:
            for m in find(bank, pr, params):
                if bank.value(m.id, "path").startswith("/synthetic/"):
                    false[m.signal] += 1
        print(f"look-alike bank of {len(bank):,} items ({per} synthetic look-alikes per query, cls ≈ 0.995 to it; "
              f"{detailed} queries with the detail the embedding signal needs): "
              f"{title}: {sum(false.values())} false copies of {len(live)} queries "
              + (f"({dict(false)})" if false else ""))


def _detail(rng: np.random.Generator, n: int = 16) -> bytes:
    """Stored ORB keypoints of a picture with some detail, too little for ORB to judge a pair
    (EMBEDDING_MIN_KEYPOINTS ≤ n < 64), random descriptors that match nothing: without them no look-alike
    could be an embedding copy at all (dedup.embedding_can_judge), whatever its grid."""
    xy = rng.uniform(0, LOCAL_SIDE, size=(n, 2)).astype(np.float32)
    return LocalFeatures(xy=xy, desc=rng.integers(0, 256, size=(n, 32), dtype=np.uint8)).to_bytes()


def _copy_item(bank: Bank, item_id: int) -> NewItem:
    """A real bank item as a NewItem, to seed the synthetic bank with the generated images."""
    v = lambda c: bank.value(item_id, c)  # noqa: E731
    return NewItem(sha256=v("sha256"), path=v("path"), label=v("label"), p_fake=v("p_fake"), logit=v("logit"),
                   pdq=v("pdq"), pdq_quality=v("pdq_quality"), cls=bank.vector("cls", item_id),
                   patch=bank.vector("patch", item_id), width=v("width"), height=v("height"),
                   pdq_dihedral=v("pdq_dihedral"), pdq_trim=v("pdq_trim"), pdq_trim_quality=v("pdq_trim_quality"),
                   local=v("local"), patch_grid=v("patch_grid"))


if __name__ == "__main__":
    main()
