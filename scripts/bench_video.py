"""Video benchmark: decoding strategies, end-to-end cost per video, matching, vPDQ agreement.

    python scripts/bench_video.py [--seconds 60] [--weights untrained:vit_small_patch16_384:0] [--quick]

Prints, on this machine (CPU flags first):

1. **Decoding**: a SECONDS-long 720p H.264 video (the bundled photos, panned, 30 fps) written with a keyframe
   every 1 s and every 8 s; per strategy (keyframes / seek / nonref / exact), wall time, frames decoded,
   frames decoded per second of video, samples taken, and the strategy `auto` picks.
2. **End to end**: the same video queried against a small bank (decode + per-frame PDQ/signals + model +
   matching) vs its sampled frames queried as JPEG images; the ratio (target ≤ 2).
3. **Matching**: a bank of videos and images made from distinct photos (the bundled ones and
   scikit-image's); re-encoded, resized, trimmed (50 % kept), letterboxed and rotated copies of banked
   videos (target found ≥ 0.95), banked images shown for 2 s inside other 720p videos, letterboxed or
   cropped (target ≥ 0.95; also cropped inside a 480×270 video), unrelated videos (target 0 false matches).
4. **vPDQ agreement**: fakebank's `exact` frame hashes vs Meta's reference hashes of Meta's sample videos
   (tests/data/vpdq, plus any `--meta-dir` holding `NAME.mp4` + `NAME.txt` from ThreatExchange's
   tmk/sample-videos and vpdq/sample-hashes), and, when Meta's `vpdq` package is installed
   (`pip install -e '.[vpdq]'` after `apt-get install libavcodec-dev libavformat-dev libavutil-dev
   libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev pkg-config`), vs `vpdq.computeHash`
   on this bench's own videos: bits apart on frames of quality ≥ 50 (target ≤ 10).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test videos' writer (tests/videoutil.py)

from videoutil import photos, reencode, write_video  # noqa: E402

from fakebank import video as vid  # noqa: E402
from fakebank.api import Fakebank  # noqa: E402
from fakebank.pdq import hamming, pdq_hash  # noqa: E402

DATA = ROOT / "tests" / "data"


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags)


def all_photos() -> list[Image.Image]:
    """The 13 bundled photos plus scikit-image's colour and grey photos (distinct content)."""
    out = photos(DATA)
    try:
        import skimage.data as sd

        for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "page", "text", "coins",
                     "clock", "brick", "grass", "gravel", "horse", "immunohistochemistry", "hubble_deep_field",
                     "cat", "retina", "logo", "colorwheel", "motorcycle_left", "microaneurysms"):
            try:
                a = getattr(sd, name)()
            except Exception:  # noqa: BLE001 - a data file this install does not ship
                continue
            if isinstance(a, tuple):
                a = a[0]
            a = np.asarray(a)
            if a.dtype == bool:
                a = a.astype(np.uint8) * 255
            if a.dtype != np.uint8:
                a = (255 * (a - a.min()) / max(1e-9, float(a.max() - a.min()))).astype(np.uint8)
            if a.ndim == 3 and a.shape[2] == 4:
                a = a[:, :, :3]
            out.append(Image.fromarray(a).convert("RGB"))
    except ImportError:
        print("(scikit-image missing: fewer distinct photos; pip install -e '.[bench]')")
    return out


def bench_decoding(tmp: Path, pics, seconds: int) -> dict[str, Path]:
    print(f"\n== 1. decoding a {seconds} s 1280×720 H.264 video, 30 fps, one sample a second ==")
    made = {}
    for gop_s in (1, 8):
        t = time.perf_counter()
        path = write_video(tmp / f"hd-gop{gop_s}.mp4", [(pics[i % len(pics)], 4) for i in range(seconds // 4)],
                           fps=30, size=(1280, 720), gop=30 * gop_s, motion=True, crf=23)
        made[gop_s] = path
        print(f"-- keyframe every {gop_s} s ({path.stat().st_size / 1e6:.1f} MB, written in "
              f"{time.perf_counter() - t:.0f} s)")
        print(f"   {'strategy':10} {'wall s':>7} {'decoded':>8} {'dec/s video':>11} {'samples':>8}")
        for strategy in ("auto", "keyframes", "seek", "nonref", "exact"):
            t = time.perf_counter()
            with vid.VideoReader(path, strategy=strategy) as r:
                n = sum(1 for _ in r)
            wall = time.perf_counter() - t
            name = f"auto→{r.strategy}" if strategy == "auto" else strategy
            print(f"   {name:10} {wall:7.2f} {r.decoded:8d} {r.decoded / seconds:11.1f} {n:8d}")
    return made


def bench_end_to_end(tmp: Path, pics, video: Path, weights: str) -> None:
    print("\n== 2. end to end: the 60 s video vs its frames as JPEG images (query against a small bank) ==")
    bank = tmp / "e2e-bank"
    fb = Fakebank(bank, weights=weights)
    for i, p in enumerate(pics[:8]):
        p.save(tmp / f"b{i}.jpg", quality=90)
    list(fb.add([tmp / f"b{i}.jpg" for i in range(8)]))
    with vid.VideoReader(video) as r:
        frames = list(r)
    jpgs = []
    for f in frames:
        jpgs.append(tmp / f"frame-{f.number:06d}.jpg")
        f.image.save(jpgs[-1], quality=90)
    fb.extractor  # the model loaded outside the timings
    list(fb.query(jpgs[:2]))  # warm-up
    t = time.perf_counter()
    list(fb.query(jpgs))
    t_img = time.perf_counter() - t
    t = time.perf_counter()
    (rec,) = fb.query([video])
    t_vid = time.perf_counter() - t
    print(f"   {len(jpgs)} frames as images: {t_img:.1f} s ({len(jpgs) / t_img:.1f} img/s)")
    print(f"   the video ({rec['frames']['strategy']}, {rec['frames']['decoded']} decoded): {t_vid:.1f} s "
          f"→ {t_vid / t_img:.2f}× the images (target ≤ 2)")


def bench_matching(tmp: Path, pics, weights: str) -> None:
    print("\n== 3. matching: copies of banked videos, banked images inside videos, unrelated videos ==")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(pics))
    banked_videos = [order[i * 4:(i + 1) * 4] for i in range(4)]  # 4 videos × 4 photos, 2 s each
    banked_images = order[16:20]
    held_out = order[20:]
    fb = Fakebank(tmp / "match-bank", weights=weights)
    originals = []
    for v, idx in enumerate(banked_videos):
        originals.append(write_video(tmp / f"orig{v}.mp4", [(pics[i], 2) for i in idx], fps=15, size=(480, 360),
                                     motion=True))
    images = []
    for j, i in enumerate(banked_images):
        images.append(tmp / f"fake{j}.png")
        pics[i].save(images[-1])
    added = {Path(r["path"]).name: r["id"] for r in fb.add(originals + images, label="fake")}
    copies = []  # (path, expected id, family)
    for v, path in enumerate(originals):
        want = added[path.name]
        copies += [(reencode(path, tmp / f"re{v}.mp4", crf=38), want, "re-encoded crf 38"),
                   (reencode(path, tmp / f"small{v}.mp4", size=(256, 192)), want, "resized 256×192"),
                   (reencode(path, tmp / f"trim{v}.mp4", start_s=2, end_s=6), want, "trimmed 50 %"),
                   (reencode(path, tmp / f"lbox{v}.mp4", size=(640, 360), mode="letterbox"), want, "letterboxed 16:9"),
                   (write_video(tmp / f"rot{v}.mp4", [(pics[i], 2) for i in banked_videos[v]], fps=15,
                                size=(480, 360), rotation=90, motion=True), want, "rotation metadata")]
    shown = []  # 720p as most footage is; the small crop shows the image signals' own limit (see README)
    for j, i in enumerate(banked_images):
        bg = held_out[(2 * j) % len(held_out)], held_out[(2 * j + 1) % len(held_out)]
        want = added[images[j].name]
        for size, mode in (((1280, 720), "letterbox"), ((1280, 720), "crop"), ((480, 270), "crop")):
            family = f"{'letterboxed' if mode == 'letterbox' else 'cropped to 16:9'} {size[0]}×{size[1]}"
            scenes = [(pics[bg[0]], 3), (pics[i], 2), (pics[bg[1]], 3)]
            shown.append((write_video(tmp / f"in-{mode}{size[0]}-{j}.mp4", scenes, fps=15, size=size, mode=mode),
                          want, family))
    unrelated = [write_video(tmp / f"un{u}.mp4", [(pics[held_out[(u + k) % len(held_out)]], 2) for k in range(4)],
                             fps=15, size=(480, 360), motion=True) for u in range(6)]

    def found(cases):
        per: dict[str, list[bool]] = {}
        for (path, want, family), rec in zip(cases, fb.query([c[0] for c in cases])):
            per.setdefault(family, []).append(rec["match"] is not None and rec["match"]["id"] == want)
        return per

    t = time.perf_counter()
    per = found(copies)
    hits = sum(sum(v) for v in per.values())
    print(f"   copies of banked videos: found {hits}/{len(copies)} = {hits / len(copies):.2f} (target ≥ 0.95)")
    for family, v in per.items():
        print(f"     {family:20} {sum(v)}/{len(v)}")
    per = found(shown)
    hits = sum(sum(v) for k, v in per.items() if "1280" in k)
    n = sum(len(v) for k, v in per.items() if "1280" in k)
    print(f"   banked images shown 2 s inside 720p videos: found {hits}/{n} = {hits / n:.2f} (target ≥ 0.95)")
    for family, v in per.items():
        print(f"     {family:20} {sum(v)}/{len(v)}")
    false = sum(rec["match"] is not None or bool(rec["frames"]["videos"]) or bool(rec["frames"]["items"])
                for rec in fb.query(unrelated))
    print(f"   unrelated videos: {false} false matches of {len(unrelated)} (target 0)")
    print(f"   ({time.perf_counter() - t:.0f} s for {len(copies) + len(shown) + len(unrelated)} video queries)")


def bench_vpdq_agreement(tmp: Path, meta_dirs: list[Path], own: list[Path]) -> None:
    print("\n== 4. vPDQ agreement: frame hashes vs Meta's (bits apart, frames of quality ≥ 50) ==")
    for d in meta_dirs:
        for txt in sorted(d.glob("*.txt")):
            video = txt.with_suffix(".mp4")
            if not video.exists():
                continue
            ref = {f.frame_number: f for f in vid.read_vpdq(txt)}
            with vid.VideoReader(video, rate=1000, max_frames=100_000, strategy="exact", upright=False) as r:
                dist = [hamming(pdq_hash(f.image, max_side=None).hash, bytes.fromhex(ref[f.number].pdq_hex))
                        for f in r if f.number in ref and ref[f.number].quality >= vid.VPDQ_QUALITY_THRESHOLD]
            _report(f"{video.name} vs Meta's sample hashes", dist)
    try:
        import vpdq  # Meta's package (C++ over FFmpeg)
    except ImportError:
        print("   Meta's vpdq package not installed: own videos skipped (see the module docstring)")
        return
    for video in own:
        theirs = {f.frame_number: f for f in vpdq.computeHash(str(video), seconds_per_hash=1)}
        with vid.VideoReader(video, max_frames=100_000, strategy="exact", upright=False) as r:
            dist = [hamming(pdq_hash(f.image, max_side=None).hash, bytes.fromhex(theirs[f.number].hex))
                    for f in r if f.number in theirs and theirs[f.number].quality >= vid.VPDQ_QUALITY_THRESHOLD]
        _report(f"{video.name} vs vpdq.computeHash", dist)


def _report(what: str, dist: list[int]) -> None:
    if not dist:
        print(f"   {what}: no frame of quality ≥ 50")
        return
    d = np.asarray(dist)
    print(f"   {what}: {len(d)} frames, mean {d.mean():.2f}, max {d.max()} bits, "
          f"{(d <= 10).mean():.3f} within 10 (target 1.000)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--weights", default="untrained:vit_small_patch16_384:0")
    ap.add_argument("--meta-dir", type=Path, action="append", default=[],
                    help="a folder of Meta's sample videos (NAME.mp4) with their vPDQ hashes (NAME.txt)")
    ap.add_argument("--quick", action="store_true", help="decoding and vPDQ agreement only (no model)")
    ap.add_argument("--matching-only", action="store_true", help="section 3 alone")
    args = ap.parse_args()
    print(f"CPU flags: {cpu_flags()}; weights {args.weights}")
    pics = all_photos()
    tmp = Path(tempfile.mkdtemp(prefix="bench-video-"))
    try:
        if args.matching_only:
            bench_matching(tmp, pics, args.weights)
            return
        made = bench_decoding(tmp, pics, args.seconds)
        own = [write_video(tmp / "own-slideshow.mp4", [(p, 2) for p in pics[:6]], fps=25, motion=True),
               write_video(tmp / "own-letterbox.mp4", [(p, 2) for p in pics[6:10]], fps=30, size=(640, 360),
                           mode="letterbox"),
               write_video(tmp / "own-rotated.mp4", [(p, 2) for p in pics[10:13]], fps=24, rotation=90), made[1]]
        bench_vpdq_agreement(tmp, [DATA / "vpdq", *args.meta_dir], own)
        if not args.quick:
            bench_end_to_end(tmp, pics, made[1], args.weights)
            bench_matching(tmp, pics, args.weights)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
