"""Videos: sampled frames (PyAV), per-frame records, Meta's vPDQ hash lines and matching rule, and the
verdict of a video from its frames.

Where it sits in the flow (a video is one bank item with many frames)::

    video file ──► read_video (PyAV, ≈ 1 frame/s, rotation applied) ──► frames as images
        ──► embed (Extractor.embed_decoded: logit, cls, patch; PDQ + signals per frame)
        ──► bank (one row: the driving frame's columns + `frames` + `frame_pdq`, indexed per segment)
        ──► vpdq_matches (frame hashes → candidate videos → vPDQ's rule) + per-frame image matches
        ──► video_decision ──► api

Decoding samples one frame per ``1 / rate`` seconds (at most ``max_frames``, spread over the whole video)
and picks, per file, the cheapest of four ways to reach those frames from its keyframe spacing
(``choose_strategy``): decode keyframes only, seek to each sample, decode reference frames only, or
decode everything (vPDQ's own way, ``exact``). Every way is bounded: a damaged file gives the frames
before the damage (``complete`` false), a file with no video stream or no frame rate is an InputError,
and no file decodes more than ``DECODE_BUDGET_PER_SAMPLE`` frames per sample.

vPDQ (github.com/facebook/ThreatExchange/tree/main/vpdq): a frame's feature is ``frame_number, quality,
pdq_hex, timestamp`` (one line each, timestamp = frame_number / fps with 3 decimals, as vpdq-hash-video
writes them); two videos match when enough of the query's unique usable frames are within 31 bits of
some frame of the other (``vpdq_compare``, the defaults of python-threatexchange's vpdq_util.py).

Never imports torch: ``embed_video`` imports the extractor's records only when called.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fakebank.decide import Decision, FusionParams, Neighbor, fuse, verdict_of
from fakebank.errors import InputError, TooLargeError, UsageError
from fakebank.pdq import PDQ_MIN_QUALITY

# -- what counts as a video ----------------------------------------------------------------------------

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts",
                  ".mts", ".flv", ".3gp", ".3g2", ".wmv", ".asf", ".ogv"}
# ISO-BMFF brands that are still images (HEIF/AVIF, which Pillow reads), not videos.
_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
SNIFF_BYTES = 512


def sniff_video(head: bytes) -> bool:
    """Whether a file's first bytes are a video container (MP4/MOV/3GP, Matroska/WebM, AVI, FLV, MPEG-PS,
    MPEG-TS, ASF), so that a video without a telling name is not read as a broken image."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return head[8:12] not in _IMAGE_BRANDS
    if head[:4] in (b"\x1aE\xdf\xa3", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    if head[:3] == b"FLV" or head[:16] == bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"):
        return True
    if head[:4] == b"GIF8":  # starts with MPEG-TS's sync byte 0x47 ("G")
        return False
    return len(head) > 376 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47  # MPEG-TS sync


def is_video(name: str, data: bytes | None = None) -> bool:
    """By extension, else by content (`data`, or the file's first bytes)."""
    if Path(name).suffix.lower() in VIDEO_SUFFIXES:
        return True
    if data is None:
        try:
            with open(name, "rb") as f:
                data = f.read(SNIFF_BYTES)
        except OSError:
            return False
    return sniff_video(data[:SNIFF_BYTES])


# -- decoding -----------------------------------------------------------------------------------------

DEFAULT_RATE = 1.0  # sampled frames per second (vPDQ's default seconds_per_hash = 1)
DEFAULT_MAX_FRAMES = 600  # a longer video is sampled more sparsely (evenly over its whole length)
DEFAULT_MAX_PIXELS = 50_000_000  # per frame, as for images (preprocess.DEFAULT_MAX_PIXELS)
# No video decodes more than this many frames per sample taken: a file whose keyframes are hours apart
# (or a damaged index) ends early with `complete` false instead of decoding for hours.
DECODE_BUDGET_PER_SAMPLE = 300
# Keyframes are listed from the container's index when it has one entry per frame (MP4/MOV: free);
# otherwise packets are demuxed (not decoded) for this long to measure their spacing (≈ 40 ms a minute).
KEYFRAME_PROBE_S = 60.0
STRATEGIES = ("auto", "keyframes", "seek", "nonref", "exact")
# Relative cost of reaching the samples, in decoded inter frames (measured by scripts/bench_video.py on
# 720p H.264; the figures for a 60 s file: all frames 4.9–7.3 s, reference frames only 2.8–4.4 s,
# a seek a second 2.0 s at 1 s keyframes, keyframes only 0.23 s):
KEYFRAME_COST = 1.5  # an intra frame vs an inter frame
SEEK_COST = 4.0  # a seek: index look-up, decoder flush, the first packets again
NONREF_SHARE = 0.6  # share of frames a decoder still decodes when it skips non-reference frames
DEMUX_COST = 0.02  # reading (not decoding) one packet


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the video stream (before any frame is decoded)."""

    duration_s: float | None
    fps: float  # average frame rate, else the stream's guessed/base rate (as vPDQ: avg, then r_frame_rate)
    width: int  # as coded (the frames' display matrix may turn them: VideoReader.rotation)
    height: int
    codec: str
    frame_count: int | None
    keyframe_gap_s: float | None  # largest gap between keyframes seen (None: not listed)

    def to_dict(self) -> dict:
        return {"duration_s": None if self.duration_s is None else round(self.duration_s, 3),
                "fps": round(self.fps, 3), "frame_count": self.frame_count, "codec": self.codec}


@dataclass(frozen=True)
class SampledFrame:
    number: int  # display index (vPDQ's frame number: timestamp × fps)
    timestamp: float  # seconds from the start of the stream
    image: Image.Image  # upright 8-bit RGB


def choose_strategy(info: VideoInfo, interval_s: float) -> str:
    """The cheapest way to reach one frame every `interval_s` seconds, from the keyframe spacing.

    keyframes — decode keyframes only, when there is one at least every interval (take the first of each);
    seek — jump to each sample's keyframe and decode forward to it (dense keyframes, sparse samples);
    nonref — decode every reference frame in order (keyframes far apart, samples close).
    Costs in decoded inter frames per sample (constants above; compared in scripts/bench_video.py).
    """
    fps, gap = info.fps, info.keyframe_gap_s
    gap = gap if gap and gap > 0 else None
    per_sample = interval_s * fps  # frames between two samples
    costs = {"nonref": per_sample * (NONREF_SHARE + DEMUX_COST)}
    if gap is not None:
        costs["seek"] = SEEK_COST + KEYFRAME_COST + gap * fps / 2
        if gap <= interval_s + 1.5 / fps:
            costs["keyframes"] = max(1.0, interval_s / gap) * KEYFRAME_COST + per_sample * DEMUX_COST
    return min(costs, key=costs.get)


class VideoReader:
    """One video file or upload, opened; iterate for its sampled frames (bounded, see the module doc).

    After iteration: `decoded` (frames the decoder returned), `complete` and `note` (why it ended early).
    """

    def __init__(self, source: str | os.PathLike | bytes, *, name: str | None = None, rate: float = DEFAULT_RATE,
                 max_frames: int = DEFAULT_MAX_FRAMES, strategy: str = "auto",
                 max_pixels: int = DEFAULT_MAX_PIXELS, upright: bool = True) -> None:
        import av  # PyAV: imported here so that image-only work never loads FFmpeg

        if rate <= 0 or not math.isfinite(rate):
            raise UsageError(f"the video sampling rate must be > 0 frames per second, not {rate}")
        if max_frames < 1:
            raise UsageError(f"--max-frames must be ≥ 1, not {max_frames}")
        if strategy not in STRATEGIES:
            raise UsageError(f"video strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        self._av = av
        self.name = name or ("upload" if isinstance(source, bytes) else os.fspath(source))
        self._source = source
        self.max_frames = max_frames
        self.upright = upright  # apply the display matrix (vpdq-hash-video does not)
        self.decoded = 0
        self.complete = True
        self.note: str | None = None
        self.rotation: int | None = None  # counter-clockwise turn of the display matrix, from the first frame
        self._last_time: float | None = None  # of the last frame decoded (a truncated stream ends early)
        self._container = self._open()
        try:
            streams = self._container.streams.video
            if not streams:
                raise InputError(f"{self.name}: has no video stream (audio only?); pass a video or an image")
            self._stream = streams[0]
            self.info = self._probe(self._stream)
            if self.info.width * self.info.height > max_pixels:
                raise TooLargeError(f"{self.name}: frames of {self.info.width}×{self.info.height} are over the "
                                    f"limit of {max_pixels:,} pixels; downscale the video first")
            interval = 1.0 / rate
            # vPDQ: every int(seconds_per_hash × fps)th frame
            self.step = max(1, int(interval * self.info.fps))
            frames_total = self.info.frame_count or (self.info.duration_s or 0.0) * self.info.fps
            if math.ceil(frames_total / self.step - 1e-6) > max_frames:
                # sparser, but still over the whole video: rounded up, or the last samples never come
                # (1,000 s at 1 fps into 600 frames would otherwise take frames 0–599; 590 s at 29.97 fps,
                # every 29th frame, would be 610 samples)
                self.step = max(1, math.ceil(frames_total / max_frames - 1e-6))
                interval = self.step / self.info.fps
            self.interval_s = interval  # the spacing of the samples, as reported
            self.strategy = choose_strategy(self.info, interval) if strategy == "auto" else strategy
        except BaseException:
            self._container.close()
            raise

    def _open(self):
        av = self._av
        try:
            src = io.BytesIO(self._source) if isinstance(self._source, bytes) else os.fspath(self._source)
            return av.open(src, "r", metadata_errors="ignore")
        except FileNotFoundError as e:
            raise InputError(f"{self.name}: no such file; check the path") from e
        except (av.FFmpegError, OSError, ValueError) as e:
            raise InputError(f"{self.name}: not a readable video ({getattr(e, 'strerror', None) or e}); is it "
                             "truncated, or not a video?") from e

    def _probe(self, stream) -> VideoInfo:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if not (fps > 0 and math.isfinite(fps)) or fps > 1000:
            raise InputError(f"{self.name}: the video stream has no usable frame rate ({rate}); re-mux it with "
                             "a frame rate (e.g. ffmpeg -r 30 -i IN -c copy OUT)")
        tb = float(stream.time_base) if stream.time_base else None
        duration = None
        if stream.duration and tb:
            duration = stream.duration * tb
        elif self._container.duration:
            duration = self._container.duration / 1_000_000
        cc = stream.codec_context
        if not cc.width or not cc.height:
            raise InputError(f"{self.name}: the video stream has no frame size; the file is damaged")
        frames = int(stream.frames) if stream.frames else None
        return VideoInfo(duration_s=duration, fps=fps, width=cc.width, height=cc.height, codec=cc.name,
                         frame_count=frames, keyframe_gap_s=self._keyframe_gap(stream, frames, tb, fps))

    def _keyframe_gap(self, stream, frames, tb, fps) -> float | None:
        """Largest spacing of keyframes over the first KEYFRAME_PROBE_S seconds: from the container's index
        when it lists every frame (MP4/MOV), else from demuxed packets (the container is then reopened)."""
        if not tb:
            return None
        times: list[float] = []
        entries = stream.index_entries
        if frames and len(entries) >= frames:
            n = min(len(entries), int(KEYFRAME_PROBE_S * fps) + 1)  # a 10-hour index is not walked whole
            probed = [entries[i] for i in range(n)]
            times = [e.timestamp * tb for e in probed if e.is_keyframe]
            end = probed[-1].timestamp * tb
        else:
            end = 0.0
            try:
                for packet in self._container.demux(stream):
                    if packet.pts is None and packet.dts is None:
                        continue
                    t = (packet.pts if packet.pts is not None else packet.dts) * tb
                    end = max(end, t)
                    if packet.is_keyframe:
                        times.append(t)
                    if end - (times[0] if times else 0.0) > KEYFRAME_PROBE_S:
                        break
            except self._av.FFmpegError:
                pass  # a damaged file: what was read is all we know
            self._container.close()
            self._container = self._open()
            self._stream = self._container.streams.video[0]
        if not times:
            return None
        times.sort()
        gaps = np.diff(times + [max(end, times[-1])])
        return float(gaps.max()) if len(gaps) and gaps.max() > 0 else None  # one keyframe, one instant: unknown

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sampling ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[SampledFrame]:
        step = self.step
        budget = max(DECODE_BUDGET_PER_SAMPLE, step) * (min(self.max_frames, self._expected_samples(step)) + 1)
        taken = 0
        try:
            frames = self._seek_frames(step) if self.strategy == "seek" else self._sequential(step)
            for number, frame in frames:
                if taken >= self.max_frames:
                    self._stop(f"stopped at --max-frames {self.max_frames}")
                    return
                if self.decoded > budget:
                    self._stop(f"stopped after decoding {self.decoded} frames for {taken} samples")
                    return
                yield SampledFrame(number=number, timestamp=number / self.info.fps, image=self._upright(frame))
                taken += 1
        except self._av.FFmpegError as e:
            self._stop(f"decoding stopped at a damaged part ({getattr(e, 'strerror', None) or e})")
        duration = self.info.duration_s
        slack = max(self.interval_s, self.info.keyframe_gap_s or 0.0 if self.strategy == "keyframes" else 0.0) + 1.0
        if self.complete and duration and self._last_time is not None and self._last_time < duration - slack:
            self._stop(f"the stream ends at {self._last_time:.1f} s of the {duration:.1f} s its header gives: truncated?")
        if taken == 0:
            raise InputError(f"{self.name}: no frame could be decoded ({self.note or 'empty stream'}); "
                             "is the file truncated?")

    def _expected_samples(self, step: int) -> int:
        if self.info.frame_count:
            return -(-self.info.frame_count // step)
        if self.info.duration_s:
            return int(self.info.duration_s * self.info.fps / step) + 1
        return self.max_frames

    def _stop(self, why: str) -> None:
        self.complete, self.note = False, why

    def _number(self, frame) -> int | None:
        t = frame.time
        if t is not None:
            self._last_time = max(self._last_time or 0.0, t)
        if t is None:
            return None
        start = float(self._stream.start_time * self._stream.time_base) if self._stream.start_time else 0.0
        return max(0, round((t - start) * self.info.fps))

    def _sequential(self, step: int) -> Iterator[tuple[int, object]]:
        """keyframes / nonref / exact: one pass in display order; a frame is taken when its number reaches
        the next multiple of `step` (exact: the decoder's own count, as vPDQ numbers frames)."""
        stream = self._stream
        stream.thread_type = "AUTO"
        if self.strategy == "keyframes":
            stream.codec_context.skip_frame = "NONKEY"
        elif self.strategy == "nonref":
            stream.codec_context.skip_frame = "NONREF"
        target = 0
        for count, frame in enumerate(self._container.decode(stream)):
            self.decoded += 1
            timed = self._number(frame)
            number = count if self.strategy == "exact" else timed
            if number is None:
                number = count
            if number >= target:
                yield number, frame
                target = (number // step + 1) * step

    def _seek_frames(self, step: int) -> Iterator[tuple[int, object]]:
        """seek: for each sample, jump to the keyframe before it and decode forward to it."""
        stream, tb = self._stream, float(self._stream.time_base)
        start = stream.start_time or 0
        total = self._expected_samples(step)
        last = -1
        for k in range(total):
            target = k * step
            if target <= last:
                continue
            self._container.seek(start + int(target / self.info.fps / tb), stream=stream, backward=True,
                                 any_frame=False)
            for frame in self._container.decode(stream):
                self.decoded += 1
                number = self._number(frame)
                if number is None or number >= target:
                    if number is not None and number > last:
                        last = number
                        yield number, frame
                    break
            else:
                return  # past the end

    def _upright(self, frame) -> Image.Image:
        """RGB as displayed: FFmpeg's display matrix turns the coded frame `rotation` degrees counter-
        clockwise (its CLI's autorotate does the same); Pillow's ROTATE_90 is a counter-clockwise turn."""
        img = frame.to_image()  # RGB24 through swscale
        self.rotation = round(frame.rotation / 90) * 90 % 360
        if not self.upright:
            return img
        turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
                270: Image.Transpose.ROTATE_270}.get(self.rotation)
        return img.transpose(turn) if turn is not None else img


# -- per-frame records and the bank's `frames` blob ---------------------------------------------------

_BLOB_MAGIC = b"FBV1"


def frame_dtype(dim: int) -> np.dtype:
    """One sampled frame as stored: 82 bytes + the cls embedding in float16 (2 × dim)."""
    return np.dtype([("number", "<i4"), ("timestamp", "<f4"), ("quality", "u1"), ("trim_quality", "u1"),
                     ("pdq", "u1", 32), ("pdq_trim", "u1", 32), ("logit", "<f4"), ("cls", "<f2", (dim,))])


NO_TRIM = 255  # trim_quality of a frame whose content box is the whole frame (no de-bordered hash)


@dataclass(frozen=True)
class FrameRecord:
    """What the bank keeps of one sampled frame."""

    number: int
    timestamp: float
    pdq: bytes
    quality: int
    pdq_trim: bytes | None
    trim_quality: int
    logit: float
    cls: np.ndarray  # [D] float32 (stored as float16)


def pack_frames(frames: Sequence[FrameRecord], dim: int) -> bytes:
    arr = np.zeros(len(frames), frame_dtype(dim))
    for i, f in enumerate(frames):
        arr[i] = (f.number, f.timestamp, f.quality, NO_TRIM if f.pdq_trim is None else f.trim_quality,
                  np.frombuffer(f.pdq, np.uint8), np.frombuffer(f.pdq_trim or bytes(32), np.uint8), f.logit,
                  f.cls.astype(np.float16))
    return _BLOB_MAGIC + np.uint16(dim).tobytes() + arr.tobytes()


def unpack_frames(blob: bytes) -> np.ndarray:
    """The structured array `pack_frames` wrote (fields as `frame_dtype`)."""
    if not blob or blob[:4] != _BLOB_MAGIC:
        raise ValueError("not a fakebank frames blob")
    dim = int(np.frombuffer(blob, "<u2", 1, 4)[0])
    return np.frombuffer(blob, frame_dtype(dim), offset=6)


def index_codes(frames: Sequence[FrameRecord]) -> bytes:
    """The hashes the bank's frame_pdq shard indexes for a video: every usable (quality ≥ 50) unique
    frame hash, whole and de-bordered, 32 bytes each."""
    codes: dict[bytes, None] = {}
    for f in frames:
        if f.quality >= PDQ_MIN_QUALITY:
            codes[f.pdq] = None
        if f.pdq_trim is not None and f.trim_quality >= PDQ_MIN_QUALITY:
            codes[f.pdq_trim] = None
    return b"".join(codes)


# -- vPDQ: hash lines and the matching rule -------------------------------------------------------------

# python-threatexchange, threatexchange/extensions/vpdq/vpdq_util.py
VPDQ_TIMESTAMP_PRECISION = 3
VPDQ_QUALITY_THRESHOLD = 50
VPDQ_DISTANCE_THRESHOLD = 31
VPDQ_QUERY_MATCH_THRESHOLD_PERCENT = 80.0
VPDQ_INDEX_MATCH_THRESHOLD_PERCENT = 0.0
_VPDQ_LINE = re.compile(r"^\s*(-?\d+),(\d+),([0-9a-fA-F]{64}),(-?[0-9.]+(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class VpdqFeature:
    """One line of a vPDQ hash: `frame_number,quality,pdq_hex,timestamp`."""

    frame_number: int
    quality: int
    pdq_hex: str
    timestamp: float

    def line(self) -> str:
        return f"{self.frame_number},{self.quality},{self.pdq_hex},{self.timestamp:.{VPDQ_TIMESTAMP_PRECISION}f}"


def vpdq_features(frames: Sequence[FrameRecord] | np.ndarray) -> list[VpdqFeature]:
    """The vPDQ features of stored or fresh frame records (the whole-frame hash, never the de-bordered)."""
    if isinstance(frames, np.ndarray):
        return [VpdqFeature(int(f["number"]), int(f["quality"]), bytes(f["pdq"]).hex(), float(f["timestamp"]))
                for f in frames]
    return [VpdqFeature(f.number, f.quality, f.pdq.hex(), f.timestamp) for f in frames]


def write_vpdq(features: Sequence[VpdqFeature], out: str | os.PathLike | io.TextIOBase) -> None:
    """Write features as vpdq-hash-video does: one `frame_number,quality,pdq_hex,timestamp` line each
    (timestamp with 3 decimals), `\\n`-terminated. `export --format vpdq` calls this per video."""
    text = "".join(f.line() + "\n" for f in features)
    if isinstance(out, (str, os.PathLike)):
        Path(out).write_text(text)
    else:
        out.write(text)


def looks_like_vpdq(text: str) -> bool:
    """Whether the first non-blank line is a vPDQ hash line (`frame_number,quality,pdq_hex,timestamp`)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return _VPDQ_LINE.match(first) is not None


def read_vpdq(source: str | os.PathLike | io.TextIOBase) -> list[VpdqFeature]:
    """Parse vPDQ hash lines (vpdq-hash-video's output, or `write_vpdq`'s); blank lines are skipped and
    any other malformed line is an InputError naming its number."""
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "vpdq input")
    try:
        text = Path(source).read_text() if isinstance(source, (str, os.PathLike)) else source.read()
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror or e}); check the path") from e
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _VPDQ_LINE.match(line)
        if not m or not 0 <= int(m.group(2)) <= 100:
            raise InputError(f"{name}:{n}: not a vPDQ line (frame_number,quality,pdq_hex,timestamp): {line[:100]!r}")
        out.append(VpdqFeature(int(m.group(1)), int(m.group(2)), m.group(3).lower(), float(m.group(4))))
    return out


@dataclass(frozen=True)
class VpdqMatch:
    query_match_percent: float
    compared_match_percent: float

    def is_match(self, query_threshold: float = VPDQ_QUERY_MATCH_THRESHOLD_PERCENT,
                 compared_threshold: float = VPDQ_INDEX_MATCH_THRESHOLD_PERCENT) -> bool:
        return self.query_match_percent >= query_threshold and self.compared_match_percent >= compared_threshold


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _distances(a: np.ndarray, b: np.ndarray, block: int = 128) -> np.ndarray:
    """Hamming distances [len(a), len(b)] between rows of 32-byte codes (in blocks of `a`'s rows, so that
    two 600-frame videos with all their alternative hashes need a few MB of temporaries, not hundreds)."""
    out = np.zeros((len(a), len(b)), np.int32)
    for i in range(0, len(a) if len(b) else 0, block):
        out[i:i + block] = _POPCOUNT[a[i:i + block, None, :] ^ b[None, :, :]].sum(axis=2, dtype=np.int32)
    return out


def vpdq_compare(query: Sequence[VpdqFeature], compared: Sequence[VpdqFeature], *,
                 quality_threshold: int = VPDQ_QUALITY_THRESHOLD,
                 distance_threshold: int = VPDQ_DISTANCE_THRESHOLD) -> VpdqMatch:
    """Meta's rule (vpdq_brute_matcher.match_VPDQ_hash_brute): unique hashes of quality ≥ 50 on each side;
    the share of each side's frames within 31 bits of some frame of the other. An empty side gives 0 %
    (python-threatexchange divides by zero there)."""
    def prepare(features):
        unique = dict.fromkeys(f.pdq_hex for f in features if f.quality >= quality_threshold)
        return np.array([np.frombuffer(bytes.fromhex(h), np.uint8) for h in unique], np.uint8).reshape(-1, 32)

    q, c = prepare(query), prepare(compared)
    d = _distances(q, c) <= distance_threshold
    return VpdqMatch(_percent(d.any(axis=1)), _percent(d.any(axis=0)))


def _percent(hits: np.ndarray) -> float:
    return float(hits.sum() * 100.0 / len(hits)) if len(hits) else 0.0


# -- matching a video against the bank -----------------------------------------------------------------

# A banked image is reported inside a video when it matches at least this many sampled frames (≈ seconds
# on screen at 1 frame/s): a lone frame is too weak against per-frame false matches (each frame is one
# more chance), and the bar is a fake shown for ≥ 2 s. A video of fewer frames needs all of them.
MIN_FRAME_HITS = 2
# The video's model/kNN score is this quantile of its frames' scores (nearest rank, upper): a fake cut
# into a tenth of the video is enough to flag it, one odd frame is not.
VIDEO_SCORE_QUANTILE = 0.9


@dataclass(frozen=True)
class QueryFrame:
    """One sampled frame of a query video, after the model: its hashes (dihedral and de-bordered) and cls."""

    number: int
    timestamp: float
    pdq: bytes
    quality: int
    dihedral: tuple[bytes, ...]
    pdq_trim: bytes | None
    trim_quality: int
    logit: float
    cls: np.ndarray


@dataclass(frozen=True)
class VideoMatch:
    """A banked video matched by vPDQ's rule (frame hashes whole or de-bordered, all 8 orientations)."""

    id: int
    vpdq: VpdqMatch
    min_distance: int
    timestamps: list[float]  # query frames that matched


def vpdq_matches(bank, frames: Sequence[QueryFrame], *, distance: int = VPDQ_DISTANCE_THRESHOLD,
                 query_threshold: float = VPDQ_QUERY_MATCH_THRESHOLD_PERCENT,
                 compared_threshold: float = VPDQ_INDEX_MATCH_THRESHOLD_PERCENT,
                 exclude: int | None = None) -> list[VideoMatch]:
    """Banked videos that match the query frames, strongest first.

    Candidates come from the bank's frame_pdq shards (every query hash looked up, exact to `distance`);
    each is then compared with vPDQ's rule, where a query frame stands for its 8 dihedral hashes and its
    de-bordered hash, and a stored frame for its whole and de-bordered hashes (so letterboxed, rotated and
    mirrored copies match as re-encodes do). Percentages are over unique frames of quality ≥ 50.
    """
    usable = _unique_usable(frames)
    if not usable:
        return []
    alts = [_alternatives(f) for f in usable]
    flat = np.frombuffer(b"".join(h for a in alts for h in a), np.uint8).reshape(-1, 32)
    owner = np.repeat(np.arange(len(alts)), [len(a) for a in alts])
    candidates: set[int] = set()
    for found in bank.frame_pdq_within(flat, distance):
        candidates.update(found)
    candidates.discard(exclude)
    out = []
    for item_id in candidates:
        stored = unpack_frames(bank.value(item_id, "frames"))
        codes, who = _stored_codes(stored)
        if not len(codes):
            continue
        d = _distances(flat, codes)
        hit = d <= distance
        q_hit = np.zeros(len(alts), bool)
        np.logical_or.at(q_hit, owner, hit.any(axis=1))
        c_frames = np.unique(who)
        c_hit = np.zeros(who.max() + 1, bool)
        np.logical_or.at(c_hit, who, hit.any(axis=0))
        m = VpdqMatch(_percent(q_hit), _percent(c_hit[c_frames]))
        if m.is_match(query_threshold, compared_threshold):
            out.append(VideoMatch(id=item_id, vpdq=m, min_distance=int(d.min()),
                                  timestamps=[round(usable[i].timestamp, 3) for i in np.flatnonzero(q_hit)]))
    out.sort(key=lambda m: (-m.vpdq.query_match_percent, -m.vpdq.compared_match_percent, m.min_distance))
    return out


def _unique_usable(frames: Sequence[QueryFrame]) -> list[QueryFrame]:
    seen: dict[bytes, QueryFrame] = {}
    for f in frames:
        if f.quality >= PDQ_MIN_QUALITY and f.pdq not in seen:
            seen[f.pdq] = f
    return list(seen.values())


def _alternatives(f: QueryFrame) -> list[bytes]:
    alts = dict.fromkeys(f.dihedral)
    if f.pdq_trim is not None and f.trim_quality >= PDQ_MIN_QUALITY:
        alts[f.pdq_trim] = None
    return list(alts)


def _stored_codes(stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, frame of each) of a stored video's unique usable frames: whole hash, plus de-bordered."""
    _, first = np.unique(stored["pdq"], axis=0, return_index=True)
    keep = np.sort(first[stored["quality"][first] >= PDQ_MIN_QUALITY])
    codes, who = [stored["pdq"][keep]], [keep]
    trim = keep[(stored["trim_quality"][keep] != NO_TRIM) & (stored["trim_quality"][keep] >= PDQ_MIN_QUALITY)]
    codes.append(stored["pdq_trim"][trim]), who.append(trim)
    return np.concatenate(codes).astype(np.uint8), np.concatenate(who)


@dataclass(frozen=True)
class FrameMatch:
    """A banked item (an image, or a video by its representative frame) seen in the query's frames."""

    neighbor: Neighbor
    timestamps: list[float]
    frame_numbers: list[int]
    signal: str | None


def frame_matches(frames: Sequence[QueryFrame], per_frame: Sequence[Sequence[Neighbor]], *,
                  skip: Callable[[int], bool] = lambda _id: False) -> list[FrameMatch]:
    """Banked items judged near-duplicates (`per_frame`: each frame's neighbours; those with a `signal`
    count) in ≥ MIN_FRAME_HITS frames (all frames of a shorter video), most frames first. `skip(id)`:
    items reported otherwise (videos matched by vPDQ)."""
    hits: dict[int, list[tuple[QueryFrame, Neighbor]]] = {}
    for f, neighbors in zip(frames, per_frame):
        for n in neighbors:
            if n.signal is not None and not skip(n.id):
                hits.setdefault(n.id, []).append((f, n))
    need = min(MIN_FRAME_HITS, len(frames))
    out = []
    for item_id, seen in hits.items():
        if len(seen) < need:
            continue
        best = min((n for _, n in seen), key=lambda n: (n.pdq_distance if n.pdq_distance is not None else 257,
                                                         -n.similarity))
        out.append(FrameMatch(neighbor=best, timestamps=[round(f.timestamp, 3) for f, _ in seen],
                              frame_numbers=[f.number for f, _ in seen], signal=best.signal))
    out.sort(key=lambda m: (-len(m.timestamps), m.neighbor.pdq_distance if m.neighbor.pdq_distance is not None
                            else 257, -m.neighbor.similarity))
    return out


def driving_index(scores: Sequence[float], quantile: float = VIDEO_SCORE_QUANTILE) -> int:
    """The frame whose score is the `quantile` of all (nearest rank, upper): the frame that drives a
    video's model/kNN verdict."""
    if not len(scores):
        raise ValueError("a video verdict needs at least one frame")
    order = np.argsort(np.asarray(scores, np.float64), kind="stable")
    rank = min(len(order) - 1, max(0, math.ceil(quantile * len(order)) - 1))
    return int(order[rank])


@dataclass(frozen=True)
class VideoDecision:
    """A video's verdict: the frame decision that drove it, or the known copy it is."""

    decision: Decision
    frame: int  # index into the query frames of the driving frame (the first matched frame for a copy)
    video_matches: list[VideoMatch] = field(default_factory=list)
    frame_matches: list[FrameMatch] = field(default_factory=list)
    match_kind: str | None = None  # "video" (vPDQ) | "frames" (an item seen in frames) | None


def video_decision(frames: Sequence[QueryFrame], decisions: Sequence[Decision],
                   video_matches: Sequence[VideoMatch], frame_hits: Sequence[FrameMatch],
                   labels: dict[int, str], neighbor_of: Callable[[int], Neighbor],
                   params: FusionParams) -> VideoDecision:
    """The verdict rule for videos (README "Videos"):

    1. known copy — a banked video matched by vPDQ's rule, or a banked item seen in ≥ MIN_FRAME_HITS
       frames, labelled fake or real: the verdict is its label (`near_duplicate`). A fake match comes
       before a real one (a real video with a known fake cut into it is fake), then vPDQ matches before
       frame matches, then the stronger.
    2. otherwise the model/kNN score of the frame at VIDEO_SCORE_QUANTILE of the frames' scores (each frame
       scored as an image: its logit fused with its own neighbours' vote), and that frame's reason.
    """
    known = [("video", m.id, i) for i, m in enumerate(video_matches)] + \
            [("frames", m.neighbor.id, i) for i, m in enumerate(frame_hits)]
    labelled = [k for k in known if labels.get(k[1]) in ("fake", "real")]
    if labelled:
        kind, item_id, i = min(labelled, key=lambda k: (labels[k[1]] != "fake", k[0] != "video", k[2]))
        label = labels[item_id]
        first_ts = (video_matches[i].timestamps if kind == "video" else frame_hits[i].timestamps)[0]
        frame = next((j for j, f in enumerate(frames) if round(f.timestamp, 3) == first_ts), 0)
        match = neighbor_of(item_id) if kind == "video" else frame_hits[i].neighbor
        d = decisions[frame]
        # copies of the same moments labelled the other way, for an analyst (a real item seen at other
        # moments is other footage, not a dispute)
        def moments(k) -> set[float]:
            return set(video_matches[k[2]].timestamps if k[0] == "video" else frame_hits[k[2]].timestamps)

        other = "real" if label == "fake" else "fake"
        shown = moments((kind, item_id, i))
        disputed = list(dict.fromkeys(k[1] for k in labelled if labels[k[1]] == other and moments(k) & shown))
        decision = Decision(label, "near_duplicate", 1.0 if label == "fake" else 0.0, d.p_model, d.p_knn, match,
                            d.neighbors, disputed_by=disputed)
        return VideoDecision(decision, frame, list(video_matches), list(frame_hits), kind)
    # A frame judged a copy on its own (fewer than MIN_FRAME_HITS frames) counts by its model/kNN score.
    scores = [fuse(f.logit, d.p_knn, params) for f, d in zip(frames, decisions)]
    frame = driving_index(scores)
    d = decisions[frame]
    if d.reason == "near_duplicate":
        d = Decision(verdict_of(scores[frame], params), "knn" if d.p_knn is not None else "model", scores[frame],
                     d.p_model, d.p_knn, None, d.neighbors)
    return VideoDecision(d, frame, list(video_matches), list(frame_hits), None)


# -- a video through the extractor ---------------------------------------------------------------------

@dataclass(frozen=True)
class VideoEmbedding:
    """A video decoded, sampled and embedded: one QueryFrame and one extractor Embedding per sampled frame."""

    path: str
    sha256: str
    info: VideoInfo
    strategy: str
    interval_s: float
    decoded: int
    complete: bool
    note: str | None
    rotation: int
    width: int  # as displayed
    height: int
    frames: list[QueryFrame]
    embeddings: list  # embed.Embedding per frame (signals included), in frame order

    @property
    def duration_s(self) -> float:
        return self.info.duration_s if self.info.duration_s is not None else self.frames[-1].timestamp

    def summary(self) -> dict:
        """The `frames` summary of a record: how the video was sampled (per-frame detail stays out)."""
        return {"count": len(self.frames), "decoded": self.decoded, "strategy": self.strategy,
                "interval_s": round(self.interval_s, 3), **self.info.to_dict(), "width": self.width,
                "height": self.height, "rotation": self.rotation, "complete": self.complete, "note": self.note}

    def records(self) -> list[FrameRecord]:
        return [FrameRecord(number=f.number, timestamp=f.timestamp, pdq=f.pdq, quality=f.quality,
                            pdq_trim=f.pdq_trim, trim_quality=f.trim_quality, logit=f.logit, cls=f.cls)
                for f in self.frames]


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file read in chunks (videos are not read whole to be hashed)."""
    import hashlib

    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError as e:
        raise InputError(f"{os.fspath(path)}: no such file; check the path") from e
    except OSError as e:
        raise InputError(f"{os.fspath(path)}: cannot read ({e.strerror or e}); check the path") from e


def thumbnail_of_video(path: str | None, sha256: str | None, frames_blob: bytes | None) -> bytes:
    """A banked video's thumbnail from its original file (still there, unchanged): the frame that drives
    its verdict (`driving_index` of the stored frames' logits), as `add` stores it."""
    from fakebank.thumbnails import make_thumbnail

    if not path:
        raise InputError("the item has no stored path; it was added without a file")
    if sha256 and file_sha256(path) != sha256:
        raise InputError(f"{path}: the file changed since it was added (sha256 differs); not the item's video")
    stored = unpack_frames(frames_blob) if frames_blob else None
    number = int(stored["number"][driving_index(stored["logit"])]) if stored is not None and len(stored) else 0
    with VideoReader(path) as reader:
        last = None
        for frame in reader:
            last = frame
            if frame.number >= number:
                break
    if last is None:
        raise InputError(f"{path}: no frame could be decoded")
    return make_thumbnail(last.image)


def embed_video(extractor, name: str, data: bytes | None = None, *, sha256: str | None = None,
                rate: float = DEFAULT_RATE, max_frames: int = DEFAULT_MAX_FRAMES, strategy: str = "auto",
                mirror: bool = True, thumbnail: bool = False,
                embed: Callable[[list], list] | None = None) -> VideoEmbedding:
    """Sample a video (file `name`, or uploaded `data`) and run its frames through the extractor as images:
    PDQ, content box and ORB features in the extractor's decode threads, one forward pass per batch
    (`embed`: a batch of embed.Decoded → their Embeddings; default the extractor's own `embed_decoded`,
    the HTTP service passes its micro-batcher). `thumbnail`: each frame's bank thumbnail too (for `add`:
    the item keeps its driving frame's). Raises InputError/TooLargeError naming the video."""
    import hashlib

    from fakebank.embed import Decoded, decode_pixels

    if sha256 is None:
        sha256 = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(name)
    embed = embed or extractor.embed_decoded
    prep = extractor.model.preprocessing

    def prepare(frame: SampledFrame) -> tuple[Decoded, Image.Image]:
        img = frame.image
        decoded = decode_pixels(img, f"{name}#t={frame.timestamp:.3f}", sha256, prep, mirror=mirror,
                                thumbnail=thumbnail)
        return decoded, _luma_thumb(img)

    sampled: list[tuple[int, float, Image.Image]] = []  # (number, timestamp, luma thumbnail)
    embeddings: list = []
    with VideoReader(data if data is not None else name, name=name, rate=rate, max_frames=max_frames,
                     strategy=strategy, max_pixels=extractor.max_pixels) as reader, \
            ThreadPoolExecutor(extractor.decode_threads, thread_name_prefix="fakebank-frames") as pool:
        pending = []
        thumbs: list[Image.Image] = []
        for frame in reader:
            sampled.append((frame.number, frame.timestamp))
            pending.append(pool.submit(prepare, frame))
            if len(pending) >= extractor.batch_size:
                done = [f.result() for f in pending]
                embeddings += embed([d for d, _ in done])
                thumbs += [t for _, t in done]
                pending = []
        if pending:
            done = [f.result() for f in pending]
            embeddings += embed([d for d, _ in done])
            thumbs += [t for _, t in done]
        width, height = (reader.info.height, reader.info.width) if reader.rotation in (90, 270) else \
            (reader.info.width, reader.info.height)
        trims = _video_trims(embeddings, thumbs, (width, height))
        frames = [QueryFrame(number=number, timestamp=ts, pdq=e.pdq.hash, quality=e.pdq.quality,
                             dihedral=e.pdq.dihedral, pdq_trim=trim[0] if trim else None,
                             trim_quality=trim[1] if trim else NO_TRIM, logit=e.logit, cls=e.cls)
                  for (number, ts), e, trim in zip(sampled, embeddings, trims)]
        return VideoEmbedding(path=name, sha256=sha256, info=reader.info, strategy=reader.strategy,
                              interval_s=reader.interval_s, decoded=reader.decoded, complete=reader.complete,
                              note=reader.note, rotation=reader.rotation or 0, width=width, height=height,
                              frames=frames, embeddings=embeddings)


# Frames are kept as luma thumbnails of this longer side until the video's content box is known: PDQ
# works on a 64 × 64 luma grid, and 256 px keeps its hash within a few bits of the full frame's.
THUMB_SIDE = 512


def _luma_thumb(img: Image.Image) -> Image.Image:
    scale = THUMB_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BOX)
    return img.convert("L")


def _video_trims(embeddings: Sequence, thumbs: Sequence[Image.Image],
                 size: tuple[int, int]) -> list[tuple[bytes, int] | None]:
    """Each frame's PDQ (hash, quality) inside the video's content box, or None when the video has no bars.

    Letterbox and pillarbox bars are the same in every frame, but one frame's own content box also cuts
    whatever dark or flat edge its picture has. The video's box is the union of its frames' boxes (frames
    of quality ≥ 50 only: a flat frame's box means nothing), so only what every frame lacks is cut."""
    from fakebank.pdq import pdq_hash

    boxes = [e.signals.box for e in embeddings if e.pdq.quality >= PDQ_MIN_QUALITY and e.signals is not None]
    if not boxes:
        return [None] * len(embeddings)
    b = np.array(boxes)
    box = (int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max()))
    if box == (0, 0, *size):
        return [None] * len(embeddings)
    out = []
    for t in thumbs:
        sx, sy = t.width / size[0], t.height / size[1]
        crop = t.crop((round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)))
        h = pdq_hash(crop.convert("RGB"), max_side=None)
        out.append((h.hash, h.quality))
    return out


def item_vpdq(bank, item_id: int) -> list[VpdqFeature] | None:
    """A banked video's vPDQ features (its stored sampled frames), or None for an image item. For
    `export --format vpdq`: `write_vpdq(item_vpdq(bank, id), out)`."""
    blob = bank.value(item_id, "frames")
    return vpdq_features(unpack_frames(blob)) if blob else None
