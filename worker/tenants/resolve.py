"""Who a request acts for: a bearer key to its tenant, a tenant name to its id."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from imagegen.models import DEFAULT_TENANT_ID, Tenant, TenantKey, utcnow
from imagegen.worker.db import session_scope
from imagegen.worker.errors import JobRequestError, Unauthenticated

#: last_used_at is written at most this often per key: not a write per request
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    """The HTTP API's caller: the operator (every tenant) or one tenant."""

    tenant_id: uuid.UUID | None = None
    tenant_name: str | None = None

    @property
    def operator(self) -> bool:
        return self.tenant_id is None


OPERATOR = Caller()


def key_hash(key: str) -> str:
    """How a key is stored: its SHA-256 (a 256-bit random token needs no slow hash)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def resolve_key(database_url: str, key: str, *, now: datetime | None = None) -> Caller:
    """The tenant whose live key this is; ``Unauthenticated`` for an unknown or revoked key.

    A lookup by hash, so no constant-time compare is needed: timing can only tell whether
    some key's hash shares a prefix with the hash of a guess, which says nothing of a key."""
    now = now or utcnow()
    with session_scope(database_url) as session:
        found = session.execute(
            select(TenantKey.id, TenantKey.last_used_at, Tenant.id, Tenant.name)
            .join(Tenant, Tenant.id == TenantKey.tenant_id)
            .where(TenantKey.key_hash == key_hash(key), TenantKey.revoked_at.is_(None))
        ).one_or_none()
        if found is None:
            raise Unauthenticated("unknown or revoked API key")
        key_id, last_used, tenant_id, name = found
        if last_used is None or last_used < now - TOUCH_EVERY:
            # guarded by the same condition, so concurrent requests write it once
            session.execute(
                update(TenantKey)
                .where(
                    TenantKey.id == key_id,
                    or_(
                        TenantKey.last_used_at.is_(None),
                        TenantKey.last_used_at < now - TOUCH_EVERY,
                    ),
                )
                .values(last_used_at=now)
            )
    return Caller(tenant_id=tenant_id, tenant_name=name)


def tenant_ids(session: Session, names: Iterable[str | None]) -> dict[str | None, uuid.UUID]:
    """Each name's tenant id (None: the default tenant); JobRequestError naming the unknown."""
    wanted = {name for name in names if name is not None}
    found: dict[str | None, uuid.UUID] = {None: DEFAULT_TENANT_ID}
    if wanted:
        rows = session.execute(select(Tenant.name, Tenant.id).where(Tenant.name.in_(wanted)))
        found.update({name: tenant_id for name, tenant_id in rows.all()})
    unknown = sorted(wanted - found.keys())
    if unknown:
        problems = [{"field": "tenant", "message": f"unknown tenant {n!r}"} for n in unknown]
        text = ", ".join(repr(n) for n in unknown)
        raise JobRequestError(f"invalid job request: unknown tenant {text}", problems)
    return found
