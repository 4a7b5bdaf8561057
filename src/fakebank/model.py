"""Checkpoint → a timm ViT in eval mode, with its preprocessing, label semantics and identity.

Second stage of the flow (spec → checkpoint → **model** → embed). Sizes come from the checkpoint's
config and tensor shapes, never from constants; loading is strict. Preprocessing is resolved as timm
does it: checkpoint config first, then the authors' recipe.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import weakref
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import timm
from torch import nn
from timm.data import resolve_data_config
from timm.models import PretrainedCfg
from timm.models.vision_transformer import VisionTransformer

from fakebank.checkpoints import (
    LAYOUT_TIMM,
    LAYOUT_TRANSFORMERS,
    Checkpoint,
    default_weights_spec,
    read_checkpoint,
    source_key,
)
from fakebank.errors import CheckpointError
from fakebank.grid import GRID_CELLS, GRID_PROJECTION_SEED, GRID_WIDTH
from fakebank.preprocess import COMMFOR_PREPROCESSING, IMAGENET_MEAN, IMAGENET_STD, Preprocessing

# Label names that mean "the class this tool flags" when a checkpoint has several outputs.
POSITIVE_LABEL_NAMES = ("fake", "ai", "ai-generated", "ai_generated", "generated", "synthetic", "deepfake",
                        "artificial", "nsfw")
# The authors resize the shorter side to 440 for a 384 crop (and 256 for 224): ratio 440/384.
COMMFOR_RESIZE_RATIO = 440 / 384
_STANDARD_VIT_NAMES = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large"}
# Heads cannot be read from tensor shapes. timm's ViTs use 64-wide heads (tiny 3, small 6, base 12,
# large 16) except these widths (huge, giant, gigantic: 16 heads each).
_TIMM_VIT_HEAD_DIM = 64
_TIMM_VIT_HEADS_BY_WIDTH = {1280: 16, 1408: 16, 1664: 16}
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}
# transformers `hidden_act` → the GELU timm must use to compute the same function.
_HF_ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_new": partial(nn.GELU, approximate="tanh"),
    "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"),
}


@dataclass(frozen=True)
class LabelSemantics:
    """How the head's outputs turn into P(positive class)."""

    num_outputs: int
    positive_index: int
    positive_name: str

    def logit(self, out: torch.Tensor) -> torch.Tensor:
        """Log-odds of the positive class, [B]. One output: itself; several: softmax log-odds vs the rest."""
        out = out.float()
        if self.num_outputs == 1:
            return out[:, 0]
        pos = out[:, self.positive_index]
        rest = torch.cat([out[:, : self.positive_index], out[:, self.positive_index + 1 :]], dim=1)
        return pos - torch.logsumexp(rest, dim=1)


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module
    spec: str
    name: str
    revision: str | None
    trained: bool
    arch: str
    embed_dim: int
    preprocessing: Preprocessing
    labels: LabelSemantics
    weights_sha256: str

    @property
    def identity(self) -> dict:
        """What a bank records: embeddings from a different identity are not comparable."""
        return {
            "arch": self.arch,
            "weights_sha256": self.weights_sha256,
            "preprocessing": self.preprocessing.to_dict(),
            "labels": asdict(self.labels),
        }

    @property
    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass → (logit [B], cls [B, D], patch [B, D]); embeddings not yet normalised."""
        logit, cls, patch, _ = self._forward(pixels, with_grid=False)
        return logit, cls, patch

    def forward_with_grid(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward`'s outputs and, from the same pass, the patch grid [B, cells, cells, width] (see grid.py)."""
        return self._forward(pixels, with_grid=True)

    def _forward(self, pixels: torch.Tensor, with_grid: bool):
        tokens = self.module.forward_features(pixels)
        cls = self.module.forward_head(tokens, pre_logits=True)
        # The head and the pooling are a sliver of the cost, so under bf16 autocast they stay fp32: what
        # deviation remains comes from the backbone (untrained vit_small, 24 photos: max |Δlogit| 0.008 at
        # mean |logit| 0.3, CLS cosine ≥ 0.99996).
        with torch.autocast(pixels.device.type, enabled=False):
            cls = cls.float()
            logits = self.module.head(cls)
            patch = tokens[:, self.module.num_prefix_tokens :].float().mean(dim=1)
            grid = self.patch_grid(tokens) if with_grid else None
        return self.labels.logit(logits), cls, patch, grid

    def patch_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, prefix + h·w, D] → the patch grid [B, cells, cells, width] (grid.py): pooled
        (`_pooled_grid`), less its component in the span of plain images' grids (`_grid_basis`)."""
        x = self._pooled_grid(tokens)
        basis = _grid_basis(self, x.device)
        flat = x.flatten(1)  # not reshape(len(x), …): a traced batch size would become a constant
        return (flat - (flat @ basis) @ basis.T).view_as(x)

    def _pooled_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens average-pooled to GRID_CELLS² cells, centred on their mean over the cells, projected to
        GRID_WIDTH by a fixed seeded Gaussian matrix."""
        patches = tokens[:, self.module.num_prefix_tokens :].float()
        _, n, d = patches.shape
        h, w = self.module.patch_embed.grid_size if not getattr(self.module, "dynamic_img_size", False) else (0, 0)
        if h * w != n:  # a dynamic-size model: square inputs only (the preprocessing crops square)
            h = w = math.isqrt(n)
        x = patches.unflatten(1, (h, w)).permute(0, 3, 1, 2)
        x = torch.nn.functional.adaptive_avg_pool2d(x, GRID_CELLS).permute(0, 2, 3, 1)
        x = x - x.mean(dim=(1, 2), keepdim=True)
        return x @ _grid_projection(int(d), x.device)  # int: under a tracer a shape may be a tensor


# Plain images whose patch grids span what every image's grid shares: a featureless frame still differs
# from cell to cell through the position embeddings, so without this every dark or flat picture "agreed"
# with every other (untrained vit_small: two different near-black frames at 0.79–0.82, as much as their
# own re-encoded copies). Greys from black to white and a few colours.
GRID_REFERENCE_COLOURS = ((0, 0, 0), (0.06, 0.06, 0.06), (0.15, 0.15, 0.15), (0.3, 0.3, 0.3), (0.5, 0.5, 0.5),
                          (0.75, 0.75, 0.75), (1, 1, 1), (0.6, 0.1, 0.1), (0.1, 0.5, 0.1), (0.1, 0.1, 0.6))
_GRID_BASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_root() -> Path:
    """Where fakebank keeps what it derives from a model: $FAKEBANK_CACHE, else $XDG_CACHE_HOME/fakebank,
    else ~/.cache/fakebank."""
    return Path(os.environ.get("FAKEBANK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fakebank"))


def grid_key(model: LoadedModel) -> str:
    """Names what a model's patch grids depend on: its identity and the grid's settings (cells, width,
    projection seed, reference colours), for caches of the grid basis and of compiled models."""
    settings = json.dumps([GRID_CELLS, GRID_WIDTH, GRID_PROJECTION_SEED, GRID_REFERENCE_COLOURS])
    return f"{model.identity_hash[:24]}-grid{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def _grid_basis(model: LoadedModel, device: torch.device) -> torch.Tensor:
    """Orthonormal columns [cells·cells·width, K] spanning the pooled grids of the reference plain images,
    computed once per model (one fp32 forward pass of K images: the first one-image forward of untrained
    vit_small took 2.25 s with it, 0.22 s with the cached basis, on 2 quiet cores) and kept with its module
    and on disk under `cache_root()`."""
    basis = _GRID_BASES.get(model.module)
    if basis is None:
        basis = _stored_grid_basis(model)
    if basis is not None and basis.device != device:
        basis = basis.to(device)
    if basis is None:
        side = model.preprocessing.input_size
        pre = model.preprocessing
        colours = torch.tensor(GRID_REFERENCE_COLOURS, dtype=torch.float32).view(-1, 3, 1, 1)
        mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
        x = ((colours - mean) / std).expand(-1, 3, side, side).contiguous().to(device)
        # normal tensors (not inference ones), so that `explain`'s backward pass may use the basis too
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
            refs = model._pooled_grid(model.module.forward_features(x)).reshape(len(x), -1)
            basis = torch.linalg.qr(refs.T.double()).Q.float()
        _store_grid_basis(model, basis)
    _GRID_BASES[model.module] = basis
    return basis


def _grid_basis_path(model: LoadedModel) -> Path:
    return cache_root() / "grid" / f"{grid_key(model)}.npy"


def _stored_grid_basis(model: LoadedModel) -> torch.Tensor | None:
    try:
        stored = np.load(_grid_basis_path(model))
    except (OSError, ValueError):
        return None
    expected = GRID_CELLS * GRID_CELLS * GRID_WIDTH
    if stored.dtype != np.float32 or stored.shape != (expected, len(GRID_REFERENCE_COLOURS)):
        return None
    return torch.from_numpy(stored)


def _store_grid_basis(model: LoadedModel, basis: torch.Tensor) -> None:
    """Written under a temporary name and renamed (concurrent processes write the same bytes); a cache that
    cannot be written (a read-only home) only costs the next process the forward pass again."""
    path = _grid_basis_path(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, basis.cpu().numpy())
        os.replace(tmp, path)
    except OSError:
        pass


@functools.cache
def _grid_projection(width: int, device: torch.device) -> torch.Tensor:
    """The fixed [width, GRID_WIDTH] Gaussian projection of the patch grid: the same for every model of this
    width, so grids stored by one process compare with another's."""
    g = torch.Generator().manual_seed(GRID_PROJECTION_SEED)
    return (torch.randn(width, GRID_WIDTH, generator=g) / math.sqrt(GRID_WIDTH)).to(device)


def load_model(spec: str | None = None, *, positive_label: str | None = None) -> LoadedModel:
    """Build the model a weights spec names (None → FAKEBANK_WEIGHTS or the authors' release)."""
    spec = spec or default_weights_spec()
    if spec.startswith("untrained:"):
        return _untrained(spec)
    ckpt = read_checkpoint(spec)
    if ckpt.layout == LAYOUT_TIMM and "architecture" in ckpt.config:
        module, arch = _build_timm(ckpt)
    else:
        module, arch = _build_vit_from_shapes(ckpt)
    _load_strict(module, ckpt)
    module.eval()
    num_outputs = module.head.out_features
    preprocessing = _resolve_preprocessing(ckpt, module)
    _check_input_size(ckpt, module, preprocessing)
    return LoadedModel(
        module=module,
        spec=spec,
        name=ckpt.name,
        revision=ckpt.revision,
        trained=True,
        arch=arch,
        embed_dim=module.embed_dim,
        preprocessing=preprocessing,
        labels=_resolve_labels(ckpt, num_outputs, positive_label),
        weights_sha256=ckpt.weights_sha256,
    )


def _untrained(spec: str) -> LoadedModel:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise CheckpointError(f"bad spec {spec!r}: use untrained:ARCH[:SEED], e.g. untrained:vit_small_patch16_384:0")
    arch, seed = parts[1], parts[2] if len(parts) == 3 else "0"
    if not seed.isdigit():
        raise CheckpointError(f"bad seed in {spec!r}: the seed must be a non-negative integer")
    if arch not in timm.list_models():
        raise CheckpointError(f"unknown timm architecture {arch!r} in {spec!r} (see timm.list_models('vit*'))")
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        module = timm.create_model(arch, pretrained=False, num_classes=1).eval()
    if not isinstance(module, VisionTransformer):
        raise CheckpointError(f"{arch} is not a ViT; fakebank needs class and patch tokens")
    h = hashlib.sha256(f"untrained:{arch}:{seed}".encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    size = module.patch_embed.img_size[0]
    return LoadedModel(
        module=module,
        spec=spec,
        name=f"untrained:{arch}",
        revision=seed,
        trained=False,
        arch=arch,
        embed_dim=module.embed_dim,
        preprocessing=_commfor_recipe(size),
        labels=LabelSemantics(1, 0, "fake"),
        weights_sha256=h.hexdigest(),
    )


def _build_timm(ckpt: Checkpoint) -> tuple[nn.Module, str]:
    """Build the architecture a timm hub config names, as ``timm.create_model('local-dir:…')`` would:
    ``model_args`` are the constructor arguments and ``pretrained_cfg`` fills the rest (input size)."""
    cfg = ckpt.config
    arch = cfg["architecture"]
    kwargs = dict(cfg.get("model_args") or {})
    kwargs["num_classes"] = _head_rows(ckpt)  # model_args may repeat it; the tensor decides
    pcfg = _timm_pretrained_cfg(cfg)
    try:
        module = timm.create_model(arch, pretrained=False, pretrained_cfg=pcfg, **kwargs)
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError/TypeError/KeyError for bad configs
        raise CheckpointError(f"{ckpt.spec}: timm cannot build {arch!r} from its config.json ({e})") from e
    if not isinstance(module, VisionTransformer):
        raise CheckpointError(f"{ckpt.spec}: {arch} is not a ViT; fakebank needs class and patch tokens")
    return module, arch


def _timm_pretrained_cfg(cfg: dict) -> dict:
    """The ``pretrained_cfg`` of a timm hub config.json (or of the legacy single-dict form), restricted to
    the fields this timm knows, with the adjustments timm's own config parser makes."""
    pcfg = dict(cfg["pretrained_cfg"]) if "pretrained_cfg" in cfg else dict(cfg)
    model_args = cfg.get("model_args") or {}
    if model_args.get("dynamic_img_size") or model_args.get("strict_img_size") is False:
        pcfg["fixed_input_size"] = False
    if "num_classes" in cfg:
        pcfg["num_classes"] = cfg["num_classes"]
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    return {k: v for k, v in pcfg.items() if k in known}


def _build_vit_from_shapes(ckpt: Checkpoint) -> tuple[nn.Module, str]:
    """Build a timm VisionTransformer whose sizes come from the tensors (and the config for heads/eps)."""
    sd, cfg = ckpt.state_dict, ckpt.config
    for key in ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.mlp.fc1.weight"):
        if key not in sd:
            raise CheckpointError(
                f"{ckpt.spec}: missing key {source_key(ckpt.layout, key)}; cannot tell the model's size without it"
            )
    num_classes = _head_rows(ckpt)
    embed_dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    grid = sd["pos_embed"].shape[1] - sd["cls_token"].shape[1]
    side = math.isqrt(grid)
    if side * side != grid:
        raise CheckpointError(f"{ckpt.spec}: pos_embed holds {grid} patch positions, not a square grid")
    img_size = side * patch
    mlp_hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    heads = int(
        cfg.get("num_attention_heads")
        or cfg.get("num_heads")
        or _TIMM_VIT_HEADS_BY_WIDTH.get(embed_dim, max(1, embed_dim // _TIMM_VIT_HEAD_DIM))
    )
    if embed_dim % heads:
        raise CheckpointError(f"{ckpt.spec}: width {embed_dim} is not divisible into {heads} attention heads")
    # transformers ViT's LayerNorm eps defaults to 1e-12, timm's to 1e-6: use the checkpoint's own.
    eps = float(cfg.get("layer_norm_eps", 1e-12 if ckpt.layout == LAYOUT_TRANSFORMERS else 1e-6))
    act_layer = None
    if ckpt.layout == LAYOUT_TRANSFORMERS:
        act = cfg.get("hidden_act", "gelu")
        act_layer = _HF_ACTIVATIONS.get(act) if isinstance(act, str) else None
        if act_layer is None:
            raise CheckpointError(
                f"{ckpt.spec}: config.json hidden_act={act!r} is not supported (only {sorted(_HF_ACTIVATIONS)})"
            )
    module = VisionTransformer(
        img_size=img_size,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_hidden / embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        num_classes=num_classes,
        global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=eps),
        act_layer=act_layer,
    )
    size_name = _STANDARD_VIT_NAMES.get((embed_dim, depth))
    arch = (
        f"vit_{size_name}_patch{patch}_{img_size}"
        if size_name
        else f"vit_d{depth}_w{embed_dim}_h{heads}_patch{patch}_{img_size}"
    )
    return module, arch


def _head_rows(ckpt: Checkpoint) -> int:
    head = ckpt.state_dict.get("head.weight")
    if head is None:
        keys = ", ".join(source_key(ckpt.layout, k) for k in ("head.weight", "head.bias"))
        raise CheckpointError(
            f"{ckpt.spec}: missing keys {keys} — is this a backbone-only checkpoint? "
            "pass --weights to a classifier"
        )
    return head.shape[0]


def _load_strict(module: nn.Module, ckpt: Checkpoint) -> None:
    """Load every tensor or fail naming the keys, as the checkpoint file spells them."""
    sd = ckpt.state_dict
    name = lambda k: source_key(ckpt.layout, k)  # noqa: E731
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mis_shaped = sorted(
        f"{name(k)} {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    )
    problems = []
    if missing:
        problems.append("missing keys " + ", ".join(map(name, missing)))
    if unexpected:
        problems.append("unexpected keys " + ", ".join(map(name, unexpected)))
    if mis_shaped:
        problems.append("mis-shaped keys " + "; ".join(mis_shaped))
    if problems:
        raise CheckpointError(
            f"{ckpt.spec}: cannot load strictly: " + " | ".join(problems)
            + " — is this checkpoint complete, and of the architecture its config.json names?"
        )
    module.load_state_dict(sd, strict=True)


def _commfor_recipe(size: int) -> Preprocessing:
    if size == COMMFOR_PREPROCESSING.crop:
        return COMMFOR_PREPROCESSING
    resize = 256 if size == 224 else round(size * COMMFOR_RESIZE_RATIO)
    return Preprocessing(resize=resize, crop=size, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _resolve_preprocessing(ckpt: Checkpoint, module: nn.Module) -> Preprocessing:
    size = module.patch_embed.img_size[0]
    pre = ckpt.preprocessor_config
    if ckpt.layout == LAYOUT_TRANSFORMERS and pre:
        return _from_transformers_processor(pre, size, ckpt.spec)
    if ckpt.layout == LAYOUT_TIMM and "architecture" in ckpt.config:
        return _from_timm_data_config(resolve_data_config(model=module), ckpt.spec)
    # The authors' wrapper (and bare files) carry no preprocessing: their recipe applies.
    return _commfor_recipe(size)


def _from_timm_data_config(dc: dict, spec: str) -> Preprocessing:
    """timm's eval transform (``transforms_imagenet_eval``) for a resolved data config."""
    _, h, w = dc["input_size"]
    crop_pct, mode = float(dc["crop_pct"]), dc.get("crop_mode", "center")
    if h != w or mode not in ("center", "squash"):
        raise CheckpointError(
            f"{spec}: timm preprocessing input_size={tuple(dc['input_size'])}, crop_mode={mode!r} is not supported "
            "(only square inputs with crop_mode center or squash)"
        )
    scale = math.floor(h / crop_pct)
    try:
        return Preprocessing(
            resize=scale if mode == "center" else (scale, scale),
            crop=h,
            interpolation=dc["interpolation"],
            mean=tuple(dc["mean"]),
            std=tuple(dc["std"]),
        )
    except ValueError as e:
        raise CheckpointError(f"{spec}: unsupported preprocessing in config.json pretrained_cfg ({e})") from e


def _check_input_size(ckpt: Checkpoint, module: nn.Module, pre: Preprocessing) -> None:
    """A fixed-size ViT fed another size fails on every image: refuse it at load time instead."""
    if getattr(module, "dynamic_img_size", False):
        return
    size = tuple(module.patch_embed.img_size)
    try:
        side = pre.input_size
    except ValueError as e:
        raise CheckpointError(f"{ckpt.spec}: {e}") from e
    if (side, side) != size:
        raise CheckpointError(
            f"{ckpt.spec}: preprocessing gives {side}×{side} images but the model takes {size[0]}×{size[1]} "
            "(its position embeddings); the checkpoint's preprocessing config does not match its weights"
        )


def _from_transformers_processor(pre: dict, size: int, spec: str) -> Preprocessing:
    interpolation = _PIL_RESAMPLE.get(pre.get("resample", 2))
    if interpolation is None:
        raise CheckpointError(f"{spec}: preprocessor_config resample={pre.get('resample')} is not supported")
    sz = pre.get("size", {"height": size, "width": size})
    if isinstance(sz, int):
        sz = {"shortest_edge": sz}
    resize: int | tuple[int, int]
    resize = int(sz["shortest_edge"]) if "shortest_edge" in sz else (int(sz["height"]), int(sz["width"]))
    crop = None
    if pre.get("do_center_crop"):
        cs = pre.get("crop_size", size)
        crop = int(cs["height"]) if isinstance(cs, dict) else int(cs)
    if pre.get("do_rescale", True) and abs(float(pre.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise CheckpointError(f"{spec}: rescale_factor {pre.get('rescale_factor')} is not supported (only 1/255)")
    normalize = pre.get("do_normalize", True)
    return Preprocessing(
        resize=resize,
        crop=crop,
        interpolation=interpolation,
        mean=tuple(pre.get("image_mean", IMAGENET_MEAN)) if normalize else (0.0, 0.0, 0.0),
        std=tuple(pre.get("image_std", IMAGENET_STD)) if normalize else (1.0, 1.0, 1.0),
    )


def _resolve_labels(ckpt: Checkpoint, num_outputs: int, positive_label: str | None) -> LabelSemantics:
    cfg = ckpt.config
    if isinstance(cfg.get("id2label"), dict):  # transformers
        names = [str(cfg["id2label"][k]) for k in sorted(cfg["id2label"], key=int)]
    elif "label_names" in cfg or "labels" in cfg:  # timm (`labels` in its legacy single-dict config)
        raw = cfg.get("label_names", cfg.get("labels"))
        names = [str(raw[k]) for k in sorted(raw, key=int)] if isinstance(raw, dict) else [str(n) for n in raw]
    else:
        names = []
    if num_outputs == 1:
        # One logit: its sigmoid is P(positive). With two names the positive one is class 1 (the authors'
        # models use real:0, fake:1); transformers writes LABEL_0 when there are none.
        if positive_label:
            name = positive_label
        elif len(names) == 2:
            name = names[1]
        elif len(names) == 1 and not names[0].startswith("LABEL_"):
            name = names[0]
        else:
            name = "fake"
        return LabelSemantics(1, 0, name)
    note = ""
    if len(names) != num_outputs:
        if names:
            note = f" (config.json names {len(names)} labels for {num_outputs} outputs, so they are ignored)"
        names = [f"LABEL_{i}" for i in range(num_outputs)]
    lowered = [n.lower() for n in names]
    if positive_label:
        if positive_label.lower() not in lowered:
            raise CheckpointError(
                f"{ckpt.spec}: --positive-label {positive_label!r} is not one of the labels {names}{note}"
            )
        i = lowered.index(positive_label.lower())
        return LabelSemantics(num_outputs, i, names[i])
    found = [i for i, n in enumerate(lowered) if n in POSITIVE_LABEL_NAMES]
    if len(found) == 1:
        return LabelSemantics(num_outputs, found[0], names[found[0]])
    what = "several of" if found else "none of"
    raise CheckpointError(
        f"{ckpt.spec}: cannot tell which of the labels {names} is the fake/positive class ({what} them is a "
        f"known positive name){note}; pass --positive-label NAME"
    )
