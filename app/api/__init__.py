"""The REST API (ADR 0014): `create_app()` builds the Litestar application; `pgsched api` serves it.

Modules: `app` (factory, pool, OpenAPI), `auth` (bearer tokens, roles, the default-deny guard),
`problems` (RFC 9457 errors), `schemas` (msgspec contract), `definition` and `writes` (schedule
definitions and the API's state changes), `cursors` (keyset pagination), `routes/*` (handlers),
`metrics` (Prometheus). Decisions: docs/adr/0014-rest-api.md; a curl session: app/api/README.md.
"""

from __future__ import annotations

from pgsched.app.api.app import create_app

__all__ = ["create_app"]
