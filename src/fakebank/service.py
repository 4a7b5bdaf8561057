"""The HTTP service (DESIGN §3): FastAPI over the api facade, with cross-request micro-batching.

Last stage beside the CLI (api → **service**); it never imports cli. JSON bodies reuse the api's record
builders, so field names are the CLI's. Concurrent queries are decoded in threads, then batched into
one forward pass by `MicroBatcher`; reads use the api's bank snapshot (never blocked by a writer);
writes are serialised and answered only once committed (fsynced), so an acknowledged item survives
a kill -9.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
import ipaddress
import logging
import os
import queue
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from fakebank.api import DEFAULT_K, KEEP, Fakebank
from fakebank.bank import check_campaign_name, check_label, check_model, computed_campaign
from fakebank.embed import Decoded, Embedding, Extractor, Source
from fakebank.errors import BankError, FakebankError, InputError, UsageError, http_status
from fakebank.hma import HmaError, hma_error_response, hma_router
from fakebank.pdq import PDQ_MATCH_THRESHOLD
from fakebank.thumbnails import thumbnail_mime
from fakebank.ui import ui_router
from fakebank.ui.session import bearer_ok
from fakebank.video import SNIFF_BYTES, is_video

log = logging.getLogger("fakebank.service")
API_KEY_ENV = "FAKEBANK_API_KEY"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per file
DEFAULT_MAX_VIDEO_UPLOAD_BYTES = 200 * 1024 * 1024  # per video file (`--max-upload-mb-video`)
DEFAULT_MAX_PIXELS = 50_000_000  # decoded pixels per image
MAX_FILES_PER_REQUEST = 32
MAX_LOOKUP_HASHES = 10_000
MAX_WAIT_S = 0.005  # how long the first request of a batch waits for company
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class ServiceConfig:
    api_key: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 8
    max_wait_s: float = MAX_WAIT_S
    max_video_upload_bytes: int = DEFAULT_MAX_VIDEO_UPLOAD_BYTES


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond loopback without an API key."""
    if not api_key and not is_loopback(host):
        raise UsageError(
            f"refusing to listen on {host} without an API key: set {API_KEY_ENV} (clients then send "
            "'Authorization: Bearer <key>'), or listen on 127.0.0.1"
        )


def check_port(host: str, port: int) -> None:
    """Refuse, before the model loads and the banner says 'serving', a port another process holds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port, or stop "
                             "what holds it") from None


class MicroBatcher:
    """Collects decoded images from concurrent requests into one forward pass (≤ max_batch, ≤ max_wait)."""

    def __init__(self, extractor: Extractor, max_batch: int, max_wait_s: float) -> None:
        self.extractor = extractor
        self.decoding = 0  # requests being decoded now: only they are worth waiting for
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[tuple[Decoded, Future] | None] = queue.Queue()
        self.batches = 0
        self.images = 0
        self._thread = threading.Thread(target=self._run, name="fakebank-batcher", daemon=True)
        self._thread.start()

    def submit(self, decoded: Decoded) -> Future:
        fut: Future = Future()
        self._queue.put((decoded, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._queue.empty() and self.decoding == 0:
                    break  # nobody else is on the way: a lone request must not pay the wait
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                embs = self.extractor.embed_decoded([d for d, _ in batch])
            except Exception as e:  # noqa: BLE001 - a failed forward fails its requests, not the thread
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            self.batches += 1
            self.images += len(batch)
            for (_, fut), emb in zip(batch, embs):
                fut.set_result(emb)


class Metrics:
    """Prometheus text exposition of request counts and latencies (no extra dependency)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            i = next((j for j, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))
            self.buckets[route][i] += 1
            self.sums[route] += seconds

    def render(self, extra: list[str]) -> str:
        lines = ["# HELP fakebank_requests_total HTTP requests by method, route and status.",
                 "# TYPE fakebank_requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'fakebank_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
            lines += ["# HELP fakebank_request_seconds Request latency.", "# TYPE fakebank_request_seconds histogram"]
            for route, counts in sorted(self.buckets.items()):
                cum = 0
                for b, c in zip((*LATENCY_BUCKETS, "+Inf"), counts):
                    cum += c
                    lines.append(f'fakebank_request_seconds_bucket{{route="{route}",le="{b}"}} {cum}')
                lines.append(f'fakebank_request_seconds_sum{{route="{route}"}} {self.sums[route]:.6f}')
                lines.append(f'fakebank_request_seconds_count{{route="{route}"}} {cum}')
        return "\n".join(lines + extra) + "\n"


class LookupBody(BaseModel):
    pdq: list[str]
    max_distance: int = PDQ_MATCH_THRESHOLD


class LabelPatch(BaseModel):
    """An item's editable fields over HTTP: its label and its analyst campaign ("" or null takes it out of
    one); anything else is refused (422), not silently ignored (computed campaigns come from `campaigns`)."""

    model_config = ConfigDict(extra="forbid")
    label: str | None = None
    campaign: str | None = None


def create_app(fb: Fakebank, config: ServiceConfig | None = None) -> FastAPI:
    """The FastAPI app over one Fakebank (model loaded once, at start-up)."""
    config = config or ServiceConfig()
    extractor = fb.extractor
    extractor.max_pixels = config.max_pixels
    batcher = MicroBatcher(extractor, config.max_batch, config.max_wait_s)
    metrics = Metrics()
    # Room for a full request of images and one video beside them.
    max_request_bytes = config.max_upload_bytes * MAX_FILES_PER_REQUEST + config.max_video_upload_bytes + (1 << 20)

    if not fb.store.exists():
        with fb.writer():  # an empty bank, so that queries work before the first upload
            pass

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(
        title="fakebank",
        version="1",
        description="Known-fake image bank: kNN-augmented verdicts, near-duplicates, campaigns. "
        "Send 'Authorization: Bearer <key>' when the server has an API key.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_request_bytes:
            response = JSONResponse({"error": f"request body of {int(length):,} bytes is over the limit of "
                                     f"{max_request_bytes:,}; send fewer or smaller files"}, status_code=413)
        else:
            try:
                response = await call_next(request)
            except Exception:  # noqa: BLE001 - last line of defence: a bug must not kill the server
                log.exception("unhandled error in %s %s", request.method, request.url.path)
                response = JSONResponse({"error": "internal error; see the server log"}, status_code=500)
        route = request.scope.get("route")
        metrics.observe(request.method, getattr(route, "path", "unmatched"), response.status_code,
                        time.perf_counter() - start)
        return response

    def is_hma(request: Request) -> bool:  # HMA's routes answer errors in HMA's shape, {"message": ...}
        return request.url.path.startswith("/m/")

    def error_json(request: Request, message, status: int, headers=None) -> JSONResponse:
        return JSONResponse({"message" if is_hma(request) else "error": message}, status_code=status, headers=headers)

    @app.exception_handler(FakebankError)
    async def _fakebank_error(request: Request, e: FakebankError):
        return error_json(request, str(e), http_status(e))

    app.add_exception_handler(HmaError, hma_error_response)

    def is_page(request: Request) -> bool:
        return request.url.path == "/ui" or request.url.path.startswith("/ui/") and \
            not request.url.path.startswith("/ui/static/")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        if is_page(request) and e.status_code >= 400 and e.status_code != 401:  # redirects stay redirects
            return ui.error_page(request, UsageError(str(e.detail) if e.status_code != 404 else
                                                     f"no page at {request.url.path}"), e.status_code, e.headers)
        return error_json(request, e.detail, e.status_code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        if is_page(request):
            return ui.error_page(request, UsageError(f"bad request: {problems}"), 422)
        return error_json(request, f"bad request: {problems}", 422)

    def require_key(request: Request) -> None:
        if not bearer_ok(request, config.api_key):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})

    Auth = Depends(require_key)

    async def read_uploads(files: list[UploadFile]) -> list[tuple[str, bytes]]:
        if not files:
            raise HTTPException(422, "no image uploaded: send multipart field 'file' (one or more)")
        if len(files) > MAX_FILES_PER_REQUEST:
            raise HTTPException(413, f"{len(files)} files in one request; the limit is {MAX_FILES_PER_REQUEST}")
        out = []
        for f in files:
            name = os.path.basename(f.filename or "upload")  # never echo a client's directory structure
            head = await f.read(SNIFF_BYTES)
            video = is_video(name, head)
            limit = config.max_video_upload_bytes if video else config.max_upload_bytes
            data = head + await f.read(limit + 1 - len(head))
            if len(data) > limit:
                raise HTTPException(413, f"{name}: over the {'video ' if video else ''}upload limit of {limit:,} bytes"
                                    + (" (--max-upload-mb-video)" if video else ""))
            out.append((name, data))
        return out

    def embed_frames(batch: list[Decoded]) -> list[Embedding]:
        """A video's frames through the shared micro-batcher (one forward pass with concurrent queries)."""
        return [f.result() for f in [batcher.submit(d) for d in batch]]

    def video_record(kind: str, bank, name: str, data: bytes, k: int = DEFAULT_K, **add) -> dict:
        """The query / dupes / add record of one uploaded video (run in a worker thread)."""
        src = Source(name, data)
        try:
            if kind == "add":
                return fb.add_video(src, **add)
            vemb = fb.embed_video(src, embed=embed_frames)
        except FakebankError as e:
            return fb.query_error_record(name, str(e)) if kind == "query" else \
                {"path": name, "duplicates": [], "error": str(e)}
        return fb.query_video_embedded(bank, vemb, k) if kind == "query" else fb.dupes_video_embedded(bank, vemb)

    def split(uploads: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], list[int]]:
        """(the image uploads, the positions of the video uploads)."""
        videos = [i for i, (name, data) in enumerate(uploads) if is_video(name, data[:SNIFF_BYTES])]
        return [u for i, u in enumerate(uploads) if i not in videos], videos

    async def with_videos(uploads, videos: list[int], image_records: list[dict], one) -> list[dict]:
        """Image records and video records (`one(name, data)` in a thread) back in upload order."""
        images = iter(image_records)
        return [await run_in_threadpool(one, *uploads[i]) if i in videos else next(images) for i in range(len(uploads))]

    async def embed_uploads(uploads: list[tuple[str, bytes]], *, mirror: bool = True,
                            thumbnail: bool | None = None) -> list[Embedding | FakebankError]:
        """Decode in threads, then embed through the shared batcher; per-file errors are kept in place.
        `mirror=False` (uploads to the bank) skips the mirror image's keypoints, which only queries use;
        `thumbnail` (default: for uploads to the bank) makes the upload's thumbnail from the same decode."""
        thumbnail = not mirror if thumbnail is None else thumbnail
        async def one(name: str, data: bytes) -> Embedding | FakebankError:
            batcher.decoding += 1  # only touched on the event loop thread
            try:
                decoded = await run_in_threadpool(extractor.decode, Source(name, data), mirror=mirror,
                                                  thumbnail=thumbnail)
                fut = batcher.submit(decoded)  # queued before it stops counting as "on the way"
            except InputError as e:
                return e
            finally:
                batcher.decoding -= 1
            return await asyncio.wrap_future(fut)

        return await asyncio.gather(*(one(n, d) for n, d in uploads))

    async def query_images(uploads: list[tuple[str, bytes]], k: int, explain: bool, provenance: bool, *,
                           thumbnails: bool = False) -> tuple:
        """(bank snapshot, embeddings or errors, `query` records) of image uploads: one snapshot, the
        shared batcher."""
        bank = await run_in_threadpool(fb.snapshot)
        check_model(bank.manifest, fb.model_info, fb.store.location)
        results = await embed_uploads(uploads, thumbnail=thumbnails)
        records = [fb.query_error_record(name, str(r)) if isinstance(r, FakebankError)
                   else await run_in_threadpool(query_one, bank, r, k, data, explain, provenance)
                   for (name, data), r in zip(uploads, results)]
        return bank, results, records

    def all_failed(results: list) -> None:
        errors = [r for r in results if isinstance(r, FakebankError)]
        if errors and len(errors) == len(results):
            raise errors[0] if len(errors) == 1 else InputError("; ".join(str(e) for e in errors))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/query", dependencies=[Auth])
    async def query(file: Annotated[list[UploadFile], File(description="image(s)")],
                    k: Annotated[int, Form(ge=1, le=100)] = DEFAULT_K,
                    explain: Annotated[bool, Query(description="add a patch heat map (grid + base64 PNG overlay); "
                                                   "one extra forward + backward pass per image")] = False,
                    provenance: Annotated[bool, Query(description="read C2PA/IPTC/generator metadata")] = False,
                    ) -> dict:
        uploads = await read_uploads(file)
        uploads, videos = split(everything := uploads)
        bank, results, records = await query_images(uploads, k, explain, provenance)
        if not videos:
            all_failed(results)
        records = await with_videos(everything, videos, records, lambda n, d: video_record("query", bank, n, d, k))
        if videos and all(r.get("error") for r in records):
            raise InputError("; ".join(r["error"] for r in records))
        return {"results": records}

    def query_one(bank, emb: Embedding, k: int, data: bytes, explain: bool, provenance: bool) -> dict:
        """A query record, with the evidence the request asked for (issue 14: explain, provenance)."""
        if not (explain or provenance):
            return fb.query_embedded(bank, emb, k)
        return fb.query_embedded(bank, emb, k, data=data, explain=explain, provenance=provenance, png=explain)

    @app.post("/v1/items", dependencies=[Auth])
    async def add_items(file: Annotated[list[UploadFile], File(description="image(s)")],
                        label: Annotated[str, Form()] = "fake",
                        source: Annotated[str | None, Form()] = None,
                        campaign: Annotated[str | None, Form()] = None,
                        note: Annotated[str | None, Form()] = None) -> dict:
        check_label(label)
        campaign = check_campaign_name(campaign)  # before any upload is embedded
        uploads, videos = split(everything := await read_uploads(file))
        results = await embed_uploads(uploads, mirror=False)
        if not videos:
            all_failed(results)
        embs = [r for r in results if isinstance(r, Embedding)]
        added = iter(await run_in_threadpool(
            fb.add_embedded, embs, label=label, source=source, campaign=campaign, note=note) if embs else [])
        records = [fb._add_record(name, None, None, "error", None, None, str(r)) if isinstance(r, FakebankError)
                   else next(added) for (name, _), r in zip(uploads, results)]
        records = await with_videos(everything, videos, records, lambda n, d: video_record(
            "add", None, n, d, label=label, source=source, campaign=campaign, note=note))
        if videos and all(r.get("error") for r in records):
            raise InputError("; ".join(r["error"] for r in records))
        return {"results": records}

    @app.post("/v1/dupes", dependencies=[Auth])
    async def dupes(file: Annotated[list[UploadFile] | None, File(description="image(s); none: groups in the bank")] = None
                    ) -> dict:
        if not file:
            return {"results": await run_in_threadpool(lambda: list(fb.dupe_groups()))}
        bank = await run_in_threadpool(fb.snapshot)
        check_model(bank.manifest, fb.model_info, fb.store.location)
        uploads, videos = split(everything := await read_uploads(file))
        results = await embed_uploads(uploads)
        if not videos:
            all_failed(results)
        records = [{"path": name, "duplicates": [], "error": str(r)} if isinstance(r, FakebankError)
                   else await run_in_threadpool(fb.dupes_embedded, bank, r)
                   for (name, _), r in zip(uploads, results)]
        records = await with_videos(everything, videos, records, lambda n, d: video_record("dupes", bank, n, d))
        if videos and all(r.get("error") for r in records):
            raise InputError("; ".join(r["error"] for r in records))
        return {"results": records}

    @app.get("/v1/campaigns", dependencies=[Auth])
    def campaigns(min_size: Annotated[int, Query(ge=1)] = 2, recompute: bool = False) -> dict:
        """Stored campaigns (recompute=true clusters the bank again first, keeping campaign ids)."""
        return {"results": fb.campaigns(min_size=min_size, recompute=recompute, save=recompute)}

    @app.get("/v1/items/{item_id}", dependencies=[Auth])
    def get_item(item_id: int) -> dict:
        bank = fb.snapshot()
        if not bank.has(item_id):
            raise HTTPException(404, f"no item with id {item_id}")
        return bank.item(item_id) | {"computed_campaign": computed_campaign(bank, item_id)}

    @app.patch("/v1/items/{item_id}", dependencies=[Auth])
    def patch_item(item_id: int, body: LabelPatch) -> dict:
        campaign = body.campaign if "campaign" in body.model_fields_set else KEEP
        with fb._write_lock:
            return fb.label([item_id], body.label, campaign=campaign)[0]

    @app.delete("/v1/items/{item_id}", dependencies=[Auth])
    def delete_item(item_id: int) -> dict:
        with fb._write_lock:
            return fb.remove([item_id])[0]

    @app.post("/v1/lookup", dependencies=[Auth])
    def lookup(body: LookupBody) -> dict:
        """Per PDQ hash, the bank's items within max_distance bits (hash-only items included)."""
        if len(body.pdq) > MAX_LOOKUP_HASHES:
            raise HTTPException(413, f"{len(body.pdq)} hashes in one request; the limit is {MAX_LOOKUP_HASHES}")
        return {"results": fb.lookup(body.pdq, max_distance=body.max_distance)}

    app.include_router(hma_router(fb, require_key, config.max_upload_bytes, config.max_video_upload_bytes))

    @app.get("/v1/info", dependencies=[Auth])
    def info() -> dict:
        return fb.info()

    @app.get("/metrics", dependencies=[Auth], response_class=PlainTextResponse)
    def metrics_text() -> str:
        try:
            bank = fb.snapshot()
            items = len(bank)
        except BankError:
            items = 0
        m = fb.model_info
        extra = [
            "# HELP fakebank_bank_items Items in the bank.", "# TYPE fakebank_bank_items gauge",
            f"fakebank_bank_items {items}",
            "# HELP fakebank_model_info The loaded model.", "# TYPE fakebank_model_info gauge",
            f'fakebank_model_info{{name="{m["name"]}",revision="{m["revision"]}",trained="{str(m["trained"]).lower()}",'
            f'identity="{m["identity_hash"][:16]}"}} 1',
            "# HELP fakebank_batches_total Forward passes run by the micro-batcher.",
            "# TYPE fakebank_batches_total counter", f"fakebank_batches_total {batcher.batches}",
            "# HELP fakebank_batched_images_total Images embedded by the micro-batcher.",
            "# TYPE fakebank_batched_images_total counter", f"fakebank_batched_images_total {batcher.images}",
        ]
        return metrics.render(extra)

    async def ui_query(uploads: list[tuple[str, bytes]], k: int, explain: bool,
                       provenance: bool) -> list[tuple[dict, bytes | None]]:
        """POST /v1/query's path for the web UI, with each image upload's thumbnail from the same decode
        (a video has none: its record says which frame drove the verdict)."""
        images, videos = split(uploads)
        bank, results, records = await query_images(images, k, explain, provenance, thumbnails=True)
        thumbs = iter([e.thumbnail if isinstance(e, Embedding) else None for e in results])
        records = await with_videos(uploads, videos, records, lambda n, d: video_record("query", bank, n, d, k))
        return [(r, None if i in videos else next(thumbs)) for i, r in enumerate(records)]

    @app.get("/v1/items/{item_id}/thumbnail", dependencies=[Auth], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}, "image/webp": {}}}})
    def item_thumbnail(item_id: int) -> Response:
        """The item's thumbnail, JPEG (WebP in older banks): stored at add, or made from its original file
        when still there."""
        bank = fb.snapshot()
        if not bank.has(item_id):
            raise HTTPException(404, f"no item with id {item_id}")
        thumb = fb.item_thumbnail(bank, item_id)
        if thumb is None:
            raise HTTPException(404, f"item {item_id} has no stored thumbnail and its original "
                                f"{bank.value(item_id, 'path')} is gone or changed; restore it and run `fakebank thumbnails`")
        return Response(thumb, media_type=thumbnail_mime(thumb), headers={"Cache-Control": "private, max-age=3600"})

    ui = ui_router(fb, api_key=config.api_key, max_upload_bytes=config.max_upload_bytes,
                   max_video_upload_bytes=config.max_video_upload_bytes, query=ui_query)
    app.include_router(ui)  # the web UI at /ui (fakebank.ui)
    return app


def serve(fb: Fakebank, host: str, port: int, config: ServiceConfig) -> None:
    """Run uvicorn in this process (one worker: the model is loaded once)."""
    import uvicorn

    check_bind(host, config.api_key)
    app = create_app(fb, config)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
