"""Weights spec → safetensors state dict in timm's ViT layout, plus the checkpoint's own config.

First stage of the flow (spec → checkpoint → model). It knows the three published layouts of the
Community Forensics detector (DESIGN §1.1) and converts them to timm keys; it never builds a model and
never guesses a size: shapes come from the tensors and the config.

Spec forms: a folder (``config.json`` + ``model.safetensors`` [+ ``preprocessor_config.json``]), a single
``.safetensors`` file, ``hf:OWNER/NAME[@REVISION]`` (Hugging Face hub cache; downloaded only when online),
and ``untrained:ARCH[:SEED]`` (handled by ``model.py``; no file involved).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from fakebank.errors import CheckpointError

# The authors' release (Park & Owens, CVPR 2025). Pin a revision with @COMMIT for reproducible banks.
DEFAULT_WEIGHTS = "hf:OwensLab/commfor-model-384"
WEIGHTS_ENV = "FAKEBANK_WEIGHTS"

LAYOUT_TIMM = "timm"
LAYOUT_WRAPPER = "commfor-wrapper"  # timm keys under `vit.` (the authors' ViTClassifier)
LAYOUT_TRANSFORMERS = "transformers"  # ViTForImageClassification

_HF_SPEC = re.compile(r"^hf:(?P<repo>[\w.\-]+/[\w.\-]+)(?:@(?P<rev>[\w.\-/]+))?$")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk and converted to timm keys."""

    spec: str
    name: str  # what outputs call the model (hub repo id or file name)
    revision: str | None  # hub commit when known
    layout: str
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    config: dict  # config.json, or {} when there is none
    preprocessor_config: dict | None  # transformers preprocessor_config.json
    weights_sha256: str


def default_weights_spec() -> str:
    return os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS


def read_checkpoint(spec: str) -> Checkpoint:
    """Resolve ``spec`` to files, read them and convert the weights to timm's ViT layout."""
    weights_path, name, revision = _resolve_files(spec)
    folder = weights_path.parent
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    pre_path = folder / "preprocessor_config.json"
    preprocessor_config = _read_json(pre_path) if pre_path.is_file() else None
    try:
        raw = load_file(str(weights_path))
    except Exception as e:  # safetensors raises several types for bad headers/truncation
        raise CheckpointError(
            f"{weights_path}: not a readable safetensors file ({e}); re-download it or point --weights elsewhere"
        ) from e
    layout = detect_layout(raw)
    if layout == LAYOUT_WRAPPER:
        state_dict = {k.removeprefix("vit."): v for k, v in raw.items()}
    elif layout == LAYOUT_TRANSFORMERS:
        state_dict = convert_transformers(raw)
    else:
        state_dict = dict(raw)
    return Checkpoint(
        spec=spec,
        name=name,
        revision=revision,
        layout=layout,
        state_dict=state_dict,
        config=config,
        preprocessor_config=preprocessor_config,
        weights_sha256=_sha256_file(weights_path),
    )


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """Tell the layout by a telltale key, as timm's checkpoint_filter_fn does."""
    keys = state_dict.keys()
    if any(k.startswith(_HF_TELLTALES) for k in keys):
        return LAYOUT_TRANSFORMERS
    if "vit.cls_token" in keys or "vit.patch_embed.proj.weight" in keys:
        return LAYOUT_WRAPPER
    if "patch_embed.proj.weight" in keys:
        return LAYOUT_TIMM
    sample = ", ".join(sorted(keys)[:5])
    raise CheckpointError(
        f"unrecognised checkpoint layout (first keys: {sample}); fakebank reads timm ViT, the Community "
        "Forensics `vit.` wrapper and transformers ViTForImageClassification checkpoints"
    )


# transformers ViT keys that no timm checkpoint has: `vit.`-prefixed from ViTForImageClassification, bare
# from a backbone-only ViTModel.
_HF_TELLTALES = ("vit.embeddings.", "vit.encoder.layer.", "embeddings.patch_embeddings.", "encoder.layer.")

# timm key ↔ transformers key: the table transformers uses to import timm ViTs, read the other way.
# `{i}` is the block index, `{p}` weight|bias. q/k/v are handled apart: they are rows of timm's `qkv`.
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    ("cls_token", "vit.embeddings.cls_token"),
    ("pos_embed", "vit.embeddings.position_embeddings"),
    ("patch_embed.proj.{p}", "vit.embeddings.patch_embeddings.projection.{p}"),
    ("norm.{p}", "vit.layernorm.{p}"),
    ("head.{p}", "classifier.{p}"),
    ("blocks.{i}.norm1.{p}", "vit.encoder.layer.{i}.layernorm_before.{p}"),
    ("blocks.{i}.norm2.{p}", "vit.encoder.layer.{i}.layernorm_after.{p}"),
    ("blocks.{i}.attn.proj.{p}", "vit.encoder.layer.{i}.attention.output.dense.{p}"),
    ("blocks.{i}.mlp.fc1.{p}", "vit.encoder.layer.{i}.intermediate.dense.{p}"),
    ("blocks.{i}.mlp.fc2.{p}", "vit.encoder.layer.{i}.output.dense.{p}"),
)
_HF_QKV = ("blocks.{i}.attn.qkv.{p}", "vit.encoder.layer.{i}.attention.attention.{n}.{p}")
_QKV_NAMES = ("query", "key", "value")


def convert_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ViTForImageClassification (or backbone-only ViTModel) keys → timm keys.

    The inverse of the rename table transformers uses to import timm ViTs: query/key/value are
    concatenated back into `qkv`. Every source key must be consumed; leftovers are reported as unexpected.
    A key the source lacks is simply not produced: strict loading then reports it as missing.
    """
    if not any(k.startswith("vit.") for k in sd):  # ViTModel: same keys without the `vit.` prefix
        sd = {f"vit.{k}": v for k, v in sd.items()}
    src = dict(sd)
    out: dict[str, torch.Tensor] = {}
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"vit\.encoder\.layer\.(\d+)\.", k))})
    for p in ("weight", "bias"):
        for dst, key in _HF_RENAMES:
            for i in layers if "{i}" in dst else [None]:
                k = key.format(i=i, p=p)
                if k in src:
                    out[dst.format(i=i, p=p)] = src.pop(k)
        for i in layers:
            qkv = [_HF_QKV[1].format(i=i, n=n, p=p) for n in _QKV_NAMES]
            present = [k for k in qkv if k in src]
            if present and len(present) < 3:
                raise CheckpointError(
                    "transformers checkpoint is missing keys "
                    + ", ".join(k for k in qkv if k not in src)
                    + " (query, key and value come together); re-export the checkpoint"
                )
            if present:
                out[_HF_QKV[0].format(i=i, p=p)] = torch.cat([src.pop(k) for k in qkv], dim=0)
    # A pooler is not part of ViTForImageClassification's classification path; drop it explicitly.
    for k in [k for k in src if k.startswith("vit.pooler.")]:
        src.pop(k)
    if src:
        raise CheckpointError(
            "transformers checkpoint has unexpected keys fakebank cannot map: "
            + ", ".join(sorted(src)[:10])
            + ("…" if len(src) > 10 else "")
            + "; is this a ViTForImageClassification checkpoint?"
        )
    return out


def source_key(layout: str, key: str) -> str:
    """A timm key as the checkpoint file of ``layout`` spells it (for error messages)."""
    if layout == LAYOUT_WRAPPER:
        return f"vit.{key}"
    if layout != LAYOUT_TRANSFORMERS:
        return key
    parts = key.split(".")
    i = next((x for x in parts if x.isdigit()), None)
    p = parts[-1]
    for dst, src in _HF_RENAMES:
        if dst.format(i=i, p=p) == key:
            return src.format(i=i, p=p)
    if _HF_QKV[0].format(i=i, p=p) == key:
        return "|".join(_HF_QKV[1].format(i=i, n=n, p=p) for n in _QKV_NAMES)
    return key


def _resolve_files(spec: str) -> tuple[Path, str, str | None]:
    """Spec → (weights file, display name, revision)."""
    m = _HF_SPEC.match(spec)
    if m:
        return _resolve_hub(spec, m.group("repo"), m.group("rev"))
    if spec.startswith("hf:"):
        raise CheckpointError(f"bad hub spec {spec!r}: use hf:OWNER/NAME or hf:OWNER/NAME@REVISION")
    path = Path(spec).expanduser()
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            found = sorted(p.name for p in path.glob("*.safetensors"))
            if len(found) != 1:
                raise CheckpointError(
                    f"{path}: no model.safetensors in this folder"
                    + (f" (found {', '.join(found)}; pass the file itself)" if found else "")
                )
            weights = path / found[0]
        return weights, path.name, None
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path}: fakebank only reads .safetensors weights (pickled .pt/.bin files can run code); "
                "convert it with safetensors.torch.save_file"
            )
        return path, path.stem, None
    raise CheckpointError(
        f"weights {spec!r} not found: give a folder, a .safetensors file, hf:OWNER/NAME[@REVISION] "
        f"or untrained:ARCH[:SEED] (via --weights or {WEIGHTS_ENV})"
    )


def _resolve_hub(spec: str, repo: str, revision: str | None) -> tuple[Path, str, str | None]:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - installed with timm
        raise CheckpointError("huggingface_hub is not installed; pip install huggingface_hub") from e
    patterns = ["*.json", "model.safetensors"]
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    cache_dir = _hub_cache_dir()
    folder = None
    errors = []
    for local_only in (True, False):
        if not local_only and offline:
            break
        try:
            folder = snapshot_download(
                repo, revision=revision, allow_patterns=patterns, local_files_only=local_only, cache_dir=cache_dir
            )
            break
        except Exception as e:  # noqa: BLE001 - hub errors are many types; all mean "not here"
            errors.append(f"{type(e).__name__}: {e}".splitlines()[0])
    if folder is None or not (Path(folder) / "model.safetensors").is_file():
        raise CheckpointError(
            f"weights {spec} are not in the Hugging Face cache ({cache_dir}) and could not be downloaded "
            f"({'; '.join(errors) or 'no model.safetensors in the snapshot'}). Download them on a machine "
            f"with network access (huggingface-cli download {repo}), or set {WEIGHTS_ENV} / --weights to a "
            "local folder or .safetensors file"
        )
    folder = Path(folder)
    # snapshot folders are named by the commit they hold: that is the revision actually used.
    return folder / "model.safetensors", repo, folder.name


def _hub_cache_dir() -> str:
    """The hub cache as huggingface_hub resolves it, but read from the environment now rather than when
    huggingface_hub was first imported (so HF_HOME / HF_HUB_CACHE set later still count)."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(cache))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
