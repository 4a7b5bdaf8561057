"""The extractor: image files → (logit, p_fake, cls, patch, PDQ) in one forward pass per batch.

Third stage of the flow (preprocess + model → **embed** → bank). Each file is decoded once; the decoded
image feeds the model input, PDQ (through a box-averaged view of at most 768 px) and the dedup signals.
Decoding, hashing and resizing run in a bounded pool ahead of the model — threads by default (Pillow's
decode/resize and OpenCV release the GIL; pdqhash and the numpy glue hold it), or processes
(``decode_pool="process"``) to scale past a few cores — so the model is never waiting for JPEGs and
memory stays flat however many files an ``add`` walks. A file that cannot be decoded becomes a
``FailedInput`` and the batch goes on without it.

On CUDA the CPU no longer resizes for the model: it ships the decoded 8-bit image (or, for large JPEGs,
only the file, decoded on the GPU by nvJPEG while the CPU decodes a DCT-scaled draft for the hashes)
and :mod:`fakebank.device_input` resizes, crops and normalises on the GPU, bit for bit as the CPU
would from the same pixels. The batch size then comes from free GPU memory; copies use pinned memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fakebank.backends import Forward, Switchover, openvino_forward, resolve_backend
from fakebank.device_input import batch_size_for, decode_jpegs, model_input
from fakebank.errors import InputError, UsageError
from fakebank.grid import PatchGrid
from fakebank.model import LoadedModel
from fakebank.pdq import PdqHash, pdq_hash, pdq_view
from fakebank.preprocess import DEFAULT_MAX_PIXELS, Preprocessing, load_rgb, to_array
from fakebank.signals import ImageSignals, image_signals
from fakebank.thumbnails import make_thumbnail

DEFAULT_BATCH_SIZE = 8  # DESIGN §5: batch 8-16 is the CPU sweet spot; 32 is slower per image
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DECODE_POOLS = ("thread", "process")
# On CUDA, JPEGs at least this long are decoded on the GPU; the CPU then decodes a DCT-scaled draft
# (1/2 … 1/8, longer side ≥ DRAFT_SIDE) for the hashes and ORB: 4000×3000 costs ≈ 109 ms of CPU in
# full, ≈ 15 ms as a 1/4 draft. Smaller JPEGs are decoded once on the CPU (their pixels are needed for
# ORB at full LOCAL_SIDE anyway) and uploaded as 8-bit RGB, which keeps the model input bit-exact.
GPU_DECODE_MIN_SIDE = 2048
DRAFT_SIDE = 1024


@dataclass(frozen=True)
class Source:
    """One input: a path on disk, or uploaded bytes with the name the caller gave them."""

    name: str
    data: bytes | None = None  # None → read from `name`


@dataclass(frozen=True)
class Embedding:
    """Everything fakebank knows about one decoded image."""

    path: str
    sha256: str
    width: int
    height: int
    pdq: PdqHash
    logit: float
    p_fake: float
    cls: np.ndarray  # [D] float32, L2-normalised
    patch: np.ndarray  # [D] float32, L2-normalised
    signals: ImageSignals | None = None  # de-bordered PDQ and local features (dedup); None: not computed
    thumbnail: bytes | None = None  # JPEG for the bank (thumbnails.py); None: not asked for
    patch_grid: PatchGrid | None = None  # where the structure sits (grid.py); None: not computed


@dataclass(frozen=True)
class Skipped:
    """An input the caller already knows by its sha256 (not decoded, not embedded)."""

    path: str
    sha256: str


@dataclass(frozen=True)
class FailedInput:
    path: str
    error: str


@dataclass(frozen=True)
class Decoded:
    """An input read, hashed and preprocessed, waiting for the model.

    Exactly one of ``pixels`` (the model input, computed on the CPU), ``rgb`` (the decoded upright
    8-bit RGB image, [H, W, 3], resized on the device) or ``jpeg`` (the file, decoded on the device) is
    set; the last two only on CUDA."""

    path: str
    sha256: str
    width: int
    height: int
    pdq: PdqHash
    pixels: np.ndarray | None
    signals: ImageSignals | None = None
    thumbnail: bytes | None = None
    rgb: np.ndarray | None = None
    jpeg: bytes | None = None


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX); otherwise bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` → the fastest precision that keeps CLS cosine ≥ 0.9999 with fp32 on this hardware.

    On CUDA that is bf16 autocast. On a CPU with native bf16 it is bf16 autocast (≈2× fp32, DESIGN §5);
    on a CPU without it (AVX2 only) bf16 is emulated and measured ≈8× *slower* than fp32, so fp32.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        if device.type == "cuda" or cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 is only supported on CUDA; use bf16 or fp32 on the CPU")
    return precision


class Extractor:
    """Batched, overlapped extraction with one loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        decode_threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode_pool: str = "thread",
        backend: str = "auto",
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"--batch-size must be ≥ 1, not {batch_size}")
        if decode_pool not in DECODE_POOLS:
            raise UsageError(f"decode_pool must be one of {', '.join(DECODE_POOLS)}, not {decode_pool!r}")
        self.model = model
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.on_device = self.device.type == "cuda"  # the model input is made on the GPU
        self.backend = resolve_backend(backend, self.device, self.precision)
        self._compiled: Forward | None = None  # the OpenVINO forward, built on first use
        self.switchover = Switchover(model, self.precision) if self.backend == "auto-openvino" else None
        if batch_size is None:
            batch_size = (batch_size_for(self.device, model.preprocessing.input_size) if self.on_device
                          else DEFAULT_BATCH_SIZE)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        # Threads: one per core beyond the model's own (at least 2, so that decoding overlaps the
        # forward pass); a GPU box needs every core for decoding.
        cores = os.cpu_count() or 1
        self.decode_threads = decode_threads or (cores if self.on_device else max(2, min(4, cores)))
        self.decode_pool = decode_pool
        model.module.to(self.device).eval()

    # -- model side -----------------------------------------------------------------------------

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def embed_pixels(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """[B, 3, H, W] float32 → (logit [B], p_fake [B], cls [B, D], patch [B, D]) as float32 numpy."""
        return self.embed_pixels_with_grid(pixels)[:4]

    def embed_pixels_with_grid(self, pixels: np.ndarray) -> tuple:
        """`embed_pixels`' outputs and the patch grids [B, cells, cells, width] of the same forward pass."""
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        if self.on_device:
            x = x.pin_memory()
        return self._forward(x.to(self.device, non_blocking=True))

    def _forward(self, x: torch.Tensor) -> tuple:
        if self.backend == "openvino" and self._compiled is None:
            self._compiled = openvino_forward(self.model, self.precision)
        compiled = self.switchover.ready() if self.switchover is not None else self._compiled
        if compiled is not None:
            logit, cls, patch, grid = compiled(x)
        else:
            with torch.inference_mode(), self._autocast():
                logit, cls, patch, grid = self.model.forward_with_grid(x)
        logit = logit.float()
        cls = torch.nn.functional.normalize(cls.float(), dim=1)
        patch = torch.nn.functional.normalize(patch.float(), dim=1)
        return (
            logit.cpu().numpy(),
            torch.sigmoid(logit).cpu().numpy(),
            cls.cpu().numpy(),
            patch.cpu().numpy(),
            None if grid is None else grid.float().cpu().numpy(),
        )

    def _device_input(self, batch: list[Decoded]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The batch's model input on the GPU, and each image's (width, height) at full resolution."""
        pre = self.model.preprocessing
        jpegs = [i for i, d in enumerate(batch) if d.pixels is None and d.rgb is None]
        on_gpu = dict(zip(jpegs, decode_jpegs([batch[i].jpeg for i in jpegs], self.device))) if jpegs else {}
        rows, sizes = [], []
        for i, d in enumerate(batch):
            if d.pixels is not None:
                rows.append(torch.from_numpy(d.pixels).pin_memory().to(self.device, non_blocking=True))
                sizes.append((d.width, d.height))
                continue
            img = on_gpu.get(i)
            if img is None:  # an 8-bit image from the CPU (or a JPEG nvJPEG refused, decoded here instead)
                rgb = d.rgb if d.rgb is not None else np.asarray(load_rgb(d.jpeg, name=d.path, max_pixels=self.max_pixels))
                staged = torch.empty(rgb.shape, dtype=torch.uint8).pin_memory()  # page-locked: async copy
                staged.numpy()[...] = rgb
                img = staged.to(self.device, non_blocking=True).permute(2, 0, 1)
            rows.append(model_input([img], pre, self.device)[0])
            sizes.append((int(img.shape[2]), int(img.shape[1])) if d.pixels is None else (d.width, d.height))
        return torch.stack(rows), sizes

    # -- decode side ----------------------------------------------------------------------------

    def decode(self, source: Source, skip: Callable[[str], bool] | None = None, *,
               mirror: bool = True, thumbnail: bool = False) -> Decoded | Skipped:
        """Read, hash and preprocess one input; raises InputError naming it.

        `mirror=False` skips the mirror image's keypoints, which only a query uses (≈ 9 ms of ORB per
        1024-px image saved on every `add`). `thumbnail=True` also makes the bank's JPEG thumbnail from
        the image already decoded (images going into the bank)."""
        data, sha256 = _read(source)
        if skip is not None and skip(sha256):
            return Skipped(source.name, sha256)
        return decode_image(data, source.name, sha256, self.model.preprocessing, max_pixels=self.max_pixels,
                            mirror=mirror, on_device=self.on_device, thumbnail=thumbnail)

    def extract(
        self,
        sources: Iterable[Source | str | os.PathLike],
        skip: Callable[[str], bool] | None = None,
        *,
        mirror: bool = True,
        thumbnail: bool = False,
    ) -> Iterator[Embedding | Skipped | FailedInput]:
        """Yield one result per source, in input order; decoding runs ahead of the model in threads.

        `skip(sha256)` → True short-cuts an input before decoding (resuming an `add`); `thumbnail`: see decode.
        """
        # Bounded look-ahead: at most this many inputs decoded or in flight, whatever the input count —
        # the batch being filled plus two per decoder, enough to decode the next batch during a forward.
        window = self.batch_size + self.decode_threads * 2
        pending: deque[Future] = deque()
        batch: list[Decoded] = []
        with self._pool() as pool:
            it = iter(sources)
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < window:
                    try:
                        src = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    if not isinstance(src, Source):
                        src = Source(os.fspath(src))
                    pending.append(self._submit(pool, src, skip, mirror, thumbnail))
                if not pending:
                    break
                result = pending.popleft().result()
                if isinstance(result, (FailedInput, Skipped)):
                    # Reported at once: may come before images that precede it and still wait for a batch.
                    yield result
                    continue
                batch.append(result)
                if len(batch) >= self.batch_size:
                    yield from self._run_batch(batch)
                    batch = []
            yield from self._run_batch(batch)

    def _pool(self) -> Executor:
        if self.decode_pool == "thread":
            return ThreadPoolExecutor(self.decode_threads, thread_name_prefix="fakebank-decode")
        # forkserver: the workers must not inherit the parent's torch/OpenMP threads (fork would).
        return ProcessPoolExecutor(self.decode_threads, mp_context=multiprocessing.get_context("forkserver"))

    def _submit(self, pool: Executor, source: Source, skip, mirror: bool, thumbnail: bool = False) -> Future:
        if self.decode_pool == "thread":
            return pool.submit(self._decode_or_fail, source, skip, mirror, thumbnail)
        # Processes get the file's bytes: reading and the sha256 (and so `skip`, which asks the bank)
        # stay here, the decoding goes there.
        try:
            data, sha256 = _read(source)
        except InputError as e:
            return _done(FailedInput(source.name, str(e)))
        if skip is not None and skip(sha256):
            return _done(Skipped(source.name, sha256))
        return pool.submit(_decode_image_or_fail, data, source.name, sha256, self.model.preprocessing,
                           self.max_pixels, mirror, self.on_device, thumbnail)

    def _decode_or_fail(self, source: Source, skip, mirror: bool = True,
                        thumbnail: bool = False) -> Decoded | Skipped | FailedInput:
        try:
            return self.decode(source, skip, mirror=mirror, thumbnail=thumbnail)
        except InputError as e:
            return FailedInput(source.name, str(e))

    def _run_batch(self, batch: list[Decoded]) -> Iterator[Embedding]:
        if batch:
            yield from self.embed_decoded(batch)

    def embed_decoded(self, batch: list[Decoded]) -> list[Embedding]:
        """One forward pass over already-decoded inputs (the HTTP service batches across requests)."""
        if all(d.pixels is not None for d in batch):
            logit, p_fake, cls, patch, grid = self.embed_pixels_with_grid(np.stack([d.pixels for d in batch]))
            sizes = [(d.width, d.height) for d in batch]
        else:
            x, sizes = self._device_input(batch)
            logit, p_fake, cls, patch, grid = self._forward(x)
        out = []
        for i, d in enumerate(batch):
            out.append(Embedding(
                path=d.path,
                sha256=d.sha256,
                width=sizes[i][0],
                height=sizes[i][1],
                pdq=d.pdq,
                logit=float(logit[i]),
                p_fake=float(p_fake[i]),
                cls=cls[i],
                patch=patch[i],
                signals=d.signals,
                thumbnail=d.thumbnail,
                patch_grid=None if grid is None else PatchGrid.quantise(grid[i]),
            ))
        return out


def decode_image(data: bytes, name: str, sha256: str, pre: Preprocessing, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 mirror: bool = True, on_device: bool = False, thumbnail: bool = False) -> Decoded:
    """One file's bytes → :class:`Decoded`: decoded once, then the model input, both PDQ hashes and the
    dedup signals from that one image. ``on_device``: leave the model input to the GPU (ship the 8-bit
    image, or for a large JPEG only its bytes). Raises InputError naming the file."""
    if on_device and data[:3] == b"\xff\xd8\xff":
        img = load_rgb(data, name=name, max_pixels=max_pixels, draft_side=DRAFT_SIDE,
                       draft_min_side=GPU_DECODE_MIN_SIDE)
        if img.info.get("fakebank_draft"):  # decoded at 1/2 … 1/8 here; the GPU decodes it in full
            view = pdq_view(img)
            width, height = img.info["fakebank_draft"]
            signals = image_signals(img, mirror=mirror)
            sx, sy = width / img.width, height / img.height  # the content box in full-resolution pixels
            box = signals.box
            signals = dataclasses.replace(signals, box=(
                round(box[0] * sx), round(box[1] * sy), min(width, round(box[2] * sx)), min(height, round(box[3] * sy))))
            return Decoded(path=name, sha256=sha256, width=width, height=height, pdq=pdq_hash(view),
                           pixels=None, signals=signals, jpeg=data,
                           thumbnail=make_thumbnail(view) if thumbnail else None)
    else:
        img = load_rgb(data, name=name, max_pixels=max_pixels)
    return decode_pixels(img, name, sha256, pre, mirror=mirror, on_device=on_device, thumbnail=thumbnail)


def decode_pixels(img: Image.Image, name: str, sha256: str, pre: Preprocessing, *, mirror: bool = True,
                  on_device: bool = False, thumbnail: bool = False) -> Decoded:
    """An upright RGB image (a decoded file, a video frame) → :class:`Decoded`: the model input, the
    dedup signals, and PDQ and the thumbnail from one shared box-averaged view."""
    view = pdq_view(img)
    return Decoded(
        path=name,
        sha256=sha256,
        width=img.width,
        height=img.height,
        pdq=pdq_hash(view),
        pixels=None if on_device else to_array(img, pre),
        signals=image_signals(img, mirror=mirror),
        rgb=np.asarray(img) if on_device else None,
        thumbnail=make_thumbnail(view) if thumbnail else None,
    )


def _decode_image_or_fail(data: bytes, name: str, sha256: str, pre: Preprocessing, max_pixels: int,
                          mirror: bool, on_device: bool, thumbnail: bool = False) -> Decoded | FailedInput:
    try:
        return decode_image(data, name, sha256, pre, max_pixels=max_pixels, mirror=mirror, on_device=on_device,
                            thumbnail=thumbnail)
    except InputError as e:
        return FailedInput(name, str(e))


def _read(source: Source) -> tuple[bytes, str]:
    data = source.data
    if data is None:
        try:
            data = Path(source.name).read_bytes()
        except OSError as e:
            raise InputError(f"{source.name}: cannot read ({e.strerror or e}); check the path") from e
    return data, hashlib.sha256(data).hexdigest()


def _done(result) -> Future:
    f: Future = Future()
    f.set_result(result)
    return f
