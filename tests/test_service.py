"""The HTTP service as a real process on 127.0.0.1: contract, auth, bad input, kill -9, concurrency."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fakebank.api import Fakebank
from fakebank.bank import Bank

DATA = Path(__file__).parent / "data"
WEIGHTS = "untrained:test_vit:0"
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`fakebank serve` in a subprocess; stopped by PID (only ours)."""

    def __init__(self, bank: Path, *extra: str, key: str | None = KEY) -> None:
        self.bank, self.extra, self.key = bank, extra, key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "Server":
        env = {**os.environ, "FAKEBANK_API_KEY": self.key or ""}
        # a file, not a pipe: nobody drains a pipe while the test runs, and a full one would stall the server
        self.bank.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = self.bank.parent / f"server-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fakebank", "serve", "--bank", str(self.bank), "--weights", WEIGHTS,
             "--port", str(self.port), "--create", *self.extra],
            env=env, stdout=subprocess.DEVNULL, stderr=self._log, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not come up")

    def log(self) -> str:
        """The server's stderr so far (its tracebacks), for assertion messages."""
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def distinct_images(n: int, size: int = 200, seed: int = 0) -> list[bytes]:
    """n distinct real-photo JPEGs: crops of the vendored images."""
    photos = [Image.open(p).convert("RGB").resize((512, 512)) for p in sorted((DATA / "commfor").glob("*.png"))]
    out = []
    for i in range(n):
        j = i + seed * 1000
        x, y = (j * 17) % 300, (j * 29) % 300
        out.append(png_bytes(photos[j % len(photos)].crop((x, y, x + size, y + size)), format="JPEG", quality=88))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("svc") / "bank", "--max-upload-mb", "2").start()
    yield srv
    srv.stop()


def post(srv: Server, route: str, files: list[tuple[str, bytes]], data: dict | None = None, auth=AUTH):
    return httpx.post(srv.url + route, files=[("file", f) for f in files], data=data or {}, headers=auth,
                      timeout=60)


def test_auth_is_required_except_healthz(server):
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/v1/info").status_code == 401
    r = httpx.get(server.url + "/v1/info", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert httpx.get(server.url + "/v1/info", headers=AUTH).status_code == 200
    assert post(server, "/v1/query", [("a.jpg", distinct_images(1)[0])], auth={}).status_code == 401


def test_an_upload_with_a_computed_style_campaign_is_refused_before_any_work(server):
    before = httpx.get(server.url + "/v1/info", headers=AUTH).json()["items"]
    r = post(server, "/v1/items", [("a.jpg", distinct_images(1)[0])], data={"campaign": "C0001"})
    assert r.status_code == 400 and "form of a computed campaign id" in r.json()["error"]
    assert httpx.get(server.url + "/v1/info", headers=AUTH).json()["items"] == before  # nothing went in


def test_web_ui_errors_are_pages_and_api_errors_json(server):
    with httpx.Client(base_url=server.url, timeout=30) as ui:
        assert ui.get("/ui/bank").status_code == 303  # signed out: to the sign-in form, still a redirect
        ui.post("/ui/signin", data={"key": KEY})
        for path, status, words in (("/ui/items/abc", 422, "bad request"), ("/ui/nothing-here", 404, "no page at")):
            r = ui.get(path)
            assert r.status_code == status and r.headers["content-type"].startswith("text/html"), path
            assert words in r.text and "Back to the bank" in r.text
        r = ui.delete("/ui/query")  # the page keeps what HTTP requires of the answer
        assert r.status_code == 405 and r.headers["content-type"].startswith("text/html")
        assert "GET" in r.headers["allow"]
    r = httpx.get(server.url + "/v1/items/abc", headers=AUTH)
    assert r.status_code == 422 and "bad request" in r.json()["error"]


def test_add_then_query_equals_the_in_process_api(server, tmp_path):
    originals = [DATA / "commfor" / "00000845.png", DATA / "pdq" / "reg-test-input" / "dih" / "bridge-1-original.jpg"]
    r = post(server, "/v1/items", [(p.name, p.read_bytes()) for p in originals],
             {"label": "fake", "source": "svc-test"})
    assert r.status_code == 200
    added = r.json()["results"]
    assert [a["status"] for a in added] == ["added", "added"]
    assert set(added[0]) == {"path", "id", "sha256", "status", "p_fake", "label", "error"}
    assert added[0]["path"] == "00000845.png"  # the client's name, never a server path

    copy = tmp_path / "copy.jpg"
    Image.open(originals[0]).convert("RGB").resize((400, 400)).save(copy, quality=70)
    r = post(server, "/v1/query", [("copy.jpg", copy.read_bytes())], {"k": "5"})
    assert r.status_code == 200
    (http_rec,) = r.json()["results"]
    assert http_rec["reason"] == "near_duplicate" and http_rec["match"]["id"] == added[0]["id"]

    (local,) = Fakebank(server.bank).query([str(copy)], k=5)  # the same question, in process
    for key in ("sha256", "verdict", "reason", "model"):
        assert local[key] == http_rec[key], key
    for key in ("score", "p_model", "p_knn"):
        assert local[key] == pytest.approx(http_rec[key], abs=1e-4), key
    assert local["match"]["id"] == http_rec["match"]["id"]
    assert [n["id"] for n in local["neighbors"]] == [n["id"] for n in http_rec["neighbors"]]


def test_dupes_and_campaigns_endpoints(server, tmp_path):
    original = DATA / "commfor" / "00000989.png"
    post(server, "/v1/items", [(original.name, original.read_bytes())], {"label": "fake"})
    copy = Image.open(original).convert("RGB").resize((500, 500))
    r = post(server, "/v1/dupes", [("copy.jpg", png_bytes(copy, format="JPEG", quality=75))])
    assert r.status_code == 200, r.text
    (rec,) = r.json()["results"]
    assert rec["path"] == "copy.jpg" and rec["duplicates"]
    assert set(rec["duplicates"][0]) == {"id", "path", "similarity", "pdq_distance", "signal", "inliers",
                                         "spatial_agreement"}
    assert rec["duplicates"][0]["path"] == "00000989.png"
    r = httpx.get(server.url + "/v1/campaigns?recompute=true", headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    for c in r.json()["results"]:
        assert set(c) >= {"campaign", "size", "members", "exemplar", "first_seen", "last_seen", "sources",
                          "mean_p_fake"}


def test_item_endpoints(server):
    data = distinct_images(1, seed=5)[0]
    r = post(server, "/v1/items", [("item.jpg", data), ("again.jpg", data)])  # the same bytes twice
    assert r.status_code == 200, r.text
    rec, again = r.json()["results"]
    assert (rec["status"], again["status"]) == ("added", "duplicate") and again["id"] == rec["id"] is not None
    url = f"{server.url}/v1/items/{rec['id']}"
    got = httpx.get(url, headers=AUTH).json()
    assert got["sha256"] == rec["sha256"] and got["label"] == "fake" and got["path"] == "item.jpg"
    r = httpx.patch(url, json={"label": "real"}, headers=AUTH)
    assert r.json() == {"id": rec["id"], "label": "real", "status": "updated"}
    assert httpx.get(url, headers=AUTH).json()["label"] == "real"
    assert httpx.patch(url, json={"label": "maybe"}, headers=AUTH).status_code == 400
    r = httpx.patch(url, json={"label": "real" * 100_000}, headers=AUTH)  # a huge value is not echoed whole
    assert r.status_code == 400 and len(r.json()["error"]) < 200
    # the analyst campaign of an item already in the bank: set, kept by a label-only patch, cleared
    r = httpx.patch(url, json={"campaign": "Op X"}, headers=AUTH)
    assert r.json() == {"id": rec["id"], "label": "real", "campaign": "Op X", "status": "updated"}
    assert httpx.patch(url, json={"label": "fake"}, headers=AUTH).json() == {"id": rec["id"], "label": "fake", "status": "updated"}
    got = httpx.get(url, headers=AUTH).json()
    assert (got["label"], got["campaign"]) == ("fake", "Op X")
    assert httpx.patch(url, json={"campaign": None}, headers=AUTH).json()["campaign"] is None
    assert httpx.get(url, headers=AUTH).json()["campaign"] is None
    r = httpx.patch(url, json={"label": "real", "path": "/etc/x"}, headers=AUTH)  # not editable: refused
    assert r.status_code == 422 and "path" in r.json()["error"]
    r = httpx.patch(url, json={}, headers=AUTH)
    assert r.status_code == 400 and "nothing to change" in r.json()["error"]
    assert httpx.get(url, headers=AUTH).json()["label"] == "fake"
    assert httpx.delete(url, headers=AUTH).json() == {"id": rec["id"], "status": "removed"}
    assert httpx.get(url, headers=AUTH).status_code == 404
    assert httpx.delete(url, headers=AUTH).status_code == 404


def test_metrics_and_docs(server):
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert "fakebank_requests_total{" in text and "fakebank_bank_items" in text
    assert 'fakebank_model_info{name="untrained:test_vit"' in text
    assert httpx.get(server.url + "/docs").status_code == 200
    assert "/v1/query" in httpx.get(server.url + "/openapi.json").json()["paths"]


def _bad_inputs() -> dict[str, tuple[bytes, int]]:
    """name → (bytes, expected status): 200 = a correct result, otherwise the 4xx that must come back."""
    photo = Image.open(DATA / "commfor" / "00000274.png").convert("RGB").resize((256, 256))
    jpeg = png_bytes(photo, format="JPEG", quality=90)
    bomb_png = png_bytes(Image.new("L", (9000, 9000)), optimize=True)  # 81 MP of zeros in a few KB
    # A PNG header declaring 100000×100000 pixels, with no pixel data at all.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    huge_header = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    frames = [photo.rotate(a) for a in (0, 10, 20)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    exif = Image.Exif()
    exif[0x0112] = 6
    pal = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    sixteen = Image.fromarray((__import__("numpy").asarray(photo.convert("L"), dtype="uint16") * 256))
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], 422),
        "empty.jpg": (b"", 422),
        "text.jpg": (b"this is not an image\n" * 20, 422),
        "html.png": (b"<html><body>hi</body></html>", 422),
        "random.bin": (os.urandom(5000), 422),
        "bomb.png": (bomb_png, 413),
        "huge-header.png": (huge_header, 413),
        "cmyk.jpg": (png_bytes(photo.convert("CMYK"), format="JPEG"), 200),
        "sixteen-bit.png": (png_bytes(sixteen), 200),
        "palette-transparent.png": (png_bytes(pal), 200),
        "animated.gif": (gif.getvalue(), 200),
        "one-by-10000.png": (png_bytes(Image.new("RGB", (1, 10000), (200, 10, 10))), 200),
        "exif-rotated.jpg": (png_bytes(photo, format="JPEG", exif=exif.tobytes()), 200),
        "la.png": (png_bytes(photo.convert("LA")), 200),
        "one-bit.png": (png_bytes(photo.convert("1")), 200),
        "tiny-1x1.png": (png_bytes(Image.new("RGB", (1, 1))), 200),
        "webp.webp": (png_bytes(photo, format="WEBP"), 200),
        "jpeg-named.png": (jpeg, 200),
    }


def test_bad_input_corpus_never_takes_the_server_down(server):
    corpus = _bad_inputs()
    assert len(corpus) >= 15
    for name, (data, expected) in corpus.items():
        r = post(server, "/v1/query", [(name, data)])
        assert r.status_code == expected, (name, r.status_code, r.text)
        if expected == 200:
            (rec,) = r.json()["results"]
            assert rec["verdict"] in ("fake", "real", "uncertain") and rec["sha256"]
        else:
            assert name in r.json()["error"]
        assert httpx.get(server.url + "/healthz").status_code == 200
    # a good file beside a bad one: 200, with a per-file error record
    r = post(server, "/v1/query", [("ok.jpg", distinct_images(1)[0]), ("empty.jpg", b"")])
    assert r.status_code == 200
    good, bad = r.json()["results"]
    assert good["verdict"] and bad["error"].startswith("empty.jpg")


def test_upload_bounds(server):
    r = post(server, "/v1/query", [("big.jpg", b"\xff" * (2 * 1024 * 1024 + 10))])
    assert r.status_code == 413 and "upload limit" in r.json()["error"]
    r = post(server, "/v1/query", [])
    assert r.status_code == 422


def test_refuses_a_public_address_without_a_key(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fakebank", "serve", "--host", "0.0.0.0", "--bank",
                          str(tmp_path / "b"), "--weights", WEIGHTS],
                         env={**os.environ, "FAKEBANK_API_KEY": ""}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "FAKEBANK_API_KEY" in res.stderr


def test_refuses_a_missing_bank_and_a_taken_port_before_saying_it_serves(tmp_path):
    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fakebank", "serve", "--weights", WEIGHTS, *args],
                              capture_output=True, text=True, timeout=120)

    res = serve("--bank", str(tmp_path / "typo"), "--port", str(free_port()))
    assert res.returncode == 2 and "no bank at" in res.stderr and "--create" in res.stderr
    assert not (tmp_path / "typo").exists() and "serving" not in res.stderr
    with socket.socket() as holder:  # another process's port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        res = serve("--bank", str(tmp_path / "b"), "--create", "--port", str(holder.getsockname()[1]))
    assert res.returncode == 2 and "pick another --port" in " ".join(res.stderr.split())
    assert "serving" not in res.stderr and "Traceback" not in res.stderr


def test_sigkill_during_uploads_loses_no_acknowledged_item(tmp_path):
    bank = tmp_path / "bank"
    acknowledged: dict[int, str] = {}
    for trial in range(3):
        srv = Server(bank).start()
        images = distinct_images(40, seed=trial + 1)
        lock = threading.Lock()

        def upload(chunk: list[bytes]) -> None:
            for i, data in enumerate(chunk):
                try:
                    r = post(srv, "/v1/items", [(f"t{trial}-{i}.jpg", data)])
                except httpx.HTTPError:
                    return  # the server died under us: not acknowledged
                if r.status_code == 200:
                    rec = r.json()["results"][0]
                    if rec["status"] == "added":
                        with lock:
                            acknowledged[rec["id"]] = rec["sha256"]

        threads = [threading.Thread(target=upload, args=(images[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5 + trial)
        srv.kill()
        for t in threads:
            t.join(60)
        srv = Server(bank).start()  # restart: everything acknowledged must be there, whole
        for item_id, sha in acknowledged.items():
            r = httpx.get(f"{srv.url}/v1/items/{item_id}", headers=AUTH)
            assert r.status_code == 200 and r.json()["sha256"] == sha
        srv.stop()
    b = Bank.open(bank)
    assert acknowledged and set(acknowledged) <= set(b.ids.tolist())
    assert len(b) == len(set(b.table.column("sha256").to_pylist()))


def test_concurrent_writers_and_readers(tmp_path):
    srv = Server(tmp_path / "bank").start()
    try:
        stop = time.monotonic() + 8
        errors, added = [], []
        queries = distinct_images(3, seed=50)

        def writer(seed: int) -> None:
            for i, data in enumerate(distinct_images(30, seed=seed)):
                if time.monotonic() > stop:
                    return
                r = post(srv, "/v1/items", [(f"w{seed}-{i}.jpg", data)])
                if r.status_code != 200:
                    errors.append(r.text)
                else:
                    added.extend(x["id"] for x in r.json()["results"] if x["status"] == "added")

        def reader() -> None:
            while time.monotonic() < stop:
                r = post(srv, "/v1/query", [("q.jpg", queries[0])])
                if r.status_code != 200:
                    errors.append(r.text)
                info = httpx.get(srv.url + "/v1/info", headers=AUTH)
                if info.status_code != 200 or info.json()["items"] != sum(info.json()["labels"].values()):
                    errors.append(info.text)

        threads = [threading.Thread(target=writer, args=(s,)) for s in (10, 11)]
        threads += [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, (errors[:3], srv.log())
        assert added and httpx.get(srv.url + "/v1/info", headers=AUTH).json()["items"] == len(set(added))
    finally:
        srv.stop()


def test_micro_batcher_groups_concurrent_requests_into_one_forward_pass():
    from fakebank.embed import Extractor, Source
    from fakebank.model import load_model
    from fakebank.service import MicroBatcher

    ex = Extractor(load_model(WEIGHTS), precision="fp32")
    decoded = [ex.decode(Source(f"q{i}.jpg", data)) for i, data in enumerate(distinct_images(6, seed=9))]
    batcher = MicroBatcher(ex, max_batch=8, max_wait_s=0.5)
    try:
        batcher.decoding = 1  # another request is on its way: the first one waits for company
        futures = [batcher.submit(d) for d in decoded]
        batcher.decoding = 0
        results = [f.result(timeout=60) for f in futures]
    finally:
        batcher.close()
    assert batcher.batches == 1 and batcher.images == 6
    alone = ex.embed_decoded(decoded)  # same numbers as embedding them together outside the service
    for got, want in zip(results, alone):
        assert got.path == want.path and abs(got.logit - want.logit) < 1e-4
        assert float(got.cls @ want.cls) > 0.9999


def test_http_status_comes_from_the_error_kind_not_its_wording(tmp_path):
    """A missing item is 404 because the bank raises NotFoundError; a usage error that merely quotes an id
    stays 400."""
    from fakebank.bank import Bank, BankWriter
    from fakebank.errors import NotFoundError, UsageError, http_status

    from bankutil import MODEL_INFO, make_item

    with BankWriter(tmp_path / "b", model_info=MODEL_INFO, embedding_dim=16) as w:
        w.add([make_item(1)])
    with pytest.raises(NotFoundError) as e:
        Bank.open(tmp_path / "b").value(99, "path")
    assert http_status(e.value) == 404
    assert http_status(UsageError("--id: no item with id 'abc' can exist; ids are integers")) == 400
