"""Extraction throughput: per-stage CPU cost, bare model forward vs `fakebank add` end to end, per precision.

Generates N 1024-px JPEGs from the bundled real photos (random crops, rescales, small colour shifts, so
every file is distinct), then prints
  - the per-stage CPU time per image (core-ms, thread CPU time, median of --rounds interleaved rounds):
    decode, model input, PDQ (shared view + hash), signals (content box, de-bordered PDQ, ORB), and the
    forward pass per backend; and for `add`, what is left for the bank and the glue;
  - for each precision/backend: (a) images/s of the bare forward on preloaded tensors (batch B),
    (b) images/s of `fakebank add` on the folder (decode + PDQ + signals + forward + bank commits),
    the ratio b/a, and agreement with fp32 (min CLS cosine, max |Δlogit|);
  - on a CUDA machine, the same on the GPU path, and GPU utilisation during `add` (when pynvml is there).
CPU time is the figure to compare on a shared machine; wall-clock images/s there are only indicative.

    python scripts/bench_extract.py [-n 64] [--batch-size 8] [--weights untrained:vit_small_patch16_384:0]
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from fakebank.api import Fakebank
from fakebank.backends import openvino_available
from fakebank.embed import Extractor, cpu_has_native_bf16
from fakebank.model import load_model
from fakebank.pdq import pdq_hash, pdq_view
from fakebank.preprocess import _RESAMPLE, _center_crop, _resize, _search_box, load_rgb, to_array
from fakebank.signals import LOCAL_QUERY_FEATURES, LOCAL_SIDE, image_signals, orb_features
from fakebank.thumbnails import make_thumbnail

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


def end_to_end(weights: str, files: list[Path], precision: str, batch: int | None, bank: Path,
               decode_threads: int | None, backend: str = "auto", device: str = "auto") -> tuple[float, float]:
    """(images/s, core-ms per image) of `fakebank add` on the files."""
    fb = Fakebank(bank, weights=weights, precision=precision, batch_size=batch, device=device, backend=backend)
    if decode_threads:
        fb.extractor.decode_threads = decode_threads
    # model load and warm-up are not part of the throughput
    fb.extractor.embed_pixels(np.zeros((1, 3, *[fb.extractor.model.preprocessing.input_size] * 2), np.float32))
    t, c = time.perf_counter(), time.process_time()
    results = list(fb.add([str(f) for f in files]))
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c
    assert sum(r["status"] == "added" for r in results) == len(files), "bench images failed to add"
    return len(files) / elapsed, cpu / len(files) * 1000


def _before_to_array(img, pre) -> np.ndarray:
    """The model input as de200f8 made it: the whole image resized, then centre-cropped, then normalised."""
    view = _center_crop(_resize(img, pre.resize, _RESAMPLE[pre.interpolation]), pre.crop)
    chw = np.asarray(view).transpose(2, 0, 1).astype(np.float32, order="C")
    chw /= np.float32(255.0)
    chw -= np.asarray(pre.mean, dtype=np.float32)[:, None, None]
    chw /= np.asarray(pre.std, dtype=np.float32)[:, None, None]
    return chw


def _before_signals(img):
    """The previous image_signals (de200f8) without the mirror: content box searched on the whole small
    copy, RGB shrunk then converted for ORB, de-bordered PDQ from a bilinear 512-px copy."""
    k = min(1.0, 256 / max(img.size))
    box = _search_box(img, k, (max(1, round(img.width * k)), max(1, round(img.height * k))))
    whole = box == (0, 0, img.width, img.height)
    content = img if whole else img.crop(box)
    scale = LOCAL_SIDE / max(content.size)
    small = content.resize((round(content.width * scale), round(content.height * scale)),
                           Image.Resampling.BOX) if scale < 1 else content
    orb_features(np.asarray(small.convert("L")), LOCAL_QUERY_FEATURES)
    if not whole:
        k = 512 / max(content.size)
        trim = content.resize((max(1, round(content.width * k)), max(1, round(content.height * k))),
                              Image.Resampling.BILINEAR) if k < 1 else content
        pdq_hash(trim, max_side=None)


def _before_thumbnail(img) -> bytes:
    """The thumbnail as de200f8 made it: from the full image, bilinear with a box pre-shrink, WebP method 2."""
    scale = 256 / max(img.size)
    small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                       Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    small.save(buf, format="WEBP", quality=60, method=2)
    return buf.getvalue()


def stage_costs(datas: list[bytes], model, rounds: int) -> dict[str, tuple[float, float]]:
    """Median over rounds of the mean thread-CPU ms per image of each decode-side stage, as `add` runs
    them now (decode once, share the view; no mirror keypoints) and as it ran them before this change
    (de200f8: full-resolution PDQ, signals from the full image), interleaved image by image."""
    stages = ("decode", "model input", "PDQ", "signals", "thumbnail")
    now: dict[str, list[float]] = {k: [] for k in stages}
    before: dict[str, list[float]] = {k: [] for k in stages}
    pre = model.preprocessing
    for data in datas[:2]:  # the same work: only the cost may differ
        img = load_rgb(data)
        assert np.array_equal(to_array(img, pre), _before_to_array(img, pre)), "model input differs from de200f8's"
    for _ in range(rounds):
        s_now, s_before = dict.fromkeys(stages, 0.0), dict.fromkeys(stages, 0.0)
        for data in datas:
            t0 = time.thread_time()
            img = load_rgb(data)
            t1 = time.thread_time()
            to_array(img, pre)
            t2 = time.thread_time()
            view = pdq_view(img)
            pdq_hash(view)
            t3 = time.thread_time()
            image_signals(img, mirror=False)
            t4 = time.thread_time()
            make_thumbnail(view)
            t4b = time.thread_time()
            _before_to_array(img, pre)
            t5 = time.thread_time()
            pdq_hash(img, max_side=None)  # the old default (bilinear to 1536 px) left 1024-px images as they are
            t6 = time.thread_time()
            _before_signals(img)
            t7 = time.thread_time()
            _before_thumbnail(img)
            t8 = time.thread_time()
            for k, a, b in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4b - t4),
                               (t1 - t0, t5 - t4b, t6 - t5, t7 - t6, t8 - t7)):
                s_now[k] += a
                s_before[k] += b
        for k in stages:
            now[k].append(s_now[k] / len(datas) * 1000)
            before[k].append(s_before[k] / len(datas) * 1000)
    return {k: (statistics.median(now[k]), statistics.median(before[k])) for k in stages}


def forward_cost(ex: Extractor, pixels: np.ndarray, batch: int, rounds: int) -> float:
    """Median core-ms per image of the bare forward (process CPU time: the backend's threads count)."""
    ex.embed_pixels(pixels[:batch])
    out = []
    for _ in range(rounds):
        c = time.process_time()
        for i in range(0, len(pixels), batch):
            ex.embed_pixels(pixels[i : i + batch])
        out.append((time.process_time() - c) / len(pixels) * 1000)
    return statistics.median(out)


def gpu_utilisation(stop: threading.Event, samples: list[int]) -> None:
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - no pynvml or no driver: utilisation is simply not reported
        return
    while not stop.wait(0.1):
        samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--weights", default="untrained:vit_small_patch16_384:0")
    ap.add_argument("--decode-threads", type=int, default=None, help="default: the extractor's")
    ap.add_argument("--precisions", default=None, help="comma list; default fp32 (+bf16 where native)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per CPU-time figure (median)")
    ap.add_argument("--no-add", action="store_true", help="per-stage and forward figures only")
    ap.add_argument("--stages-only", action="store_true", help="the per-stage table only")
    args = ap.parse_args()
    precisions = args.precisions.split(",") if args.precisions else (
        ["fp32", "bf16"] if cpu_has_native_bf16() or torch.cuda.is_available() else ["fp32"])
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, avx512_bf16: {'avx512_bf16' in flags}, "
          f"amx_bf16: {'amx_bf16' in flags}, openvino: {openvino_available()}, cuda: {torch.cuda.is_available()}")
    print("CPU times are thread/process CPU (comparable on a shared machine); images/s are wall clock "
          "and only indicative where other work runs.")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "imgs").mkdir()
        files = make_jpegs(tmp / "imgs", args.n)
        model = load_model(args.weights)
        datas = [f.read_bytes() for f in files]
        pixels = np.stack([to_array(load_rgb(d), model.preprocessing) for d in datas])
        stages = stage_costs(datas, model, args.rounds)
        print(f"\n{args.n} JPEGs (1024×1024 / 1024×768), weights {args.weights}, batch {args.batch_size}")
        print(f"per-stage CPU cost per image, as `add` runs them (core-ms, median of {args.rounds} rounds; "
              "'before' = de200f8's stages, interleaved in the same run):")
        print(f"  {'stage':12} {'now':>7} {'before':>7} {'ratio':>6}")
        for k, (a, b) in stages.items():
            print(f"  {k:12} {a:7.2f} {b:7.2f} {a / b:6.2f}")
        total_now, total_before = (sum(v[i] for v in stages.values()) for i in (0, 1))
        print(f"  {'non-model':12} {total_now:7.2f} {total_before:7.2f} {total_now / total_before:6.2f}"
              "   (issue target ≤ 15 core-ms)")
        print(f"  CPU-side ceiling: {1000 / total_now:.1f} images/s per core "
              f"(what a GPU-path add is bound by, per decode core)")
        stages = {k: v[0] for k, v in stages.items()}
        if args.stages_only:
            return

        backends = ["torch"] + (["openvino"] if openvino_available() else [])
        ref_cls = ref_logit = None
        print(f"\n{'precision':9} {'backend':9} {'fwd core-ms':>11} {'bare img/s':>10} {'add img/s':>10} "
              f"{'ratio':>6} {'add core-ms':>11} {'min cos':>9} {'max|Δlogit|':>11}")
        for precision in precisions:
            for backend in backends:
                if backend == "openvino" and precision not in ("bf16", "fp32"):
                    continue
                ex = Extractor(model, device="cpu", precision=precision, batch_size=args.batch_size,
                               backend=backend)
                bare, cls, logit = bare_forward(ex, pixels, args.batch_size)
                fwd = forward_cost(ex, pixels, args.batch_size, args.rounds)
                if ref_cls is None:
                    fp32 = Extractor(model, device="cpu", precision="fp32", backend="torch")
                    _, ref_cls, ref_logit = bare_forward(fp32, pixels, args.batch_size)
                cos = float((cls * ref_cls).sum(1).min())
                dlogit = float(np.abs(logit - ref_logit).max())
                e2e, add_ms = (float("nan"), float("nan")) if args.no_add else end_to_end(
                    args.weights, files, precision, args.batch_size, tmp / f"bank-{precision}-{backend}",
                    args.decode_threads, backend, device="cpu")
                print(f"{precision:9} {backend:9} {fwd:11.1f} {bare:10.2f} {e2e:10.2f} {e2e / bare:6.2f} "
                      f"{add_ms:11.1f} {cos:9.6f} {dlogit:11.5f}", flush=True)
                if not args.no_add:
                    print(f"{'':19} add beyond the forward and the stages (bank, glue): "
                          f"{add_ms - fwd - sum(stages.values()):.1f} core-ms/image")

        if torch.cuda.is_available():
            print(f"\nCUDA: {torch.cuda.get_device_name(0)}")
            ex = Extractor(model, device="cuda", precision="bf16")
            print(f"batch size from free memory: {ex.batch_size}")
            big = np.concatenate([pixels] * max(1, 512 // len(pixels)))
            bare, _, _ = bare_forward(ex, big, ex.batch_size)
            many = make_jpegs(tmp / "gpu-imgs", max(len(files), 2048), seed=1)  # distinct: none is skipped
            stop, samples = threading.Event(), []
            watcher = threading.Thread(target=gpu_utilisation, args=(stop, samples), daemon=True)
            watcher.start()
            e2e, add_ms = end_to_end(args.weights, many, "bf16", None, tmp / "bank-cuda",
                                     args.decode_threads, device="cuda")
            stop.set()
            util = f"{statistics.mean(samples):.0f} %" if samples else "n/a (no pynvml)"
            print(f"bare forward {bare:.0f} img/s; add {e2e:.0f} img/s ({add_ms:.1f} core-ms/image); "
                  f"GPU utilisation during add {util}")


if __name__ == "__main__":
    main()
