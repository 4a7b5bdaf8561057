"""Hash-sharing interop (issue 12): hash lists in and out in every format, look-up by hash, HMA's matching
API over HTTP, sync through python-threatexchange's exchanges, and hash-only items in query/dupes/campaigns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bankutil import DIM, MODEL_INFO, make_item
from fakebank.api import Fakebank
from fakebank.bank import Bank, BankWriter, read_manifest, signal_key
from fakebank.cli import app
from fakebank.errors import InputError, UsageError

HERE = Path(__file__).parent
DATA = HERE / "data"
WEIGHTS = "untrained:test_vit:0"
runner = CliRunner()


def hexes(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(n)]


@pytest.fixture()
def bank(tmp_path) -> Path:
    """A bank of 5 image items (seeded embeddings and hashes) with the test model's identity."""
    path = tmp_path / "bank"
    with BankWriter(path, model_info=MODEL_INFO, embedding_dim=DIM) as w:
        w.add([make_item(i) for i in range(5)])
    return path


def cli(*args) -> tuple[int, list[dict], str]:
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")], res.stderr


# -- import ---------------------------------------------------------------------------------------------------

def test_local_file_import_reports_bad_lines_keeps_the_rest_and_is_idempotent(tmp_path, bank):
    good = hexes(3)
    f = tmp_path / "list.txt"
    f.write_text(f"pdq {good[0]}\npdq {good[1].upper()}\n\npdq {good[0][:-1]}\nvideo_md5 d41d8cd98f00b204e9800998ecf8427e\n"
                 f"{good[2]}\npdq {good[2]}\npdq {good[0]}\n")
    code, [r], _ = cli("import", f, "--bank", bank, "--source", "partner", "--json")
    assert code == 1  # some lines failed; the rest is in
    assert (r["format"], r["signals"], r["added"], r["repeated_in_list"]) == ("local_file", 4, 3, 1)
    assert [(e["line"], e["error"].split(" ")[0]) for e in r["errors"]] == [(4, "malformed"), (5, "signal"), (6, "no")]
    b = Bank.open(bank)
    assert len(b) == 8 and b.manifest["counts"]["hash_only"] == 3
    item = b.item(6)
    assert (item["media"], item["source"], item["label"], item["path"], item["pdq"]) == ("hash", "partner", "fake", None, good[0])
    assert item["sha256"] == signal_key("pdq", good[0], "partner")
    code, [r], _ = cli("import", f, "--bank", bank, "--source", "partner", "--json")
    assert (r["added"], r["updated"], r["unchanged"]) == (0, 0, 3) and len(Bank.open(bank)) == 8
    # the same hashes from another source are that source's own items
    code, [r], _ = cli("import", f, "--bank", bank, "--source", "other", "--json")
    assert r["added"] == 3
    code, [info], _ = cli("info", "--bank", bank, "--json")
    assert info["items"] == 11 and info["hash_only"] == 6 and info["labels"] == {"fake": 11, "real": 0, "unknown": 0}


def test_bare_hashes_need_the_signal_type(tmp_path, bank):
    f = tmp_path / "bare.txt"
    f.write_text("\n".join(hexes(4)) + "\n")
    r = Fakebank(bank).import_list(f, signal_type="pdq", label="unknown")
    assert r["added"] == 4 and r["error_count"] == 0
    assert Bank.open(bank).manifest["counts"]["unknown"] == 4


def test_csv_import_maps_categories_and_tags_and_updates_in_place(tmp_path, bank):
    h = hexes(3, seed=1)
    f = tmp_path / "collab.csv"
    rows = [("pdq", h[0], "GIFCT", "POSITIVE_CLASS", "violence deepfake"), ("pdq", h[1], "GIFCT", "NEGATIVE_CLASS", ""),
            ("pdq", h[2], "", "INVESTIGATION_SEED", "x"), ("pdq", "zz", "GIFCT", "POSITIVE_CLASS", ""),
            ("pdq", h[0], "GIFCT", "BAD_CATEGORY", "")]
    with open(f, "w", newline="") as fp:
        w = csv.writer(fp)
        w.writerow(["signal_type", "signal_str", "collab", "category", "tags"])
        w.writerows(rows)
    fb = Fakebank(bank)
    r = fb.import_list(f, source="fallback")
    assert r["format"] == "csv" and r["added"] == 3 and [e["line"] for e in r["errors"]] == [5, 6]
    b = Bank.open(bank)
    items = {b.value(i, "pdq").hex(): b.item(i) for i in range(6, 9)}
    assert (items[h[0]]["label"], items[h[0]]["tags"], items[h[0]]["source"]) == ("fake", "violence deepfake", "GIFCT")
    assert items[h[1]]["label"] == "real" and items[h[2]]["label"] == "unknown" and items[h[2]]["source"] == "fallback"
    # the partner changes its mind: same signal, same collab → the item is updated, not duplicated
    with open(f, "w", newline="") as fp:
        w = csv.writer(fp)
        w.writerow(["signal_type", "signal_str", "collab", "category", "tags"])
        w.writerow(["pdq", h[0], "GIFCT", "NEGATIVE_CLASS", "retracted"])
    r = fb.import_list(f)
    assert (r["added"], r["updated"]) == (0, 1)
    b = Bank.open(bank)
    [i] = [i for i in range(6, 9) if b.value(i, "pdq").hex() == h[0]]
    assert (b.label_of(i), b.value(i, "tags")) == ("real", "retracted")
    assert b.manifest["counts"]["fake"] == 5 and b.manifest["counts"]["real"] == 2
    with BankWriter(bank) as w:  # compacting folds the edits into the stored rows
        w.compact()
    b = Bank.open(bank)
    assert (b.label_of(i), b.value(i, "tags"), len(b)) == ("real", "retracted", 8)


def test_bad_files_are_refused_whole_and_nothing_is_half_imported(tmp_path, bank):
    before = read_manifest(bank)["generation"]
    fb = Fakebank(bank)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(InputError, match="empty file"):
        fb.import_list(empty)
    missing = tmp_path / "missing.csv"
    missing.write_text("signal_type,signal_str,category\npdq," + hexes(1)[0] + ",POSITIVE_CLASS\n")
    with pytest.raises(InputError, match="without the column.*collab"):
        fb.import_list(missing, fmt="csv")
    big = tmp_path / "big.bin"  # a 200 MB file that is not a hash list (sparse: costs no disk)
    with open(big, "wb") as f:
        f.truncate(200 << 20)
    with pytest.raises(InputError, match="binary data"):
        fb.import_list(big)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"pdq caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        fb.import_list(latin)
    with pytest.raises(UsageError, match="unknown format"):
        fb.import_list(empty, fmt="xml")
    code, _, stderr = cli("import", big, "--bank", bank)
    assert code != 0 and "binary data" in stderr
    assert read_manifest(bank)["generation"] == before


# -- export, and pytx reading it -------------------------------------------------------------------------------

def test_export_is_read_by_pytx_and_round_trips_into_an_empty_bank(tmp_path, bank):
    from threatexchange.exchanges.impl.file_api import FileCollaborationConfig, LocalFileSignalExchangeAPI
    from threatexchange.signal_type.pdq.signal import PdqSignal

    fb = Fakebank(bank)
    with BankWriter(bank) as w:
        w.set_label([2], "real")
        w.add([make_item(9)])  # id 6 …
        w.remove([6])  # … removed again: never exported
    h = hexes(2, seed=3)
    (tmp_path / "in.csv").write_text("signal_type,signal_str,collab,category,tags\n"
                                     f"pdq,{h[0]},NCMEC-genai,POSITIVE_CLASS,csam-genai\npdq,{h[1]},TAT,NEGATIVE_CLASS,\n")
    fb.import_list(tmp_path / "in.csv")
    out = tmp_path / "fakes.txt"
    r = fb.export_list(out, fmt="local_file")
    b = Bank.open(bank)
    fakes = {b.value(i, "pdq").hex() for i in b.ids.tolist() if b.label_of(i) == "fake"}
    assert r["signals"] == len(fakes) == 5  # items 1, 3, 4, 5 and the NCMEC hash
    api = LocalFileSignalExchangeAPI(FileCollaborationConfig(name="x", api="local_file", enabled=True, filename=str(out)))
    [delta] = list(api.fetch_iter([PdqSignal], None))
    assert {s for (t, s) in delta.updates} == fakes and {t for (t, _) in delta.updates} == {"pdq"}
    for _, s in delta.updates:
        PdqSignal.validate_signal_str(s)

    # CSV carries labels, sources and tags: export all labels, import into an empty bank → the same
    out_csv = tmp_path / "all.csv"
    fb.export_list(out_csv, fmt="csv", labels=["fake", "real", "unknown"])
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["signal_type", "signal_str", "collab", "category", "tags"]
    empty = tmp_path / "partner"
    with BankWriter(empty, model_info={**MODEL_INFO, "identity_hash": "b" * 64}, embedding_dim=DIM):
        pass
    r = Fakebank(empty).import_list(out_csv)
    assert r["added"] == len(rows) == 7 and r["error_count"] == 0
    def triples(path: Path) -> set:
        b = Bank.open(path)
        return {(b.value(i, "pdq").hex(), b.label_of(i), b.value(i, "source") or "fakebank", b.value(i, "tags"))
                for i in b.ids.tolist()}
    assert triples(empty) == triples(bank)
    # filters: by source, and below PDQ's quality bar nothing is shared
    r = fb.export_list(tmp_path / "ncmec.txt", fmt="local_file", source="NCMEC-genai")
    assert r["signals"] == 1 and (tmp_path / "ncmec.txt").read_text() == f"pdq {h[0]}\n"
    assert fb.export_list(tmp_path / "none.txt", fmt="local_file", min_quality=101)["signals"] == 0
    # fakebank's own export moves every item by default, and any export says what the quality bar kept out
    everything = fb.export_list(tmp_path / "all.parquet", fmt="fakebank")
    assert everything["signals"] > 0 and (everything["below_min_quality"], everything["min_quality"]) == (0, 0)
    none = fb.export_list(tmp_path / "all.parquet", fmt="fakebank", min_quality=101)
    assert none["signals"] == 0 and none["below_min_quality"] == everything["signals"]
    res = runner.invoke(app, ["export", str(tmp_path / "q.txt"), "--bank", str(bank), "--min-quality", "100"])
    assert res.exit_code == 0 and "items left out below --min-quality 100" in " ".join(res.stdout.split())
    # a source no item has (a typo) is an error naming the sources, not an empty list
    with pytest.raises(UsageError, match="no item has source 'NCMEC'; sources: .*NCMEC-genai"):
        fb.export_list(tmp_path / "typo.txt", fmt="local_file", source="NCMEC")
    assert not (tmp_path / "typo.txt").exists()
    with pytest.raises(UsageError, match="no item has source 'NCMEC'"):
        fb.export_list(tmp_path / "vpdq-typo", fmt="vpdq", source="NCMEC")
    assert not (tmp_path / "vpdq-typo").exists()  # no empty folder left behind


def test_export_by_campaign_takes_analyst_and_computed_members(tmp_path, bank):
    with BankWriter(bank) as w:
        [analyst] = w.add([make_item(20, campaign="op-x")])
        w.set_campaigns({3: "op-x", 4: "op-y"})  # as clustering stores them
    b = Bank.open(bank)
    r = Fakebank(bank).export_list(tmp_path / "x.txt", fmt="local_file", campaign="op-x")
    assert r["signals"] == 2
    # a hash look-up names the campaign as a query does: the analyst's, else the computed one
    (hit,) = Fakebank(bank).lookup([b.value(3, "pdq").hex(), b.value(analyst, "pdq").hex()], max_distance=0)[:1]
    assert {m["id"]: m["campaign"] for m in hit["matches"]}[3] == "op-x"
    assert (tmp_path / "x.txt").read_text().split() == \
        ["pdq", b.value(3, "pdq").hex(), "pdq", b.value(analyst, "pdq").hex()]
    # a campaign nobody gave any item (a typo) is an error, not an empty list for a partner
    code, _, err = cli("export", tmp_path / "typo.txt", "--bank", bank, "--campaign", "op-z")
    assert code == 2 and "no item is in campaign 'op-z'; campaigns: op-x, op-y" in " ".join(err.split())
    assert not (tmp_path / "typo.txt").exists()
    # an analyst campaign set after add counts (label --campaign)
    Fakebank(bank).label([2], campaign="op-z")
    assert Fakebank(bank).export_list(tmp_path / "z.txt", fmt="local_file", campaign="op-z")["signals"] == 1


def test_fakebank_export_imports_with_full_matching_or_as_hashes_only(tmp_path, bank):
    fb = Fakebank(bank)
    (tmp_path / "l.txt").write_text(f"pdq {hexes(1, seed=5)[0]}\n")
    fb.import_list(tmp_path / "l.txt", source="p")
    hash_id = next(r["id"] for r in Bank.open(bank).table.select(["id", "media"]).to_pylist() if r["media"] == "hash")
    fb.label([hash_id], campaign="op-h")
    out = tmp_path / "full.parquet"
    assert fb.export_list(out, fmt="fakebank")["signals"] == 6
    same = tmp_path / "same"
    with BankWriter(same, model_info=MODEL_INFO, embedding_dim=DIM):
        pass
    r = Fakebank(same).import_list(out)
    assert (r["format"], r["added"], r["note"]) == ("fakebank", 6, None)
    b = Bank.open(same)
    assert b.manifest["counts"]["hash_only"] == 1
    rows = b.table.select(["media", "campaign"]).to_pylist()
    assert [r["campaign"] for r in rows if r["media"] == "hash"] == ["op-h"]  # the partner's campaign came along
    sims, ids = b.search("cls", make_item(3).cls[None], 1)  # embeddings came along: kNN works
    assert b.value(int(ids[0, 0]), "sha256") == make_item(3).sha256 and sims[0, 0] > 0.9999
    assert Fakebank(same).import_list(out)["added"] == 0  # idempotent: images by sha256, hashes by signal

    other = tmp_path / "other"
    with BankWriter(other, model_info={**MODEL_INFO, "identity_hash": "c" * 64}, embedding_dim=DIM):
        pass
    r = Fakebank(other).import_list(out)
    assert r["added"] == 6 and "only its hashes" in r["note"]
    b = Bank.open(other)
    assert b.manifest["counts"]["hash_only"] == 6
    assert b.search("cls", make_item(3).cls[None], 3)[1][0].tolist() == [-1, -1, -1]  # nothing to search by vector
    assert Fakebank(other).lookup([Bank.open(bank).value(4, "pdq").hex()])[0]["matches"][0]["media"] == "hash"


CSV_HEADER = ("signal_type", "signal_str", "collab", "category", "tags")


def test_lists_with_a_bom_reordered_csv_columns_utf16_or_a_huge_field(tmp_path, bank):
    a, b = hexes(2, seed=11)
    fb = Fakebank(bank)
    (tmp_path / "bom.txt").write_bytes(f"\ufeffpdq {a}\npdq {b}\n".encode())  # as Windows editors save it
    assert fb.import_list(tmp_path / "bom.txt")["added"] == 2
    (tmp_path / "bom.csv").write_bytes(f"\ufeff{','.join(CSV_HEADER)}\npdq,{a},p2,POSITIVE_CLASS,\n".encode())
    r = fb.import_list(tmp_path / "bom.csv")
    assert (r["format"], r["added"], r["error_count"]) == ("csv", 1, 0)
    (tmp_path / "order.csv").write_text(f"signal_str,collab,signal_type,category,tags\n{b},p3,pdq,NEGATIVE_CLASS,\n")
    r = fb.import_list(tmp_path / "order.csv")
    assert (r["format"], r["added"], r["error_count"]) == ("csv", 1, 0)
    (tmp_path / "u16.txt").write_text(f"pdq {a}\n", encoding="utf-16")
    with pytest.raises(InputError, match="UTF-16 text; save the list as UTF-8"):
        fb.import_list(tmp_path / "u16.txt")
    (tmp_path / "big.csv").write_text(f"{','.join(CSV_HEADER)}\npdq,{a},p,POSITIVE_CLASS,{'t' * 200_000}\n")
    with pytest.raises(InputError, match="not readable as CSV"):
        fb.import_list(tmp_path / "big.csv")


def test_a_bad_row_of_a_fakebank_list_is_skipped_without_shifting_the_rows_after_it(tmp_path, bank):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fb = Fakebank(bank)
    fb.label([2], "real")
    out = tmp_path / "full.parquet"
    assert fb.export_list(out, fmt="fakebank", labels=("fake", "real"))["signals"] == 5
    t = pq.read_table(out)
    pdq, labels = t.column("pdq").to_pylist(), t.column("label").to_pylist()
    pdq[1], labels[3] = None, "FAKE!"  # two bad rows in the middle
    t = t.set_column(t.schema.get_field_index("pdq"), t.schema.field("pdq"), pa.array(pdq, t.schema.field("pdq").type))
    t = t.set_column(t.schema.get_field_index("label"), t.schema.field("label"), pa.array(labels, pa.string()))
    pq.write_table(t, tmp_path / "bad.parquet")
    other = tmp_path / "other"
    with BankWriter(other, model_info=MODEL_INFO, embedding_dim=DIM):
        pass
    r = Fakebank(other).import_list(tmp_path / "bad.parquet")
    assert (r["added"], r["error_count"]) == (3, 2) and [e["line"] for e in r["errors"]] == [2, 4]
    sent = dict(zip(t.column("sha256").to_pylist(), labels))
    b = Bank.open(other)
    got = {b.value(i, "sha256"): (b.label_of(i), b.value(i, "pdq")) for i in b.ids.tolist()}
    assert set(got) == {h for n, h in enumerate(sent) if n not in (1, 3)}
    assert all(label == sent[h] and pdq is not None for h, (label, pdq) in got.items())  # each row's own label
    # a list missing a column or with broken metadata is refused whole, with what to do
    pq.write_table(t.drop_columns(["pdq_quality"]), tmp_path / "cut.parquet")
    with pytest.raises(InputError, match="without the column.s. pdq_quality"):
        Fakebank(other).import_list(tmp_path / "cut.parquet")


def test_export_refuses_bad_targets_before_writing_and_never_leaves_a_temporary_file(tmp_path, bank, monkeypatch):
    import fakebank.hashlists as hashlists

    def files() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir())

    before = files()
    code, _, stderr = cli("export", tmp_path / "nowhere" / "fakes.txt", "--bank", bank)
    assert code == 2 and "does not exist" in " ".join(stderr.split()) and "Traceback" not in stderr
    # a list format that carries no label refuses real items (a partner would read them as fakes)
    code, _, stderr = cli("export", tmp_path / "real.txt", "--bank", bank, "--label", "real")
    assert code == 2 and "--format csv" in " ".join(stderr.split()) and not (tmp_path / "real.txt").exists()
    # a device is refused: the list is written beside its target and moved over it, which would replace it
    code, _, stderr = cli("export", "/dev/null", "--bank", bank)
    assert code == 2 and "not a regular file" in stderr and Path("/dev/null").is_char_device()
    (tmp_path / "out").mkdir()
    code, _, stderr = cli("export", tmp_path / "out", "--bank", bank)
    assert code == 2 and "is a folder" in " ".join(stderr.split())
    assert files() == sorted(before + ["out"]) and not any((tmp_path / "out").iterdir())  # no out.tmp, nothing in it

    # a failure midway (here: a full disk after the first batch) leaves the old list and no temporary file
    batches = hashlists.export_batches

    def disk_full(*args, **kwargs):
        yield next(batches(*args, **kwargs))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hashlists, "export_batches", disk_full)
    for fmt, name in (("local_file", "fakes.txt"), ("csv", "fakes.csv"), ("fakebank", "fakes.parquet")):
        (tmp_path / name).write_text("the list exported last week\n")
        code, _, stderr = cli("export", tmp_path / name, "--format", fmt, "--bank", bank)
        assert code == 2 and "No space left on device" in stderr, stderr
        assert (tmp_path / name).read_text() == "the list exported last week\n"
        assert not (tmp_path / (name + ".tmp")).exists()


# -- look-up -------------------------------------------------------------------------------------------------

def test_lookup_by_hash_finds_images_and_hashes_within_the_distance(tmp_path, bank):
    b = Bank.open(bank)
    h = b.value(2, "pdq")
    near = bytearray(h)
    near[0] ^= 0b111  # 3 bits away
    (tmp_path / "l.txt").write_text(f"pdq {bytes(near).hex()}\n")
    Fakebank(bank).import_list(tmp_path / "l.txt", source="partner")
    code, lines, _ = cli("lookup", "--pdq", h.hex(), "--pdq", "00" * 32, "--bank", bank, "--json")
    assert code == 0 and [r["pdq"] for r in lines] == [h.hex(), "00" * 32]
    assert [(m["id"], m["distance"], m["media"], m["source"]) for m in lines[0]["matches"]] == \
        [(2, 0, "image", None), (6, 3, "hash", "partner")]
    assert lines[1]["matches"] == []
    code, lines, _ = cli("lookup", "--pdq", h.hex(), "--max-distance", "2", "--bank", bank, "--json")
    assert [m["id"] for m in lines[0]["matches"]] == [2]
    code, _, stderr = cli("lookup", "--pdq", "xyz", "--bank", bank)
    assert code == 2 and "malformed PDQ hash" in stderr


# -- sync through pytx's exchanges -----------------------------------------------------------------------------

def test_sync_from_a_local_file_exchange_keeps_a_checkpoint_and_applies_deletions(tmp_path, bank, monkeypatch):
    h = hexes(4, seed=7)
    feed = tmp_path / "feed.txt"
    feed.write_text(f"pdq {h[0]}\npdq {h[1]}\n")
    updates = tmp_path / "updates.json"
    updates.write_text(json.dumps([[["pdq", h[2]], "POSITIVE_CLASS"], [["pdq", h[3]], "NEGATIVE_CLASS"]]))
    config = tmp_path / "sync.json"
    config.write_text(json.dumps({"collaborations": [
        {"name": "partner-file", "api": "local_file", "filename": str(feed), "label": "fake"},
        {"name": "deletes", "api": "exchange_fixture:JsonUpdatesExchange", "filename": str(updates)},
    ]}))
    monkeypatch.syspath_prepend(str(HERE))
    code, lines, _ = cli("sync", config, "--bank", bank, "--json")
    assert code == 0, lines
    assert [(r["collaboration"], r["added"], r["removed"]) for r in lines] == [("partner-file", 2, 0), ("deletes", 2, 0)]
    state = read_manifest(bank)["sync"]
    assert state["deletes"]["checkpoint"] == {"applied": 2} and state["partner-file"]["runs"] == 1
    b = Bank.open(bank)
    labels = {b.value(i, "pdq").hex(): (b.label_of(i), b.value(i, "source")) for i in b.ids.tolist() if i > 5}
    assert labels == {h[0]: ("fake", "partner-file"), h[1]: ("fake", "partner-file"),
                      h[2]: ("fake", "deletes"), h[3]: ("real", "deletes")}
    # the exchange moves on: one signal deleted, one added; a rerun fetches from the stored checkpoint
    updates.write_text(json.dumps([[["pdq", h[2]], "POSITIVE_CLASS"], [["pdq", h[3]], "NEGATIVE_CLASS"],
                                   [["pdq", h[2]], None], [["pdq", h[0]], "POSITIVE_CLASS"]]))
    code, lines, _ = cli("sync", config, "--bank", bank, "--json")
    assert [(r["collaboration"], r["added"], r["removed"], r["unchanged"]) for r in lines] == \
        [("partner-file", 0, 0, 2), ("deletes", 1, 1, 0)]
    assert read_manifest(bank)["sync"]["deletes"]["checkpoint"] == {"applied": 4}
    b = Bank.open(bank)
    held = {(b.value(i, "pdq").hex(), b.value(i, "source")) for i in b.ids.tolist() if i > 5}
    assert held == {(h[0], "partner-file"), (h[1], "partner-file"), (h[3], "deletes"), (h[0], "deletes")}
    assert b.manifest["counts"]["hash_only"] == 4


def test_a_snapshot_exchange_removes_what_it_no_longer_holds_from_its_own_items_only(tmp_path, bank, monkeypatch):
    h = hexes(3, seed=11)
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([[["pdq", x], "POSITIVE_CLASS"] for x in h]))
    config = tmp_path / "sync.json"
    config.write_text(json.dumps({"collaborations": [
        {"name": "snap", "api": "exchange_fixture:JsonSnapshotExchange", "filename": str(listing)},
        {"name": "other", "api": "exchange_fixture:JsonSnapshotExchange", "filename": str(listing)}]}))
    monkeypatch.syspath_prepend(str(HERE))
    code, lines, _ = cli("sync", config, "--bank", bank, "--json")
    assert code == 0 and [(r["added"], r["removed"], r["snapshot"]) for r in lines] == [(3, 0, True)] * 2
    config.write_text(json.dumps({"collaborations": [
        {"name": "snap", "api": "exchange_fixture:JsonSnapshotExchange", "filename": str(listing)}]}))
    listing.write_text(json.dumps([[["pdq", h[1]], "POSITIVE_CLASS"]]))
    code, lines, _ = cli("sync", config, "--bank", bank, "--json")
    assert code == 0 and [(r["added"], r["removed"]) for r in lines] == [(0, 2)]
    b = Bank.open(bank)
    held = [(b.value(i, "source"), b.value(i, "pdq").hex()) for i in b.ids.tolist()]
    assert [x for x in held if x[0] == "snap"] == [("snap", h[1])]
    assert sorted(x[1] for x in held if x[0] == "other") == sorted(h)  # the other collaboration keeps its own


def test_sync_of_the_sample_exchange_and_bad_configs(tmp_path, bank, monkeypatch):
    config = tmp_path / "sync.json"
    config.write_text(json.dumps({"collaborations": [{"name": "SAMPLE", "api": "sample"}]}))
    [r] = list(Fakebank(bank).sync(config))
    from threatexchange.signal_type.pdq.signal import PdqSignal
    assert r["added"] == len(set(PdqSignal.get_examples())) and r["snapshot"]
    [r] = list(Fakebank(bank).sync(config))
    assert (r["added"], r["removed"]) == (0, 0)
    config.write_text(json.dumps({"collaborations": [{"name": "x", "api": "nope"}]}))
    with pytest.raises(UsageError, match="unknown exchange api"):
        list(Fakebank(bank).sync(config))
    config.write_text(json.dumps({"collaborations": [{"name": "x", "api": "local_file", "filenme": "/x"}]}))
    with pytest.raises(UsageError, match="bad fields"):
        list(Fakebank(bank).sync(config))
    config.write_text("[]")
    with pytest.raises(UsageError, match="collaborations"):
        list(Fakebank(bank).sync(config))
    # ThreatExchange's config sets its api itself; without a token pytx's hints come through, no traceback
    monkeypatch.delenv("TX_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.txtoken
    config.write_text(json.dumps({"collaborations": [{"name": "te", "api": "fb_threatexchange",
                                                      "privacy_group": 1234567890}]}))
    with pytest.raises(UsageError, match="te: Couldn't authenticate fb_threatexchange.*TX_ACCESS_TOKEN"):
        list(Fakebank(bank).sync(config))
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)))  # the exchange's own failure, named
    config.write_text(json.dumps({"collaborations": [{"name": "b", "api": "local_file",
                                                      "filename": str(tmp_path / "bin.txt")}]}))
    with pytest.raises(UsageError, match="b: the exchange 'local_file' failed .UnicodeDecodeError"):
        list(Fakebank(bank).sync(config))


# -- hash-only items in query, dupes and campaigns (real images, the test model) ----------------------------------

@pytest.fixture(scope="module")
def image_bank(tmp_path_factory) -> tuple[Path, Path]:
    """A bank of 3 real photos; a 4th photo is known to the bank only by its PDQ hash (from a partner)."""
    folder = tmp_path_factory.mktemp("photos")
    sources = sorted((DATA / "commfor").glob("*.png"))[:3] + [DATA / "pdq" / "reg-test-input" / "dih" / "bridge-1-original.jpg"]
    for i, src in enumerate(sources):
        Image.open(src).convert("RGB").resize((384, 384)).save(folder / f"img{i}.png")
    bank = tmp_path_factory.mktemp("b") / "bank"
    code, lines, _ = cli("add", folder / "img0.png", folder / "img1.png", folder / "img2.png", "--bank", bank,
                         "--weights", WEIGHTS, "--json")
    assert code == 0 and len(lines) == 3
    from fakebank.pdq import pdq_hash
    from fakebank.preprocess import load_rgb
    h = pdq_hash(load_rgb((folder / "img3.png").read_bytes(), name="img3"))
    assert h.quality >= 50
    (folder.parent / "partner.txt").write_text(f"pdq {h.hash.hex()}\n")
    code, [r], _ = cli("import", folder.parent / "partner.txt", "--bank", bank, "--source", "partner", "--json")
    assert r["added"] == 1
    return bank, folder


def test_a_hash_only_item_decides_query_and_dupes_by_pdq(image_bank, tmp_path):
    bank, folder = image_bank
    copy = tmp_path / "copy.jpg"
    Image.open(folder / "img3.png").save(copy, quality=80)  # a re-encoded copy of the partner's image
    code, [q], _ = cli("query", copy, "--bank", bank, "--json")
    assert code == 0
    assert (q["verdict"], q["reason"]) == ("fake", "near_duplicate")
    assert q["match"]["id"] == 4 and q["match"]["media"] == "hash" and q["match"]["judged_on"] == ["pdq"]
    assert q["match"]["similarity"] is None and q["match"]["pdq_distance"] <= 31
    code, [d], _ = cli("dupes", copy, "--bank", bank, "--json")
    assert [(x["id"], x["signal"], x["media"]) for x in d["duplicates"]] == [(4, "pdq", "hash")]
    # an image the partner never shared is not matched by the hash
    code, [q], _ = cli("query", folder / "img1.png", "--bank", bank, "--json")
    assert q["match"]["id"] == 2 and "media" not in q["match"]


@pytest.mark.parametrize("order", [("fake", "real"), ("real", "fake")])
def test_one_hash_shared_as_fake_and_as_real_flags_fake_whatever_the_import_order(image_bank, tmp_path, order):
    """Two sources disagree about one picture: the verdict does not depend on which list came first, and
    the record names the copy that disagrees."""
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(image_bank[0], bank)
    h = Bank.open(bank).value(1, "pdq").hex()  # img0's hash, shared by two partners
    for n, label in enumerate(order):
        (tmp_path / f"{label}.txt").write_text(f"pdq {h}\n")
        code, [r], _ = cli("import", tmp_path / f"{label}.txt", "--bank", bank, "--source", f"p{n}", "--label", label, "--json")
        assert r["added"] == 1
    code, _, _ = cli("remove", "1", "--bank", bank)  # the image itself goes: only the two shared hashes remain
    copy = tmp_path / "copy.jpg"
    Image.open(image_bank[1] / "img0.png").save(copy, quality=80)
    code, [q], _ = cli("query", copy, "--bank", bank, "--json")
    assert (q["verdict"], q["reason"], q["match"]["label"], q["match"]["signal"]) == ("fake", "near_duplicate", "fake", "pdq")
    real_id = [n["id"] for n in q["neighbors"] if n["label"] == "real"]
    assert q["match"]["disputed_by"] == real_id and len(real_id) == 1


def test_readable_query_and_dupes_print_a_hash_only_match(image_bank, tmp_path):
    """A hash-only item has no similarity and no path: the readable lines say so (they crashed on None)."""
    bank, folder = image_bank
    copy = tmp_path / "copy.jpg"
    Image.open(folder / "img3.png").save(copy, quality=80)
    res = runner.invoke(app, ["query", str(copy), "--bank", str(bank)])
    assert res.exit_code == 0, res.output
    assert "↳ copy of #4 (fake) hash-only item (similarity —, pdq distance " in res.stdout
    res = runner.invoke(app, ["dupes", str(copy), "--bank", str(bank)])
    assert res.exit_code == 0, res.output
    assert "#4 hash-only item  (pdq, similarity —, pdq distance " in res.stdout


def test_campaigns_and_groups_run_over_hash_only_items(image_bank, tmp_path):
    import shutil
    bank = tmp_path / "bank"
    shutil.copytree(image_bank[0], bank)
    fb = Fakebank(bank)
    b = Bank.open(bank)
    # the partner also shares the hash of one of our own images: it joins that image's group by PDQ
    (tmp_path / "l.txt").write_text(f"pdq {b.value(1, 'pdq').hex()}\n")
    fb.import_list(tmp_path / "l.txt", source="partner2")
    groups = list(fb.dupe_groups())
    assert {"group": [1, 5], "paths": [b.value(1, "path"), None]} in groups
    records = fb.campaigns(min_size=2, save=False)
    members = [set(r["members"]) if "members" in r else None for r in records]
    assert all(m is None or 4 not in m for m in members)  # a lone hash never forms a campaign by itself
    assert any(m and {1, 5} <= m for m in members)


# -- the HTTP service: /v1/lookup and HMA's matching API --------------------------------------------------------
# Expected shapes: facebook/ThreatExchange@baefb4ed67b6cdc1d4c82dbaef858d50866ac424,
# hasher-matcher-actioner/src/OpenMediaMatch/blueprints/matching.py (raw_lookup, lookup_get, lookup_post,
# index_status) and schemas/matching.py (MatchWithDistance: bank_content_id int, distance str); errors are
# utils/flask_utils.api_error_handler's {"message": …}.

def test_hma_routes_and_v1_lookup_over_http(image_bank, tmp_path):
    from test_service import AUTH, Server, png_bytes

    bank, folder = image_bank
    b = Bank.open(bank)
    h_hash = b.value(4, "pdq").hex()  # the partner's hash-only item
    h_img = b.value(1, "pdq").hex()
    server = Server(bank).start()
    try:
        get = lambda path, **params: httpx.get(server.url + path, params=params, headers=AUTH, timeout=30)
        r = get("/m/raw_lookup", signal_type="pdq", signal=h_hash)
        assert r.status_code == 200 and r.json() == {"matches": [4]}
        r = get("/m/raw_lookup", signal_type="pdq", signal=h_hash, include_distance="true")
        assert r.json() == {"matches": [{"bank_content_id": 4, "distance": "0"}]}
        r = get("/m/lookup", signal_type="pdq", signal=h_img)
        assert r.json() == {"FAKEBANK": [{"bank_content_id": 1, "distance": "0"}]}
        r = get("/m/lookup", signal_type="pdq", signal=h_hash, banks="partner")
        assert r.json() == {"partner": [{"bank_content_id": 4, "distance": "0"}]}
        assert get("/m/lookup", signal_type="pdq", signal=h_hash, banks="FAKEBANK").json() == {}
        r = get("/m/lookup", signal_type="video_md5", signal="d41d8cd98f00b204e9800998ecf8427e")
        assert (r.status_code, r.json()) == (400, {"message": "No such SignalType 'video_md5'"})
        r = get("/m/raw_lookup", signal_type="pdq", signal="abc")
        assert r.status_code == 400 and r.json()["message"].startswith("invalid signal")
        r = get("/m/lookup")
        assert (r.status_code, r.json()) == (400, {"message": "Either url or both signal and signal_type are required"})
        assert get("/m/lookup", url="http://127.0.0.1/x.jpg").status_code == 403
        st = get("/m/index/status").json()
        assert set(st) == {"pdq", "vpdq"} and st["pdq"]["present"] is True and st["pdq"]["size"] == 4
        assert st["vpdq"]["size"] == 0 and get("/m/index/status", signal_type="vpdq").json() == {"vpdq": st["vpdq"]}
        # POST: one file under its content type's name, hashed by fakebank
        data = png_bytes(Image.open(folder / "img3.png"), format="JPEG", quality=85)
        r = httpx.post(server.url + "/m/lookup", files={"photo": ("x.jpg", data)}, headers=AUTH, timeout=60)
        assert r.status_code == 200 and list(r.json()) == ["pdq"]
        [m] = r.json()["pdq"]["partner"]
        assert m["bank_content_id"] == 4 and isinstance(m["distance"], str) and int(m["distance"]) <= 31
        r = httpx.post(server.url + "/m/lookup", files={"video": ("x.jpg", data)}, headers=AUTH, timeout=60)
        assert r.status_code == 400 and "x.jpg" in r.json()["message"]  # a photo is no video
        r = httpx.post(server.url + "/m/lookup", files={"audio": ("x.mp3", data)}, headers=AUTH, timeout=60)
        assert (r.status_code, r.json()) == (400, {"message": "no such content_type: 'audio'"})
        # the service's key guards these routes like the rest
        r = httpx.get(server.url + "/m/raw_lookup", params={"signal_type": "pdq", "signal": h_hash})
        assert r.status_code == 401 and "API key" in r.json()["message"]  # HMA's error shape on its routes
        r = httpx.delete(server.url + "/m/lookup", headers=AUTH)
        assert r.status_code == 405 and "message" in r.json() and "allow" in r.headers
        # fakebank's own look-up, with labels, sources and the distance bound
        r = httpx.post(server.url + "/v1/lookup", json={"pdq": [h_hash, h_img], "max_distance": 0}, headers=AUTH, timeout=30)
        res = r.json()["results"]
        assert [[(m["id"], m["media"]) for m in x["matches"]] for x in res] == [[(4, "hash")], [(1, "image")]]
        r = httpx.post(server.url + "/v1/lookup", json={"pdq": ["nothex"]}, headers=AUTH, timeout=30)
        assert r.status_code == 400 and "malformed PDQ hash" in r.json()["error"]
    finally:
        server.stop()


def test_relabelled_items_leave_hma_answers(image_bank, tmp_path):
    """HMA's banks hold content to act on: an item relabelled real stops answering /m/* (not /v1/lookup)."""
    bank, _ = image_bank
    fb = Fakebank(bank)
    h = Bank.open(bank).value(2, "pdq").hex()
    fb.label([2], "real")
    try:
        assert fb.lookup([h], max_distance=0)[0]["matches"][0]["label"] == "real"
        from fakebank.hma import _matches
        assert _matches(fb, h, "pdq", None) == []
    finally:
        fb.label([2], "fake")
