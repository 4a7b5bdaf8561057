"""Test videos made with PyAV from still images: slideshows, re-encodes, letterboxed copies, rotation.

Used by tests/test_video.py and scripts/bench_video.py. Every video is H.264 (libx264 in PyAV's wheels)
in MP4 unless asked otherwise, with a keyframe every `gop` frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps


def fit(img: Image.Image, size: tuple[int, int], mode: str = "stretch") -> Image.Image:
    """`img` as a `size` frame: stretched, or letterboxed (black bars, aspect kept), or cropped (centre)."""
    img = img.convert("RGB")
    if mode == "stretch":
        return img.resize(size, Image.Resampling.BILINEAR)
    if mode == "letterbox":
        return ImageOps.pad(img, size, color=(0, 0, 0))
    if mode == "crop":
        return ImageOps.fit(img, size)
    raise ValueError(mode)


def write_video(path: Path, scenes: Sequence[tuple[Image.Image, float]], *, fps: float = 10, size=(320, 240),
                gop: int | None = None, crf: int = 23, codec: str = "libx264", container: str | None = None,
                mode: str = "stretch", rotation: int | None = None, motion: bool = False) -> Path:
    """A slideshow: each (image, seconds) shown for that long. `motion` pans each still slowly (so that
    neighbouring frames differ as in real footage); `rotation` stores the frames turned clockwise by that
    many degrees with a display matrix that turns them back (as a phone held sideways records)."""
    out = av.open(str(path), "w", format=container)
    try:
        stream = out.add_stream(codec, rate=int(fps) if float(fps).is_integer() else fps)
        w, h = size
        if rotation in (90, 270):
            w, h = h, w
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        gop = gop or int(fps)
        if codec == "libx264":
            stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "crf": str(crf),
                              "preset": "veryfast"}
        else:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        for img, seconds in scenes:
            frame_img = fit(img, size, mode)
            n = max(1, round(seconds * fps))
            for i in range(n):
                shown = frame_img
                if motion:
                    dx = int(6 * i / n)
                    shown = frame_img.transform(size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, 0),
                                                Image.Resampling.BILINEAR)
                if rotation:
                    shown = shown.rotate(-rotation, expand=True)  # stored turned clockwise
                frame = av.VideoFrame.from_ndarray(np.asarray(shown), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    finally:
        out.close()
    return path


def reencode(src: Path, dst: Path, *, size=None, crf: int = 30, start_s: float = 0.0, end_s: float | None = None,
             mode: str = "stretch", fps: float | None = None) -> Path:
    """Decode `src` and write it again: another size (stretched or letterboxed), quality, trimmed span."""
    with av.open(str(src)) as c:
        stream = c.streams.video[0]
        rate = float(stream.average_rate)
        frames = [(f.time, f.to_image()) for f in c.decode(stream)]
    kept = [img for t, img in frames if t >= start_s - 1e-6 and (end_s is None or t < end_s - 1e-6)]
    size = size or kept[0].size
    return write_video(dst, [(img, 1 / (fps or rate)) for img in kept], fps=fps or rate, size=size, crf=crf, mode=mode)


def photos(data: Path) -> list[Image.Image]:
    """The 13 distinct bundled photos (5 Community Forensics fakes, 8 of Meta's PDQ photos), RGB."""
    pdq = data / "pdq" / "reg-test-input"
    files = sorted((data / "commfor").glob("*.png")) + sorted((pdq / "labelme-subset").glob("*.jpg")) + [
        pdq / "dih" / "bridge-1-original.jpg"]
    return [Image.open(f).convert("RGB") for f in files]
