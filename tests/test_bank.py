"""The bank folder: round trips, invariants, one writer, and crash safety under SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bankutil import DIM, MODEL_INFO, format_1_bank, format_2_bank, make_item
from fakebank.api import Fakebank
from fakebank.bank import MANIFEST, Bank, BankWriter, read_manifest
from fakebank.errors import BankError, UsageError

HERE = Path(__file__).parent


def writer(path: Path, **kw) -> BankWriter:
    return BankWriter(path, model_info=MODEL_INFO, embedding_dim=DIM, **kw)


def test_round_trip_reopen(tmp_path):
    items = [make_item(i, label="fake" if i % 2 else "real") for i in range(20)]
    with writer(tmp_path) as w:
        ids = w.add(items[:7]) + w.add(items[7:])
    assert ids == list(range(1, 21))
    bank = Bank.open(tmp_path)
    assert len(bank) == 20
    assert bank.manifest["counts"] == {"items": 20, "fake": 10, "real": 10, "unknown": 0}
    for item, item_id in zip(items, ids):
        r = bank.row(item_id)
        np.testing.assert_array_equal(bank.vectors["cls"][r], item.cls)
        np.testing.assert_array_equal(bank.vectors["patch"][r], item.patch)
        assert bank.pdq_codes[r].tobytes() == item.pdq
        assert bank.id_of_sha256(item.sha256) == item_id
        rec = bank.item(item_id)
        assert rec["path"] == item.path and rec["label"] == item.label and rec["width"] == 640
    # every item is its own nearest neighbour, through the persisted index
    sims, found = bank.search("cls", np.stack([it.cls for it in items]), 1)
    assert found[:, 0].tolist() == ids
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def test_manifest_round_trips_and_names_the_model(tmp_path):
    with writer(tmp_path) as w:
        w.add([make_item(1)])
    m = read_manifest(tmp_path)
    assert json.loads(json.dumps(m)) == m
    assert m["model"]["identity_hash"] == MODEL_INFO["identity_hash"]
    assert m["embedding_dim"] == DIM and m["format_version"] == 2
    [seg] = m["segments"]
    assert (seg["rows"], seg["min_id"], seg["max_id"]) == (1, 1, 1)
    assert (tmp_path / seg["file"]).is_file() and (tmp_path / seg["sha"]).is_file()


def test_one_item_bank_finds_itself_after_reopen(tmp_path):
    item = make_item(7)
    with writer(tmp_path) as w:
        w.add([item])
    bank = Bank.open(tmp_path)
    sims, ids = bank.search("cls", item.cls[None, :], 10)
    assert ids[0, 0] == 1 and sims[0, 0] == pytest.approx(1.0, abs=1e-5)
    query = np.frombuffer(item.pdq, np.uint8)[None, :]
    assert bank.pdq_within(query, 31) == [[(1, 0)]]


def test_large_segments_write_mapped_shards_and_search_them(tmp_path, monkeypatch):
    """Every segment writes its shards once; past ANN_MIN_ROWS cls goes through HNSW and is re-ranked
    exactly, past MIH_MIN_ROWS PDQ through multi-index hashing. Reopened, the shards are memory-mapped
    and give the same answers as exact search."""
    monkeypatch.setattr("fakebank.index.ANN_MIN_ROWS", 8)
    monkeypatch.setattr("fakebank.index.MIH_MIN_ROWS", 8)
    from dataclasses import replace
    items = [make_item(i) for i in range(40)]
    items = [replace(it, pdq_trim=it.pdq[::-1], pdq_trim_quality=90) if i % 2 == 0 else it for i, it in enumerate(items)]
    with writer(tmp_path) as w:
        w.add(items[:30])
        w.add(items[30:33])  # small: searched exactly, PDQ by a flat scan
    m = read_manifest(tmp_path)
    assert set(m["segments"][0]["shards"]) == {"cls", "pdq", "pdq_trim", "local", "pdq_mih", "pdq_trim_mih"}
    trims = np.stack([np.frombuffer(it.pdq[::-1], np.uint8) for it in items[:30:2]])
    assert Bank.open(tmp_path).binary_within("pdq_trim", trims, 0) == [[(i, 0)] for i in range(1, 31, 2)]
    assert set(m["segments"][1]["shards"]) == {"pdq", "pdq_trim", "local"}
    bank = Bank.open(tmp_path)
    queries = np.stack([it.cls for it in items[:33]])
    sims, found = bank.search("cls", queries, 3)
    assert found[:, 0].tolist() == list(range(1, 34))
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)  # exact similarities, not SQ8 approximations
    es, ei = exact(bank, queries, 3)
    np.testing.assert_array_equal(found, ei)
    codes = np.stack([np.frombuffer(it.pdq, np.uint8) for it in items[:33]])
    assert [hits for hits in bank.pdq_within(codes, 0)] == [[(i, 0)] for i in range(1, 34)]
    assert [sorted(h) for h in bank.pdq_within(codes, 31)] == \
        [sorted((i, d) for i, d in h if d <= 31) for h in bank.pdq_within(codes, 40)]  # hashed = flat


def exact(bank: Bank, queries: np.ndarray, k: int):
    from fakebank.index import exact_search
    return exact_search(bank.vectors["cls"], bank.ids, queries, k)


def test_relabel_and_remove_take_effect_and_persist(tmp_path):
    with writer(tmp_path) as w:
        w.add([make_item(i) for i in range(6)])
    with BankWriter(tmp_path, create=False) as w:
        w.set_label([2, 3], "real")
        w.remove([5])
        with pytest.raises(UsageError, match="no item with id 99"):
            w.remove([99])
    bank = Bank.open(tmp_path)
    assert len(bank) == 5 and not bank.has(5)
    assert bank.item(2)["label"] == "real" and bank.item(1)["label"] == "fake"
    assert bank.manifest["counts"] == {"items": 5, "fake": 3, "real": 2, "unknown": 0}
    _, ids = bank.search("cls", make_item(3).cls[None, :], 5)  # id 5 is gone from the index too
    assert ids[0, 0] == 4 and 5 not in ids[0].tolist()
    with writer(tmp_path) as w:  # ids are never reused after a removal
        assert w.add([make_item(100)]) == [7]
    fb = Fakebank(tmp_path)  # an id given twice is one change and one record
    assert fb.label([1, 1], "real") == [{"id": 1, "label": "real", "status": "updated"}]
    assert fb.remove([4, 4]) == [{"id": 4, "status": "removed"}]
    assert Bank.open(tmp_path).manifest["counts"] == {"items": 5, "fake": 2, "real": 3, "unknown": 0}


def test_bad_label_is_a_usage_error(tmp_path):
    with writer(tmp_path) as w:
        with pytest.raises(UsageError, match="fake, real, unknown"):
            w.add([make_item(1, label="maybe")])


def test_other_model_is_refused(tmp_path):
    with writer(tmp_path) as w:
        w.add([make_item(1)])
    other = {**MODEL_INFO, "identity_hash": "b" * 64, "name": "other-model"}
    with pytest.raises(BankError, match="built with model untrained:test_vit.*other-model"):
        BankWriter(tmp_path, model_info=other, embedding_dim=DIM).__enter__()


def test_missing_and_foreign_folders_have_clear_errors(tmp_path):
    with pytest.raises(BankError, match="no bank at"):
        Bank.open(tmp_path / "nope")
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(BankError, match="not a fakebank bank"):
        Bank.open(tmp_path)


def test_damaged_bank_is_refused(tmp_path):
    with writer(tmp_path) as w:
        w.add([make_item(1)])
    m = json.loads((tmp_path / MANIFEST).read_text())
    m["counts"]["items"] = 3
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BankError, match="counts 3 items but its segments hold 1"):
        Bank.open(tmp_path)
    # a segment's files missing or cut to nothing: named as damage, not an Arrow or NumPy traceback
    m["counts"]["items"] = 1
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    seg = m["segments"][0]
    sha = tmp_path / seg["sha"]
    sha.rename(tmp_path / "moved")
    with pytest.raises(BankError, match=f"{seg['sha']} named by the manifest is missing or unreadable"):
        Bank.open(tmp_path).id_of_sha256(make_item(1).sha256)
    (tmp_path / "moved").rename(sha)
    (tmp_path / seg["file"]).write_bytes(b"")
    with pytest.raises(BankError, match=f"segment {seg['file']} is unreadable"):
        Bank.open(tmp_path).item(1)


def test_second_writer_waits_then_gets_a_clear_error(tmp_path):
    with writer(tmp_path) as w:
        w.add([make_item(1)])
        with pytest.raises(BankError, match=f"another fakebank process \\(pid {os.getpid()}\\)"):
            writer(tmp_path, lock_timeout=0.3).__enter__()
    with writer(tmp_path, lock_timeout=0.3) as w2:  # released on exit
        w2.add([make_item(2)])


def test_a_long_wait_for_the_lock_is_said_once(tmp_path, caplog, monkeypatch):
    import fakebank.bank as bank_module

    monkeypatch.setattr(bank_module, "LOCK_QUIET_S", 0.2)
    got = []
    with writer(tmp_path) as w:
        w.add([make_item(1)])

        def second():
            with writer(tmp_path, lock_timeout=20) as w2:
                got.append(len(w2.bank))

        t = threading.Thread(target=second)
        with caplog.at_level("WARNING", logger="fakebank"):
            t.start()
            time.sleep(1.0)
            waits = [r.getMessage() for r in caplog.records]
    t.join(20)
    assert got == [1]  # it got the lock once the first writer was done
    assert len(waits) == 1 and f"another fakebank process (pid {os.getpid()}); waiting up to 20 s" in waits[0]


def test_readers_never_see_a_half_commit(tmp_path):
    with writer(tmp_path) as w:
        w.add([make_item(0)])
    stop = threading.Event()
    seen, errors = [], []

    def read_loop():
        while not stop.is_set():
            try:
                b = Bank.open(tmp_path)
                assert len(b) == b.manifest["counts"]["items"]
                assert len(b) == len(b.ids)
                seen.append(len(b))
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(e))

    t = threading.Thread(target=read_loop)
    t.start()
    with writer(tmp_path) as w:
        for i in range(1, 40):
            w.add([make_item(i)])
            if i % 10 == 0:
                w.set_label([i], "real")
    stop.set()
    t.join()
    assert not errors, errors[:3]
    assert seen == sorted(seen) and seen[-1] <= 40


CRASH_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from bankutil import DIM, MODEL_INFO, format_1_bank, make_item
    from fakebank.bank import BankWriter
    kill_at = int(sys.argv[2])
    real_replace, calls = os.replace, [0]
    def replace(a, b):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(a, b)
    os.replace = replace
    import fakebank.bank
    fakebank.bank.MERGE_FANOUT = 2  # every second add also merges two segments
    with BankWriter(sys.argv[1], model_info=MODEL_INFO, embedding_dim=DIM) as w:
        for batch in range(4):
            ids = w.add([make_item(100 * batch + j) for j in range(5)])
            print(*ids, flush=True)
        w.set_label(ids[:2], "real")
        w.remove([ids[2]])
        print("changed", ids[2], flush=True)
        w.compact()
        print("compacted", flush=True)
    """
)


@pytest.mark.parametrize("kill_at", range(1, 54, 2))  # the child renames 53 times
def test_sigkill_at_every_rename_leaves_a_consistent_bank(tmp_path, kill_at):
    """Kill the writer at file renames all through adds, tier merges, a relabel, a removal and a compaction
    (segment, sha table, shards, delta files, manifest)."""
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD.format(tests=str(HERE)))
    bank_dir = tmp_path / "bank"
    proc = subprocess.run([sys.executable, str(script), str(bank_dir), str(kill_at)],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    acknowledged = [int(x) for line in lines if line[0].isdigit() for x in line.split()]
    removed = [int(line.split()[1]) for line in lines if line.startswith("changed")]
    if proc.returncode == 0:
        pytest.skip(f"the writer finished before rename #{kill_at}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if not (bank_dir / MANIFEST).exists():
        assert acknowledged == []
        return
    bank = Bank.open(bank_dir)
    present = set(bank.ids.tolist())
    assert set(acknowledged) - set(removed) <= present  # nothing acknowledged is lost
    assert not set(removed) & present  # an acknowledged removal stays removed
    assert len(present - {18}) in (0, 5, 10, 15, 19)  # whole commits only (#18 is the one removed)
    assert bank.manifest["counts"]["items"] == len(present)
    if removed:
        assert {bank.label_of(i) for i in acknowledged[-5:-3]} == {"real"}
    assert len(bank.ids) == len(bank) and len(bank.pdq_codes) == len(bank)
    for i in set(acknowledged) - set(removed):  # every acknowledged item is searchable by every signal
        assert bank.search("cls", bank.vectors["cls"][bank.row(i)][None, :], 1)[1][0, 0] == i
        assert (i, 0) in bank.pdq_within(bank.pdq_codes[bank.row(i)][None, :], 0)[0]
    # the next writer sweeps the crash's leftovers and carries on
    with writer(bank_dir) as w:
        w.add([make_item(999)])
    leftovers = [p.name for p in bank_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert len(Bank.open(bank_dir)) == len(present) + 1


def test_writer_reuses_a_shared_snapshot_without_disturbing_its_readers(tmp_path):
    with writer(tmp_path) as w:
        w.add([make_item(1), make_item(2)])
    snap = Bank.open(tmp_path)
    snap.search("cls", make_item(1).cls[None, :], 2)  # shards built
    snap.pdq_within(np.zeros((1, 32), np.uint8), 31)
    with BankWriter(tmp_path, model_info=MODEL_INFO, embedding_dim=DIM, snapshot=snap) as w:
        assert w.bank is snap  # still the latest commit: not reloaded
        w.add([make_item(3)])
    assert len(snap) == 2
    assert 3 not in snap.search("cls", make_item(3).cls[None, :], 5)[1][0].tolist()
    assert w.bank.search("cls", make_item(3).cls[None, :], 1)[1][0, 0] == 3
    reopened = Bank.open(tmp_path)
    assert len(reopened) == 3 and reopened.search("cls", make_item(3).cls[None, :], 1)[1][0, 0] == 3


def test_small_segments_merge_by_tier_and_old_files_are_swept(tmp_path, monkeypatch):
    monkeypatch.setattr("fakebank.bank.MERGE_FANOUT", 4)
    with writer(tmp_path) as w:
        for i in range(21):
            w.add([make_item(i)])
    bank = Bank.open(tmp_path)
    rows = [s["rows"] for s in bank.manifest["segments"]]
    assert sum(rows) == 21 and len(rows) <= 6 and rows[0] == 16, rows  # 1s → 4s → 16
    assert sorted(p.name for p in tmp_path.glob("seg-*.arrow")) == sorted(s["file"] for s in bank.manifest["segments"])
    for i in range(21):
        assert bank.search("cls", make_item(i).cls[None, :], 1)[1][0, 0] == i + 1
        assert bank.id_of_sha256(make_item(i).sha256) == i + 1


def test_merge_is_bounded_by_auto_merge_max_rows(tmp_path, monkeypatch):
    monkeypatch.setattr("fakebank.bank.MERGE_FANOUT", 2)
    monkeypatch.setattr("fakebank.bank.AUTO_MERGE_MAX_ROWS", 4)
    with writer(tmp_path) as w:
        for i in range(8):
            w.add([make_item(i)])
    rows = [s["rows"] for s in read_manifest(tmp_path)["segments"]]
    assert rows == [4, 4], rows  # two 4s would make 8 > AUTO_MERGE_MAX_ROWS: left for `compact`


def test_relabel_and_remove_are_small_delta_files_visible_at_once(tmp_path):
    with writer(tmp_path) as w:
        w.add([make_item(i) for i in range(30)])
    seg_files = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("seg-*")}
    with BankWriter(tmp_path, create=False) as w:
        w.set_label([3], "real")
        assert w.bank.label_of(3) == "real"  # the writer's own snapshot sees it
        w.remove([4])
        w.set_label([3], "unknown")  # the later change wins
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("seg-*")} == seg_files  # nothing rewritten
    m = read_manifest(tmp_path)
    assert len(m["deltas"]) == 3 and all((tmp_path / f).stat().st_size < 4096 for f in m["deltas"])
    bank = Bank.open(tmp_path)
    assert bank.label_of(3) == "unknown" and bank.item(3)["label"] == "unknown"
    assert not bank.has(4) and bank.id_of_sha256(make_item(3).sha256) is None
    assert m["counts"] == {"items": 29, "fake": 28, "real": 0, "unknown": 1}
    assert 4 not in bank.search("cls", make_item(3).cls[None, :], 30)[1][0].tolist()
    assert bank.pdq_within(np.frombuffer(make_item(3).pdq, np.uint8)[None, :], 0) == [[]]
    assert 4 not in bank.ids.tolist() and bank.labels[bank.row(3)] == "unknown"
    with pytest.raises(UsageError, match="no item with id 4"):
        bank.item(4)


def test_many_delta_files_are_folded_into_one(tmp_path, monkeypatch):
    monkeypatch.setattr("fakebank.bank.MAX_DELTA_FILES", 3)
    with writer(tmp_path) as w:
        w.add([make_item(i) for i in range(10)])
        for i in range(1, 8):
            w.set_label([i], "real")
        w.remove([8])
    m = read_manifest(tmp_path)
    assert len(m["deltas"]) <= 3
    bank = Bank.open(tmp_path)
    assert [bank.label_of(i) for i in range(1, 8)] == ["real"] * 7 and not bank.has(8)
    assert m["counts"] == {"items": 9, "fake": 2, "real": 7, "unknown": 0}
    assert sorted(p.name for p in tmp_path.glob("delta-*")) == sorted(m["deltas"])


def test_compact_folds_deltas_and_drops_removed_rows(tmp_path):
    with writer(tmp_path) as w:
        for i in range(6):
            w.add([make_item(3 * i + j) for j in range(3)])
        w.set_label([2, 5], "real")
        w.remove([1, 7])
        w.set_campaigns({3: "C0042"})
        before = w.bank.search("cls", np.stack([make_item(i).cls for i in range(18)]), 4)
        r = w.compact()
    assert r["segments_after"] == 1 and r["items"] == 16
    m = read_manifest(tmp_path)
    assert [s["rows"] for s in m["segments"]] == [16] and len(m["deltas"]) == 1  # the campaign edit stays
    bank = Bank.open(tmp_path)
    after = bank.search("cls", np.stack([make_item(i).cls for i in range(18)]), 4)
    np.testing.assert_array_equal(before[1], after[1])
    assert bank.label_of(2) == "real" and bank.deltas.labels == {} and not bank.has(7)
    assert bank.campaign_assignments().to_pylist() == [{"id": 3, "campaign": "C0042", "origin": "computed"}]
    assert sorted(p.name for p in tmp_path.glob("seg-*.arrow")) == [m["segments"][0]["file"]]


def _answers(bank: Bank, expected: dict) -> dict:
    sims, ids = bank.search("cls", np.asarray(expected["cls_queries"], np.float32), 4)
    codes = np.stack([np.frombuffer(make_item(i).pdq, np.uint8) for i in range(12)])
    dist, local = bank.local_knn(np.asarray(expected["local_queries"], np.uint8), 2)
    return {"cls_ids": ids.tolist(), "cls_sims": sims, "pdq": [sorted(map(list, h)) for h in bank.pdq_within(codes, 31)],
            "local_dist": dist.tolist(), "local_ids": local.tolist(),
            "items": {str(i): {k: v for k, v in bank.item(i).items() if k != "added_at"} for i in bank.ids.tolist()}}


def test_format_1_bank_answers_as_before_read_as_is_and_after_migration(tmp_path):
    """tests/data/bank-v1 was written by format 1's code (Parquet segments, whole-bank FAISS files): 12
    items added in two commits, #2 relabelled unknown, #7 removed; expected.json holds what that code
    answered (cls top-4, PDQ ≤ 31, local 2-NN, every item's metadata)."""
    path = format_1_bank(tmp_path / "b")
    assert len(list(path.glob("*-000004.faiss"))) == 5  # format 1's whole-bank indexes, as it left them
    expected = json.loads((path / "expected.json").read_text())
    (path / "expected.json").unlink()

    def same(bank: Bank) -> None:
        got = _answers(bank, expected)
        assert got["cls_ids"] == expected["cls_ids"]
        np.testing.assert_allclose(got["cls_sims"], expected["cls_sims"], atol=1e-6)
        assert got["pdq"] == expected["pdq"]
        # the items as format 1 recorded them; columns added since read as nulls
        for i, rec in got["items"].items():
            assert {k: rec[k] for k in expected["items"][i]} == expected["items"][i]
            assert all(rec[k] is None for k in set(rec) - set(expected["items"][i]))
        assert set(got["items"]) == set(expected["items"])
        assert got["local_dist"] == expected["local_dist"] and got["local_ids"] == expected["local_ids"]

    old = Bank.open(path)
    assert old.manifest["format_version"] == 1 and len(old) == 11 and not old.has(7)
    same(old)
    with writer(path) as w:
        assert w.bank.manifest["format_version"] == 2
    migrated = Bank.open(path)
    assert migrated.manifest["format_version"] == 2
    assert not list(path.glob("*.parquet")) and not list(path.glob("*-000004.faiss"))  # format 1's files swept
    same(migrated)
    assert migrated.manifest["counts"] == {"items": 11, "fake": 7, "real": 3, "unknown": 1}
    with writer(path) as w:
        w.add([make_item(50)])
    assert len(Bank.open(path)) == 12 and Bank.open(path).id_of_sha256(make_item(50).sha256) == 13


def test_the_api_migrates_a_format_1_bank_when_it_first_opens_it(tmp_path):
    """A read-only command (`query`, `dupes`, `info` aside) migrates once instead of rebuilding every
    index in memory in every process."""
    from fakebank.api import Fakebank
    bank = Fakebank(format_1_bank(tmp_path / "b")).open_bank()
    assert bank.manifest["format_version"] == 2 and len(bank) == 11
    assert read_manifest(tmp_path / "b")["format_version"] == 2


def test_sha256_look_up_does_not_depend_on_random_looking_ids(tmp_path):
    """Ids that share a long prefix (synthetic or imported ones) are hashed whole, not bucketed by prefix."""
    from dataclasses import replace
    items = [replace(make_item(i), sha256=f"{i:064x}") for i in range(300)]
    with writer(tmp_path) as w:
        w.add(items[:200])
        w.add(items[200:])
    bank = Bank.open(tmp_path)
    assert [bank.id_of_sha256(f"{i:064x}") for i in range(300)] == list(range(1, 301))
    assert bank.id_of_sha256(f"{300:064x}") is None
    keys = np.load(tmp_path / bank.manifest["segments"][0]["sha"])
    assert len(np.unique(keys[:, 0])) == 200


def test_local_look_up_does_not_depend_on_how_the_bank_is_cut(tmp_path):
    """The k nearest descriptors over all segments, whatever the commits: a merge never changes an answer."""
    from dataclasses import replace
    rng = np.random.default_rng(5)
    items = []
    for i in range(40):
        desc = rng.integers(0, 256, (16, 32), dtype=np.uint8)
        xy = rng.uniform(0, 640, (16, 2)).astype(np.float16)
        items.append(replace(make_item(i), local=desc.tobytes() + xy.tobytes()))
    with writer(tmp_path / "one") as w:
        w.add(items)
    with writer(tmp_path / "many", auto_merge=False) as w:
        for start in range(0, 40, 7):
            w.add(items[start:start + 7])
    one, many = Bank.open(tmp_path / "one"), Bank.open(tmp_path / "many")
    assert len(many.segments) == 6
    stored = np.frombuffer(items[3].local[: 16 * 32], np.uint8).reshape(16, 32)
    queries = np.concatenate([stored ^ 1, rng.integers(0, 256, (20, 32), dtype=np.uint8)])
    d1, i1 = one.local_knn(queries, 2)
    d2, i2 = many.local_knn(queries, 2)
    np.testing.assert_array_equal(d1, d2)
    assert (i1[:16, 0] == (4 << 10) + np.arange(16)).all() and (i1[:16, 0] == i2[:16, 0]).all()


def test_a_segment_written_before_a_column_existed_reads_it_as_nulls(tmp_path):
    """Columns are only ever added to the items schema: an older segment lacking one (here `note` and
    `local`, dropped from the file as an older writer would have left them out) is read, searched, merged
    and compacted without a migration."""
    from dataclasses import replace

    import pyarrow as pa
    with writer(tmp_path) as w:
        w.add([replace(make_item(i), note="n") for i in range(5)])
    seg = read_manifest(tmp_path)["segments"][0]
    path = tmp_path / seg["file"]
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all().drop_columns(["note", "local"])
    with pa.OSFile(str(path) + ".tmp", "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
        out.write_table(table)
    os.replace(str(path) + ".tmp", path)
    bank = Bank.open(tmp_path)
    assert bank.item(3)["note"] is None and bank.item(3)["label"] == make_item(2).label
    sims, found = bank.search("cls", make_item(2).cls[None], 1)
    assert found[0, 0] == 3
    with writer(tmp_path) as w:
        w.add([replace(make_item(9), note="new")])
        w.compact()
    bank = Bank.open(tmp_path)
    assert len(bank) == 6 and bank.item(6)["note"] == "new" and bank.item(1)["note"] is None


def test_a_bank_written_before_the_new_columns_answers_query_and_dupes_as_it_did(tmp_path):
    """tests/data/bank-v2 was written by the code at 13f1544 (format 2, before the columns tags,
    external_id, thumbnail and patch_grid): 7 real images added in three commits, one relabelled real, one
    removed. Today's code answers its edited queries as that code did: the same verdicts, reasons, matches
    and kNN neighbours, and the same near-duplicates (all by PDQ or ORB here). What does change, on purpose:
    an item without a stored patch grid is never matched by embeddings alone (issue 16; tested in
    test_grid.py::test_items_banked_without_a_grid_never_match_by_embedding_alone)."""
    from fakebank.api import Fakebank

    root = format_2_bank(tmp_path / "v2")
    expected = json.loads((root / "expected.json").read_text())
    fb = Fakebank(root / "bank")  # the bank's own model spec
    queries = [str(root / "queries" / r["path"]) for r in expected["query"]]
    info = fb.info()
    assert {k: info[k] for k in expected["info"]} == expected["info"]
    for got, want in zip(fb.query(queries), expected["query"], strict=True):
        assert (got["verdict"], got["reason"]) == (want["verdict"], want["reason"]), want["path"]
        assert (got["match"] or {}).get("id") == (want["match"] or {}).get("id"), want["path"]
        assert [n["id"] for n in got["neighbors"]] == [n["id"] for n in want["neighbors"]], want["path"]
        assert got["p_model"] == pytest.approx(want["p_model"], abs=1e-4)
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    for got, want in zip(fb.dupes(queries), expected["dupes"], strict=True):
        assert [(d["id"], d["signal"]) for d in got["duplicates"]] == \
            [(d["id"], d["signal"]) for d in want["duplicates"]], want["path"]
    bank, first = fb.open_bank(), expected["ids"]["00000274.png"]
    assert [bank.value(first, c) for c in ("tags", "external_id", "patch_grid", "thumbnail")] == [None] * 4


def test_changes_to_one_id_in_one_commit_are_counted_once(tmp_path):
    """An import or sync may name an id twice: a relabel then a removal, or the same removal twice. The
    counts follow the net effect, and the bank still opens (the check of counts against rows passes)."""
    with writer(tmp_path) as w:
        w.add([make_item(i, label="fake") for i in range(3)])
    with writer(tmp_path) as w:
        w.apply((), [(1, "label", "real"), (1, "remove", None), (2, "remove", None), (2, "remove", None),
                     (3, "label", "real"), (3, "label", "unknown")])
    bank = Bank.open(tmp_path)
    assert bank.manifest["counts"] == {"items": 1, "fake": 0, "real": 0, "unknown": 1}
    assert bank.ids.tolist() == [3] and bank.label_of(3) == "unknown"


def test_frame_hashes_that_are_not_whole_pdq_hashes_are_refused_on_the_folder_too(tmp_path):
    from dataclasses import replace

    with BankWriter(tmp_path / "b", model_info=MODEL_INFO, embedding_dim=DIM) as w:
        with pytest.raises(BankError, match="not whole 32-byte hashes"):
            w.add([replace(make_item(1), frame_pdq=b"\x00" * 33)])
        assert w.add([replace(make_item(2), frame_pdq=b"\x00" * 64)]) == [1]


def test_a_bank_written_by_the_code_at_07dcf39_answers_as_it_did_and_takes_new_items(tmp_path):
    """tests/data/bank-07dcf39 was written by the last landed code that found content boxes on the PDQ
    view, recorded its ORB input in the manifest (`local_input`, no longer read) and stored WebP thumbnails.
    Today's code opens it, answers its edited queries (letterboxed copies larger than the view among them)
    with the same verdicts, matches and near-duplicates, serves its WebP thumbnails as WebP, and adds to it."""
    import bank07_cases as cases
    from fakebank.api import Fakebank
    from fakebank.thumbnails import thumbnail_mime

    root = tmp_path / "b07"
    fixture = Path(__file__).parent / "data" / "bank-07dcf39"
    with tarfile.open(fixture / "bank.tar") as tar:  # the bank's files exactly as that code wrote them
        tar.extractall(root, filter="data")
    expected = json.loads((fixture / "expected.json").read_text())
    queries = [str(p) for p in cases.write(tmp_path / "queries", cases.queries())]
    fb = Fakebank(root / "bank")  # the bank's own model spec
    info = fb.info()
    assert {k: info[k] for k in expected["info"]} == expected["info"]
    for got, want in zip(fb.query(queries), expected["query"], strict=True):
        assert (got["verdict"], got["reason"]) == (want["verdict"], want["reason"]), want["path"]
        assert (got["match"] or {}).get("id") == (want["match"] or {}).get("id"), want["path"]
        assert (got["match"] or {}).get("signal") == (want["match"] or {}).get("signal"), want["path"]
        assert [n["id"] for n in got["neighbors"]] == [n["id"] for n in want["neighbors"]], want["path"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    for got, want in zip(fb.dupes(queries), expected["dupes"], strict=True):
        assert [(d["id"], d["signal"]) for d in got["duplicates"]] == \
            [(d["id"], d["signal"]) for d in want["duplicates"]], want["path"]
    bank = fb.open_bank()
    assert {thumbnail_mime(bank.thumbnail(i)) for i in expected["ids"].values()} == {"image/webp"}
    [new] = fb.add(cases.write(tmp_path / "new", {"unrelated.jpg": cases.queries()["unrelated.jpg"]}))
    assert new["status"] == "added" and thumbnail_mime(fb.open_bank().thumbnail(new["id"])) == "image/jpeg"
    assert [d["id"] for d in next(iter(fb.dupes([queries[-1]])))["duplicates"]] == [new["id"]]
