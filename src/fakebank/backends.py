"""CPU inference backends for the model's forward pass: eager torch (always there) and OpenVINO (optional).

Where it sits in the flow: model (a timm ViT in torch) → **backends** → embed (batches). The extractor
asks :func:`cpu_forward` for a callable ``pixels [B, 3, S, S] float32 → (logit [B], cls [B, D],
patch [B, D])`` with the same meaning as :meth:`fakebank.model.LoadedModel.forward`.

Why OpenVINO: on this project's 2-core AVX512-BF16 machines its bf16 inference ran ViT-S/16-384 with
0.40× the CPU time per image of torch's eager bf16 autocast (198 vs 495 core-ms; 1.50 vs 0.53 images/s;
scripts/bench_extract.py, interleaved rounds on a machine loaded ≈ 7× over its cores, so the absolute
figures are inflated) at the same agreement with fp32 (untrained vit_small_patch16_384 on real photos:
CLS cosine ≥ 0.99996, |Δlogit| ≤ 0.0063; eager bf16 0.99996 / 0.0061).

Why it is not the default: a fresh process pays for it before its first forward — converting the model
takes tens of seconds the first time (then it is kept on disk, one per model identity, with OpenVINO's
compiled-blob cache beside it) and loading it ≈ 1 s after that. A service restarted after a crash then
acknowledged no upload within its first 3.5 s under load (tests/test_service.py's kill -9 test; eager
torch passes it), and a one-image `query` pays more than it saves. So it is opt-in, for bulk work:
``Extractor(backend="openvino")`` or ``FAKEBANK_BACKEND=openvino`` (bf16 or fp32, CPU, with the
``openvino`` extra installed); ``auto`` is eager torch.

Never imports the bank or anything above embed.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fakebank.errors import UsageError
from fakebank.model import LoadedModel

BACKENDS = ("auto", "torch", "openvino")
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(backend: str, device: torch.device, precision: str) -> str:
    """`auto` → $FAKEBANK_BACKEND when set, else `torch` (see the module docstring for why OpenVINO,
    though faster per image, is opt-in)."""
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "auto":
        backend = os.environ.get("FAKEBANK_BACKEND", "auto")
        if backend not in BACKENDS:
            raise UsageError(f"FAKEBANK_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "auto":
        return "torch"
    if backend == "openvino":
        if device.type != "cpu":
            raise UsageError("the openvino backend runs on the CPU; use --device cpu or the torch backend")
        if precision not in ("bf16", "fp32"):
            raise UsageError(f"the openvino backend supports bf16 and fp32, not {precision}")
        if not openvino_available():
            raise UsageError("the openvino backend is not installed; pip install 'fakebank[openvino]' "
                             "or use the torch backend")
    return backend


def cache_dir() -> Path:
    """Where converted models are kept: $FAKEBANK_CACHE, else $XDG_CACHE_HOME/fakebank, else ~/.cache/fakebank."""
    root = os.environ.get("FAKEBANK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fakebank")
    return Path(root) / "openvino"


class _Outputs(torch.nn.Module):
    """The model's forward as a module with three outputs, for tracing."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__()
        self.model = model
        self.module = model.module

    def forward(self, pixels: torch.Tensor):
        return self.model.forward(pixels)


def openvino_forward(model: LoadedModel, precision: str, *, cache: Path | None = None) -> Forward:
    """An OpenVINO-compiled forward of ``model`` on the CPU, at ``precision`` (bf16 or fp32)."""
    import openvino as ov

    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    size = model.preprocessing.input_size
    ir = cache / f"{model.identity_hash[:24]}.xml"
    core = ov.Core()
    core.set_property({"CACHE_DIR": str(cache / "blobs")})
    if ir.exists() and ir.with_suffix(".bin").exists():
        converted = core.read_model(ir)
    else:
        # the tracer warns about timm's shape checks becoming constants: true, and harmless at one input size
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            converted = ov.convert_model(_Outputs(model).eval(), example_input=torch.zeros(1, 3, size, size),
                                         input=[ov.PartialShape([-1, 3, size, size])])
        # written beside under temporary names and renamed, so that a crash never leaves half a model
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            part = Path(tmp) / ir.name
            ov.save_model(converted, part, compress_to_fp16=False)
            os.replace(part.with_suffix(".bin"), ir.with_suffix(".bin"))
            os.replace(part, ir)
    compiled = core.compile_model(converted, "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
    })
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one request object: the service may call from its batcher and a handler at once

    def forward(pixels: torch.Tensor):
        with lock:
            result = request.infer({0: np.ascontiguousarray(pixels.numpy(), dtype=np.float32)})
            logit, cls, patch = (torch.from_numpy(np.array(result[compiled.output(i)])) for i in range(3))
        return logit, cls, patch

    return forward
