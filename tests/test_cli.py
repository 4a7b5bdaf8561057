"""The CLI contract, in process (typer's CliRunner), on real images with a small untrained ViT."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from fakebank.api import Fakebank
from fakebank.bank import Bank
from fakebank.cli import app
from fakebank.dedup import DedupParams

DATA = Path(__file__).parent / "data"
WEIGHTS = "untrained:test_vit:0"  # 160-px ViT: fast; matching is real even though scores are not
ADD_KEYS = {"path", "id", "sha256", "status", "p_fake", "label", "error"}
QUERY_KEYS = {"path", "sha256", "verdict", "reason", "score", "p_model", "p_knn", "match", "neighbors", "model"}
NEIGHBOR_KEYS = {"id", "path", "label", "campaign", "similarity", "pdq_distance"}
MATCH_KEYS = NEIGHBOR_KEYS | {"signal", "inliers", "spatial_agreement", "disputed_by"}  # a match carries its evidence
runner = CliRunner()


def run(*args: str) -> tuple[int, list[dict], str]:
    res = runner.invoke(app, [str(a) for a in args])
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return res.exit_code, lines, res.stderr


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real images: the Community Forensics sample fakes and PDQ reference photos (vendored)."""
    folder = tmp_path_factory.mktemp("photos")
    sources = sorted((DATA / "commfor").glob("*.png"))[:3] + [
        DATA / "pdq" / "reg-test-input" / "dih" / "bridge-1-original.jpg",
        DATA / "pdq" / "reg-test-input" / "labelme-subset" / "q0122.jpg",
    ]
    assert len(sources) == 5, "vendored test images missing from tests/data"
    for i, src in enumerate(sources):
        Image.open(src).convert("RGB").resize((512, 512)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture()
def bank(tmp_path, photos) -> Path:
    path = tmp_path / "bank"
    code, lines, _ = run("add", photos, "--bank", path, "--weights", WEIGHTS, "--json")
    assert code == 0 and [r["status"] for r in lines] == ["added"] * 5
    return path


def test_add_contract_and_resume(tmp_path, photos, bank):
    code, lines, _ = run("add", photos, "--bank", bank, "--json")  # the bank's own model is reused
    assert code == 0
    assert all(set(r) == ADD_KEYS for r in lines)
    assert [r["status"] for r in lines] == ["duplicate"] * 5
    assert sorted(r["id"] for r in lines) == [1, 2, 3, 4, 5]
    assert len(Bank.open(bank)) == 5


def test_add_reports_bad_files_and_goes_on(tmp_path, photos):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.open(photos / "img0.png").save(folder / "good.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    data = (photos / "img1.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 3])
    (folder / "copy.png").write_bytes((folder / "good.png").read_bytes())  # same bytes: added once
    code, lines, _ = run("add", folder, "--bank", tmp_path / "b", "--weights", WEIGHTS, "--json")
    assert code == 1
    by_name = {Path(r["path"]).name: r for r in lines}
    assert len(lines) == 5
    for bad in ("empty.jpg", "text.jpg", "truncated.png"):
        assert by_name[bad]["status"] == "error" and bad in by_name[bad]["error"]
    assert sorted([by_name["good.png"]["status"], by_name["copy.png"]["status"]]) == ["added", "duplicate"]
    # the copy names the item it duplicates, though both were new to the bank, and comes after it
    assert by_name["good.png"]["id"] == by_name["copy.png"]["id"] is not None
    order = [Path(r["path"]).name for r in lines]
    first = min(order.index("good.png"), order.index("copy.png"))
    assert lines[first]["status"] == "added"


def test_query_finds_transformed_copies(tmp_path, photos, bank):
    src = Image.open(photos / "img2.png")
    q = tmp_path / "q"
    q.mkdir()
    src.save(q / "reencoded.jpg", quality=60)
    src.resize((300, 300)).save(q / "small.png")
    ImageOps.mirror(src).save(q / "mirrored.jpg", quality=90)
    code, lines, _ = run("query", q, "--bank", bank, "-k", "3", "--json")
    assert code == 0 and len(lines) == 3
    for r in lines:
        assert set(r) == QUERY_KEYS
        assert r["reason"] == "near_duplicate" and r["verdict"] == "fake"
        assert set(r["match"]) == MATCH_KEYS and r["match"]["id"] == 3
        assert r["match"]["pdq_distance"] <= 31 and r["match"]["signal"] in ("pdq", "pdq_trim", "local")
        assert r["model"] == {"name": "untrained:test_vit", "revision": "0", "trained": False}
        assert all(set(n) == NEIGHBOR_KEYS for n in r["neighbors"])


def test_label_flips_verdicts_of_copies_and_remove(tmp_path, photos, bank):
    q = tmp_path / "copy.jpg"
    Image.open(photos / "img0.png").save(q, quality=70)
    code, lines, _ = run("label", "1", "--label", "real", "--bank", bank, "--json")
    assert code == 0 and lines == [{"id": 1, "label": "real", "status": "updated"}]
    _, (r,), _ = run("query", q, "--bank", bank, "--json")
    assert (r["verdict"], r["reason"], r["match"]["id"]) == ("real", "near_duplicate", 1)
    code, lines, _ = run("remove", "1", "--bank", bank, "--json")
    assert code == 0 and lines == [{"id": 1, "status": "removed"}]
    _, (r,), _ = run("query", q, "--bank", bank, "--json")
    assert r["match"] is None or r["match"]["id"] != 1
    _, (info,), _ = run("info", "--bank", bank, "--json")
    assert info["items"] == 4 and info["labels"] == {"fake": 4, "real": 0, "unknown": 0}
    assert info["model"]["trained"] is False and info["model"]["spec"] == WEIGHTS


def test_compact_keeps_answers_and_folds_the_changes(tmp_path, photos, bank):
    q = tmp_path / "copy.jpg"
    Image.open(photos / "img2.png").save(q, quality=70)
    run("label", "3", "--label", "real", "--bank", bank, "--json")
    run("remove", "4", "--bank", bank, "--json")
    run("add", photos / "img0.png", "--bank", bank, "--json")  # a duplicate: nothing new
    _, (before,), _ = run("query", q, "--bank", bank, "--json")
    code, (r,), _ = run("compact", "--bank", bank, "--json")
    assert code == 0 and r["segments_after"] == 1 and r["delta_files_after"] == 0 and r["items"] == 4
    _, (after,), _ = run("query", q, "--bank", bank, "--json")
    assert (after["verdict"], after["match"]["id"]) == (before["verdict"], before["match"]["id"]) == ("real", 3)
    assert [n["id"] for n in after["neighbors"]] == [n["id"] for n in before["neighbors"]]
    _, (info,), _ = run("info", "--bank", bank, "--json")
    assert info["storage"] == {"segments": 1, "largest_segment": 4, "delta_files": 0}
    # adding a banked file again under another label says the label stays, and how to change it
    res = runner.invoke(app, ["add", str(photos / "img2.png"), "--bank", str(bank), "--label", "fake"])
    assert res.exit_code == 0 and "stays real: `fakebank label 3 --label fake`" in " ".join(res.stdout.split())
    # … and that --campaign is not applied to it either, until `label --campaign` sets it
    res = runner.invoke(app, ["add", str(photos / "img2.png"), "--bank", str(bank), "--label", "real", "--campaign", "Op [Rain]"])
    assert "--campaign not applied: `fakebank label 3 --campaign 'Op [Rain]'` sets it" in " ".join(res.stdout.split())
    assert run("label", "3", "--campaign", "Op [Rain]", "--bank", bank, "--json")[1][0]["campaign"] == "Op [Rain]"
    res = runner.invoke(app, ["add", str(photos / "img2.png"), "--bank", str(bank), "--label", "real", "--campaign", "Op [Rain]"])
    assert res.exit_code == 0 and "not applied" not in res.stdout


def test_info_human_output(bank):
    res = runner.invoke(app, ["info", "--bank", str(bank)])
    assert res.exit_code == 0 and "items       5" in res.stdout and "test_vit" in res.stdout


def test_info_shows_the_dedup_settings_that_matching_uses(bank):
    _, (info,), _ = run("info", "--bank", bank, "--json")
    assert info["dedup"] == DedupParams().to_dict()  # `add` stores the defaults
    code, _, _ = run("dupes", "--pdq-threshold", "4", "--signals", "pdq", "--save", "--bank", bank, "--json")
    assert code == 0
    _, (info,), _ = run("info", "--bank", bank, "--json")
    assert info["dedup"] == Fakebank(bank).dedup_params().to_dict()  # what query's match and dupes read
    assert (info["dedup"]["pdq_threshold"], info["dedup"]["signals"]) == (4, ["pdq"])
    assert info["dedup"]["source"].startswith("stored by dupes --save")  # what is in force, not the last flags
    # a second save with one more override keeps the first save's settings and says it was stored
    code, _, err = run("dupes", "--min-inliers", "30", "--save", "--bank", bank, "--json")
    said = " ".join(err.split())
    assert code == 0 and "pdq_threshold=4 " in said and "signals=pdq " in said and "{" not in said
    _, (info,), _ = run("info", "--bank", bank, "--json")
    assert (info["dedup"]["pdq_threshold"], info["dedup"]["local_min_inliers"]) == (4, 30)
    assert "overridden" not in info["dedup"]["source"]
    # the fusion block no longer carries a second, unused copy threshold (it said 31)
    assert not {"pdq_threshold", "duplicate_similarity"} & set(info["fusion"])
    res = runner.invoke(app, ["info", "--bank", str(bank)])
    assert res.exit_code == 0
    [line] = [x for x in res.stdout.splitlines() if x.startswith("dedup ")]
    assert "pdq_threshold=4 " in line and "signals=pdq " in line and "pdq_threshold" not in res.stdout.replace(line, "")


def test_readable_output_prints_brackets_in_paths_and_sources_literally(tmp_path, photos):
    """Square brackets in user text are not Rich markup: `[bold]` is printed, `[/]` does not crash."""
    bold = tmp_path / "x[bold]y.png"
    closing = tmp_path / "a[" / "]b.png"  # the path reads …/a[/]b.png
    closing.parent.mkdir()
    shutil.copy(photos / "img0.png", bold)
    shutil.copy(photos / "img1.png", closing)
    bank = tmp_path / "bank[v2]"
    res = runner.invoke(app, ["add", str(bold), str(closing), "--bank", str(bank), "--weights", WEIGHTS,
                              "--source", "feed[red]1", "--campaign", "op[/]x"])
    assert res.exit_code == 0, res.output
    assert f"  {bold}\n" in res.stdout and f"  {closing}\n" in res.stdout
    res = runner.invoke(app, ["query", str(bold), str(closing), "--bank", str(bank)])
    assert res.exit_code == 0, res.output
    assert f"(fake) {bold} (similarity 1.000" in res.stdout and f"(fake) {closing} (similarity 1.000" in res.stdout
    res = runner.invoke(app, ["lookup", "--pdq", Bank.open(bank).value(1, "pdq").hex(), "--bank", str(bank)])
    assert res.exit_code == 0 and "source=feed[red]1  campaign=op[/]x" in res.stdout
    res = runner.invoke(app, ["info", "--bank", str(bank)])
    assert res.exit_code == 0 and f"bank        {bank}  " in res.stdout


def test_usage_errors_exit_2(tmp_path, photos, bank):
    assert run("add", photos, "--bank", bank, "--label", "maybe")[0] == 2
    assert run("query", photos, "--bank", bank, "-k", "0")[0] == 2
    assert run("query", photos, "--bank", bank, "--device", "tpu")[0] == 2
    code, _, err = run("query", photos, "--bank", tmp_path / "none")
    assert code == 2 and "no bank at" in err
    code, _, err = run("add", photos, "--bank", bank, "--weights", "untrained:test_vit:1")
    assert code == 2 and "not comparable" in err
    code, _, err = run("label", "99", "--label", "fake", "--bank", bank)
    assert code == 2 and "no item with id 99" in err
    code, lines, _ = run("query", photos / "img0.png", "--bank", bank, "--max-pixels", "1000", "--json")
    assert code == 1 and "more than the limit of 1,000" in lines[0]["error"]  # the guard the message names exists
    code, _, err = run("add", photos, "--bank", tmp_path / "r", "--ray-workers", "4")  # ignored before
    assert code == 2 and "need --ray" in err and not (tmp_path / "r").exists()
    code, _, err = run("dupes", "--bank", bank, "--signals", "")
    assert code == 2 and "non-empty subset" in " ".join(err.split())
    code, _, err = run("remove", "3", "x7", "--bank", bank)  # the bad value is named; nothing is removed
    assert code == 2 and "not 'x7'" in err and len(Bank.open(bank)) == 5
    assert run("add", tmp_path / "empty-dir-does-not-exist-but-is-file.jpg", "--bank", bank)[0] == 1
    # an add that puts nothing into a new bank leaves no bank pinned to its model behind
    code, _, err = run("add", tmp_path / "typo.jpg", "--bank", tmp_path / "fresh", "--weights", "untrained:test_vit:1")
    assert code == 1 and "no bank was made" in " ".join(err.split())
    code, _, err = run("query", photos, "--bank", tmp_path / "fresh")
    assert code == 2 and "no bank at" in err
    code, _, _ = run("add", photos / "img0.png", "--bank", tmp_path / "fresh", "--weights", WEIGHTS)  # other weights: welcome
    assert code == 0 and len(Bank.open(tmp_path / "fresh")) == 1


def test_a_read_only_bank_is_read_and_refuses_writes_with_a_message(tmp_path, photos, bank, monkeypatch):
    import fakebank.bank as bank_module
    from fakebank.errors import ReadOnlyError, http_status

    copy = tmp_path / "ro"
    shutil.copytree(bank, copy)
    monkeypatch.setattr(bank_module, "folder_writable", lambda path: Path(path) != copy)  # as if another user's
    assert run("query", photos / "img0.png", "--bank", copy)[0] == 0  # reading needs no lock
    for args in (("label", "1", "--label", "real"), ("remove", "1"), ("compact",), ("campaigns",),
                 ("add", photos / "img1.png")):
        code, _, err = run(*args, "--bank", copy)
        assert code == 2 and "is read-only here (the folder is not writable for this user)" in " ".join(err.split()) and "Traceback" not in err, args
    assert http_status(ReadOnlyError("x")) == 403
    monkeypatch.undo()
    for code_, words in ((errno.EROFS, "a read-only mount"), (errno.EACCES, "Permission denied on bank.lock")):
        def refuse(path, code_=code_):
            raise OSError(code_, os.strerror(code_), str(path))
        monkeypatch.setattr(bank_module, "open_lock_file", refuse)  # what a :ro volume or another's lock file does
        code, _, err = run("label", "1", "--label", "real", "--bank", copy)
        assert code == 2 and words in " ".join(err.split()) and "Traceback" not in err, err
    # a --bank that is a file is named as such, for add as for reads
    (tmp_path / "notabank").write_text("x")
    code, _, err = run("add", photos / "img1.png", "--bank", tmp_path / "notabank")
    assert code == 2 and "is a file, not a bank folder" in " ".join(err.split())


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed here")
def test_add_ray_without_ray_says_so_before_loading_a_model_or_making_a_bank(tmp_path, photos):
    code, _, err = run("add", photos, "--bank", tmp_path / "b", "--ray", "local", "--weights", "hf:nobody/none")
    assert code == 2 and "--ray needs Ray Data" in err and not (tmp_path / "b").exists()


def test_calibrate_stores_fusion(tmp_path, photos, bank):
    d = tmp_path / "cal"
    (d / "fake").mkdir(parents=True)
    (d / "real").mkdir()
    for i in range(3):
        Image.open(photos / f"img{i}.png").rotate(3).save(d / "fake" / f"{i}.jpg")
    for i in (3, 4):
        Image.open(photos / f"img{i}.png").rotate(3).save(d / "real" / f"{i}.jpg")
    (d / "fake" / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(500))  # a video is skipped, and said
    code, (r,), err = run("calibrate", d, "--bank", bank, "--json")
    assert r["images"] == 5 and set(r["before"]) == {"accuracy", "average_precision"}
    assert r["skipped_videos"] == [str(d / "fake" / "clip.mp4")] and "only 3 fake and 2 real" in r["warnings"][0]
    # untrained weights: whether this fit has a problem is chance; what is stored follows from it
    _, (after,), _ = run("info", "--bank", bank, "--json")
    assert r["stored"] == (not r["problems"]) and code == (0 if r["stored"] else 1)
    assert after["fusion"]["source"].startswith("calibrate") == r["stored"]
    # fake/ and real/ swapped: the model's logit now counts against fake (or the fit scores worse): not stored
    (d / "fake").rename(d / "tmp")
    (d / "real").rename(d / "fake")
    (d / "tmp").rename(d / "real")
    code, (s,), err = run("calibrate", d, "--bank", bank, "--json")
    assert s["fusion"]["w_model"] <= 0  # the seeded test model's logits follow the folders
    assert code == 1 and not s["stored"] and "are fake/ and real/ swapped" in " ".join(err.split())
    assert run("info", "--bank", bank, "--json")[1][0]["fusion"] == after["fusion"]  # unchanged
    code, (s,), err = run("calibrate", d, "--bank", bank, "--json", "--force")
    assert code == 0 and s["stored"] and "stored anyway" in err
    assert run("info", "--bank", bank, "--json")[1][0]["fusion"]["w_model"] == s["fusion"]["w_model"]


def test_fit_problems_flag_a_fit_that_contradicts_the_model():
    from fakebank.decide import FusionParams, fit_fusion, fit_problems

    rng = np.random.default_rng(0)
    y = np.repeat([1, 0], 40)
    logits = rng.normal(0, 1, 80) + np.where(y == 1, 2.0, -2.0)
    good = fit_fusion(logits, [None] * 80, y, FusionParams())
    m = {"accuracy": 0.9, "average_precision": 0.9}
    assert good.w_model > 0 and fit_problems(good, m, m, 40, 40) == ([], [])
    swapped = fit_fusion(logits, [None] * 80, 1 - y, FusionParams())
    problems, _ = fit_problems(swapped, m, m, 40, 40)
    assert swapped.w_model < 0 and "swapped" in problems[0]
    worse = {"accuracy": 0.8, "average_precision": 0.9}
    assert "worse" in fit_problems(good, m, worse, 40, 40)[0][0]


def test_module_entry_point_and_help():
    res = subprocess.run([sys.executable, "-m", "fakebank", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("add", "query", "info", "label", "remove", "calibrate"):
        assert cmd in res.stdout
    # bracketed notes in help texts are text, not markup that would swallow them
    res = subprocess.run([sys.executable, "-m", "fakebank", "dupes", "--help"], capture_output=True, text=True)
    text = " ".join(res.stdout.split())
    assert "[env FAKEBANK_BANK; default indexes/default]" in text and "[default: the bank's, else Meta's 31]" in text


def test_sigkilled_add_resumes_without_loss(tmp_path, photos):
    """Kill `fakebank add` mid-run; every acknowledged item survives and a rerun finishes the job."""
    folder = tmp_path / "many"
    folder.mkdir()
    base = [Image.open(p) for p in sorted(photos.iterdir())]
    for i in range(150):  # distinct real images: crops of the photos
        img = base[i % len(base)]
        x, y = (i * 7) % 200, (i * 13) % 200
        img.crop((x, y, x + 300, y + 300)).save(folder / f"{i:03d}.jpg", quality=85)
    bank = tmp_path / "bank"
    cmd = [sys.executable, "-m", "fakebank", "add", str(folder), "--bank", str(bank), "--weights", WEIGHTS,
           "--json", "--batch-size", "16"]
    # Kill right after the first commit is acknowledged: the add is then certainly mid-way.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate()
    acknowledged = {json.loads(line)["id"] for line in [first, *rest.splitlines()] if '"added"' in line}
    assert acknowledged, "the add printed nothing before it was killed"
    b = Bank.open(bank)
    assert acknowledged <= set(b.ids.tolist()) and len(b) < 150
    assert len(set(b.table.column("sha256").to_pylist())) == len(b)
    # Ctrl-C (SIGINT; restored in the child, which a shell's background job would inherit as ignored): exit
    # 130 with what was committed and how to resume, and again nothing lost
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=120)
    stderr = " ".join(stderr.split())  # rich wraps at the terminal's width
    assert proc.returncode == 130 and "interrupted:" in stderr and "run the same command again" in stderr, stderr
    acknowledged |= {json.loads(line)["id"] for line in [first, *rest.splitlines()] if '"added"' in line}
    assert acknowledged <= set(Bank.open(bank).ids.tolist())
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    b = Bank.open(bank)
    assert len(b) == 150 and acknowledged <= set(b.ids.tolist())
    assert len(set(b.table.column("sha256").to_pylist())) == 150


def test_a_long_add_lets_other_writers_in_between_its_batches(tmp_path, photos, monkeypatch):
    """`add` holds the bank's lock only while a batch commits: an analyst's relabel between two batches of a
    running add gets the lock at once (it used to wait for the whole run, and fail after the timeout)."""
    import fakebank.api as api
    from fakebank.bank import BankWriter

    monkeypatch.setattr(api, "COMMIT_EVERY_ITEMS", 1)
    path = tmp_path / "bank"
    fb = Fakebank(path, weights=WEIGHTS, device="cpu")
    files = sorted(str(p) for p in photos.iterdir())[:3]
    embedded = list(fb.extractor.extract(files))
    relabelled = []

    def results():
        for k, emb in enumerate(embedded):
            if k == 1:  # the first batch is committed; the add is still running
                with BankWriter(path, create=False, lock_timeout=1.0) as w:
                    first = w.bank.id_of_sha256(embedded[0].sha256)
                    w.set_label([first], "real")
                    relabelled.append(first)
            yield emb

    records = list(fb.add([], results=results()))
    assert [r["status"] for r in records] == ["added"] * 3 and relabelled
    bank = Bank.open(path)
    assert bank.item(relabelled[0])["label"] == "real" and len(bank) == 3
