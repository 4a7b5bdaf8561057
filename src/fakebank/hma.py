"""HMA's matching API on fakebank's service, so that clients of Meta's Hasher-Matcher-Actioner can point at
fakebank unchanged (issue 12). Routes, parameters, JSON shapes and error bodies follow HMA's
``OpenMediaMatch/blueprints/matching.py`` and ``schemas/matching.py`` (facebook/ThreatExchange):

- ``GET /m/raw_lookup?signal_type=pdq&signal=HEX[&include_distance=true][&banks=A,B]`` →
  ``{"matches": [id, …]}`` or, with distances, ``{"matches": [{"bank_content_id": id, "distance": "4"}]}``;
- ``GET /m/lookup?signal_type=pdq&signal=HEX[&banks=…]`` → ``{BANK: [{"bank_content_id", "distance"}]}``;
- ``POST /m/lookup`` with one multipart file whose field name is the content type (``photo``) → the same,
  keyed by signal type: ``{"pdq": {BANK: […]}}`` (fakebank hashes the upload with its own PDQ);
- ``GET /m/index/status`` → ``{"pdq": {"present", "built_to", "size"}}``.

Mapping: an HMA *bank* is a fakebank *source* (an imported list's collab, or ``--source`` at add); items
without a source are in the bank ``FAKEBANK``. HMA's banks hold content to act on, so only items labelled
``fake`` answer here (`real` and `unknown` items are like HMA's disabled content). The distance is PDQ's
Hamming distance as a string (pytx's ``pretty_str``); the threshold is HMA's, 31 bits. Errors are HMA's
``{"message": …}`` bodies. The service's API key applies as to every other route.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from fakebank.api import Fakebank
from fakebank.errors import FakebankError, UsageError
from fakebank.hashlists import SIGNAL_TYPE
from fakebank.pdq import PDQ_MATCH_THRESHOLD

CONTENT_TYPE = "photo"  # HMA's content type of PDQ
DEFAULT_BANK = "FAKEBANK"


class HmaError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def hma_error_response(request: Request, e: HmaError) -> JSONResponse:
    return JSONResponse({"message": e.message}, status_code=e.status)


def _matches(fb: Fakebank, signal: str | None, signal_type: str | None, banks: str | None) -> list[tuple[str, int, int]]:
    """(bank name, item id, distance) of the fake items matching one signal, as HMA's index answers."""
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
            out.append((name, m["id"], m["distance"]))
    return out


def _by_bank(matches: list[tuple[str, int, int]]) -> dict:
    out: dict[str, list[dict]] = {}
    for name, item_id, dist in matches:
        out.setdefault(name, []).append({"bank_content_id": item_id, "distance": str(dist)})
    return out


def hma_router(fb: Fakebank, auth: Callable, max_upload_bytes: int) -> APIRouter:
    router = APIRouter(prefix="/m", dependencies=[Depends(auth)], tags=["HMA matching"])

    @router.get("/raw_lookup")
    def raw_lookup(signal: str | None = None, signal_type: str | None = None, banks: str | None = None,
                   include_distance: str = "false") -> dict:
        if signal is None or signal_type is None:
            raise HmaError(400, "signal and signal_type are required")
        matches = _matches(fb, signal, signal_type, banks)
        if _bool(include_distance):
            return {"matches": [{"bank_content_id": i, "distance": str(d)} for _, i, d in matches]}
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
        if field != CONTENT_TYPE:
            raise HmaError(400, f"no such content_type: '{field}'")
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HmaError(413, "Content too large")
        signal = await run_in_threadpool(_pdq_of_upload, data, upload.filename or "upload")
        if signal is None:  # PDQ below its quality bar says nothing; HMA's hasher returns no signal then
            return {SIGNAL_TYPE: {}}
        return {SIGNAL_TYPE: _by_bank(await run_in_threadpool(_matches, fb, signal, SIGNAL_TYPE, banks))}

    @router.get("/index/status")
    def index_status(signal_type: str | None = None) -> dict:
        if signal_type is not None and signal_type != SIGNAL_TYPE:
            raise HmaError(400, f"No such signal type '{signal_type}'")
        bank = fb.snapshot()
        built = int(datetime.fromisoformat(bank.manifest["updated_at"]).timestamp())
        # the index HMA answers from holds the fake items only (/m/* never returns real or unknown ones)
        return {SIGNAL_TYPE: {"present": True, "built_to": built, "size": bank.manifest["counts"]["fake"]}}

    return router


def _bool(s: str) -> bool:
    if s.lower() in ("true", "1"):
        return True
    if s.lower() in ("false", "0"):
        return False
    raise HmaError(400, "invalid boolean parameter - prefer true/false")


def _pdq_of_upload(data: bytes, name: str) -> str | None:
    from fakebank.pdq import PDQ_MIN_QUALITY, pdq_hash
    from fakebank.preprocess import load_rgb

    try:
        img = load_rgb(data, name=name)
    except FakebankError as e:
        raise HmaError(400, str(e)) from None
    h = pdq_hash(img)
    return h.hash.hex() if h.quality >= PDQ_MIN_QUALITY else None

