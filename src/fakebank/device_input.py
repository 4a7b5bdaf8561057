"""Decoded 8-bit images → the model's normalised input, computed on a torch device (the CUDA path).

Where it sits in the flow::

    preprocess (decode on the CPU, or JPEG bytes) ──► device_input.model_input ──► embed (model)

On a GPU the model costs a fraction of a millisecond per image, so the CPU must not also resize and
normalise every image: this module does that on the device, bit for bit what
:func:`fakebank.preprocess.to_array` computes with Pillow (it is a forensic model; resampling changes
its evidence). Pillow resizes in 8-bit fixed point: integer weights scaled by 2**22 (the same ones,
from :func:`fakebank.preprocess.resample_coeffs`), a rounding offset, a shift and a clip to 0..255 after
each of its two passes. Here each pass is one float64 matrix product: every product is an integer below
2**31 and so is every partial sum, so float64 holds them exactly whatever order the GPU adds them in.
Only the rows and columns the centre crop keeps are computed. Normalisation is a look-up in the same
float32 table the CPU path uses.

JPEGs can also be decoded on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``); nvJPEG's IDCT and
chroma upsampling are not libjpeg-turbo's, so those pixels can differ from Pillow's by a level or two.
Everything else here runs (and is tested) on CPU tensors too. Imports torch, never the model.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from fakebank.preprocess import PIL_PRECISION_BITS, Preprocessing, normalise_table, resize_plan

_ROUND = float(1 << (PIL_PRECISION_BITS - 1))
_SCALE = float(1 << PIL_PRECISION_BITS)
# Working memory per image in a batch on the GPU, beyond the model's activations, is small (one float64
# copy of a decoded image); this is the share of free memory a batch may take (activations of a
# ViT-S/16-384 forward in bf16 ≈ 0.15 GB per 32 images, measured by torch.cuda.max_memory_allocated).
FREE_MEMORY_SHARE = 0.5


def model_input(images: list[torch.Tensor], pre: Preprocessing, device: torch.device | str) -> torch.Tensor:
    """uint8 ``[3, H, W]`` RGB tensors (any sizes, any device) → float32 ``[B, 3, S, S]`` on ``device``,
    equal to ``np.stack([preprocess.to_array(img, pre) for img in images])``."""
    device = torch.device(device)
    lut = _table(pre, device)
    out = []
    for img in images:
        if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"model_input needs uint8 [3, H, W] RGB tensors, got {img.dtype} {tuple(img.shape)}")
        u8 = resize_crop(img.to(device, non_blocking=True), pre)
        out.append(torch.stack([lut[c][u8[c].long()] for c in range(3)]))
    return torch.stack(out)


def resize_crop(img: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 ``[3, H, W]`` → uint8 ``[3, h, w]``: Pillow's resize then torchvision's centre crop
    (``preprocess.model_view``), computed where ``img`` lives."""
    _, h, w = img.shape
    plan = resize_plan((int(w), int(h)), pre)
    x = img.to(torch.float64)
    rows = _matrix(plan.rows, h, img.device)  # [h, out_rows]
    cols = _matrix(plan.cols, w, img.device)  # [w, out_cols]
    if plan.vertical_first:
        x = _pass(x.transpose(1, 2), rows).transpose(1, 2)
        x = _pass(x, cols)
    else:
        x = _pass(x, cols)
        x = _pass(x.transpose(1, 2), rows).transpose(1, 2)
    out_h, out_w = plan.out
    top, left = plan.pad
    if x.shape[1:] == (out_h, out_w):
        return x.to(torch.uint8).contiguous()
    canvas = torch.zeros((3, out_h, out_w), dtype=torch.uint8, device=img.device)
    canvas[:, top:top + x.shape[1], left:left + x.shape[2]] = x.to(torch.uint8)
    return canvas


def _pass(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """One of Pillow's 8-bit passes along the last axis: round, shift, clip (``clip8``)."""
    return torch.floor((x @ m + _ROUND) / _SCALE).clamp_(0, 255)


def _matrix(axis: tuple[np.ndarray, np.ndarray], n_in: int, device: torch.device) -> torch.Tensor:
    first, weights = axis
    return _dense(first.tobytes(), weights.tobytes(), weights.shape, n_in, str(device))


@functools.lru_cache(maxsize=64)
def _dense(first: bytes, weights: bytes, shape: tuple[int, int], n_in: int, device: str) -> torch.Tensor:
    """[n_in, n_out] float64 matrix of one pass's weights (cached: a collection has few distinct sizes)."""
    first_a = np.frombuffer(first, np.int64)
    w = np.frombuffer(weights, np.int64).reshape(shape)
    m = np.zeros((n_in, len(first_a)), np.float64)
    out_idx = np.repeat(np.arange(len(first_a)), shape[1])
    src = (first_a[:, None] + np.arange(shape[1])[None, :]).ravel()
    keep = (w.ravel() != 0) & (src < n_in)
    m[src[keep], out_idx[keep]] = w.ravel()[keep]
    return torch.from_numpy(m).to(device)


@functools.lru_cache(maxsize=8)
def _table(pre: Preprocessing, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(normalise_table(pre))).to(device)


def decode_jpegs(datas: list[bytes], device: torch.device | str) -> list[torch.Tensor | None]:
    """JPEG files → upright uint8 ``[3, H, W]`` RGB tensors decoded on ``device`` (nvJPEG on CUDA), one
    batched call; an image the device decoder refuses is ``None`` (decode it on the CPU instead)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
    except RuntimeError:  # one bad file fails the whole batched call: retry one by one
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
            except RuntimeError:
                out.append(None)
        return out


def batch_size_for(device: torch.device, input_size: int, *, width: int = 384, cap: int = 256) -> int:
    """A batch size that fits the device's free memory: the forward's activations are dominated by the
    tokens (≈ ``(input_size/16)**2 + 1`` of ``width`` values, a few live copies per block in bf16), plus
    one float64 copy of a ≈1024² decoded image per image while it is resized. At most ``cap``: more
    gains nothing on ViT-S and costs host memory (each waiting image is ≈ 3 MB of 8-bit RGB)."""
    if device.type != "cuda":
        raise ValueError("batch_size_for is for CUDA devices")
    free, _total = torch.cuda.mem_get_info(device)
    tokens = (input_size // 16) ** 2 + 1
    per_image = tokens * width * 2 * 16 + 3 * 1024 * 1024 * 8  # bf16 activations (generous) + resize copy
    return int(max(1, min(cap, free * FREE_MEMORY_SHARE // per_image)))
