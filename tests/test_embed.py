"""embed: one decode shared by every signal, thread and process pools alike, the CUDA path's CPU side,
and the CPU backends against eager fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fakebank.backends import openvino_available, resolve_backend
from fakebank.device_input import model_input
from fakebank.embed import Decoded, Embedding, Extractor, FailedInput, Skipped, decode_image
from fakebank.errors import UsageError
from fakebank.grid import PatchGrid, agreement
from fakebank.model import load_model
from fakebank.pdq import hamming, pdq_hash
from fakebank.preprocess import load_rgb, to_array
from fakebank.signals import image_signals

DATA = Path(__file__).parent / "data"
BRIDGE = DATA / "pdq/reg-test-input/dih/bridge-1-original.jpg"  # 1600×1004
COMMFOR = sorted((DATA / "commfor").glob("*.png"))
WEIGHTS = "untrained:test_vit:0"


@pytest.fixture(scope="module")
def model():
    return load_model(WEIGHTS)


def test_decoded_once_gives_what_each_stage_gives_alone(model):
    data = BRIDGE.read_bytes()
    d = decode_image(data, "bridge.jpg", "x" * 64, model.preprocessing, mirror=False)
    img = load_rgb(BRIDGE)
    assert (d.width, d.height) == img.size and d.rgb is None and d.jpeg is None
    assert np.array_equal(d.pixels, to_array(img, model.preprocessing))
    assert d.pdq == pdq_hash(img)
    alone = image_signals(img, mirror=False)
    assert d.signals.box == alone.box and np.array_equal(d.signals.local.desc, alone.local.desc)


def test_a_process_pool_skips_known_files_before_decoding_and_reports_failures(model, tmp_path):
    """The thread pool embeds everything; the process pool, told those sha256s are known, skips them (a
    resumed `add`) and still reports the unreadable file. (Embeddings across pools: the next test.)"""
    files = [str(p) for p in COMMFOR[:3]] + [str(tmp_path / "missing.jpg"), str(BRIDGE)]
    known = {}
    results = {}
    for pool in ("thread", "process"):
        ex = Extractor(model, device="cpu", precision="fp32", batch_size=2, decode_pool=pool, decode_threads=2,
                       backend="torch")
        out = list(ex.extract(files, skip=lambda sha: sha in known))
        results[pool] = out
        known = {o.sha256 for o in out if isinstance(o, Embedding)} if not known else known
    thread, process = results["thread"], results["process"]
    assert sum(isinstance(o, FailedInput) for o in thread) == 1 and "missing.jpg" in next(
        o.error for o in thread if isinstance(o, FailedInput))
    emb_t = [o for o in thread if isinstance(o, Embedding)]
    assert len(emb_t) == 4
    # the second run skipped what the first embedded, before decoding
    assert sorted(o.path for o in process if isinstance(o, Skipped)) == sorted(o.path for o in emb_t)
    [failed] = [o for o in process if isinstance(o, FailedInput)]
    assert "missing.jpg" in failed.error and not any(isinstance(o, Embedding) for o in process)


def test_thread_and_process_pools_embed_alike(model):
    files = [str(p) for p in COMMFOR[:2]]
    out = {}
    for pool in ("thread", "process"):
        ex = Extractor(model, device="cpu", precision="fp32", decode_pool=pool, decode_threads=1, backend="torch")
        out[pool] = list(ex.extract(files))
    for a, b in zip(out["thread"], out["process"]):
        assert a.path == b.path and a.pdq == b.pdq and np.array_equal(a.cls, b.cls)


def test_unknown_pool_is_a_usage_error(model):
    with pytest.raises(UsageError, match="decode_pool"):
        Extractor(model, device="cpu", decode_pool="fibers")


def test_device_side_decode_ships_8_bit_pixels_that_give_the_same_input(model):
    """What a CUDA extractor's decode threads produce for a 1600-px JPEG: the decoded 8-bit image (no
    model input made on the CPU), from which the device computes exactly the CPU's model input."""
    d = decode_image(BRIDGE.read_bytes(), "b.jpg", "x" * 64, model.preprocessing, on_device=True)
    assert d.pixels is None and d.jpeg is None and d.rgb.dtype == np.uint8
    x = model_input([torch.from_numpy(d.rgb.copy()).permute(2, 0, 1)], model.preprocessing, "cpu")[0].numpy()
    assert np.array_equal(x, to_array(load_rgb(BRIDGE), model.preprocessing))


def test_large_jpegs_go_to_the_gpu_as_files_and_hash_from_a_draft(model, tmp_path):
    """A 4800-px JPEG (stored turned, EXIF 6) on the CUDA path: the CPU decodes a DCT-scaled draft for
    the hashes and signals, reports the upright full size, and ships the file for nvJPEG."""
    big = load_rgb(BRIDGE).resize((4800, 3012), Image.Resampling.BICUBIC)
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    big.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)
    d = decode_image(path.read_bytes(), "big.jpg", "x" * 64, model.preprocessing, on_device=True)
    assert d.pixels is None and d.rgb is None and d.jpeg == path.read_bytes()
    assert (d.width, d.height) == (4800, 3012)
    full = decode_image(path.read_bytes(), "big.jpg", "x" * 64, model.preprocessing, on_device=False)
    assert hamming(d.pdq.hash, full.pdq.hash) <= 10  # a draft decode moves the hash a little
    assert d.signals.box == (0, 0, 4800, 3012) == full.signals.box


def test_backend_choice(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("FAKEBANK_BACKEND", raising=False)
    assert resolve_backend("torch", cpu, "bf16") == "torch"
    # auto: OpenVINO where the extra is installed, built in the background (eager torch meanwhile)
    assert resolve_backend("auto", cpu, "bf16") == ("auto-openvino" if openvino_available() else "torch")
    assert resolve_backend("auto", cpu, "fp16") == "torch"
    with pytest.raises(UsageError, match="backend"):
        resolve_backend("tensorrt", cpu, "bf16")
    with pytest.raises(UsageError, match="CPU"):
        resolve_backend("openvino", torch.device("cuda"), "bf16")
    monkeypatch.setenv("FAKEBANK_BACKEND", "openvino")
    if openvino_available():
        assert resolve_backend("auto", cpu, "bf16") == "openvino"
    else:
        with pytest.raises(UsageError, match="not installed"):
            resolve_backend("auto", cpu, "bf16")


@pytest.mark.skipif(not openvino_available(), reason="openvino extra not installed")
def test_openvino_agrees_with_eager_fp32_and_caches_the_converted_model(model, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEBANK_CACHE", str(tmp_path / "cache"))
    pixels = np.stack([to_array(load_rgb(p), model.preprocessing) for p in COMMFOR])
    ref = Extractor(model, device="cpu", precision="fp32", backend="torch").embed_pixels_with_grid(pixels)
    for precision, min_cos, max_dlogit in (("fp32", 0.999999, 1e-4), ("bf16", 0.9999, 0.01)):
        ex = Extractor(model, device="cpu", precision=precision, backend="openvino")
        logit, p_fake, cls, patch, grid = ex.embed_pixels_with_grid(pixels)
        # the patch grid comes from the same compiled pass, so embedding copies stay verifiable (grid.py)
        assert grid.shape == ref[4].shape
        for ours, theirs in zip(grid, ref[4]):
            assert agreement(PatchGrid.quantise(ours), PatchGrid.quantise(theirs)) >= 0.95
        assert cls.shape == ref[2].shape and np.allclose(np.linalg.norm(cls, axis=1), 1, atol=1e-5)
        assert float((cls * ref[2]).sum(1).min()) >= min_cos
        assert float(np.abs(logit - ref[0]).max()) <= max_dlogit
        assert np.allclose(p_fake, 1 / (1 + np.exp(-logit)), atol=1e-6)
    assert list((tmp_path / "cache" / "openvino").glob("*.xml"))  # converted once, reused


@pytest.mark.skipif(not openvino_available(), reason="openvino extra not installed")
def test_auto_runs_eager_torch_until_the_openvino_forward_is_built(model, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEBANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FAKEBANK_BACKEND")
    pixels = np.stack([to_array(load_rgb(p), model.preprocessing) for p in COMMFOR])
    eager = Extractor(model, device="cpu", precision="bf16", backend="torch").embed_pixels(pixels)
    ex = Extractor(model, device="cpu", precision="bf16")
    assert ex.backend == "auto-openvino"
    for _ in range(3):  # the third batch starts the build; all three are eager torch's
        assert np.array_equal(ex.embed_pixels(pixels)[2], eager[2])
    assert ex.switchover._thread is not None
    assert ex.switchover.wait(600) is not None
    switched = ex.embed_pixels(pixels)
    assert not np.array_equal(switched[2], eager[2]) and float((switched[2] * eager[2]).sum(1).min()) >= 0.9999


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_extract_matches_cpu_fp32(model, tmp_path):
    big = load_rgb(BRIDGE).resize((3200, 2008), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=92)
    files = [str(p) for p in COMMFOR] + [str(BRIDGE), str(tmp_path / "big.jpg")]
    cpu = list(Extractor(model, device="cpu", precision="fp32", backend="torch").extract(files))
    gpu = list(Extractor(model, device="cuda", precision="fp32").extract(files))
    for a, b in zip(cpu, gpu):
        assert (a.path, a.width, a.height) == (b.path, b.width, b.height)
        exact = not b.path.endswith("big.jpg")  # nvJPEG decodes the big one: pixels a level or two off
        assert float(a.cls @ b.cls) >= (0.9999 if exact else 0.99)


@cuda
def test_cuda_batch_size_comes_from_free_memory(model):
    ex = Extractor(model, device="cuda")
    assert ex.batch_size >= 8


def test_decoded_keeps_its_positional_fields():
    """Other code builds Decoded by keyword and by position (path … pixels, signals): still works."""
    d = Decoded("p", "s", 1, 1, None, np.zeros((3, 2, 2), np.float32))
    assert d.rgb is None and d.jpeg is None and d.signals is None
