"""The extractor: image files → (logit, p_fake, cls, patch, PDQ) in one forward pass per batch.

Third stage of the flow (preprocess + model → **embed** → bank). Decoding, hashing and resizing run in
a small thread pool ahead of the model (Pillow and PDQ release the GIL), so the model is never waiting for
JPEGs. A file that cannot be decoded becomes a ``FailedInput`` and the batch goes on without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fakebank.errors import InputError, UsageError
from fakebank.grid import PatchGrid
from fakebank.model import LoadedModel
from fakebank.pdq import PdqHash, pdq_hash
from fakebank.preprocess import DEFAULT_MAX_PIXELS, load_rgb, to_array
from fakebank.signals import ImageSignals, image_signals

DEFAULT_BATCH_SIZE = 8  # DESIGN §5: batch 8-16 is the CPU sweet spot; 32 is slower per image
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


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
    """An input read, hashed and preprocessed, waiting for the model."""

    path: str
    sha256: str
    width: int
    height: int
    pdq: PdqHash
    pixels: np.ndarray
    signals: ImageSignals | None = None


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
        batch_size: int = DEFAULT_BATCH_SIZE,
        decode_threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"--batch-size must be ≥ 1, not {batch_size}")
        self.model = model
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.decode_threads = decode_threads or min(4, os.cpu_count() or 1)
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

    def embed_pixels_with_grid(self, pixels: np.ndarray) -> tuple[np.ndarray, ...]:
        """`embed_pixels`' outputs and the patch grids [B, cells, cells, width] of the same forward pass."""
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
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
            grid.float().cpu().numpy(),
        )

    # -- decode side ----------------------------------------------------------------------------

    def decode(self, source: Source, skip: Callable[[str], bool] | None = None, *,
               mirror: bool = True) -> Decoded | Skipped:
        """Read, hash and preprocess one input; raises InputError naming it.

        `mirror=False` skips the mirror image's keypoints, which only a query uses (≈ 9 ms of ORB per
        1024-px image saved on every `add`)."""
        data = source.data
        if data is None:
            try:
                data = Path(source.name).read_bytes()
            except OSError as e:
                raise InputError(f"{source.name}: cannot read ({e.strerror or e}); check the path") from e
        sha256 = hashlib.sha256(data).hexdigest()
        if skip is not None and skip(sha256):
            return Skipped(source.name, sha256)
        img = load_rgb(data, name=source.name, max_pixels=self.max_pixels)
        return Decoded(
            path=source.name,
            sha256=sha256,
            width=img.width,
            height=img.height,
            pdq=pdq_hash(img),
            pixels=to_array(img, self.model.preprocessing),
            signals=image_signals(img, mirror=mirror),
        )

    def extract(
        self,
        sources: Iterable[Source | str | os.PathLike],
        skip: Callable[[str], bool] | None = None,
        *,
        mirror: bool = True,
    ) -> Iterator[Embedding | Skipped | FailedInput]:
        """Yield one result per source, in input order; decoding runs ahead of the model in threads.

        `skip(sha256)` → True short-cuts an input before decoding (resuming an `add`).
        """
        window = self.batch_size * 2
        pending: deque[Future] = deque()
        batch: list[Decoded] = []
        with ThreadPoolExecutor(self.decode_threads, thread_name_prefix="fakebank-decode") as pool:
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
                    pending.append(pool.submit(self._decode_or_fail, src, skip, mirror))
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

    def _decode_or_fail(self, source: Source, skip, mirror: bool = True) -> Decoded | Skipped | FailedInput:
        try:
            return self.decode(source, skip, mirror=mirror)
        except InputError as e:
            return FailedInput(source.name, str(e))

    def _run_batch(self, batch: list[Decoded]) -> Iterator[Embedding]:
        if batch:
            yield from self.embed_decoded(batch)

    def embed_decoded(self, batch: list[Decoded]) -> list[Embedding]:
        """One forward pass over already-decoded inputs (the HTTP service batches across requests)."""
        logit, p_fake, cls, patch, grid = self.embed_pixels_with_grid(np.stack([d.pixels for d in batch]))
        out = []
        for i, d in enumerate(batch):
            out.append(Embedding(
                path=d.path,
                sha256=d.sha256,
                width=d.width,
                height=d.height,
                pdq=d.pdq,
                logit=float(logit[i]),
                p_fake=float(p_fake[i]),
                cls=cls[i],
                patch=patch[i],
                signals=d.signals,
                patch_grid=PatchGrid.quantise(grid[i]),
            ))
        return out
