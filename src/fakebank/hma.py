"""HMA's matching API on fakebank's service, so that clients of Meta's Hasher-Matcher-Actioner can point at
fakebank unchanged (issue 12). Routes, parameters, JSON shapes and error bodies follow HMA's
``OpenMediaMatch/blueprints/matching.py`` and ``schemas/matching.py`` (facebook/ThreatExchange):

- ``GET /m/raw_lookup?signal_type=pdq&signal=HEX[&include_distance=true][&banks=A,B]`` →
  ``{"matches": [id, …]}`` or, with distances, ``{"matches": [{"bank_content_id": id, "distance": "4"}]}``;
- ``GET /m/lookup?signal_type=pdq&signal=HEX[&banks=…]`` → ``{BANK: [{"bank_content_id", "distance"}]}``;
- ``POST /m/lookup`` with one multipart file whose field name is the content type (``photo``) → the same,
  keyed by signal type: ``{"pdq": {BANK: […]}}`` (fakebank hashes the upload with its own PDQ);
- ``GET /m/index/status`` → ``{"pdq": {"present", "built_to", "size"}, "vpdq": {…}}``.

Videos speak ``vpdq`` (python-threatexchange's ``VPDQSignal``): the signal is the JSON list of
``"pdq_hex,quality,timestamp"`` strings; a banked fake video answers when vPDQ's rule holds (≥ 80 % of the
query's unique usable frames within 31 bits of its frames, `video.vpdq_matches`), its distance HMA's
``"Q%[C%]"`` (query, compared match percent); an upload goes in the field ``video``.

Mapping: an HMA *bank* is a fakebank *source* (an imported list's collab, or ``--source`` at add); items
without a source are in the bank ``FAKEBANK``. HMA's banks hold content to act on, so only items labelled
``fake`` answer here (`real` and `unknown` items are like HMA's disabled content). The distance is PDQ's
Hamming distance as a string (pytx's ``pretty_str``); the threshold is HMA's, 31 bits. Errors are HMA's
``{"message": …}`` bodies. The service's API key applies as to every other route.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

import numpy as np

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from fakebank import video as vid
from fakebank.api import Fakebank
from fakebank.bank import VIDEO
from fakebank.errors import FakebankError, UsageError
from fakebank.hashlists import SIGNAL_TYPE
from fakebank.pdq import PDQ_MATCH_THRESHOLD

CONTENT_TYPE = "photo"  # HMA's content type of PDQ
VIDEO_CONTENT_TYPE = "video"  # … and of vPDQ
VPDQ = "vpdq"
SIGNAL_TYPES = (SIGNAL_TYPE, VPDQ)
DEFAULT_BANK = "FAKEBANK"


class HmaError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def hma_error_response(request: Request, e: HmaError) -> JSONResponse:
    return JSONResponse({"message": e.message}, status_code=e.status)


def _matches(fb: Fakebank, signal: str | None, signal_type: str | None, banks: str | None) -> list[tuple[str, int, str]]:
    """(bank name, item id, distance as HMA prints it) of the fake items matching one signal, as HMA's
    index answers."""
    if signal_type == VPDQ:
        return _vpdq_matches(fb, signal or "", banks)
    if signal_type != SIGNAL_TYPE:
        raise HmaError(400, f"No such SignalType '{signal_type}'")
    try:
        [found] = fb.lookup([signal or ""], max_distance=PDQ_MATCH_THRESHOLD)
    except UsageError as e:  # hashlists.parse_hashes: a malformed hash (a bank's own errors stay 409/500)
        raise HmaError(400, f"invalid signal: {e}") from None
    wanted = set(banks.split(",")) if banks else None
    out = []
    for m in found["matches"]:
        if m["label"] != "fake":
            continue
        name = m["source"] or DEFAULT_BANK
        if wanted is None or name in wanted:
            out.append((name, m["id"], str(m["distance"])))
    return out


def parse_vpdq_signal(signal: str) -> list[vid.VpdqFeature]:
    """pytx's VPDQSignal string: a JSON list of "pdq_hex,quality,timestamp" (`vpdq_util.json_to_vpdq`)."""
    try:
        items = json.loads(signal or "[]")
        if not isinstance(items, list):
            raise ValueError("not a JSON list")
        out = []
        for n, item in enumerate(items):
            pdq_hex, quality, timestamp = str(item).split(",")
            if len(pdq_hex) != 64 or not 0 <= int(quality) <= 100 or float(timestamp) < 0:
                raise ValueError(f"feature {n}: {str(item)[:80]!r}")
            bytes.fromhex(pdq_hex)
            out.append(vid.VpdqFeature(n, int(quality), pdq_hex.lower(), float(timestamp)))
        return out
    except ValueError as e:
        raise HmaError(400, f"invalid signal: a vpdq signal is a JSON list of \"pdq_hex,quality,timestamp\" ({e})") from None


def _vpdq_matches(fb: Fakebank, signal: str, banks: str | None) -> list[tuple[str, int, str]]:
    features = parse_vpdq_signal(signal)
    frames = [vid.QueryFrame(number=f.frame_number, timestamp=f.timestamp, pdq=bytes.fromhex(f.pdq_hex),
                             quality=f.quality, dihedral=(bytes.fromhex(f.pdq_hex),), pdq_trim=None, trim_quality=0,
                             logit=0.0, cls=np.zeros(0, np.float32)) for f in features]
    bank = fb.snapshot()
    wanted = set(banks.split(",")) if banks else None
    out = []
    for m in vid.vpdq_matches(bank, frames):
        if bank.label_of(m.id) != "fake":
            continue
        name = bank.value(m.id, "source") or DEFAULT_BANK
        if wanted is None or name in wanted:
            out.append((name, m.id, f"{m.vpdq.query_match_percent:.0f}%[{m.vpdq.compared_match_percent:.0f}%]"))
    return out


def _by_bank(matches: list[tuple[str, int, str]]) -> dict:
    out: dict[str, list[dict]] = {}
    for name, item_id, dist in matches:
        out.setdefault(name, []).append({"bank_content_id": item_id, "distance": dist})
    return out


def hma_router(fb: Fakebank, auth: Callable, max_upload_bytes: int, max_video_upload_bytes: int | None = None) -> APIRouter:
    max_video_upload_bytes = max_video_upload_bytes or max_upload_bytes
    router = APIRouter(prefix="/m", dependencies=[Depends(auth)], tags=["HMA matching"])

    @router.get("/raw_lookup")
    def raw_lookup(signal: str | None = None, signal_type: str | None = None, banks: str | None = None,
                   include_distance: str = "false") -> dict:
        if signal is None or signal_type is None:
            raise HmaError(400, "signal and signal_type are required")
        matches = _matches(fb, signal, signal_type, banks)
        if _bool(include_distance):
            return {"matches": [{"bank_content_id": i, "distance": d} for _, i, d in matches]}
        return {"matches": [i for _, i, _ in matches]}

    @router.get("/lookup")
    def lookup_get(signal: str | None = None, signal_type: str | None = None, banks: str | None = None,
                   url: str | None = None) -> dict:
        if url:
            # HMA fetches URLs only with its hasher role; fakebank never fetches on a client's behalf
            raise HmaError(403, "Hashing is disabled, missing role: fakebank does not fetch URLs; "
                                "POST the file to /m/lookup instead")
        if not signal or not signal_type:
            raise HmaError(400, "Either url or both signal and signal_type are required")
        return _by_bank(_matches(fb, signal, signal_type, banks))

    @router.post("/lookup")
    async def lookup_post(request: Request, banks: str | None = None) -> dict:
        form = await request.form()
        files = [(k, v) for k, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise HmaError(400, "Missing multipart/form-data file upload")
        if len(files) > 1:
            raise HmaError(400, "Only one file allowed per request")
        [(field, upload)] = files
        if field not in (CONTENT_TYPE, VIDEO_CONTENT_TYPE):
            raise HmaError(400, f"no such content_type: '{field}'")
        limit = max_video_upload_bytes if field == VIDEO_CONTENT_TYPE else max_upload_bytes
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise HmaError(413, "Content too large")
        if field == VIDEO_CONTENT_TYPE:
            if not vid.is_video(upload.filename or "upload", data[:vid.SNIFF_BYTES]):
                raise HmaError(400, f"{upload.filename or 'upload'}: not a video (by its name and first bytes); "
                                    "send a photo in the field 'photo'")
            signal = await run_in_threadpool(_vpdq_of_upload, fb, data, upload.filename or "upload")
            return {VPDQ: _by_bank(await run_in_threadpool(_matches, fb, signal, VPDQ, banks))}
        signal = await run_in_threadpool(_pdq_of_upload, data, upload.filename or "upload")
        if signal is None:  # PDQ below its quality bar says nothing; HMA's hasher returns no signal then
            return {SIGNAL_TYPE: {}}
        return {SIGNAL_TYPE: _by_bank(await run_in_threadpool(_matches, fb, signal, SIGNAL_TYPE, banks))}

    @router.get("/index/status")
    def index_status(signal_type: str | None = None) -> dict:
        if signal_type is not None and signal_type not in SIGNAL_TYPES:
            raise HmaError(400, f"No such signal type '{signal_type}'")
        bank = fb.snapshot()
        built = int(datetime.fromisoformat(bank.manifest["updated_at"]).timestamp())
        # the index HMA answers from holds the fake items only (/m/* never returns real or unknown ones)
        status = {SIGNAL_TYPE: {"present": True, "built_to": built, "size": bank.manifest["counts"]["fake"]},
                  VPDQ: {"present": True, "built_to": built, "size": _fake_videos(bank)}}
        return status if signal_type is None else {signal_type: status[signal_type]}

    return router


def _bool(s: str) -> bool:
    if s.lower() in ("true", "1"):
        return True
    if s.lower() in ("false", "0"):
        return False
    raise HmaError(400, "invalid boolean parameter - prefer true/false")


def _fake_videos(bank) -> int:
    """Counted once per snapshot (a status poll would otherwise scan the whole bank each time)."""
    count = bank.__dict__.get("_hma_fake_videos")
    if count is None:
        count = sum(int(((t.column("media").to_numpy(zero_copy_only=False) == VIDEO)
                         & (t.column("label").to_numpy(zero_copy_only=False) == "fake")).sum())
                    for t in bank.batches(["media", "label"]))
        bank.__dict__["_hma_fake_videos"] = count
    return count


def _vpdq_of_upload(fb: Fakebank, data: bytes, name: str) -> str:
    """The upload's vPDQ signal as pytx writes it (frames chosen as vpdq-hash-video does)."""
    try:
        features = fb.vpdq(data, name=name)
    except FakebankError as e:
        raise HmaError(400, str(e)) from None
    return json.dumps([f"{f.pdq_hex},{f.quality},{f.timestamp:.{vid.VPDQ_TIMESTAMP_PRECISION}}" for f in features])


def _pdq_of_upload(data: bytes, name: str) -> str | None:
    from fakebank.pdq import PDQ_MIN_QUALITY, pdq_hash
    from fakebank.preprocess import load_rgb

    try:
        img = load_rgb(data, name=name)
    except FakebankError as e:
        raise HmaError(400, str(e)) from None
    h = pdq_hash(img)
    return h.hash.hex() if h.quality >= PDQ_MIN_QUALITY else None

