"""Patch heat maps: faithfulness by the deletion test on the bundled sample fakes, shapes, overlay, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fakebank.cli import app
from fakebank.explain import DELETION_SEEDS, deletion_test, explain_image, heat_grid, overlay, painted
from fakebank.model import load_model
from fakebank.preprocess import load_rgb, model_view, to_array
from videoutil import write_video

DATA = Path(__file__).parent / "data"
FAKES = sorted((DATA / "commfor").glob("*.png"))
WEIGHTS = "untrained:test_vit:0"  # 160-px ViT, 10 × 10 patches of 16 px
runner = CliRunner()


@pytest.fixture(scope="module")
def test_vit():
    return load_model(WEIGHTS)


def margins(model) -> dict[str, float]:
    out = {}
    for f in FAKES:
        img = load_rgb(f)
        heat = explain_image(model, img)
        out[f.name] = deletion_test(model, to_array(img, model.preprocessing), heat.relevance).margin
    return out


def test_deletion_test_on_the_sample_fakes(test_vit):
    """Painting the top 10 % of patches by the heat map moves the fake logit down more than painting 10 %
    random patches (mean of 5 draws), on every bundled sample fake."""
    assert len(FAKES) == 5
    m = margins(test_vit)
    print("deletion margins, untrained:test_vit:0:", {k: round(v, 4) for k, v in m.items()})
    assert all(v > 0 for v in m.values()), m


@pytest.mark.parametrize("fixture", ["commfor_wrapper", "hf_vit_2label"])
def test_deletion_test_on_the_checkpoint_layouts(fixture, request):
    """The same check with the tiny checkpoints in the authors' layout (one logit) and the transformers port
    (two labels, softmax log-odds): 4 × 4 patches, so the top 2 against 2 random ones (5 draws)."""
    model = load_model(str(request.getfixturevalue(fixture).path))
    m = margins(model)
    print(f"deletion margins, {fixture}:", {k: round(v, 4) for k, v in m.items()})
    assert all(v > 0 for v in m.values()), m


def test_heatmap_shape_range_and_no_side_effects(test_vit):
    img = load_rgb(FAKES[0])
    heat = explain_image(test_vit, img)
    assert heat.grid.shape == heat.relevance.shape == (10, 10)
    assert heat.grid.dtype == np.float32
    assert heat.grid.min() >= 0 and heat.grid.max() == pytest.approx(1.0)
    # the grid is the positive part of the relevance, rescaled: same order where positive, 0 elsewhere
    pos = heat.relevance > 0
    assert np.all(heat.grid[~pos] == 0)
    np.testing.assert_allclose(heat.grid[pos], heat.relevance[pos] / heat.relevance.max(), rtol=1e-6)
    assert heat.view.size == (160, 160)
    # no gradients left on the weights, model still in eval mode, and the explanation is deterministic
    assert all(p.grad is None for p in test_vit.module.parameters())
    assert not test_vit.module.training
    np.testing.assert_array_equal(explain_image(test_vit, img).relevance, heat.relevance)
    rec = heat.to_record()
    assert rec["grid_size"] == [10, 10] and rec["patch_size"] == 16 and len(rec["grid"]) == 10
    json.dumps(rec)


def test_relevance_estimates_single_patch_deletions(test_vit):
    """The relevance of a patch estimates the logit's fall when that patch alone is painted: the estimate
    and the real falls (one forward per patch) are positively correlated."""
    img = load_rgb(FAKES[1])
    pixels = to_array(img, test_vit.preprocessing)
    rel = explain_image(test_vit, img).relevance.reshape(-1)
    x = torch.from_numpy(pixels)
    variants = torch.stack([x] + [painted(x, np.array([i]), 16, 10) for i in range(100)])
    with torch.inference_mode():
        logits = test_vit.forward(variants)[0].numpy()
    falls = logits[0] - logits[1:]
    corr = np.corrcoef(rel, falls)[0, 1]
    print(f"correlation of relevance with single-patch deletion falls: {corr:.3f}")
    assert corr > 0.5


def test_deletion_result_and_painting(test_vit):
    img = load_rgb(FAKES[2])
    pixels = to_array(img, test_vit.preprocessing)
    d = deletion_test(test_vit, pixels, np.arange(100, dtype=np.float32).reshape(10, 10))
    assert d.patches == 10 and len(d.random_drops) == len(DELETION_SEEDS)
    assert d.margin == pytest.approx(d.top_drop - np.mean(d.random_drops))
    x = torch.from_numpy(pixels)
    out = painted(x, np.array([0, 99]), 16, 10)
    mean = x.mean(dim=(1, 2))
    assert torch.allclose(out[:, :16, :16], mean[:, None, None].expand(3, 16, 16))
    assert torch.allclose(out[:, -16:, -16:], mean[:, None, None].expand(3, 16, 16))
    assert torch.equal(out[:, 16:144, :], x[:, 16:144, :])
    with pytest.raises(ValueError):
        deletion_test(test_vit, pixels, np.zeros((10, 10)), fraction=0)


def test_overlay_leaves_cold_patches_untouched():
    view = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    grid = np.zeros((2, 3), np.float32)
    grid[0, 1] = 1.0
    out = np.asarray(overlay(view, grid)).astype(int)
    base = np.asarray(view).astype(int)
    assert out.shape == base.shape
    cold = np.ones((32, 48), bool)
    cold[:16, 16:32] = False
    np.testing.assert_array_equal(out[cold], base[cold])
    assert np.abs(out[~cold] - base[~cold]).mean() > 10
    np.testing.assert_array_equal(heat_grid(np.array([[-1.0, -2.0]])), [[0.0, 0.0]])


def test_cli_explain_and_query_explain(tmp_path):
    png = tmp_path / "new" / "heat.png"  # a missing folder is made
    res = runner.invoke(app, ["explain", str(FAKES[0]), "--weights", WEIGHTS, "--out", str(png), "--json"])
    assert res.exit_code == 0, res.output
    (r,) = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert set(r) == {"path", "sha256", "heatmap", "p_model", "deletion", "model"}
    assert r["heatmap"]["overlay"] == str(png) and r["deletion"]["margin"] > 0
    with Image.open(png) as im:
        assert im.size == (160, 160) and im.format == "PNG"
    # with the same model, the overlay is drawn over exactly what the model sees
    assert model_view(load_rgb(FAKES[0]), load_model(WEIGHTS).preprocessing).size == (160, 160)

    bank = tmp_path / "bank"
    assert runner.invoke(app, ["add", str(FAKES[1]), "--bank", str(bank), "--weights", WEIGHTS]).exit_code == 0
    out_dir = tmp_path / "overlays"
    res = runner.invoke(app, ["query", str(FAKES[0]), "--bank", str(bank), "--explain", "--out-dir", str(out_dir),
                              "--json"])
    assert res.exit_code == 0, res.output
    (q,) = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert "provenance" not in q and np.array(q["heatmap"]["grid"]).shape == (10, 10)
    assert np.allclose(q["heatmap"]["grid"], r["heatmap"]["grid"], atol=1e-4)
    assert Path(q["heatmap"]["overlay"]).parent == out_dir and Path(q["heatmap"]["overlay"]).is_file()
    res = runner.invoke(app, ["query", str(FAKES[0]), "--bank", str(bank), "--out-dir", str(out_dir)])
    assert res.exit_code == 2  # --out-dir without --explain is a usage error
    # a bad --out is refused before the model runs; a video is refused with what to do instead
    res = runner.invoke(app, ["explain", str(FAKES[0]), "--weights", WEIGHTS, "--out", str(png.parent)])
    assert res.exit_code == 2 and "is a folder" in res.stderr
    for bad in (png / "x.png", png / "sub" / "x.png"):  # the file may be any folder above the overlay
        res = runner.invoke(app, ["explain", str(FAKES[0]), "--weights", WEIGHTS, "--out", str(bad)])
        assert res.exit_code == 2 and f"{png} is a file, not a folder" in " ".join(res.stderr.split()), res.output
    clip = tmp_path / "clip.mp4"
    write_video(clip, [(load_rgb(FAKES[1]), 1)], fps=5)
    res = runner.invoke(app, ["explain", str(clip), "--weights", WEIGHTS])
    assert res.exit_code == 2 and "is a video" in " ".join(res.stderr.split())


def test_service_query_explain_and_provenance(tmp_path):
    """POST /v1/query?explain=true&provenance=true (in process): the heat map comes as grid + base64 PNG,
    equal to the CLI's; provenance is read from the uploaded bytes; without the flags the record is as before."""
    import base64
    import io

    from fastapi.testclient import TestClient

    from fakebank.api import Fakebank
    from fakebank.service import create_app

    bank = tmp_path / "bank"
    assert runner.invoke(app, ["add", str(FAKES[1]), "--bank", str(bank), "--weights", WEIGHTS]).exit_code == 0
    # an A1111 generator chunk on a sample fake
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1")
    buf = io.BytesIO()
    Image.open(FAKES[0]).save(buf, "PNG", pnginfo=info)
    upload = buf.getvalue()
    with TestClient(create_app(Fakebank(bank, weights=WEIGHTS))) as client:
        plain = client.post("/v1/query", files={"file": ("x.png", upload, "image/png")}).json()["results"][0]
        assert "heatmap" not in plain and "provenance" not in plain
        res = client.post("/v1/query?explain=true&provenance=true",
                          files={"file": ("x.png", upload, "image/png")})
        assert res.status_code == 200, res.text
        r = res.json()["results"][0]
    assert r["provenance"]["ai_claim"] and r["provenance"]["evidence"][0]["kind"] == "generator_chunk"
    if plain["verdict"] == "uncertain":
        assert (r["verdict"], r["reason"]) == ("fake", "provenance")
    assert r["score"] == plain["score"]  # provenance is never blended into the score
    h = r["heatmap"]
    assert np.array(h["grid"]).shape == (10, 10) and "overlay" not in h
    with Image.open(io.BytesIO(base64.b64decode(h["png_base64"]))) as im:
        assert im.format == "PNG" and im.size == (160, 160)
    cli = explain_image(load_model(WEIGHTS), load_rgb(upload)).to_record()
    assert np.allclose(h["grid"], cli["grid"], atol=1e-4)
