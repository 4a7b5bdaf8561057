"""Shared fixtures: a tiny ViT written in each real checkpoint layout, and seeded images.

Every checkpoint is made by the library that publishes that layout (transformers' ``save_pretrained``,
huggingface_hub's ``PyTorchModelHubMixin`` as the Community Forensics authors use it, timm's
``save_for_hf``), so tests can compare fakebank against the original model as an oracle. Models are
tiny (2 blocks, width 64–128, 64-px input) and built once per session.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# The same embeddings whatever extras are installed: under `auto` an extractor switches to OpenVINO
# mid-run where that extra is there (backends.Switchover). Tests of that path ask for it by name.
os.environ.setdefault("FAKEBANK_BACKEND", "torch")
# What fakebank derives from a model (grid bases, converted models) goes to a cache of this test session,
# not the user's.
os.environ.setdefault("FAKEBANK_CACHE", tempfile.mkdtemp(prefix="fakebank-test-cache-"))

TINY_IMG = 64  # input side of every tiny checkpoint
TINY_PATCH = 16
TINY_DEPTH = 2
# Heads cannot be read from tensor shapes; layouts whose config does not name them (the authors' wrapper,
# bare files) are built with timm's standard 64-wide heads.
TINY_WIDTH_STD_HEADS = 128
TINY_HEADS = 2


@dataclass(frozen=True)
class TinyCheckpoint:
    """A checkpoint on disk and the original library's own model object that wrote it (the oracle)."""

    path: Path  # folder, or the .safetensors file for bare checkpoints
    oracle: object  # the transformers / timm module, eval mode
    processor: object | None = None  # transformers image processor, when the layout has one


def seeded_image(seed: int, size: tuple[int, int] = (120, 90)):
    """A smooth-ish RGB test image (PIL), the same for the same seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
    noise = rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


@pytest.fixture
def image_factory():
    return seeded_image


def _tiny_timm_vit(seed: int, *, embed_dim: int, num_heads: int, num_classes: int):
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=TINY_IMG, patch_size=TINY_PATCH, embed_dim=embed_dim, depth=TINY_DEPTH, num_heads=num_heads,
        mlp_ratio=2.0, num_classes=num_classes,
    ).eval()


def _transformers_checkpoint(folder: Path, *, seed: int, id2label: dict | None, processor_kwargs: dict):
    transformers = pytest.importorskip("transformers")
    import torch

    labels = dict(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()}) \
        if id2label else dict(num_labels=1)
    config = transformers.ViTConfig(
        hidden_size=64, num_hidden_layers=TINY_DEPTH, num_attention_heads=TINY_HEADS, intermediate_size=128,
        image_size=TINY_IMG, patch_size=TINY_PATCH, **labels,
    )  # layer_norm_eps left at transformers' 1e-12
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    processor = transformers.ViTImageProcessor(**processor_kwargs)
    processor.save_pretrained(folder)
    return TinyCheckpoint(folder, model, processor)


@pytest.fixture(scope="session")
def hf_vit_1label(tmp_path_factory) -> TinyCheckpoint:
    """ViTForImageClassification, one logit (like the transformers port of the Community Forensics model)."""
    return _transformers_checkpoint(
        tmp_path_factory.mktemp("hf_vit_1label"), seed=1, id2label=None,
        processor_kwargs=dict(size={"height": TINY_IMG, "width": TINY_IMG}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
    )


@pytest.fixture(scope="session")
def hf_vit_2label(tmp_path_factory) -> TinyCheckpoint:
    """ViTForImageClassification with two labels {0: real, 1: fake}, bicubic, ImageNet mean/std."""
    return _transformers_checkpoint(
        tmp_path_factory.mktemp("hf_vit_2label"), seed=2, id2label={0: "real", 1: "fake"},
        processor_kwargs=dict(
            size={"height": TINY_IMG, "width": TINY_IMG}, resample=3,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        ),
    )


@pytest.fixture(scope="session")
def commfor_wrapper(tmp_path_factory) -> TinyCheckpoint:
    """The authors' release layout: their ``ViTClassifier(nn.Module, PyTorchModelHubMixin)`` holding a timm
    ViT as ``self.vit`` with its head replaced by ``Linear(width, 1)``, saved by the mixin."""
    from huggingface_hub import PyTorchModelHubMixin
    from torch import nn

    class ViTClassifier(nn.Module, PyTorchModelHubMixin):  # as in Community-Forensics models.py, tiny
        def __init__(self, model_size="small", input_size=TINY_IMG, patch_size=TINY_PATCH, freeze_backbone=False):
            super().__init__()
            self.vit = _tiny_timm_vit(3, embed_dim=TINY_WIDTH_STD_HEADS, num_heads=TINY_HEADS, num_classes=1000)
            self.vit.head = nn.Linear(self.vit.head.in_features, 1)

        def forward(self, x):
            return self.vit(x)

    folder = tmp_path_factory.mktemp("commfor_wrapper")
    model = ViTClassifier().eval()
    model.save_pretrained(folder)
    return TinyCheckpoint(folder, model.vit)


@pytest.fixture(scope="session")
def timm_hub(tmp_path_factory) -> TinyCheckpoint:
    """timm's hub format, written by timm's own ``save_for_hf`` like Marqo/nsfw-image-detection-384."""
    import timm
    import torch
    from timm.models._hub import save_for_hf

    torch.manual_seed(4)
    model = timm.create_model(
        "vit_tiny_patch16_384", pretrained=False, num_classes=2, img_size=TINY_IMG, depth=TINY_DEPTH,
        embed_dim=64, num_heads=TINY_HEADS,
    ).eval()
    folder = tmp_path_factory.mktemp("timm_hub")
    save_for_hf(
        model, folder, model_config={"label_names": ["NSFW", "SFW"]}, safe_serialization=True,
        data_config=dict(crop_pct=0.88, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    )
    return TinyCheckpoint(folder, model)


@pytest.fixture(scope="session")
def timm_bare_file(tmp_path_factory) -> TinyCheckpoint:
    """A single .safetensors file of timm keys, with no config beside it."""
    from safetensors.torch import save_file

    model = _tiny_timm_vit(5, embed_dim=TINY_WIDTH_STD_HEADS, num_heads=TINY_HEADS, num_classes=1)
    path = tmp_path_factory.mktemp("timm_bare") / "detector.safetensors"
    save_file(model.state_dict(), str(path))
    return TinyCheckpoint(path, model)


@pytest.fixture
def tiny_timm_state_dict():
    """A fresh timm-layout state dict (1 logit, 64-wide heads) to corrupt in strictness tests."""
    model = _tiny_timm_vit(6, embed_dim=TINY_WIDTH_STD_HEADS, num_heads=TINY_HEADS, num_classes=1)
    return {k: v.clone() for k, v in model.state_dict().items()}
