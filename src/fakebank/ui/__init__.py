"""The web UI (`/ui`): server-rendered pages, their templates and static files (package data, no build step).

`routes.ui_router` is what the service mounts; `session` decides who may use it (the service's API key,
kept by the browser as an HttpOnly session cookie).
"""

from fakebank.ui.routes import ui_router

__all__ = ["ui_router"]
