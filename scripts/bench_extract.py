"""Extraction throughput: bare model forward vs `fakebank add` end to end, per precision.

Generates N 1024-px JPEGs from the bundled real photos (random crops, rescales, small colour shifts, so
every file is distinct), then prints for each precision:
  (a) images/s of the bare forward on preloaded tensors (batch B),
  (b) images/s of `fakebank add` on the folder (decode + PDQ + forward + bank commits + index write),
  the ratio b/a, and agreement with fp32 (min CLS cosine, max |Δlogit|).

    python scripts/bench_extract.py [-n 64] [--batch-size 8] [--weights untrained:vit_small_patch16_384:0]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from fakebank.api import Fakebank
from fakebank.embed import Extractor, cpu_has_native_bf16
from fakebank.model import load_model
from fakebank.preprocess import load_rgb, to_array

ROOT = Path(__file__).resolve().parents[1]


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    photos = sorted((ROOT / "tests" / "data").rglob("*.png")) + sorted((ROOT / "tests" / "data").rglob("*.jpg"))
    photos = [Image.open(p).convert("RGB") for p in photos if Image.open(p).size[0] >= 256][:12]
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        tile = img.crop((x, y, x + cw, y + ch)).resize((1024, 1024 if i % 2 else 768), Image.BICUBIC)
        tile = ImageEnhance.Color(tile).enhance(rng.uniform(0.8, 1.2))
        path = folder / f"bench_{i:04d}.jpg"
        tile.save(path, quality=90)
        out.append(path)
    return out


def bare_forward(ex: Extractor, pixels: np.ndarray, batch: int) -> tuple[float, np.ndarray, np.ndarray]:
    ex.embed_pixels(pixels[:batch])  # warm-up
    cls, logits = [], []
    t = time.perf_counter()
    for i in range(0, len(pixels), batch):
        lg, _, c, _ = ex.embed_pixels(pixels[i : i + batch])
        cls.append(c)
        logits.append(lg)
    return len(pixels) / (time.perf_counter() - t), np.concatenate(cls), np.concatenate(logits)


def end_to_end(weights: str, files: list[Path], precision: str, batch: int, bank: Path,
               decode_threads: int | None) -> float:
    fb = Fakebank(bank, weights=weights, precision=precision, batch_size=batch)
    if decode_threads:
        fb.extractor.decode_threads = decode_threads
    # model load and warm-up are not part of the throughput
    fb.extractor.embed_pixels(np.zeros((1, 3, *[fb.extractor.model.preprocessing.input_size] * 2), np.float32))
    t = time.perf_counter()
    results = list(fb.add([str(f) for f in files]))
    elapsed = time.perf_counter() - t
    assert sum(r["status"] == "added" for r in results) == len(files), "bench images failed to add"
    return len(files) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--weights", default="untrained:vit_small_patch16_384:0")
    ap.add_argument("--decode-threads", type=int, default=None, help="default: the extractor's")
    ap.add_argument("--precisions", default=None, help="comma list; default fp32 (+bf16 where native)")
    args = ap.parse_args()
    precisions = args.precisions.split(",") if args.precisions else (
        ["fp32", "bf16"] if cpu_has_native_bf16() or torch.cuda.is_available() else ["fp32"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}, "
          f"cuda: {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "imgs").mkdir()
        files = make_jpegs(tmp / "imgs", args.n)
        model = load_model(args.weights)
        t = time.perf_counter()
        pixels = np.stack([to_array(load_rgb(f), model.preprocessing) for f in files])
        decode_ms = (time.perf_counter() - t) / len(files) * 1000
        print(f"{args.n} JPEGs (1024×1024 / 1024×768), weights {args.weights}, batch {args.batch_size}; "
              f"decode+preprocess alone {decode_ms:.1f} ms/image on one thread")
        ref_cls = ref_logit = None
        print(f"{'precision':9} {'bare img/s':>10} {'add img/s':>10} {'ratio':>6} {'min cos':>9} {'max|Δlogit|':>11}")
        for precision in precisions:
            ex = Extractor(model, precision=precision, batch_size=args.batch_size)
            bare, cls, logit = bare_forward(ex, pixels, args.batch_size)
            if ref_cls is None:
                fp32 = ex if precision == "fp32" else Extractor(model, precision="fp32")
                _, ref_cls, ref_logit = (bare, cls, logit) if precision == "fp32" else bare_forward(
                    fp32, pixels, args.batch_size)
            cos = float((cls * ref_cls).sum(1).min())
            dlogit = float(np.abs(logit - ref_logit).max())
            e2e = end_to_end(args.weights, files, precision, args.batch_size, tmp / f"bank-{precision}",
                             args.decode_threads)
            print(f"{precision:9} {bare:10.2f} {e2e:10.2f} {e2e / bare:6.2f} {cos:9.6f} {dlogit:11.5f}", flush=True)


if __name__ == "__main__":
    main()
