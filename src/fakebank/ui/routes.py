"""The analyst's workbench: server-rendered pages at /ui over the api facade.

Mounted by the service (api → service → **ui**, which imports api, bank and thumbnails, never cli or service:
the service hands in its query path so that uploads share its micro-batched forward pass). Pages are Jinja2
templates and one small script from this package; nothing comes from a CDN and nothing needs building.
Writes (label, delete, recompute) go through the same api calls as the HTTP API and take effect on the
next query.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fakebank.api import DEFAULT_K, Fakebank
from fakebank.bank import LABELS, Bank
from fakebank.errors import FakebankError, NotFoundError, UsageError, http_status
from fakebank.thumbnails import thumbnail_mime
from fakebank.ui import session
from fakebank.video import SNIFF_BYTES, is_video

# (uploads as (name, bytes), k, explain, provenance) → per upload its `query` record and its thumbnail (JPEG,
# None when it did not decode): the service's path
QueryFn = Callable[[list[tuple[str, bytes]], int, bool, bool], Awaitable[list[tuple[dict, bytes | None]]]]

MAX_FILES = 32  # per query form, as the API
RECENT_ITEMS = 24
SEARCH_LIMIT = 100
CAMPAIGN_CARD_MEMBERS = 12  # member thumbnails per campaign on the campaigns page
CAMPAIGN_PAGE_MEMBERS = 1000
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
# Pages load only this server's scripts, styles and images (thumbnails and heat maps as data: URIs).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make the browser send Origin: null on forms
}
PLACEHOLDER_SVG = (
    "<svg xmlns='http://www.w3.org/2000/svg' width='256' height='192' viewBox='0 0 256 192'>"
    "<rect width='256' height='192' fill='#8882'/><text x='128' y='100' text-anchor='middle' "
    "font-family='sans-serif' font-size='14' fill='#888'>no thumbnail</text></svg>")

_HERE = resources.files("fakebank.ui")


def ui_router(fb: Fakebank, *, api_key: str | None, max_upload_bytes: int, query: QueryFn,
              max_video_upload_bytes: int | None = None) -> APIRouter:
    """The /ui pages, for one Fakebank and the service's key."""
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    templates.env.filters["when"] = _when
    router = APIRouter(include_in_schema=False)
    page_auth = [Depends(session.require(api_key))]

    def render(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        response = templates.TemplateResponse(request, name, {
            "signed_in_with_key": bool(api_key), "model": fb.model_info, "labels": LABELS, **context}, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def error_page(request: Request, e: FakebankError, status: int | None = None,
                   headers: dict | None = None) -> HTMLResponse:
        page = render(request, "error.html", status or http_status(e), message=str(e))
        page.headers.update(headers or {})  # a 405's Allow, a 429's Retry-After
        return page

    router.error_page = error_page  # the service answers a bad /ui request with it, not with JSON

    # -- session ---------------------------------------------------------------------------------

    @router.get("/ui")
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/query", 303)

    @router.get("/ui/signin")
    def signin_form(request: Request):
        if not api_key:
            return RedirectResponse("/ui/query", 303)
        return render(request, "signin.html")

    @router.post("/ui/signin")
    def signin(request: Request, key: Annotated[str, Form()] = ""):
        session.check_same_origin(request)
        if not api_key:
            return RedirectResponse("/ui/query", 303)
        if not session.key_matches(key, api_key):
            return render(request, "signin.html", 401, refused=True)
        response = RedirectResponse("/ui/query", 303)
        session.start_session(response, api_key, secure=request.url.scheme == "https")
        return response

    @router.post("/ui/signout")
    def signout(request: Request) -> RedirectResponse:
        session.check_same_origin(request)
        response = RedirectResponse(session.SIGN_IN if api_key else "/ui/query", 303)
        session.end_session(response)
        return response

    @router.get("/ui/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no static file {name}")
        return Response((_HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                        headers={"Cache-Control": "no-cache"})

    # -- query -------------------------------------------------------------------------------------

    @router.get("/ui/query", dependencies=page_auth)
    def query_form(request: Request):
        return render(request, "query.html", k=DEFAULT_K)

    @router.post("/ui/query", dependencies=page_auth)
    async def query_files(request: Request,
                          file: Annotated[list[UploadFile] | None, File()] = None,
                          k: Annotated[int, Form(ge=1, le=100)] = DEFAULT_K,
                          heatmap: Annotated[bool, Form()] = False):
        files = [f for f in file or [] if f.filename]
        if not files:
            return render(request, "query.html", 422, k=k, heatmap=heatmap,
                          message="no file chosen: drop one or more images or videos on the box, or pick them")
        if len(files) > MAX_FILES:
            return render(request, "query.html", 413, k=k, heatmap=heatmap,
                          message=f"{len(files)} files at once; the limit is {MAX_FILES}")
        uploads = []
        for f in files:
            name = os.path.basename(f.filename or "upload")
            head = await f.read(SNIFF_BYTES)
            video = is_video(name, head)
            limit = (max_video_upload_bytes or max_upload_bytes) if video else max_upload_bytes
            data = head + await f.read(limit + 1 - len(head))
            if len(data) > limit:
                return render(request, "query.html", 413, k=k, heatmap=heatmap,
                              message=f"{name}: over the {'video ' if video else ''}upload limit of {limit:,} bytes")
            uploads.append((name, data))
        try:
            records = await query(uploads, k, heatmap, True)
        except FakebankError as e:
            return render(request, "query.html", 422, k=k, heatmap=heatmap, message=str(e))
        results = [{**r, "query_uri": f"data:{thumbnail_mime(thumb)};base64," + base64.b64encode(thumb).decode()
                    if thumb else None,
                    "heat_uri": "data:image/png;base64," + r["heatmap"]["png_base64"]
                    if r.get("heatmap", {}).get("png_base64") else None}
                   for r, thumb in records]
        return render(request, "query.html", k=k, heatmap=heatmap, results=results)

    # -- items -------------------------------------------------------------------------------------

    @router.get("/ui/items/{item_id}", dependencies=page_auth)
    def item_page(request: Request, item_id: int, done: str | None = None):
        bank = fb.snapshot()
        if not bank.has(item_id):
            return error_page(request, NotFoundError(f"no item with id {item_id} (removed, or never added)"), 404)
        return render(request, "item.html", item=bank.item(item_id), computed=_computed_campaign(bank, item_id),
                      done=done)

    @router.post("/ui/items/{item_id}/label", dependencies=page_auth)
    def relabel(request: Request, item_id: int, label: Annotated[str, Form()]):
        try:
            with fb._write_lock:
                fb.label([item_id], label)
        except FakebankError as e:
            return error_page(request, e)
        return RedirectResponse(f"/ui/items/{item_id}?done=label", 303)

    @router.get("/ui/items/{item_id}/delete", dependencies=page_auth)
    def delete_confirm(request: Request, item_id: int):
        bank = fb.snapshot()
        if not bank.has(item_id):
            return error_page(request, NotFoundError(f"no item with id {item_id} (removed, or never added)"), 404)
        return render(request, "delete.html", item=bank.item(item_id))

    @router.post("/ui/items/{item_id}/delete", dependencies=page_auth)
    def delete(request: Request, item_id: int):
        try:
            with fb._write_lock:
                fb.remove([item_id])
        except FakebankError as e:
            return error_page(request, e)
        return RedirectResponse(f"/ui/bank?removed={item_id}", 303)

    @router.get("/ui/thumbs/{item_id}", dependencies=page_auth)
    def ui_thumbnail(item_id: int) -> Response:
        """The item's thumbnail for pages: a placeholder when it has none (so that a grid keeps its shape)."""
        bank = fb.snapshot()
        thumb = fb.item_thumbnail(bank, item_id) if bank.has(item_id) else None
        if thumb is None:
            return Response(PLACEHOLDER_SVG, media_type="image/svg+xml", headers={"Cache-Control": "no-cache"})
        return Response(thumb, media_type=thumbnail_mime(thumb), headers={"Cache-Control": "private, max-age=3600"})

    # -- campaigns ---------------------------------------------------------------------------------

    @router.get("/ui/campaigns", dependencies=page_auth)
    def campaigns_page(request: Request):
        try:
            records = fb.campaigns(min_size=2, recompute=False, save=False)
        except FakebankError as e:
            return error_page(request, e)
        return render(request, "campaigns.html", campaigns=_with_timeline(records), events=None,
                      card_members=CAMPAIGN_CARD_MEMBERS)

    @router.post("/ui/campaigns/recompute", dependencies=page_auth)
    async def recompute(request: Request):
        try:
            bank, result = await run_in_threadpool(fb.campaign_run, recompute=True, save=True)
            records = await run_in_threadpool(fb.campaign_records, bank, result)
        except FakebankError as e:
            return error_page(request, e)
        from fakebank.campaigns import event_text

        return render(request, "campaigns.html", campaigns=_with_timeline(records),
                      events=[event_text(ev) for ev in result.events], recomputed=True,
                      card_members=CAMPAIGN_CARD_MEMBERS)

    @router.get("/ui/campaigns/{name:path}", dependencies=page_auth)  # analyst names may hold "/"
    def campaign_page(request: Request, name: str):
        bank, result = fb.campaign_run(recompute=False, save=False)
        this = replace(result, campaigns=[c for c in result.campaigns if c.name == name])  # summarise it only
        found = next(iter(fb.campaign_records(bank, this, min_size=1)), None)
        if found is None:
            return error_page(request, UsageError(f"no campaign {name}; recompute campaigns or pick one from the list"),
                              404)
        members = [bank.item(i) for i in found["members"][:CAMPAIGN_PAGE_MEMBERS] if bank.has(i)]
        return render(request, "campaign.html", c=found, members=members, more=max(0, found["size"] - len(members)))

    # -- bank --------------------------------------------------------------------------------------

    @router.get("/ui/bank", dependencies=page_auth)
    def bank_page(request: Request, q: str = "", removed: int | None = None):
        bank = fb.snapshot()
        found = _search(bank, q) if q.strip() else None
        return render(request, "bank.html", info=fb.info(), recent=_recent(bank, RECENT_ITEMS), q=q, found=found,
                      removed=removed, search_limit=SEARCH_LIMIT)

    return router


# -- helpers (pure: a bank snapshot in, plain values out) ------------------------------------------------

def _computed_campaign(bank: Bank, item_id: int) -> str | None:
    table = bank.campaign_assignments()
    if table is None:
        return None
    ids = table.column("id").to_pylist()
    return table.column("campaign")[ids.index(item_id)].as_py() if item_id in ids else None


def _recent(bank: Bank, n: int) -> list[dict]:
    """The n newest live items (ids grow with time)."""
    return [bank.item(i) for i in bank.recent_ids(n)]


def _search(bank: Bank, q: str) -> list[dict]:
    """Items by sha256 (64 hex digits); else the item of that id (#12 or 12) followed by the items whose path
    or source holds `q` (case-insensitive: this scans the whole bank's metadata, a few ms per 10k items)."""
    q = q.strip()
    if len(q) == 64 and all(c in "0123456789abcdef" for c in q.lower()):
        item_id = bank.id_of_sha256(q.lower())
        return [bank.item(item_id)] if item_id is not None else []
    hits = [int(q.lstrip("#"))] if q.lstrip("#").isdigit() and bank.has(int(q.lstrip("#"))) else []
    if len(bank) and not q.startswith("#"):
        table, needle = bank.table, q.lower()
        hits += [i for i, p, s in zip(bank.ids.tolist(), table.column("path").to_pylist(),
                                      table.column("source").to_pylist())
                 if (needle in (p or "").lower() or needle in (s or "").lower()) and i not in hits]
    return [bank.item(i) for i in hits[:SEARCH_LIMIT]]


def _with_timeline(records: list[dict]) -> list[dict]:
    """Each campaign with its first…last seen span as left/width percentages of the whole span shown."""
    if not records:
        return []
    times = [(datetime.fromisoformat(r["first_seen"]).timestamp(), datetime.fromisoformat(r["last_seen"]).timestamp())
             for r in records]
    lo, hi = min(t[0] for t in times), max(t[1] for t in times)
    span = max(hi - lo, 1.0)
    return [{**r, "left": round(100 * (a - lo) / span, 2), "width": max(0.8, round(100 * (b - a) / span, 2))}
            for r, (a, b) in zip(records, times)]


def _when(value: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS UTC' for pages."""
    if not value:
        return "—"
    return value[:19].replace("T", " ") + " UTC"
