"""`fakebank add --ray`: extraction on a local Ray (2 CPUs, started by the test) gives the same embeddings
and the same bank as plain `add`, resumes like it, and reads listings; skipped without Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from fakebank.api import Fakebank
from fakebank.cli import app

ray = pytest.importorskip("ray", reason="--ray needs Ray Data: pip install 'fakebank[ray]'")
DATA = Path(__file__).parent / "data"
WEIGHTS = "untrained:test_vit:0"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def cli(*args) -> tuple[int, list[dict]]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]


def test_ray_add_equals_plain_add_and_resumes(tmp_path, local_ray):
    folder = tmp_path / "imgs"
    folder.mkdir()
    base = [Image.open(p).convert("RGB").resize((384, 384)) for p in sorted((DATA / "commfor").glob("*.png"))[:3]]
    for i in range(10):
        x, y = (i * 11) % 80, (i * 23) % 80
        base[i % 3].crop((x, y, x + 300, y + 300)).save(folder / f"{i:02d}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"not an image")
    code, plain = cli("add", folder, "--bank", tmp_path / "plain", "--weights", WEIGHTS, "--json")
    assert code == 1  # the broken file
    listing = tmp_path / "listing.txt"
    listing.write_text("\n".join(str(p) for p in sorted(folder.iterdir())) + "\n" + str(tmp_path / "missing.jpg") + "\n")
    code, rayed = cli("add", listing, "--ray", "local", "--ray-workers", "2", "--bank", tmp_path / "ray",
                      "--weights", WEIGHTS, "--batch-size", "4", "--json")
    assert code == 1
    strip = lambda rs: sorted(({k: v for k, v in r.items() if k not in ("p_fake", "error")} for r in rs),  # noqa: E731
                              key=lambda r: r["path"])
    missing = [r for r in rayed if r["path"].endswith("missing.jpg")]
    assert len(missing) == 1 and missing[0]["status"] == "error" and "cannot read" in missing[0]["error"]
    assert strip([r for r in rayed if r not in missing]) == strip(plain)  # same ids for the same files
    a, b = Fakebank(tmp_path / "plain").open_bank(), Fakebank(tmp_path / "ray").open_bank()
    assert a.ids.tolist() == b.ids.tolist() and len(a) == 10
    for i in a.ids.tolist():
        assert a.value(i, "sha256") == b.value(i, "sha256") and a.value(i, "pdq") == b.value(i, "pdq")
        assert float(a.vector("cls", i) @ b.vector("cls", i)) >= 0.9999
        assert a.value(i, "local") == b.value(i, "local") and a.value(i, "thumbnail") == b.value(i, "thumbnail")
    code, again = cli("add", folder, "--ray", "local", "--bank", tmp_path / "ray", "--json")
    assert [r["status"] for r in again if r["status"] != "error"] == ["duplicate"] * 10
    assert len(Fakebank(tmp_path / "ray").open_bank()) == 10


def test_ray_add_writes_through_the_milvus_store(tmp_path, local_ray):
    pytest.importorskip("milvus_lite", reason="the Milvus store needs milvus-lite: pip install 'fakebank[milvus]'")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(sorted((DATA / "commfor").glob("*.png"))[:4]):
        Image.open(p).convert("RGB").resize((300, 300)).save(folder / f"{i}.png")
    spec = f"milvus-lite:{tmp_path / 'bank.db'}"
    code, rayed = cli("--store", spec, "add", folder, "--ray", "local", "--weights", WEIGHTS, "--json")
    assert code == 0 and [r["status"] for r in rayed] == ["added"] * 4
    code, plain = cli("add", folder, "--bank", tmp_path / "plain", "--weights", WEIGHTS, "--json")
    a, b = Fakebank(tmp_path / "plain").open_bank(), Fakebank(store=spec).open_bank()
    assert a.ids.tolist() == b.ids.tolist()
    for i in a.ids.tolist():
        assert a.value(i, "sha256") == b.value(i, "sha256") and float(a.vector("cls", i) @ b.vector("cls", i)) >= 0.9999
    code, again = cli("--store", spec, "add", folder, "--ray", "local", "--json")  # the driver skips: Lite is one process
    assert code == 0 and [r["status"] for r in again] == ["duplicate"] * 4
