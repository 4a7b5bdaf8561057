"""Patch grids: the stored form, agreement under rotations/mirrors (against a pairwise oracle), the grid the
model emits from its forward pass, and the rule it enforces — an embedding-only copy must agree spatially,
items banked without a grid give none — end to end through the api on files and on the format-1 bank."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from bankutil import format_1_bank
from fakebank.dedup import EMBEDDING_THRESHOLD, GRID_MIN_AGREEMENT, DedupParams, Probe, find, grid_of
from fakebank.grid import (GRID_CELLS, GRID_WIDTH, PatchGrid, agreement, agreements, dihedral, required_agreement,
                           smoothness, smoothnesses, verified)

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


def faint_marks(seed: int, size=(640, 480)) -> Image.Image:
    """A near-black frame with four soft, faint discs and a small sharp speck: a few ORB keypoints (detail,
    but too few for ORB to judge a pair), PDQ quality < 50, and every such frame has nearly the same cls
    embedding: a copy of one can only be told by the embedding and its grid."""
    rng = np.random.default_rng(seed)
    w, h = size
    im = Image.new("RGB", size, (12, 12, 16))
    d = ImageDraw.Draw(im)
    for _ in range(4):
        x, y, s = rng.integers(0, w - 120), rng.integers(0, h - 120), int(rng.integers(40, 120))
        d.ellipse((x, y, x + s, y + s), fill=tuple(int(v) for v in rng.integers(30, 60, 3)))
    im = im.filter(ImageFilter.GaussianBlur(12))
    d = ImageDraw.Draw(im)
    x, y = rng.integers(20, w - 40), rng.integers(20, h - 40)
    d.rectangle((x, y, x + 8, y + 8), fill=(200, 200, 190))
    return im


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
    """Two dark frames with a few soft marks (no ORB keypoints, PDQ quality < 50: only the embedding can judge
    them) in a bank; a re-encoded copy of one is a copy of it, never of the other frame, although cls alone
    (verification off) matches both. The `match` record carries the evidence. (Star fields no longer serve:
    their stars give ORB enough keypoints to judge, so the embedding signal leaves them to `local`.)"""
    from fakebank.api import Fakebank

    src = tmp_path / "src"
    src.mkdir()
    for k in (1, 2):
        faint_marks(k).save(src / f"sky-{k}.png")
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(encoded(faint_marks(1), quality=60))
    fb = Fakebank(tmp_path / "bank", weights=WEIGHTS, device="cpu")
    added = {Path(r["path"]).name: r["id"] for r in fb.add(sorted(src.iterdir()))}

    emb_only = DedupParams(signals=("embedding",))
    [rec] = fb.dupes([str(copy)], params=emb_only)
    assert [(d["id"], d["signal"]) for d in rec["duplicates"]] == [(added["sky-1.png"], "embedding")]
    assert rec["duplicates"][0]["spatial_agreement"] >= GRID_MIN_AGREEMENT
    [before] = fb.dupes([str(copy)], params=DedupParams(signals=("embedding",), grid_min_agreement=-1.0))
    assert {d["id"] for d in before["duplicates"]} == set(added.values())  # what cls alone would say

    # the speck lets ORB match the copy too: the bank's own dedup settings leave `local` out, so that the
    # query's near-duplicate decision rests on the embedding
    from fakebank.bank import BankWriter

    with BankWriter(tmp_path / "bank", create=False) as w:
        w.apply([], [], settings={"dedup": DedupParams(signals=("pdq", "pdq_trim", "embedding")).to_dict()})
    [q] = Fakebank(tmp_path / "bank", weights=WEIGHTS, device="cpu").query([str(copy)])
    assert q["reason"] == "near_duplicate" and q["match"]["id"] == added["sky-1.png"]
    assert q["match"]["signal"] == "embedding" and q["match"]["spatial_agreement"] >= GRID_MIN_AGREEMENT
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


def glowing_star_field(seed: int, size=(640, 480)) -> Image.Image:
    """A star field with a faint glow, as scripts/bench_hard_negatives.py draws them: with untrained
    vit_small the grids of such skies are little more than a smooth brightness map, and distinct skies agreed
    at up to 0.97 under the fixed 0.6 bar (hundreds of false copies on the bench)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(60, 250)
    a = (np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)) * rng.uniform(10, 40))[..., None] \
        * np.array([rng.uniform(0.3, 1), rng.uniform(0.3, 1), 1.0])
    n = int(rng.integers(80, 600))
    a[rng.integers(0, h, n), rng.integers(0, w, n)] += rng.uniform(60, 255, (n, 1))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def test_distinct_star_fields_are_not_copies_but_a_resized_copy_of_one_is(tmp_path):
    """Specific, not just similar: ten generated skies that the cls embedding calls the same and whose grids
    agree above the base bar are no copies of each other by any signal (the sky's stars give ORB keypoints
    enough to judge, so the embedding stays out; a smooth glow needs closer agreement), while a resized,
    re-encoded copy of one is still found. Untrained vit_small: the model the gap was measured with."""
    from fakebank.api import Fakebank
    from fakebank.bank import Bank

    src = tmp_path / "skies"
    src.mkdir()
    for k in range(10):
        glowing_star_field(k).save(src / f"sky-{k}.png")
    sky = Image.open(src / "sky-0.png").convert("RGB")
    copy = tmp_path / "sky-0-copy.jpg"
    sky.resize((sky.width * 9 // 10, sky.height * 9 // 10), Image.Resampling.BICUBIC).save(copy, quality=90)
    fb = Fakebank(tmp_path / "bank", weights="untrained:vit_small_patch16_384:0", device="cpu")
    added = {Path(r["path"]).name: r["id"] for r in fb.add(sorted(src.iterdir()))}

    bank = Bank.open(tmp_path / "bank")
    ids = sorted(added.values())
    close = [(i, j) for i in ids for j in ids if i < j
             and float(bank.vector("cls", i) @ bank.vector("cls", j)) >= EMBEDDING_THRESHOLD]
    # the case the check exists for: look-alikes by cls whose grids agree above the base bar
    assert any(agreement(grid_of(bank, i), grid_of(bank, j)) >= GRID_MIN_AGREEMENT for i, j in close)
    for i in ids:  # no sky is a copy of another, by the bank's own grouping rule
        assert find(bank, Probe.of_item(bank, i)) == []

    [rec] = fb.dupes([str(copy)])  # found by its keypoints (a copy shrunk to 75 % is not: a measured gap)
    assert [d["id"] for d in rec["duplicates"]] == [added["sky-0.png"]]


def test_smooth_grids_need_closer_agreement():
    """Two different smooth brightness maps (a blob each, a few cells apart) along one token direction agree
    well above the base bar by chance; the bar rises with their smoothness, so they are refused, while a
    noisy copy of one passes. A grid with no self-similarity keeps the base bar."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:GRID_CELLS, 0:GRID_CELLS]
    direction = rng.normal(size=GRID_WIDTH)

    def blob(cy, cx, s=1.6):
        m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        return (m - m.mean())[..., None] * direction

    a, b = blob(1.5, 1.5), blob(2.5, 3.5)
    ga, gb = PatchGrid.quantise(a), PatchGrid.quantise(b)
    copy = PatchGrid.quantise(a + 0.05 * np.abs(a).max() * rng.normal(size=a.shape))
    assert agreement(ga, gb) >= GRID_MIN_AGREEMENT and smoothness(ga) > 0.5
    assert verified(gb, ga, GRID_MIN_AGREEMENT) == (agreement(gb, ga), False)
    assert verified(copy, ga, GRID_MIN_AGREEMENT)[1]
    rough = PatchGrid.quantise(rng.normal(size=a.shape))
    assert smoothness(rough) < 0.3
    assert required_agreement(GRID_MIN_AGREEMENT, 0.0, 0.0) == GRID_MIN_AGREEMENT
    assert required_agreement(-1.0, 1.0, 1.0) == -1.0  # the check off
    np.testing.assert_allclose(smoothnesses(np.stack([ga.values, rough.values])), [smoothness(ga), smoothness(rough)])


def test_the_grid_basis_is_computed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """The basis costs a forward pass of the reference images (2 s of vit_small's first query): a second
    process reads it from the cache, keyed by the model's identity and the grid's settings."""
    import torch

    from fakebank import model as model_module
    from fakebank.model import load_model

    monkeypatch.setenv("FAKEBANK_CACHE", str(tmp_path))
    m = load_model("untrained:test_vit:0")
    first = model_module._grid_basis(m, torch.device("cpu"))
    [stored] = (tmp_path / "grid").glob("*.npy")
    assert stored.name == f"{model_module.grid_key(m)}.npy"
    fresh = load_model("untrained:test_vit:0")  # another module object: as a new process sees it

    def no_forward(*a, **k):
        raise AssertionError("the basis was recomputed instead of read from the cache")

    monkeypatch.setattr(fresh.module, "forward_features", no_forward)
    assert torch.equal(model_module._grid_basis(fresh, torch.device("cpu")), first)
    stored.write_bytes(b"damaged")  # a damaged cache is recomputed, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("FAKEBANK_CACHE", str(tmp_path))
    again = load_model("untrained:test_vit:0")
    assert torch.allclose(model_module._grid_basis(again, torch.device("cpu")), first)
