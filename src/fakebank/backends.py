"""CPU inference backends for the model's forward pass: eager torch (always there) and OpenVINO (optional).

Where it sits in the flow: model (a timm ViT in torch) → **backends** → embed (batches). The extractor
gets from :func:`openvino_forward` (or a :class:`Switchover` building it) a callable ``pixels [B, 3, S, S]
float32 → (logit [B], cls [B, D], patch [B, D], patch grid [B, cells, cells, width])`` with the same
meaning as :meth:`fakebank.model.LoadedModel.forward_with_grid`.

Why OpenVINO: on this project's 2-core AVX512-BF16 machines its bf16 inference runs ViT-S/16-384 with
0.54× the CPU time per image of torch's eager bf16 autocast (99 vs 184 core-ms; fp32 171 vs 378), and
`add` at 14.8 instead of 8.6 images/s (scripts/bench_extract.py, quiet machine, 2026-12-02), at the same
agreement with fp32 (untrained vit_small_patch16_384 on real photos: CLS cosine ≥ 0.99996, |Δlogit| ≤
0.0063; eager bf16 0.99996 / 0.0069). Its compiled pass returns the patch grid too (grid.py), so items it
embeds are verified as eager torch's are. (`torch.compile` was measured too: no gain on this model.)

How it is the default without its start-up cost: a fresh process pays for OpenVINO before its first
forward — converting the model takes tens of seconds the first time (then it is kept on disk, one per
model identity, with OpenVINO's compiled-blob cache beside it) and loading it ≈ 1 s after that. Made
synchronously, a service restarted after a crash acknowledged no upload within its first 3.5 s under load
(tests/test_service.py's kill -9 test), and a one-image `query` paid more than it saved. So under
``auto`` (the default) with the ``openvino`` extra installed, the extractor runs eager torch; from its
third batch on a background thread builds the OpenVINO forward, and it switches once that is ready
(:class:`Switchover`; a one-image `query` never starts it);
without the extra, ``auto`` is eager torch. ``backend="openvino"`` (or ``FAKEBANK_BACKEND=openvino``)
waits for it instead; ``torch`` never uses it. The two agree to CLS cosine ≥ 0.9999, so items embedded
before and after the switch compare as one.

Never imports the bank or anything above embed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fakebank.errors import UsageError
from fakebank.model import LoadedModel, cache_root, grid_key

BACKENDS = ("auto", "torch", "openvino")
log = logging.getLogger("fakebank.backends")
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(backend: str, device: torch.device, precision: str) -> str:
    """The backend to run: `torch`, `openvino` (wait for it), or `auto-openvino` (eager torch until a
    background build of the OpenVINO forward is ready). `auto` → $FAKEBANK_BACKEND when set, else
    `auto-openvino` on a CPU where the extra is installed and the precision is bf16 or fp32, else `torch`."""
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "auto":
        backend = os.environ.get("FAKEBANK_BACKEND", "auto")
        if backend not in BACKENDS:
            raise UsageError(f"FAKEBANK_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "auto":
        usable = device.type == "cpu" and precision in ("bf16", "fp32") and openvino_available()
        return "auto-openvino" if usable else "torch"
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
    """Where converted models are kept (model.cache_root()/openvino)."""
    return cache_root() / "openvino"


class _Outputs(torch.nn.Module):
    """The model's forward as a module with three outputs, for tracing."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__()
        self.model = model
        self.module = model.module

    def forward(self, pixels: torch.Tensor):
        return self.model.forward_with_grid(pixels)


def openvino_forward(model: LoadedModel, precision: str, *, cache: Path | None = None) -> Forward:
    """An OpenVINO-compiled forward of ``model`` on the CPU, at ``precision`` (bf16 or fp32)."""
    import openvino as ov

    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    size = model.preprocessing.input_size
    ir = cache / f"{grid_key(model)}.xml"  # four outputs: logit, cls, patch, and the grid, whose settings it fixes
    core = ov.Core()
    core.set_property({"CACHE_DIR": str(cache / "blobs")})
    if ir.exists() and ir.with_suffix(".bin").exists():
        converted = core.read_model(ir)
    else:
        # the grid's basis is computed by a forward pass of its own: made now, it is a constant of the trace
        with torch.no_grad():
            model.forward_with_grid(torch.zeros(1, 3, size, size))
        # the tracer warns about timm's shape checks becoming constants: true, and harmless at one input size;
        # and torch.jit.trace's deprecation (a FutureWarning) is OpenVINO's to act on: neither is the user's
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
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
            logit, cls, patch, grid = (torch.from_numpy(np.array(result[compiled.output(i)])) for i in range(4))
        return logit, cls, patch, grid

    return forward


# Batches run on eager torch before the OpenVINO build starts: a one-image `query` never starts it.
SWITCH_AFTER_BATCHES = 2


class Switchover:
    """The OpenVINO forward, built in a background thread once the process has run SWITCH_AFTER_BATCHES
    batches; `ready()` is None until it is built (and for good when the build failed: the failure is logged
    once and eager torch carries on). The thread is not a daemon: a process that ends while it converts
    waits for it (OpenVINO aborts a process that exits under a running conversion), and the next process
    loads the cached result in ≈ 1 s."""

    def __init__(self, model: LoadedModel, precision: str) -> None:
        self._model, self._precision = model, precision
        self._forward: Forward | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._batches = 0

    def ready(self) -> Forward | None:
        """The OpenVINO forward when built, else None (call once per batch: it counts them)."""
        if self._forward is None and self._thread is None:
            with self._lock:
                self._batches += 1
                if self._thread is None and self._batches > SWITCH_AFTER_BATCHES:
                    self._start()
        return self._forward

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._build, name="fakebank-openvino")
        self._thread.start()

    def wait(self, timeout: float | None = None) -> Forward | None:
        """Build now if not yet started, and block until it has finished (tests, benchmarks); the forward,
        or None if it failed."""
        with self._lock:
            if self._thread is None:
                self._start()
        self._thread.join(timeout)
        return self._forward

    def _build(self) -> None:
        try:
            self._forward = openvino_forward(self._model, self._precision)
        except Exception as e:  # noqa: BLE001 - an optional speed-up: report it and keep eager torch
            log.warning("OpenVINO backend unavailable (%s: %s); carrying on with eager torch. Set "
                        "FAKEBANK_BACKEND=torch to skip it", type(e).__name__, e)
