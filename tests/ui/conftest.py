"""Harness for the console tests: the API harness (tests/api/conftest.py) and a signed-in client.

`sign_in(client, role)` goes through /ui/login as a browser would: GET the form (which sets the
sign-in cookie), POST the token with the form's nonce, keep the session cookie.
"""

from __future__ import annotations

import re

from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.api.conftest import Tokens, api, app, auth, db, live_server, role_tokens

__all__ = ["api", "app", "auth", "csrf_of", "db", "live_server", "role_tokens", "sign_in"]

_NONCE = re.compile(r'name="nonce" value="([^"]+)"')
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def sign_in(client: AsyncTestClient[Litestar], tokens: Tokens, role: str) -> str:
    """Sign `client` in with the role's token; returns the session's CSRF token."""
    form = await client.get("/ui/login")
    nonce = _NONCE.search(form.text)
    assert nonce, form.text
    response = await client.post(
        "/ui/login",
        data={"token": tokens.values[role], "nonce": nonce.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    home = await client.get("/ui/")
    assert home.status_code == 200, home.text
    return csrf_of(home.text)


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)
