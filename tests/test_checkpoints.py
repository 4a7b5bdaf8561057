"""checkpoints.py + model.py: every published layout loads, strictly, and computes what the original
library computes.

The oracles are the original libraries: transformers' ViTForImageClassification and ViTImageProcessor,
timm's VisionTransformer, timm's own ``local-dir:`` loader and eval transform. Checkpoints are written
by those libraries (see conftest.py), never by fakebank.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_HEADS, TINY_IMG, TINY_PATCH, TINY_WIDTH_STD_HEADS
from fakebank.checkpoints import (
    DEFAULT_WEIGHTS,
    LAYOUT_TIMM,
    LAYOUT_TRANSFORMERS,
    LAYOUT_WRAPPER,
    WEIGHTS_ENV,
    detect_layout,
    read_checkpoint,
)
from fakebank.errors import CheckpointError
from fakebank.model import LabelSemantics, LoadedModel, load_model
from fakebank.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, to_array

ATOL = 1e-4
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a hub snapshot's commit hash


def _pixels(seed: int, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, TINY_IMG, TINY_IMG, generator=g)


def _timm_outputs(module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(head outputs, the head's input) as timm itself computes them."""
    with torch.no_grad():
        pre = module.forward_head(module.forward_features(x), pre_logits=True)
        return module(x), pre


def _fb_forward(model: LoadedModel, x: torch.Tensor):
    with torch.no_grad():
        return model.forward(x)


def _copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _rewrite_weights(folder: Path, edit) -> None:
    """Load model.safetensors, let ``edit`` change the dict in place, write it back."""
    path = folder / "model.safetensors"
    sd = load_file(str(path))
    edit(sd)
    save_file(sd, str(path))


# --------------------------------------------------------------------------------------------------------
# 1. transformers ViTForImageClassification


@pytest.mark.parametrize("fixture", ["hf_vit_1label", "hf_vit_2label"])
def test_transformers_layout_computes_what_transformers_computes(fixture, request, image_factory):
    ckpt = request.getfixturevalue(fixture)
    model = load_model(str(ckpt.path))
    assert read_checkpoint(str(ckpt.path)).layout == LAYOUT_TRANSFORMERS
    # the same pixel tensor, made by transformers' own processor
    pixels = ckpt.processor(images=[image_factory(0), image_factory(1)], return_tensors="pt").pixel_values
    with torch.no_grad():
        hf_logits = ckpt.oracle(pixel_values=pixels).logits
        hidden = ckpt.oracle.vit(pixel_values=pixels).last_hidden_state  # after the final layernorm
    logit, cls, patch = _fb_forward(model, pixels)

    if hf_logits.shape[1] == 1:
        expected = hf_logits[:, 0]
        assert model.labels == LabelSemantics(1, 0, "fake")
    else:  # log-odds of "fake" (index 1) against the rest
        expected = hf_logits[:, 1] - torch.logsumexp(hf_logits[:, [0]], dim=1)
        assert model.labels == LabelSemantics(2, 1, "fake")
    torch.testing.assert_close(logit, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(cls, hidden[:, 0], atol=ATOL, rtol=0)  # raw, not normalised
    torch.testing.assert_close(patch, hidden[:, 1:].mean(dim=1), atol=ATOL, rtol=0)
    # sizes read from the checkpoint, transformers' eps (1e-12, not timm's 1e-6) carried over
    assert (model.embed_dim, len(model.module.blocks), model.module.blocks[0].attn.num_heads) == (64, 2, TINY_HEADS)
    assert model.module.norm.eps == ckpt.oracle.config.layer_norm_eps == 1e-12
    assert model.trained and model.name == ckpt.path.name and model.revision is None


@pytest.mark.parametrize(
    "fixture, interpolation, mean, std",
    [
        ("hf_vit_1label", "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("hf_vit_2label", "bicubic", IMAGENET_MEAN, IMAGENET_STD),
    ],
)
def test_transformers_preprocessing_is_the_processor_config(fixture, interpolation, mean, std, request, image_factory):
    ckpt = request.getfixturevalue(fixture)
    pre = load_model(str(ckpt.path)).preprocessing
    assert pre == Preprocessing(resize=(TINY_IMG, TINY_IMG), crop=None, interpolation=interpolation, mean=mean, std=std)
    # and it gives the processor's pixels, to within one 8-bit level (transformers rounds its resize
    # differently from Pillow)
    for seed in (0, 1):
        img = image_factory(seed)
        ours = to_array(img, pre)
        theirs = ckpt.processor(images=img, return_tensors="np").pixel_values[0]
        assert ours.shape == theirs.shape == (3, TINY_IMG, TINY_IMG)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1.01 / 255 / min(std))


# --------------------------------------------------------------------------------------------------------
# 2. the authors' wrapper (timm keys under `vit.`, PyTorchModelHubMixin config)


def test_wrapper_layout_computes_what_timm_computes(commfor_wrapper):
    config = json.loads((commfor_wrapper.path / "config.json").read_text())
    assert config == {"model_size": "small", "input_size": TINY_IMG, "patch_size": TINY_PATCH, "freeze_backbone": False}
    model = load_model(str(commfor_wrapper.path))
    assert read_checkpoint(str(commfor_wrapper.path)).layout == LAYOUT_WRAPPER
    x = _pixels(10)
    timm_logits, timm_pre = _timm_outputs(commfor_wrapper.oracle, x)
    logit, cls, patch = _fb_forward(model, x)
    torch.testing.assert_close(logit, timm_logits[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(cls, timm_pre, atol=ATOL, rtol=0)
    assert model.labels == LabelSemantics(1, 0, "fake")
    assert model.embed_dim == TINY_WIDTH_STD_HEADS and model.module.norm.eps == 1e-6
    assert model.arch == f"vit_d2_w{TINY_WIDTH_STD_HEADS}_h{TINY_HEADS}_patch{TINY_PATCH}_{TINY_IMG}"


def test_wrapper_preprocessing_is_the_authors_recipe_scaled(commfor_wrapper):
    # The authors resize the shorter side to 440 for a 384 crop (bilinear, ImageNet mean/std); the wrapper
    # carries no preprocessing config, so that recipe applies, scaled to the checkpoint's input size.
    pre = load_model(str(commfor_wrapper.path)).preprocessing
    assert pre == Preprocessing(
        resize=round(TINY_IMG * 440 / 384), crop=TINY_IMG, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    assert pre.resize == 73


# --------------------------------------------------------------------------------------------------------
# 3. timm's hub format and bare .safetensors files


def test_timm_hub_layout_computes_what_timm_loads(timm_hub):
    import timm

    config = json.loads((timm_hub.path / "config.json").read_text())
    assert {"architecture", "num_classes", "model_args", "pretrained_cfg", "label_names"} <= set(config)
    model = load_model(str(timm_hub.path))
    assert read_checkpoint(str(timm_hub.path)).layout == LAYOUT_TIMM
    assert model.arch == "vit_tiny_patch16_384"
    reloaded = timm.create_model(f"local-dir:{timm_hub.path}", pretrained=True).eval()  # timm's own loader
    x = _pixels(11)
    for oracle in (timm_hub.oracle, reloaded):
        logits, pre_logits = _timm_outputs(oracle, x)
        logit, cls, _ = _fb_forward(model, x)
        # NSFW (index 0) is the positive class: log-odds against SFW
        torch.testing.assert_close(logit, logits[:, 0] - logits[:, 1], atol=ATOL, rtol=0)
        torch.testing.assert_close(cls, pre_logits, atol=ATOL, rtol=0)
    assert model.labels == LabelSemantics(2, 0, "NSFW")


def test_timm_hub_preprocessing_is_timms_eval_transform(timm_hub, image_factory):
    import timm

    reloaded = timm.create_model(f"local-dir:{timm_hub.path}", pretrained=True)
    data_config = timm.data.resolve_data_config({}, model=reloaded)
    assert (data_config["crop_pct"], data_config["interpolation"]) == (0.88, "bilinear")
    pre = load_model(str(timm_hub.path)).preprocessing
    assert pre == Preprocessing(
        resize=math.floor(TINY_IMG / 0.88), crop=TINY_IMG, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    transform = timm.data.create_transform(**data_config)
    for seed in (0, 1):
        img = image_factory(seed)
        np.testing.assert_allclose(to_array(img, pre), transform(img).numpy(), rtol=0, atol=1e-6)


def test_timm_hub_pretrained_cfg_input_size_builds_the_model(timm_hub, tmp_path):
    # A timm config without model_args: timm takes the input size from pretrained_cfg, so must fakebank.
    folder = _copy_folder(timm_hub.path, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["model_args"] = {"depth": 2, "embed_dim": 64, "num_heads": 2}  # no img_size, no num_classes
    (folder / "config.json").write_text(json.dumps(config))
    model = load_model(str(folder))
    assert tuple(model.module.patch_embed.img_size) == (TINY_IMG, TINY_IMG)
    logits, _ = _timm_outputs(timm_hub.oracle, _pixels(12))
    torch.testing.assert_close(_fb_forward(model, _pixels(12))[0], logits[:, 0] - logits[:, 1], atol=ATOL, rtol=0)


def test_bare_safetensors_file_infers_sizes_from_shapes(timm_bare_file):
    assert not (timm_bare_file.path.parent / "config.json").exists()
    model = load_model(str(timm_bare_file.path))
    assert model.name == "detector" and model.embed_dim == TINY_WIDTH_STD_HEADS
    assert model.module.blocks[0].attn.num_heads == TINY_HEADS  # timm's 64-wide heads
    x = _pixels(13)
    logits, pre_logits = _timm_outputs(timm_bare_file.oracle, x)
    logit, cls, patch = _fb_forward(model, x)
    torch.testing.assert_close(logit, logits[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(cls, pre_logits, atol=ATOL, rtol=0)
    with torch.no_grad():
        tokens = timm_bare_file.oracle.forward_features(x)
    torch.testing.assert_close(patch, tokens[:, 1:].mean(dim=1), atol=ATOL, rtol=0)
    assert model.preprocessing.crop == TINY_IMG and model.preprocessing.resize == 73


def test_detect_layout_by_telltale_keys(hf_vit_1label, commfor_wrapper, timm_hub):
    for ckpt, layout in ((hf_vit_1label, LAYOUT_TRANSFORMERS), (commfor_wrapper, LAYOUT_WRAPPER), (timm_hub, LAYOUT_TIMM)):
        assert detect_layout(load_file(str(ckpt.path / "model.safetensors"))) == layout
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout.*conv1.weight"):
        detect_layout({"conv1.weight": torch.zeros(1)})


# --------------------------------------------------------------------------------------------------------
# 4. strict loading


def _write(sd: dict, tmp_path: Path, name: str = "ckpt.safetensors") -> str:
    path = tmp_path / name
    save_file(sd, str(path))
    return str(path)


def test_strict_missing_key_is_named(tiny_timm_state_dict, tmp_path):
    del tiny_timm_state_dict["blocks.1.norm2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys blocks\.1\.norm2\.bias"):
        load_model(_write(tiny_timm_state_dict, tmp_path))


def test_strict_unexpected_key_is_named(tiny_timm_state_dict, tmp_path):
    tiny_timm_state_dict["blocks.0.ls1.gamma"] = torch.ones(TINY_WIDTH_STD_HEADS)  # LayerScale it would drop
    with pytest.raises(CheckpointError, match=r"unexpected keys blocks\.0\.ls1\.gamma"):
        load_model(_write(tiny_timm_state_dict, tmp_path))


def test_strict_mis_shaped_key_is_named(tiny_timm_state_dict, tmp_path):
    w = tiny_timm_state_dict["blocks.1.mlp.fc1.weight"]
    tiny_timm_state_dict["blocks.1.mlp.fc1.weight"] = w[: w.shape[0] // 2].clone()
    with pytest.raises(CheckpointError, match=r"mis-shaped keys blocks\.1\.mlp\.fc1\.weight \(128, 128\) vs model \(256, 128\)"):
        load_model(_write(tiny_timm_state_dict, tmp_path))


def test_strict_errors_name_keys_as_the_file_spells_them(commfor_wrapper, hf_vit_1label, tmp_path):
    wrapper = _copy_folder(commfor_wrapper.path, tmp_path / "wrapper")
    _rewrite_weights(wrapper, lambda sd: sd.pop("vit.blocks.1.norm2.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys vit\.blocks\.1\.norm2\.bias"):
        load_model(str(wrapper))

    hf_missing = _copy_folder(hf_vit_1label.path, tmp_path / "hf_missing")
    _rewrite_weights(hf_missing, lambda sd: sd.pop("vit.encoder.layer.1.layernorm_after.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys vit\.encoder\.layer\.1\.layernorm_after\.bias"):
        load_model(str(hf_missing))

    hf_qkv = _copy_folder(hf_vit_1label.path, tmp_path / "hf_qkv")
    _rewrite_weights(hf_qkv, lambda sd: sd.pop("vit.encoder.layer.0.attention.attention.key.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys vit\.encoder\.layer\.0\.attention\.attention\.key\.weight"):
        load_model(str(hf_qkv))

    hf_extra = _copy_folder(hf_vit_1label.path, tmp_path / "hf_extra")
    _rewrite_weights(hf_extra, lambda sd: sd.update({"vit.encoder.layer.0.attention.attention.rel_pos": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys.*vit\.encoder\.layer\.0\.attention\.attention\.rel_pos"):
        load_model(str(hf_extra))

    hf_shape = _copy_folder(hf_vit_1label.path, tmp_path / "hf_shape")
    _rewrite_weights(hf_shape, lambda sd: sd.update({"vit.layernorm.weight": torch.ones(65)}))
    with pytest.raises(CheckpointError, match=r"mis-shaped keys vit\.layernorm\.weight \(65,\) vs model \(64,\)"):
        load_model(str(hf_shape))


def test_backbone_only_checkpoint_is_refused(tiny_timm_state_dict, commfor_wrapper, tmp_path):
    for k in ("head.weight", "head.bias"):
        del tiny_timm_state_dict[k]
    with pytest.raises(CheckpointError, match=r"missing keys head\.weight, head\.bias — is this a backbone-only"):
        load_model(_write(tiny_timm_state_dict, tmp_path))

    wrapper = _copy_folder(commfor_wrapper.path, tmp_path / "wrapper")
    _rewrite_weights(wrapper, lambda sd: [sd.pop(k) for k in ("vit.head.weight", "vit.head.bias")])
    with pytest.raises(CheckpointError, match=r"vit\.head\.weight, vit\.head\.bias — is this a backbone-only"):
        load_model(str(wrapper))


def test_transformers_backbone_only_vitmodel_is_refused(hf_vit_1label, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "vitmodel"
    transformers.ViTModel(hf_vit_1label.oracle.config, add_pooling_layer=True).save_pretrained(folder)
    with pytest.raises(CheckpointError, match=r"classifier\.weight, classifier\.bias — is this a backbone-only"):
        load_model(str(folder))


def test_unrecognisable_labels_need_positive_label(timm_hub, tmp_path):
    folder = _copy_folder(timm_hub.path, tmp_path / "animals")
    _edit_json(folder / "config.json", label_names=["cat", "dog"])
    with pytest.raises(CheckpointError, match=r"\['cat', 'dog'\].*--positive-label"):
        load_model(str(folder))
    model = load_model(str(folder), positive_label="dog")
    assert model.labels == LabelSemantics(2, 1, "dog")
    logits, _ = _timm_outputs(timm_hub.oracle, _pixels(14))
    torch.testing.assert_close(_fb_forward(model, _pixels(14))[0], logits[:, 1] - logits[:, 0], atol=ATOL, rtol=0)
    with pytest.raises(CheckpointError, match=r"'bird' is not one of the labels \['cat', 'dog'\]"):
        load_model(str(folder), positive_label="bird")


def test_transformers_default_label_names_need_positive_label(hf_vit_2label, tmp_path):
    folder = _copy_folder(hf_vit_2label.path, tmp_path / "unnamed")
    _edit_json(folder / "config.json", id2label={"0": "LABEL_0", "1": "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1})
    with pytest.raises(CheckpointError, match="--positive-label"):
        load_model(str(folder))
    assert load_model(str(folder), positive_label="LABEL_1").labels == LabelSemantics(2, 1, "LABEL_1")


# --------------------------------------------------------------------------------------------------------
# 5. weight specs


def test_untrained_spec_is_deterministic():
    a, b, c = (load_model(s) for s in ("untrained:test_vit:3", "untrained:test_vit:3", "untrained:test_vit:4"))
    assert a.identity_hash == b.identity_hash != c.identity_hash
    assert not a.trained and a.revision == "3" and a.name == "untrained:test_vit" and a.arch == "test_vit"
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_fb_forward(a, x)[0], _fb_forward(b, x)[0], atol=0, rtol=0)
    assert not torch.allclose(_fb_forward(a, x)[1], _fb_forward(c, x)[1])
    assert a.labels == LabelSemantics(1, 0, "fake")


def test_default_spec_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, "untrained:test_vit:5")
    assert load_model().spec == "untrained:test_vit:5"
    assert DEFAULT_WEIGHTS == "hf:OwensLab/commfor-model-384"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("untrained:nope", r"unknown timm architecture 'nope'"),
        ("untrained:test_vit:x", r"seed must be a non-negative integer"),
        ("untrained:", r"use untrained:ARCH\[:SEED\]"),
        ("untrained:resnet18", r"resnet18 is not a ViT"),
        ("{tmp}/nowhere", r"not found: give a folder, a \.safetensors file, hf:OWNER/NAME"),
        ("{tmp}/weights.pt", r"only reads \.safetensors weights"),
        ("{tmp}/empty", r"no model\.safetensors in this folder"),
        ("{tmp}/broken.safetensors", r"not a readable safetensors file"),
        ("hf:bad", r"bad hub spec 'hf:bad': use hf:OWNER/NAME"),
        ("hf:a/b@", r"bad hub spec"),
    ],
)
def test_bad_specs_are_explained(spec, message, tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"not a pickle")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=message):
        load_model(spec.format(tmp=tmp_path))


def _empty_hub_env(monkeypatch, home: Path) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hub_spec_offline_and_not_cached_says_what_to_do(monkeypatch, tmp_path):
    _empty_hub_env(monkeypatch, tmp_path / "hf_home")
    spec = f"hf:OwensLab/commfor-model-384@{COMMIT}"
    with pytest.raises(CheckpointError) as e:
        load_model(spec)
    assert spec in str(e.value) and WEIGHTS_ENV in str(e.value)


def test_hub_spec_loads_offline_from_the_cache(hf_vit_2label, monkeypatch, tmp_path):
    home = tmp_path / "hf_home"
    repo = home / "hub" / "models--someone--tiny-detector"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(hf_vit_2label.path, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    _empty_hub_env(monkeypatch, home)

    direct = load_model(str(hf_vit_2label.path))
    for spec in ("hf:someone/tiny-detector", f"hf:someone/tiny-detector@{COMMIT}", "hf:someone/tiny-detector@main"):
        model = load_model(spec)
        assert (model.spec, model.name, model.revision) == (spec, "someone/tiny-detector", COMMIT)
        assert model.identity_hash == direct.identity_hash
        torch.testing.assert_close(_fb_forward(model, _pixels(15))[0], _fb_forward(direct, _pixels(15))[0])
    with pytest.raises(CheckpointError, match=r"hf:someone/tiny-detector@v2 are not in the Hugging Face cache"):
        load_model("hf:someone/tiny-detector@v2")


# --------------------------------------------------------------------------------------------------------
# 6. model identity


def test_identity_follows_weights_and_preprocessing_not_location(hf_vit_1label, tmp_path):
    base = load_model(str(hf_vit_1label.path))
    moved = load_model(str(_copy_folder(hf_vit_1label.path, tmp_path / "moved")))
    assert moved.identity_hash == base.identity_hash == load_model(str(hf_vit_1label.path)).identity_hash

    other_pre = _copy_folder(hf_vit_1label.path, tmp_path / "bicubic")
    _edit_json(other_pre / "preprocessor_config.json", resample=3)
    changed = load_model(str(other_pre))
    assert changed.preprocessing.interpolation == "bicubic"
    assert changed.weights_sha256 == base.weights_sha256 and changed.identity_hash != base.identity_hash

    other_weights = _copy_folder(hf_vit_1label.path, tmp_path / "weights")
    _rewrite_weights(other_weights, lambda sd: sd["classifier.bias"].add_(1.0))
    assert load_model(str(other_weights)).identity_hash != base.identity_hash
