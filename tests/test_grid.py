"""Patch grids: the stored form, agreement under rotations/mirrors (against a pairwise oracle), the grid the
model emits from its forward pass, and the rule it enforces — an embedding-only copy must agree spatially,
items banked without a grid give none — end to end through the api on files and on the format-1 bank."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bankutil import format_1_bank
from fakebank.dedup import EMBEDDING_THRESHOLD, GRID_MIN_AGREEMENT, DedupParams, Probe, find
from fakebank.grid import GRID_CELLS, GRID_WIDTH, PatchGrid, agreement, agreements, dihedral

DATA = Path(__file__).parent / "data"
WEIGHTS = "untrained:test_vit:0"


def star_field(seed: int, size=(640, 480)) -> Image.Image:
    """A black sky with a few hundred stars: PDQ quality < 50, and every such picture has nearly the same
    cls embedding (the issue's Hubble deep-field case)."""
    rng = np.random.default_rng(seed)
    w, h = size
    a = np.zeros((h, w, 3), np.float32)
    n = int(rng.integers(150, 400))
    a[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.uniform(80, 255, (n, 1))
    return Image.fromarray(a.astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))


def encoded(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


# -- the stored form and the agreement ------------------------------------------------------------------------

def test_grid_round_trips_and_agrees_with_its_rotations_and_mirrors_only():
    rng = np.random.default_rng(0)
    g = PatchGrid.quantise(rng.normal(size=(GRID_CELLS, GRID_CELLS, GRID_WIDTH)))
    data = g.to_bytes()
    assert len(data) == 2 + GRID_CELLS * GRID_CELLS * GRID_WIDTH <= 2048  # "a few KB at most"
    back = PatchGrid.from_bytes(data)
    assert np.array_equal(back.values, g.values) and back.values.dtype == np.int8
    assert PatchGrid.from_bytes(None) is None and PatchGrid.from_bytes(b"") is None
    with pytest.raises(ValueError, match="needs"):
        PatchGrid.from_bytes(data[:-1])
    for turned in dihedral(g.values):
        assert agreement(g, PatchGrid(np.ascontiguousarray(turned))) == pytest.approx(1.0, abs=1e-6)
    other = PatchGrid.quantise(rng.normal(size=g.values.shape))
    assert abs(agreement(g, other)) < 0.3
    assert agreement(g, None) is None and agreement(None, g) is None
    assert agreement(g, PatchGrid(np.zeros((4, 4, GRID_WIDTH), np.int8))) is None  # another grid size


def test_batched_agreements_equal_the_pairwise_oracle():
    rng = np.random.default_rng(1)
    shape = (GRID_CELLS, GRID_CELLS, GRID_WIDTH)
    a = [PatchGrid.quantise(rng.normal(size=shape)) for _ in range(12)]
    b = [PatchGrid.quantise(np.rot90(x.values, k % 4, axes=(0, 1)) + rng.normal(0, 40, shape) * (k % 3))
         for k, x in enumerate(a)]
    got = agreements(np.stack([x.values for x in a]), np.stack([y.values for y in b]))
    np.testing.assert_allclose(got, [agreement(x, y) for x, y in zip(a, b)], atol=1e-5)


# -- the model's grid ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def extractor():
    from fakebank.embed import Extractor
    from fakebank.model import load_model

    return Extractor(load_model(WEIGHTS), device="cpu", batch_size=4)


def embed(extractor, named: dict[str, bytes]) -> dict:
    from fakebank.embed import Embedding, Source

    out = {e.path: e for e in extractor.extract(Source(n, b) for n, b in named.items())}
    assert all(isinstance(e, Embedding) for e in out.values())
    return out


def test_the_forward_pass_emits_a_grid_that_tells_a_copy_from_a_look_alike(extractor):
    import torch

    a, b = star_field(1), star_field(2)
    e = embed(extractor, {"a": encoded(a, "PNG"), "a-jpeg": encoded(a, quality=60), "b": encoded(b, "PNG")})
    assert e["a"].pdq.quality < 50 and e["b"].pdq.quality < 50  # PDQ cannot judge these pictures
    # two different skies: the global embedding says "same" — the false copy of the issue …
    assert float(e["a"].cls @ e["b"].cls) >= EMBEDDING_THRESHOLD
    # … the grid does not, and the re-encoded copy agrees
    assert agreement(e["a-jpeg"].patch_grid, e["a"].patch_grid) > 0.9
    assert agreement(e["b"].patch_grid, e["a"].patch_grid) < GRID_MIN_AGREEMENT / 2
    # a mirrored copy agrees through the grid's mirror, without another forward pass
    m = embed(extractor, {"a-mirror": encoded(a.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG")})["a-mirror"]
    assert agreement(m.patch_grid, e["a"].patch_grid) > agreement(m.patch_grid, e["b"].patch_grid)
    # `forward` (explain's) is the same pass without the grid
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 160, 160)).astype(np.float32))
    with torch.inference_mode():
        plain, with_grid = extractor.model.forward(x), extractor.model.forward_with_grid(x)
    for p, q in zip(plain, with_grid):
        assert torch.equal(p, q)
    assert with_grid[3].shape == (2, GRID_CELLS, GRID_CELLS, GRID_WIDTH)


def test_a_plain_image_has_almost_no_grid(extractor):
    """The grids of plain images are removed from every grid (model.GRID_REFERENCE_COLOURS): what is left
    of a featureless frame is next to nothing, so flat pictures do not agree through position embeddings."""
    import torch

    pre = extractor.model.preprocessing
    side = pre.input_size
    imgs = torch.stack([(torch.full((3, side, side), v) - torch.tensor(pre.mean).view(3, 1, 1))
                        / torch.tensor(pre.std).view(3, 1, 1) for v in (0.02, 0.4, 0.9)])
    detailed = torch.from_numpy(np.asarray(Image.open(DATA / "commfor/00000274.png").convert("RGB")
                                           .resize((side, side)), np.float32).transpose(2, 0, 1) / 255)
    detailed = (detailed - torch.tensor(pre.mean).view(3, 1, 1)) / torch.tensor(pre.std).view(3, 1, 1)
    with torch.inference_mode():
        grids = extractor.model.forward_with_grid(torch.cat([imgs, detailed[None]]))[3]
    norms = grids.reshape(len(grids), -1).norm(dim=1)
    assert (norms[:3] < 0.05 * norms[3]).all()


# -- the rule, end to end ------------------------------------------------------------------------------------

def test_an_embedding_copy_is_verified_by_the_grid_end_to_end(tmp_path):
    """Two star fields in a bank; a re-encoded copy of one is a copy of it, never of the other sky, although
    cls alone (verification off) matches both. The `match` record carries the evidence."""
    from fakebank.api import Fakebank

    src = tmp_path / "src"
    src.mkdir()
    for k in (1, 2):
        star_field(k).save(src / f"sky-{k}.png")
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(encoded(star_field(1), quality=60))
    fb = Fakebank(tmp_path / "bank", weights=WEIGHTS, device="cpu")
    added = {Path(r["path"]).name: r["id"] for r in fb.add(sorted(src.iterdir()))}

    emb_only = DedupParams(signals=("embedding",))
    [rec] = fb.dupes([str(copy)], params=emb_only)
    assert [(d["id"], d["signal"]) for d in rec["duplicates"]] == [(added["sky-1.png"], "embedding")]
    assert rec["duplicates"][0]["spatial_agreement"] >= GRID_MIN_AGREEMENT
    [before] = fb.dupes([str(copy)], params=DedupParams(signals=("embedding",), grid_min_agreement=-1.0))
    assert {d["id"] for d in before["duplicates"]} == set(added.values())  # what cls alone would say

    [q] = fb.query([str(copy)])
    assert q["reason"] == "near_duplicate" and q["match"]["id"] == added["sky-1.png"]
    assert q["match"]["signal"] in ("local", "embedding") and q["match"]["spatial_agreement"] >= GRID_MIN_AGREEMENT
    assert json.loads(json.dumps(q["match"])) == q["match"]


def test_items_banked_without_a_grid_never_match_by_embedding_alone(tmp_path):
    """tests/data/bank-v1 predates the column: its rows read a null grid, and the embedding signal is
    dropped for them (even at cls 1.0 with PDQ unable to judge), while the other signals are unchanged."""
    from fakebank.bank import Bank

    bank = Bank.open(format_1_bank(tmp_path / "b"))
    grid = PatchGrid.quantise(np.random.default_rng(0).normal(size=(GRID_CELLS, GRID_CELLS, GRID_WIDTH)))
    for item_id in bank.ids.tolist():
        assert bank.value(item_id, "patch_grid") is None
        probe = Probe(cls=bank.vector("cls", item_id), grid=grid)  # no PDQ: only the embedding could speak
        assert find(bank, probe, DedupParams(grid_min_agreement=-1.0)) == []
        own = Probe.of_item(bank, item_id)
        assert own.grid is None
        assert all(m.signal != "embedding" for m in find(bank, own))
    # a query without a grid (an Embedding made before grids existed) gets no embedding-only match either
    assert find(bank, Probe(cls=bank.vector("cls", 1)), DedupParams(grid_min_agreement=-1.0)) == []
