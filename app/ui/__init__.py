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

from pgsched.app.ui import actions, live, pages, reference, render, session
from pgsched.app.ui.render import EXCEPTION_HANDLERS, template_config

__all__ = ["router", "template_config"]

SECURITY_HEADERS = [ResponseHeader(name=k, value=v) for k, v in render.SECURITY_HEADERS.items()]


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
        route_handlers=[*pages.ROUTES, *actions.ROUTES, *live.ROUTES, *reference.ROUTES, files],
        guards=[session.guard],
        exception_handlers=EXCEPTION_HANDLERS,
        include_in_schema=False,
        response_headers=SECURITY_HEADERS,
    )
