"""The interactive API reference, behind the console's session (ADR 0029, ADR 0030).

Every route but /health and /metrics needs a caller who is known, so the reference is a console
page (`/ui/api`, a viewer may read it) rather than a public one. It needs nothing from a CDN
(pgsched runs where none is reachable): a page and a small script of the console's own static
files, which read the OpenAPI document at `/ui/api/openapi.json` with the session, the same
document `/schema/openapi.json` serves to a bearer token. A request sent from its forms takes a
pasted API token: the REST API authenticates bearer tokens only, so the session cannot be made
to act by a forged request, and what is sent is audited as that token.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.response import Template

from pgsched.app.api.openapi import tidy
from pgsched.app.ui.pages import VIEWER
from pgsched.app.ui.render import page


@get("/api", opt=VIEWER, include_in_schema=False)
async def api_reference(request: Request[Any, Any, Any]) -> Template:
    """The reference page; its script fills it from the document below."""
    return page(request, "api.html")


@get("/api/openapi.json", opt=VIEWER, include_in_schema=False)
async def api_document(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The API's OpenAPI 3.1 document, as /schema/openapi.json serves it to a token."""
    document = tidy(request.app.openapi_schema.to_schema())
    return Response(document, media_type="application/json")


ROUTES = [api_reference, api_document]
