"""Thumbnails in the bank: made at `add`, kept when the originals move, filled in later for older banks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image
from typer.testing import CliRunner

from bankutil import MODEL_INFO, make_item
from fakebank.api import Fakebank
from fakebank.bank import Bank, BankWriter, read_manifest
from fakebank.cli import app
from fakebank.campaigns import thumbnail_uri
from fakebank.thumbnails import THUMB_MAX_SIDE, make_thumbnail, thumbnail_mime

DATA = Path(__file__).parent / "data"
WEIGHTS = "untrained:test_vit:0"
BRIDGE = DATA / "pdq" / "reg-test-input" / "dih" / "bridge-1-original.jpg"  # 1600 × 1004 photo
runner = CliRunner()


def jpeg(blob: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(blob))
    assert img.format == "JPEG"
    return img


def test_make_thumbnail_keeps_the_aspect_and_never_enlarges(image_factory):
    photo = Image.open(BRIDGE).convert("RGB")
    small = jpeg(make_thumbnail(photo))
    assert max(small.size) == THUMB_MAX_SIDE and small.size == (256, round(256 * 1004 / 1600))
    tiny = jpeg(make_thumbnail(image_factory(1, (90, 40))))
    assert tiny.size == (90, 40)
    # a thumbnail still looks like its image: mean colour within a few levels
    a = photo.resize(small.size).convert("RGB")
    diff = sum(abs(x - y) for x, y in zip(a.resize((1, 1)).getpixel((0, 0)), small.convert("RGB").resize((1, 1)).getpixel((0, 0))))
    assert diff <= 6


@pytest.fixture(scope="module")
def added_bank(tmp_path_factory):
    """Four real images added through the api (untrained test_vit), from a folder the test may empty."""
    folder = tmp_path_factory.mktemp("originals")
    for p in [BRIDGE, *sorted((DATA / "commfor").glob("*.png"))[:3]]:
        shutil.copy(p, folder / p.name)
    bank = tmp_path_factory.mktemp("thumbs") / "bank"
    records = list(Fakebank(bank, weights=WEIGHTS).add(sorted(folder.iterdir()), source="tg", campaign="op-thumbs"))
    assert [r["status"] for r in records] == ["added"] * 4
    return bank, folder, records


def test_add_stores_a_few_kb_jpeg_per_item(added_bank):
    bank_path, folder, records = added_bank
    bank = Bank.open(bank_path)
    assert bank.missing_thumbnails() == []
    for r in records:
        blob = bank.thumbnail(r["id"])
        img = jpeg(blob)
        original = Image.open(r["path"])
        assert max(img.size) == min(THUMB_MAX_SIDE, max(original.size))
        assert len(blob) < 12_000, (r["path"], len(blob))
    # thumbnails stay out of the whole-bank table that campaigns and duplicate groups read
    assert "thumbnail" not in bank.table.column_names


def test_thumbnails_outlive_the_originals_in_the_api_and_the_report(added_bank, tmp_path):
    bank_path, folder, records = added_bank
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)
    try:
        fb = Fakebank(bank_path)
        bank = fb.open_bank()
        for r in records:  # the stored thumbnails: the originals are gone
            assert max(jpeg(fb.item_thumbnail(bank, r["id"])).size) <= THUMB_MAX_SIDE
        # an analyst campaign: its members are a campaign whatever their pixels (embedding-only edges would
        # need the patch grids to agree, which four distinct photos never do)
        snap, result = fb.campaign_run(save=False)
        recs = fb.campaign_records(snap, result)
        page = fb.campaign_report(tmp_path / "r.html", snap, result, recs).read_text()
        assert "image not readable" not in page
        uris = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page)
        members = sum(r["size"] for r in recs)
        assert members >= 2 and len(uris) == members + len(recs)  # members and exemplars
    finally:
        shutil.copytree(moved, folder)


def _old_bank(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A bank as written before thumbnails: its segment has no `thumbnail` column; items point at real files."""
    files = []
    for i, p in enumerate([BRIDGE, *sorted((DATA / "commfor").glob("*.png"))[:3]]):
        files.append(tmp_path / f"img{i}{p.suffix}")
        shutil.copy(p, files[-1])
    bank = tmp_path / "bank"
    with BankWriter(bank, model_info=MODEL_INFO, embedding_dim=16) as w:
        w.add([replace(make_item(i), path=str(f), sha256=hashlib.sha256(f.read_bytes()).hexdigest())
               for i, f in enumerate(files)])
    seg = bank / read_manifest(bank)["segments"][0]["file"]
    table = pa.ipc.open_file(pa.memory_map(str(seg))).read_all().drop_columns(["thumbnail"])
    with pa.OSFile(str(seg) + ".tmp", "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
        out.write_table(table)
    os.replace(str(seg) + ".tmp", seg)
    return bank, files


def test_thumbnails_command_fills_an_older_bank_from_the_originals(tmp_path):
    bank, files = _old_bank(tmp_path)
    assert Bank.open(bank).missing_thumbnails() == [1, 2, 3, 4]
    files[1].unlink()  # moved away
    files[2].write_bytes(files[3].read_bytes())  # another image now sits at item 3's path
    res = runner.invoke(app, ["thumbnails", "--bank", str(bank), "--json"])
    assert res.exit_code == 1, res.stderr
    recs = {r["id"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert {i: r["status"] for i, r in recs.items()} == {1: "added", 2: "error", 3: "error", 4: "added"}
    assert "cannot read" in recs[2]["error"] and "changed since it was added" in recs[3]["error"]
    assert "2 thumbnails stored, 2 items without a readable original" in res.stderr

    b = Bank.open(bank)
    assert b.missing_thumbnails() == [2, 3]
    assert jpeg(b.thumbnail(1)).size == (256, 161) and b.thumbnail(2) is None
    assert b.thumbnail(4) == make_thumbnail(Image.open(files[3]).convert("RGB"))
    side = read_manifest(bank)["thumbnails"]
    assert len(side) == 1 and (bank / side[0]).is_file()

    files[2].unlink()
    shutil.copy(sorted((DATA / "commfor").glob("*.png"))[1], files[2])  # item 3's original is back
    res = runner.invoke(app, ["thumbnails", "--bank", str(bank), "--json"])
    assert [json.loads(x)["id"] for x in res.stdout.splitlines()] == [2, 3] and res.exit_code == 1
    assert Bank.open(bank).missing_thumbnails() == [2]

    # compact folds the side thumbnails into the segments and deletes the side files
    with BankWriter(bank, create=False) as w:
        w.remove([4])
        w.compact()
    b = Bank.open(bank)
    assert read_manifest(bank).get("thumbnails") == [] and not list(bank.glob("thumbs-*"))
    assert jpeg(b.thumbnail(1)).size == (256, 161) and b.thumbnail(3) is not None and b.missing_thumbnails() == [2]


def test_side_files_stay_few_and_newer_thumbnails_win(tmp_path):
    with BankWriter(tmp_path, model_info=MODEL_INFO, embedding_dim=16) as w:
        w.add([make_item(i) for i in range(40)])
        for i in range(1, 33):
            w.add_thumbnails({i: f"v1-{i}".encode()})
        w.add_thumbnails({5: b"v2-5"})
        w.remove([7])
        w.add_thumbnails({33: b"v1-33", 34: b"v1-34"})
    files = read_manifest(tmp_path)["thumbnails"]
    assert len(files) <= 6  # a binary counter over 34 single commits: log2, not 34
    assert sorted(p.name for p in tmp_path.glob("thumbs-*")) == sorted(files)  # folded files were swept
    b = Bank.open(tmp_path)
    assert b.thumbnail(5) == b"v2-5" and b.thumbnail(32) == b"v1-32" and b.thumbnail(34) == b"v1-34"
    assert b.missing_thumbnails() == list(range(35, 41))
    with pytest.raises(Exception, match="no item with id 99"):
        with BankWriter(tmp_path, create=False) as w:
            w.add_thumbnails({99: b"x"})


def test_an_uncommitted_side_file_is_swept(tmp_path):
    with BankWriter(tmp_path, model_info=MODEL_INFO, embedding_dim=16) as w:
        w.add([make_item(1)])
    stray = tmp_path / "thumbs-000099.arrow"
    stray.write_bytes(b"half-written by a killed run")
    assert Bank.open(tmp_path).thumbnail(1) is None  # readers never look at files the manifest does not name
    with BankWriter(tmp_path, create=False):
        pass
    assert not stray.exists()


def test_webp_thumbnails_of_older_banks_keep_their_media_type(tmp_path):
    """Banks made before thumbnails were JPEG hold WebP ones: the api, the HTTP service and the report must
    still label them image/webp, and new ones image/jpeg."""
    bank, files = _old_bank(tmp_path)
    photo = Image.open(files[0]).convert("RGB")
    old = io.BytesIO()
    photo.resize((256, 161)).save(old, format="WEBP", quality=60, method=1)
    with BankWriter(bank, create=False) as w:
        w.add_thumbnails({1: old.getvalue(), 2: make_thumbnail(photo)})
    b = Bank.open(bank)
    assert thumbnail_mime(b.thumbnail(1)) == "image/webp" and thumbnail_mime(b.thumbnail(2)) == "image/jpeg"
    assert thumbnail_uri(b, 1).startswith("data:image/webp;base64,")
    assert thumbnail_uri(b, 2).startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(b.thumbnail(1))).format == "WEBP"
    assert thumbnail_mime(b"not an image") == "application/octet-stream"
