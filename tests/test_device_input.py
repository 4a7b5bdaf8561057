"""device_input: the device-side model input equals preprocess.to_array bit for bit (on CPU tensors here;
the same code runs on CUDA, checked when a GPU is present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fakebank.device_input import decode_jpegs, model_input, resize_crop
from fakebank.preprocess import (
    COMMFOR_PREPROCESSING,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    load_rgb,
    model_view,
    resample_coeffs,
    to_array,
)

DATA = Path(__file__).parent / "data"
BRIDGE = DATA / "pdq/reg-test-input/dih/bridge-1-original.jpg"  # 1600×1004
PORTRAIT = DATA / "pdq/reg-test-input/dih/bridge-2-rotate-90.jpg"
SMALL = DATA / "pdq/misc-images/small.jpg"  # 224×399: upscaled
WEE = DATA / "pdq/misc-images/wee.jpg"  # 34×42: padded by a larger crop
COMMFOR = sorted((DATA / "commfor").glob("*.png"))
IMAGES = [COMMFOR[0], BRIDGE, PORTRAIT, SMALL, WEE]
RECIPES = {
    "commfor": COMMFOR_PREPROCESSING,
    "exact-bicubic": Preprocessing(resize=(224, 300), crop=None, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),
    "pad": Preprocessing(resize=200, crop=256, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "short-side-only": Preprocessing(resize=301, crop=None, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "odd-crop": Preprocessing(resize=(101, 300), crop=151, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # the height shrinks by more than twice as many pixels as the width: Pillow ≥ 13 starts vertically
    "squash": Preprocessing(resize=(60, 500), crop=None, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


def _chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def images() -> dict[Path, Image.Image]:
    return {p: load_rgb(p) for p in IMAGES}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_model_input_equals_to_array(images, path, recipe):
    pre = RECIPES[recipe]
    img = images[path]
    ours = model_input([_chw(img)], pre, "cpu")[0].numpy()
    reference = to_array(img, pre)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert np.array_equal(ours, reference)  # bit for bit, not within a tolerance


def test_resize_matches_pillow_on_random_sizes():
    """Pillow's fixed-point resize reproduced for both pass orders, up and down, both filters."""
    rng = np.random.default_rng(0)
    for i in range(40):
        w, h = (int(v) for v in rng.integers(8, 400, 2))
        new_h, new_w = (int(v) for v in rng.integers(4, 500, 2))
        interpolation = ("bilinear", "bicubic")[i % 2]
        pre = Preprocessing(resize=(new_h, new_w), crop=None, interpolation=interpolation,
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours = resize_crop(_chw(img), pre).permute(1, 2, 0).numpy()
        assert np.array_equal(ours, np.asarray(model_view(img, pre))), (w, h, new_w, new_h, interpolation)


def test_coefficients_sum_to_one_in_fixed_point():
    first, weights = resample_coeffs(1024, 440, "bilinear")
    assert first.shape == (440,) and weights.shape[0] == 440
    assert np.all(np.abs(weights.sum(1) - (1 << 22)) <= weights.shape[1])


def test_batch_of_mixed_sizes(images):
    batch = [images[COMMFOR[0]], images[BRIDGE], images[SMALL]]
    ours = model_input([_chw(im) for im in batch], COMMFOR_PREPROCESSING, "cpu").numpy()
    assert np.array_equal(ours, np.stack([to_array(im, COMMFOR_PREPROCESSING) for im in batch]))


def test_model_input_refuses_float_tensors():
    with pytest.raises(ValueError, match="uint8"):
        model_input([torch.zeros(3, 8, 8)], COMMFOR_PREPROCESSING, "cpu")


def test_decode_jpegs_on_cpu_is_upright_rgb(tmp_path):
    """The decoder the CUDA path uses, run on the CPU: upright (EXIF), RGB, near Pillow's pixels."""
    img = load_rgb(BRIDGE)
    rotated = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: viewers rotate 90° clockwise
    img.transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif)
    bad = b"not a jpeg"
    out = decode_jpegs([BRIDGE.read_bytes(), rotated.read_bytes(), bad], "cpu")
    assert out[2] is None
    assert tuple(out[0].shape) == (3, img.height, img.width)
    assert tuple(out[1].shape) == (3, img.height, img.width)
    ref = np.asarray(img).astype(int)
    assert np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - ref).mean() < 1.0
    assert np.abs(out[1].permute(1, 2, 0).numpy().astype(int) - ref).mean() < 3.0  # re-encoded at q95


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_model_input_on_cuda_equals_to_array(images, recipe):
    pre = RECIPES[recipe]
    batch = [images[p] for p in IMAGES]
    ours = model_input([_chw(im).pin_memory() for im in batch], pre, "cuda").cpu().numpy()
    assert np.array_equal(ours, np.stack([to_array(im, pre) for im in batch]))


@cuda
def test_decode_jpegs_on_cuda_is_close_to_pillow():
    (out,) = decode_jpegs([BRIDGE.read_bytes()], "cuda")
    ref = np.asarray(load_rgb(BRIDGE)).astype(int)
    assert out.is_cuda and np.abs(out.permute(1, 2, 0).cpu().numpy().astype(int) - ref).mean() < 1.5
