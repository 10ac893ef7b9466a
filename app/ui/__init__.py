"""The operator console at /ui/: server-rendered pages on the same services as the REST API.

`router()` is registered by app.api.app beside the API (ADR 0030): its pages and forms
(app.ui.pages, app.ui.actions), the live feed (app.ui.live) and its static files (a small
vanilla script and a style sheet, package data: it works offline, with no build step).
Its own guard (app.ui.session) authenticates by the session cookie.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from litestar import Router
from litestar.datastructures import ResponseHeader
from litestar.static_files import create_static_files_router

from pgsched.app.ui import actions, live, pages, session
from pgsched.app.ui.render import EXCEPTION_HANDLERS, template_config

__all__ = ["router", "template_config"]

# The console loads nothing from elsewhere and runs no inline script, so the browser may refuse
# anything else: an injected script or style has nowhere to come from, and no other site may
# frame the console's buttons (clickjacking).
SECURITY_HEADERS = [
    ResponseHeader(
        name="Content-Security-Policy",
        value="default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
]


def router() -> Router:
    static = Path(str(resources.files("pgsched.app.ui").joinpath("static")))
    files = create_static_files_router(
        path="/static",
        directories=[static],
        opt={"role": "public", "console": "public"},
        include_in_schema=False,
        name="ui-static",
    )
    return Router(
        path="/ui",
        route_handlers=[*pages.ROUTES, *actions.ROUTES, *live.ROUTES, files],
        guards=[session.guard],
        exception_handlers=EXCEPTION_HANDLERS,
        include_in_schema=False,
        response_headers=SECURITY_HEADERS,
    )
