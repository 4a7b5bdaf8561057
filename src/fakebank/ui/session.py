"""Who may use the web UI: the service's API key, kept by the browser as an HttpOnly session cookie.

The sign-in form posts the key once; the cookie then holds a token derived from it (HMAC), never the key
itself, so the key is in no URL, no log and no script-readable storage. The cookie has no expiry (it ends
with the browser session) and is SameSite=Strict, so another site cannot submit the UI's forms with it.
Without an API key (the service then listens on loopback only) no sign-in is needed, as for the API.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request
from fastapi.responses import Response

COOKIE = "fakebank_ui"
COOKIE_PATH = "/"  # the UI's pages and the thumbnails they show
SIGN_IN = "/ui/signin"


def session_token(api_key: str) -> str:
    """What the cookie holds: it proves the key was typed without revealing it."""
    return hmac.new(api_key.encode(), b"fakebank ui session v1", hashlib.sha256).hexdigest()


def bearer_ok(request: Request, api_key: str | None) -> bool:
    """The API's rule: no key configured, or 'Authorization: Bearer <key>'."""
    if not api_key:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), api_key.encode())


def signed_in(request: Request, api_key: str | None) -> bool:
    if bearer_ok(request, api_key):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_token(api_key).encode())


def key_matches(typed: str, api_key: str) -> bool:
    return hmac.compare_digest(typed.strip().encode(), api_key.encode())


def require(api_key: str | None):
    """A FastAPI dependency: pages answer only a signed-in browser; others are sent to the sign-in form."""
    def dependency(request: Request) -> None:
        if not signed_in(request, api_key):
            raise HTTPException(303, "sign in first", headers={"Location": SIGN_IN})
        if request.method == "POST":
            check_same_origin(request)

    return dependency


def check_same_origin(request: Request) -> None:
    """Forms are posted by the UI's own pages only (a second line behind SameSite=Strict)."""
    origin = request.headers.get("origin")
    if origin and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise HTTPException(403, f"form posted from {origin}, not from this server's own pages")


def start_session(response: Response, api_key: str, secure: bool) -> None:
    response.set_cookie(COOKIE, session_token(api_key), httponly=True, samesite="strict", secure=secure,
                        path=COOKIE_PATH)


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
