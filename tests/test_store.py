"""Stores: the same near-duplicate, writer and CLI behaviour on the bank folder and on Milvus (Milvus Lite
files in tmp dirs; a server when FAKEBANK_TEST_MILVUS_URI is set, e.g. milvus://localhost:19530)."""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from bankutil import DIM, MODEL_INFO, make_item
from fakebank.bank import NewItem, items_schema, table_columns
from fakebank.dedup import DedupParams, find, groups
from fakebank.errors import BankError, UsageError
from fakebank import store as store_module
from fakebank.store import FolderStore, folder_bytes, open_store
import test_dedup
from test_dedup import COMMFOR, caption_overlay, crop, item_of, jpeg, letterbox, phone_frame, probe_of

SERVER = os.environ.get("FAKEBANK_TEST_MILVUS_URI")
STORES = ["folder", "milvus"]


photos = test_dedup.photos  # the module's photo fixture, shared


def _has_milvus() -> bool:
    return importlib.util.find_spec("pymilvus") is not None and (
        bool(SERVER) or importlib.util.find_spec("milvus_lite") is not None)


def make_store(kind: str, tmp: Path):
    if kind == "folder":
        return FolderStore(tmp / "bank")
    if not _has_milvus():
        pytest.skip("the Milvus store needs pymilvus and milvus-lite: pip install 'fakebank[milvus]'")
    name = f"t{uuid.uuid4().hex[:12]}"
    if SERVER:
        return open_store(f"{SERVER.rstrip('/')}/{name}", tmp)
    return open_store(f"milvus-lite:{tmp / 'bank.db'}#{name}", tmp)


def matched(bank, probe, params=None) -> dict[int, str]:
    return {m.id: m.signal for m in find(bank, probe, params)}


@pytest.fixture(scope="module", params=STORES)
def photo_bank(request, tmp_path_factory, photos):
    """The three photos of test_dedup's bank, in each store."""
    store = make_store(request.param, tmp_path_factory.mktemp(f"store-{request.param}"))
    names = ["bridge", "q0122", COMMFOR[0].stem]
    with store.writer(model_info=MODEL_INFO, embedding_dim=DIM) as w:
        ids = w.add([item_of(photos[n], i) for i, n in enumerate(names)])
    return store.open(), dict(zip(names, ids))


# -- near-duplicates: the same matches whichever store holds the bank ------------------------------------------

def test_pdq_and_trim_match_edited_copies_not_other_photos(photo_bank, photos):
    b, ids = photo_bank
    im = photos["bridge"]
    for copy in (jpeg(im, 40), jpeg(im.transpose(Image.Transpose.ROTATE_90)),
                 jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
        assert matched(b, probe_of(copy)).get(ids["bridge"]) == "pdq"
    only_pdq = DedupParams(signals=("pdq", "pdq_trim"))
    for copy in (jpeg(letterbox(im)), jpeg(letterbox(im, 0.2, (255, 255, 255)))):
        assert matched(b, probe_of(copy), only_pdq) == {ids["bridge"]: "pdq_trim"}
    for other in ("q0291", "q0746"):
        assert matched(b, probe_of(jpeg(photos[other]))) == {}


@pytest.mark.parametrize("kind", STORES)
def test_the_whole_bank_table_has_the_same_columns_on_each_store(kind, tmp_path, photos):
    """Campaigns read de-bordered hashes from `table` (campaigns.pdq_hashes): the Milvus table once lacked
    pdq_trim, and its campaigns silently had no de-bordered edges. A letterboxed photo has one."""
    store = make_store(kind, tmp_path)
    framed = item_of(jpeg(letterbox(photos["bridge"])), 1)
    assert framed.pdq_trim is not None
    with store.writer(model_info=MODEL_INFO, embedding_dim=DIM) as w:
        w.add([item_of(photos["q0122"], 0), framed])
    b = store.open()
    table = b.table
    assert table.column_names == table_columns(DIM)
    ids = table.column("id").to_pylist()
    trims = table.column("pdq_trim").to_pylist()
    assert trims == [b.value(i, "pdq_trim") for i in ids] and trims[0] is None and trims[1] == framed.pdq_trim


def test_framed_and_cropped_copies_match_through_local_features(photo_bank, photos):
    b, ids = photo_bank
    for dark in (False, True):
        assert set(matched(b, probe_of(jpeg(phone_frame(photos["q0122"], dark), 70)))) == {ids["q0122"]}
    name = COMMFOR[0].stem
    im = photos[name]
    for copy in (crop(im, 0.7), caption_overlay(crop(im, 0.9))):
        m = {x.id: x for x in find(b, probe_of(jpeg(copy)))}
        assert set(m) == {ids[name]} and m[ids[name]].signal == "local" and m[ids[name]].inliers >= 24
    assert matched(b, probe_of(jpeg(crop(photos[COMMFOR[1].stem], 0.7)))) == {}


def test_cls_search_and_lookup_agree_with_exact_search(photo_bank):
    b, ids = photo_bank
    q = b.vector("cls", ids["bridge"])
    sims, found = b.search("cls", q[None, :], 5)
    assert found[0][0] == ids["bridge"] and abs(sims[0][0] - 1.0) < 1e-5
    assert (found[0][3:] == -1).all()  # three items in the bank
    code = np.frombuffer(b.pdq_of(ids["q0122"])[0], np.uint8)[None, :]
    assert b.pdq_within(code, 31) == [[(ids["q0122"], 0)]]
    exact = {i: int(np.unpackbits(b.pdq_codes[b.row(i)] ^ code[0]).sum()) for i in ids.values()}
    assert sorted(b.pdq_within(code, 256)[0]) == sorted(exact.items())


# -- the writer: labels, removals, edits, campaigns, thumbnails, settings ------------------------------------

@pytest.mark.parametrize("kind", STORES)
def test_a_snapshot_is_reopened_only_after_a_commit(kind, tmp_path):
    """The service asks for a snapshot per request: the same reader (and its caches) until a writer of any
    process commits; then one that sees the commit. A bank dropped and made again is a new bank."""
    store = make_store(kind, tmp_path)
    with store.writer(model_info=MODEL_INFO, embedding_dim=DIM) as w:
        w.add([make_item(1), make_item(2)])
    first = store.snapshot()
    assert store.snapshot() is first and first.label_of(2) == "fake"
    other = open_store(store.spec, tmp_path) if kind == "milvus" else FolderStore(store.path)  # another handle
    with other.writer(create=False) as w:
        w.set_label([2], "real")
    again = store.snapshot()
    assert again is not first and again.label_of(2) == "real" and store.snapshot() is again
    if kind == "milvus":  # dropped and made again: its generation starts from 0 again
        for c in store.client.list_collections():
            if c.startswith(store.name + "_"):
                store.client.drop_collection(c)
        with store.writer(model_info=MODEL_INFO, embedding_dim=DIM) as w:
            w.add([make_item(7)])
            w.set_label([1], "unknown")  # two commits: the same generation as the dropped bank's
        assert store.open().manifest["generation"] == again.manifest["generation"]
        fresh = store.snapshot()
        assert fresh is not again and fresh.ids.tolist() == [1] and fresh.value(1, "sha256") == make_item(7).sha256


@pytest.mark.parametrize("kind", STORES)
def test_writer_operations_read_back_the_same(kind, tmp_path, photos):
    store = make_store(kind, tmp_path)
    im = photos["bridge"]
    items = [item_of(im, 1), make_item(2), make_item(3, label="real"), item_of(jpeg(crop(im, 0.7, 0.2, 0.8)), 4)]
    with store.writer(model_info=MODEL_INFO, embedding_dim=DIM) as w:
        ids = w.add(items)
        assert ids == [1, 2, 3, 4]
        w.set_label([2], "unknown")
        w.apply([], [(1, "note", "seen on a forum"), (3, "tags", "a b")], settings={"dedup": DedupParams().to_dict()})
        w.set_campaigns({1: "C-1", 4: "C-1"})
        w.add_thumbnails({2: b"RIFFthumb"})
    b = store.open()
    assert len(b) == 4 and b.manifest["counts"] == {**b.manifest["counts"], "items": 4, "fake": 2, "real": 1, "unknown": 1}
    assert b.label_of(2) == "unknown" and b.value(1, "note") == "seen on a forum" and b.value(3, "tags") == "a b"
    assert b.item(3)["path"] == items[2].path and b.item(3)["pdq"] == items[2].pdq.hex()
    assert b.id_of_sha256(items[3].sha256) == 4 and b.id_of_sha256("0" * 64) is None
    assert b.ids_of_sha256([items[1].sha256, "f" * 64]).tolist() == [2, -1]
    assert b.thumbnail(2) == b"RIFFthumb" and 3 in b.missing_thumbnails()
    assert np.allclose(b.vector("cls", 3), items[2].cls, atol=1e-6)
    assert b.manifest["dedup"] == DedupParams().to_dict()
    assert sorted(b.campaign_assignments().column("id").to_pylist()) == [1, 4]
    assert b.read_columns([3, 1], ["label", "tags", "note"]) == {
        "label": ["real", "fake"], "tags": ["a b", None], "note": [None, "seen on a forum"]}
    assert groups(b) == [[1, 4]]
    t = pa.concat_tables(b.batches(["id", "label", "pdq"]))
    assert t.column("id").to_pylist() == [1, 2, 3, 4] and t.column("label").to_pylist()[1] == "unknown"
    assert b.recent_ids(2) == [4, 3]
    every = b.read_columns([1, 3], [f.name for f in items_schema(DIM)])  # each column a store must answer
    assert every["sha256"] == [items[0].sha256, items[2].sha256] and every["local"][0] == items[0].local
    with store.writer(create=False) as w:
        w.remove([4])
        w.commit_campaigns(pa.table({"id": [1], "campaign": ["C-7"], "origin": ["computed"]}), {"next_number": 8})
        assert not w.bank.has(4)
    b = store.open()
    assert len(b) == 3 and not b.has(4) and b.ids.tolist() == [1, 2, 3]
    assert b.campaign_assignments().to_pylist() == [{"id": 1, "campaign": "C-7", "origin": "computed"}]
    assert b.manifest["campaigns"]["next_number"] == 8
    assert groups(b) == []
    with pytest.raises(UsageError, match="no item with id 4"):
        b.item(4)
    with store.writer(create=False) as w:
        assert w.add([make_item(5)]) == [5]  # ids are never reused


@pytest.mark.parametrize("kind", STORES)
def test_a_missing_bank_and_another_model_are_refused(kind, tmp_path):
    store = make_store(kind, tmp_path)
    with pytest.raises(BankError, match="no bank at"):
        store.open()
    with store.writer(model_info=MODEL_INFO, embedding_dim=DIM) as w:
        w.add([make_item(1)])
    other = {**MODEL_INFO, "identity_hash": "b" * 64}
    with pytest.raises(BankError, match="not comparable"):
        with store.writer(model_info=other, embedding_dim=DIM):
            pass


def test_store_specs_name_their_store(tmp_path):
    assert isinstance(open_store(None, tmp_path), FolderStore) or os.environ.get("FAKEBANK_STORE")
    assert isinstance(open_store("folder", tmp_path), FolderStore)
    with pytest.raises(UsageError, match="unknown store"):
        open_store("redis://x", tmp_path)
    if _has_milvus():
        s = open_store("milvus://db.example:19531/prod_bank", tmp_path)
        assert (s.uri, s.name) == ("http://db.example:19531", "prod_bank") and s.shared_readers
        assert open_store(s.spec, tmp_path).location == s.location
        assert open_store("milvus+https://db.example/x", tmp_path).uri == "https://db.example:19530"
        s = open_store(f"milvus-lite:{tmp_path / 'x.db'}", tmp_path)
        assert s.uri.endswith("x.db") and s.name == "fakebank" and not s.shared_readers
        assert open_store(s.spec, tmp_path).location == s.location
        with pytest.raises(UsageError, match="collection name"):
            open_store("milvus://h/bad-name", tmp_path)


# -- the CLI: the same records on both stores, and a bank moved from the folder to Milvus ---------------------

WEIGHTS = "untrained:test_vit:0"


def cli(*args) -> tuple[int, list[dict]]:
    from typer.testing import CliRunner

    from fakebank.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]


@pytest.fixture(scope="module")
def cli_photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-photos")
    data = Path(__file__).parent / "data"
    for i, src in enumerate(sorted((data / "commfor").glob("*.png"))[:2]
                            + [data / "pdq/reg-test-input/dih/bridge-1-original.jpg"]):
        Image.open(src).convert("RGB").resize((384, 384)).save(folder / f"img{i}.png")
    copy = folder.parent / f"{folder.name}-copy.jpg"
    Image.open(folder / "img2.png").save(copy, quality=60)
    return folder


def _round_trip(spec: str, bank: Path, photos: Path) -> dict:
    """add, resume, query, dupes, label, remove, lookup, info on one store; the records with ids kept."""
    base = ["--store", spec]
    copy = photos.parent / f"{photos.name}-copy.jpg"
    out = {}
    code, out["add"] = cli(*base, "add", photos, "--bank", bank, "--weights", WEIGHTS, "--json")
    assert code == 0 and [r["status"] for r in out["add"]] == ["added"] * 3
    code, again = cli(*base, "add", photos, "--bank", bank, "--json")
    assert code == 0 and [r["status"] for r in again] == ["duplicate"] * 3
    code, out["query"] = cli(*base, "query", copy, "--bank", bank, "--json")
    assert code == 0
    code, out["dupes"] = cli(*base, "dupes", copy, "--bank", bank, "--json")
    assert code == 0
    code, out["label"] = cli(*base, "label", "3", "--label", "real", "--bank", bank, "--json")
    assert code == 0
    code, out["remove"] = cli(*base, "remove", "1", "--bank", bank, "--json")
    assert code == 0
    code, q2 = cli(*base, "query", copy, "--bank", bank, "--json")
    out["query_after"] = q2
    from fakebank.api import Fakebank

    fb = Fakebank(bank, store=spec)
    pdq = fb.open_bank().item(3)["pdq"]
    code, out["lookup"] = cli(*base, "lookup", "--pdq", pdq, "--bank", bank, "--json")
    assert code == 0
    code, info = cli(*base, "info", "--bank", bank, "--json")
    out["info"] = {k: info[0][k] for k in ("items", "labels", "hash_only", "model", "embedding_dim")}
    code, out["missing"] = cli(*base, "label", "99", "--label", "real", "--bank", bank, "--json")
    out["missing_code"] = code
    return out


def test_cli_round_trip_gives_the_same_records_on_both_stores(tmp_path, cli_photos):
    if not _has_milvus():
        pytest.skip("the Milvus store needs pymilvus and milvus-lite: pip install 'fakebank[milvus]'")
    folder = _round_trip("folder", tmp_path / "folder-bank", cli_photos)
    milvus = _round_trip(make_store("milvus", tmp_path).spec, tmp_path / "unused", cli_photos)
    assert folder["query"][0]["match"]["id"] == 3 and folder["dupes"][0]["duplicates"][0]["id"] == 3
    assert folder["lookup"][0]["matches"][0]["id"] == 3 and folder["missing_code"] == 2
    for key in folder:
        a, b = folder[key], milvus[key]
        if key in ("query", "query_after"):
            for x, y in zip(a, b, strict=True):  # scores are float32 sums: equal to 1e-5 across stores
                assert {k: v for k, v in x.items() if k != "neighbors"} == \
                    {k: v for k, v in y.items() if k != "neighbors"} | {"score": x["score"], "p_knn": x["p_knn"]}
                assert abs(x["score"] - y["score"]) < 1e-4
                assert [(n["id"], n["label"], n["pdq_distance"]) for n in x["neighbors"]] == \
                    [(n["id"], n["label"], n["pdq_distance"]) for n in y["neighbors"]]
        elif key == "add":
            assert [{k: v for k, v in r.items() if k != "p_fake"} for r in a] == \
                [{k: v for k, v in r.items() if k != "p_fake"} for r in b]
        else:
            assert a == b, key


def test_a_bank_moves_from_the_folder_to_milvus_and_back(tmp_path, cli_photos):
    if not _has_milvus():
        pytest.skip("the Milvus store needs pymilvus and milvus-lite: pip install 'fakebank[milvus]'")
    folder = tmp_path / "bank"
    assert cli("add", cli_photos, "--bank", folder, "--weights", WEIGHTS, "--json")[0] == 0
    assert cli("label", "2", "--label", "real", "--bank", folder, "--json")[0] == 0
    export = tmp_path / "all.parquet"
    code, [rec] = cli("export", export, "--format", "fakebank", "--label", "fake", "--label", "real",
                      "--bank", folder, "--json")
    assert code == 0 and rec["signals"] == 3
    spec = make_store("milvus", tmp_path).spec
    # the Milvus bank is created with the same model, then takes the export whole (embeddings included)
    code, [imp] = cli("--store", spec, "import", export, "--weights", WEIGHTS, "--json")
    assert code == 0 and imp["added"] == 3 and not imp["hash_only"]
    copy = cli_photos.parent / f"{cli_photos.name}-copy.jpg"
    _, a = cli("dupes", copy, "--bank", folder, "--json")
    _, b = cli("--store", spec, "dupes", copy, "--json")
    assert [d["signal"] for d in a[0]["duplicates"]] == [d["signal"] for d in b[0]["duplicates"]] == ["pdq"]
    from fakebank.api import Fakebank

    mb = Fakebank(store=spec).open_bank()
    fb = Fakebank(folder).open_bank()
    by_sha = {fb.value(i, "sha256"): i for i in fb.ids.tolist()}
    for i in mb.ids.tolist():
        j = by_sha[mb.value(i, "sha256")]
        assert mb.label_of(i) == fb.label_of(j)
        assert np.array_equal(mb.vector("cls", i), fb.vector("cls", j))
        assert mb.value(i, "local") == fb.value(j, "local") and mb.value(i, "pdq_trim") == fb.value(j, "pdq_trim")
    # and back: Milvus → a new folder
    back = tmp_path / "back.parquet"
    code, [rec] = cli("--store", spec, "export", back, "--format", "fakebank", "--label", "fake", "--label", "real",
                      "--json")
    assert code == 0 and rec["signals"] == 3
    code, [imp] = cli("import", back, "--bank", tmp_path / "bank2", "--weights", WEIGHTS, "--json")
    assert code == 0 and imp["added"] == 3
    assert sorted(Fakebank(tmp_path / "bank2").open_bank().labels.tolist()) == ["fake", "fake", "real"]


# -- the HTTP service: the same records from a server on each store ------------------------------------------

def _serve_session(srv, data: Path) -> dict:
    import httpx

    from test_service import AUTH, KEY, png_bytes, post

    originals = [data / "commfor" / "00000845.png", data / "pdq" / "reg-test-input" / "dih" / "bridge-1-original.jpg"]
    out = {"add": post(srv, "/v1/items", [(p.name, p.read_bytes()) for p in originals], {"label": "fake"}).json()}
    copy = png_bytes(Image.open(originals[0]).convert("RGB").resize((400, 400)), format="JPEG", quality=70)
    out["query"] = post(srv, "/v1/query", [("copy.jpg", copy)], {"k": "5"}).json()
    out["dupes"] = post(srv, "/v1/dupes", [("copy.jpg", copy)]).json()
    url = f"{srv.url}/v1/items/2"
    out["item"] = {k: v for k, v in httpx.get(url, headers=AUTH).json().items() if k != "added_at"}
    out["patch"] = httpx.patch(url, json={"label": "real"}, headers=AUTH).json()
    out["patch_campaign"] = httpx.patch(url, json={"campaign": "Op X"}, headers=AUTH).json()
    out["campaign_after_patch"] = [httpx.get(url, headers=AUTH).json()[k] for k in ("campaign", "computed_campaign")]
    pdq = out["item"]["pdq"]
    out["lookup"] = httpx.post(srv.url + "/v1/lookup", json={"pdq": [pdq]}, headers=AUTH).json()
    out["hma"] = httpx.get(srv.url + "/m/raw_lookup", params={"signal": pdq, "signal_type": "pdq"}, headers=AUTH).json()
    out["delete"] = httpx.delete(url, headers=AUTH).json()
    out["gone"] = httpx.get(url, headers=AUTH).status_code
    out["campaigns"] = httpx.get(srv.url + "/v1/campaigns?recompute=true&min_size=1", headers=AUTH, timeout=120).json()
    out["thumbnail"] = httpx.get(srv.url + "/v1/items/1/thumbnail", headers=AUTH).status_code
    with httpx.Client(base_url=srv.url) as ui:  # the web UI's pages, signed in
        ui.post("/ui/signin", data={"key": KEY})
        out["ui"] = [ui.get(p).status_code for p in ("/ui/bank", "/ui/items/1", "/ui/campaigns", "/ui/bank?q=0845",
                                                     "/ui/thumbs/1", "/ui/items/2")]
        out["ui_lists_the_item"] = "00000845.png" in ui.get("/ui/bank").text
    info = httpx.get(srv.url + "/v1/info", headers=AUTH).json()
    out["info"] = {k: info[k] for k in ("items", "labels", "hash_only", "embedding_dim")}
    return out


def test_http_endpoints_give_the_same_records_on_both_stores(tmp_path, monkeypatch):
    if not _has_milvus():
        pytest.skip("the Milvus store needs pymilvus and milvus-lite: pip install 'fakebank[milvus]'")
    from test_service import DATA, Server

    got = {}
    for kind in STORES:
        spec = make_store(kind, tmp_path / kind).spec
        monkeypatch.setenv("FAKEBANK_STORE", spec)  # the server process owns the Milvus Lite file
        srv = Server(tmp_path / kind / "bank").start()
        try:
            got[kind] = _serve_session(srv, DATA)
        finally:
            srv.stop()
    a, b = got["folder"], got["milvus"]
    assert [r["status"] for r in a["add"]["results"]] == ["added", "added"] and a["gone"] == 404
    assert a["query"]["results"][0]["match"]["id"] == 1 and a["lookup"]["results"][0]["matches"][0]["id"] == 2
    assert a["ui"] == [200, 200, 200, 200, 200, 404] and a["ui_lists_the_item"]
    assert a["campaign_after_patch"] == ["Op X", "Op X"]  # the computed one follows until the next run
    for key in a:
        if key in ("query", "add"):
            for x, y in zip(a[key]["results"], b[key]["results"], strict=True):
                assert {k: v for k, v in x.items() if k not in ("neighbors", "score", "p_knn", "p_fake", "p_model")} == \
                    {k: v for k, v in y.items() if k not in ("neighbors", "score", "p_knn", "p_fake", "p_model")}
                for k in ("score", "p_knn", "p_fake", "p_model"):
                    assert x.get(k) == pytest.approx(y.get(k), abs=1e-4), k
        elif key == "campaigns":
            strip = lambda rs: [{k: v for k, v in r.items() if k not in ("first_seen", "last_seen")} for r in rs]  # noqa: E731
            assert strip(a[key]["results"]) == strip(b[key]["results"])
        elif key == "item":  # two servers, two forward passes: the model's float32 outputs may differ by an ulp
            floats = ("logit", "p_fake")
            assert {k: v for k, v in a[key].items() if k not in floats} == {k: v for k, v in b[key].items() if k not in floats}
            for k in floats:
                assert a[key][k] == pytest.approx(b[key][k], abs=1e-5), k
        else:
            assert a[key] == b[key], key


def test_sigkilled_add_on_milvus_resumes_without_loss(tmp_path):
    """Kill `fakebank add` on the Milvus store mid-run: every acknowledged item survives, none is half
    there (an item's row is written after its signals), and a rerun finishes the job."""
    import signal
    import subprocess
    import sys

    if not _has_milvus():
        pytest.skip("the Milvus store needs pymilvus and milvus-lite: pip install 'fakebank[milvus]'")
    data = Path(__file__).parent / "data"
    base = [Image.open(p).convert("RGB").resize((512, 512)) for p in sorted((data / "commfor").glob("*.png"))[:4]]
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(100):  # distinct real images: crops of the photos
        x, y = (i * 7) % 200, (i * 13) % 200
        base[i % len(base)].crop((x, y, x + 300, y + 300)).save(folder / f"{i:03d}.jpg", quality=85)
    spec = make_store("milvus", tmp_path).spec
    cmd = [sys.executable, "-m", "fakebank", "--store", spec, "add", str(folder), "--weights", WEIGHTS,
           "--json", "--batch-size", "16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = proc.stdout.readline()  # the first commit is acknowledged: the add is certainly mid-way
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate()
    acknowledged = {json.loads(line)["id"] for line in [first, *rest.splitlines()] if '"added"' in line}
    assert acknowledged, "the add printed nothing before it was killed"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in done.stdout.splitlines()]
    assert sum(r["status"] == "duplicate" for r in records) >= len(acknowledged)
    from fakebank.api import Fakebank

    b = Fakebank(store=spec).open_bank()
    assert len(b) == 100 and acknowledged <= set(b.ids.tolist())
    assert len(set(b.table.column("sha256").to_pylist())) == 100
    from fakebank.signals import LocalFeatures

    for i in b.ids.tolist():  # every item's descriptors are indexed (rows of killed batches are orphans, unread)
        assert b.store.count(b.store.local, f"item == {i}") == len(LocalFeatures.from_bytes(b.value(i, "local")))


def test_signals_of_an_add_killed_before_its_items_are_never_reported(tmp_path, photos):
    """An `add` killed between its descriptor/trim rows and its item rows leaves rows with no item: they
    match nothing (the item rows are the commit point)."""
    store = make_store("milvus", tmp_path)
    im, other = photos["bridge"], photos[COMMFOR[0].stem]
    with store.writer(model_info=MODEL_INFO, embedding_dim=DIM) as w:
        [kept] = w.add([item_of(other, 1)])
        w._insert([item_of(jpeg(letterbox(im)), 2)], [999])  # as a killed add leaves them …
        store.client.delete(store.items, ids=[999])  # … its item row never written
    b = store.open()
    assert store.count(store.trim, "id == 999") == 1 and store.count(store.local, "item == 999") > 0
    assert matched(b, probe_of(jpeg(letterbox(im, 0.2, (255, 255, 255))))) == {}
    assert matched(b, probe_of(jpeg(crop(im, 0.7)))) == {}
    assert matched(b, probe_of(jpeg(crop(other, 0.7)))) == {kept: "local"}


@pytest.mark.parametrize("kind", STORES)
def test_hash_lists_import_lookup_and_export_on_each_store(kind, tmp_path):
    """Hash-only items (shared PDQ hashes, no pixels): imported, found by lookup, relabelled by a second
    import, exported back; the same records on both stores."""
    from fakebank.api import Fakebank

    rng = np.random.default_rng(7)
    hashes = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(3)]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"pdq {h}\n" for h in hashes))
    fb = Fakebank(tmp_path / "bank", store=make_store(kind, tmp_path).spec, weights=WEIGHTS)
    rec = fb.import_list(lst, source="partner")
    assert rec["added"] == 3 and rec["hash_only"]
    near = bytearray(bytes.fromhex(hashes[1]))
    near[0] ^= 0b111  # three bits away
    [hit] = fb.lookup([near.hex()])
    assert [(m["id"], m["distance"], m["media"], m["source"]) for m in hit["matches"]] == [(2, 3, "hash", "partner")]
    bank = fb.open_bank()
    assert bank.is_hash_only(2) and bank.value(2, "cls") is None and bank.manifest["counts"]["hash_only"] == 3
    csv = tmp_path / "list.csv"
    csv.write_text("signal_type,signal_str,collab,category,tags\n" + f"pdq,{hashes[0]},partner,NEGATIVE_CLASS,a b\n")
    rec = fb.import_list(csv)
    assert rec["added"] == 0 and rec["updated"] == 1
    out = tmp_path / "out.csv"
    assert fb.export_list(out, fmt="csv", labels=("fake", "real"))["signals"] == 3
    rows = sorted(out.read_text().splitlines()[1:])
    assert rows == sorted([f"pdq,{hashes[0]},partner,NEGATIVE_CLASS,a b", f"pdq,{hashes[1]},partner,POSITIVE_CLASS,",
                           f"pdq,{hashes[2]},partner,POSITIVE_CLASS,"])


# -- videos: the frame hashes and sampled frames of a video item, in either store ------------------------------

def video_item(seed: int, frames: int) -> NewItem:
    """A video item (no model): `frames` sampled frames with random hashes, every third one de-bordered."""
    from dataclasses import replace

    from fakebank import video as vid

    rng = np.random.default_rng(seed)

    def code() -> bytes:
        return rng.integers(0, 256, 32, dtype=np.uint8).tobytes()

    records = [vid.FrameRecord(number=10 * n, timestamp=float(n), pdq=code(), quality=100,
                               pdq_trim=code() if n % 3 == 0 else None, trim_quality=90, logit=float(rng.normal()),
                               cls=rng.normal(size=DIM).astype(np.float32)) for n in range(frames)]
    return replace(make_item(seed), sha256=f"{seed:064x}", media="video", duration_s=frames / 3, fps=29.97,
                   frames=vid.pack_frames(records, DIM), frame_pdq=vid.index_codes(records))


VIDEO_COLUMNS = ["media", "duration_s", "fps", "frames", "frame_pdq"]


@pytest.mark.parametrize("kind", STORES)
def test_video_columns_and_frame_hashes_read_back_the_same(kind, tmp_path):
    store = make_store(kind, tmp_path)
    # more frames than one Milvus VARCHAR holds (65,535 base64 characters): the frames blob spans parts
    long, short = video_item(1, 700), video_item(2, 3)
    assert len(long.frames) > 65_535
    with store.writer(model_info=MODEL_INFO, embedding_dim=DIM) as w:
        ids = w.add([make_item(3), long, short])
    b = store.open()
    cols = b.read_columns(ids, VIDEO_COLUMNS)
    assert cols["media"] == [None, "video", "video"]
    assert cols["frames"] == [None, long.frames, short.frames]
    assert cols["frame_pdq"] == [None, long.frame_pdq, short.frame_pdq]
    assert cols["fps"] == [None, pytest.approx(29.97), pytest.approx(29.97)]
    assert cols["duration_s"][1] == pytest.approx(700 / 3)
    assert [b.value(ids[1], n) for n in VIDEO_COLUMNS] == [c[1] for c in cols.values()]
    codes = np.frombuffer(long.frame_pdq, np.uint8).reshape(-1, 32)
    near = codes[[5, 6]].copy()
    near[0, 0] ^= 0b1111  # 4 bits from one of the long video's frames
    far = np.frombuffer(short.frame_pdq, np.uint8).reshape(-1, 32)[:1]
    got = b.frame_pdq_within(np.concatenate([near, far]), 31)
    assert got == [{ids[1]: 4}, {ids[1]: 0}, {ids[2]: 0}]
    assert b.frame_pdq_within(near, 3) == [{}, {ids[1]: 0}]  # the bound is inclusive and exact
    with store.writer(create=False) as w:
        w.remove([ids[1]])
    b = store.open()
    assert b.frame_pdq_within(near, 31) == [{}, {}] and b.frame_pdq_within(far, 31) == [{ids[2]: 0}]
    if kind == "milvus":  # the removed video's rows are gone, the other's stay
        assert store.count(store.frame_pdq, f"item == {ids[1]}") == store.count(store.frames, f"item == {ids[1]}") == 0
        assert store.count(store.frame_pdq, f"item == {ids[2]}") == len(short.frame_pdq) // 32


def test_a_milvus_bank_made_before_videos_takes_its_first_video(tmp_path):
    """A bank without the video collections opens and reads them as empty; its first video makes them; the
    frame rows of an `add` killed before its item row was written match nothing."""
    store = make_store("milvus", tmp_path)
    with store.writer(model_info=MODEL_INFO, embedding_dim=DIM) as w:
        [image] = w.add([make_item(1)])
    for c in (store.frame_pdq, store.frames):
        store.client.drop_collection(c)  # as a bank written before videos were stored
    b = store.open()
    probe = np.frombuffer(video_item(2, 4).frame_pdq, np.uint8).reshape(-1, 32)
    assert b.frame_pdq_within(probe, 31) == [{}] * len(probe) and b.value(image, "frames") is None
    assert store.info_storage(b.manifest)["storage"]["rows"][store.items] == 1
    with store.writer(create=False) as w:
        [video] = w.add([video_item(2, 4)])
        w._insert([video_item(3, 4)], [999])  # as a killed add leaves them …
        store.client.delete(store.items, ids=[999])  # … its item row never written
    b = store.open()
    assert store.has_video() and store.count(store.frame_pdq, "item == 999") > 0
    assert b.frame_pdq_within(probe[:1], 31) == [{video: 0}]
    orphan = np.frombuffer(video_item(3, 4).frame_pdq, np.uint8).reshape(-1, 32)
    assert b.frame_pdq_within(orphan, 31) == [{}] * len(orphan)


def test_folder_bytes_skips_a_file_swept_while_it_is_counted(tmp_path, monkeypatch):
    """`info` counts a folder that a writer may be sweeping (the CI failure of test_concurrent_writers_and_
    readers: a merged segment's shard vanished between listing and stat, and `/v1/info` answered 500)."""
    (tmp_path / "seg-000001.arrow").write_bytes(b"x" * 10)
    (tmp_path / "seg-000002.cls.faiss").write_bytes(b"y" * 5)
    listed = os.scandir

    def listing_then_sweep(path):
        entries = list(listed(path))
        (tmp_path / "seg-000002.cls.faiss").unlink()  # the writer's sweep, after the listing
        return iter(entries)

    monkeypatch.setattr(store_module.os, "scandir", listing_then_sweep)
    assert folder_bytes(tmp_path) == 10
