"""Who is calling: the operator (``IMAGEGEN_API_KEY``, every tenant) or one tenant (its key).

``require_caller`` is the routers' dependency: it puts the ``Caller`` on ``request.state``
so that routes scope their queries with ``tenant_scope``. The operator key is compared in
constant time; a tenant key (``igk_...``) is looked up by its hash. Unknown or revoked: 401.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imagegen.worker.errors import JobRequestError, Unauthenticated
from imagegen.worker.settings import Settings
from imagegen.worker.tenants.keys import KEY_PREFIX
from imagegen.worker.tenants.resolve import OPERATOR, Caller, resolve_key

from .errors import Unauthorized

_bearer = HTTPBearer(
    auto_error=False, description="IMAGEGEN_API_KEY (the operator), or a tenant's key"
)


def require_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    settings: Settings = request.app.state.settings
    given = credentials.credentials if credentials is not None else ""
    caller = request.state.caller = caller_for_key(settings, given)
    return caller


def caller_for_key(settings: Settings, given: str) -> Caller:
    """The operator or the key's tenant; Unauthorized for any other key (the dashboard's
    login uses it too)."""
    expected = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    if expected and secrets.compare_digest(given.encode(), expected.encode()):
        return OPERATOR
    if given.startswith(KEY_PREFIX):
        try:
            return resolve_key(settings.database_url, given)
        except Unauthenticated:
            raise Unauthorized from None
    raise Unauthorized


def require_operator(caller: Annotated[Caller, Depends(require_caller)]) -> None:
    """Fleet-wide routes (metrics): the operator key only; a tenant key is a 403."""
    if not caller.operator:
        raise HTTPException(403, "this route needs the operator key (IMAGEGEN_API_KEY)")


def tenant_scope(request: Request) -> uuid.UUID | None:
    """The tenant whose jobs the request may see (None: the operator sees every tenant's)."""
    caller: Caller = request.state.caller
    return caller.tenant_id


def owned_fields(request: Request, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A job request's fields with its tenant: the operator's choice (default: the default
    tenant), a tenant key's own tenant (naming another is refused)."""
    caller: Caller = request.state.caller
    owned = dict(fields)
    if caller.operator:
        return owned
    asked = owned.get("tenant")
    if asked is not None and asked != caller.tenant_name:
        problem = "only the operator key may choose the tenant: leave it out"
        raise JobRequestError(
            f"invalid job request: tenant: {problem}", [{"field": "tenant", "message": problem}]
        )
    owned["tenant"] = caller.tenant_name
    return owned
