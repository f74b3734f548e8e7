"""Tenants and their API keys, as the operator manages them (``imagegen tenant``).

A key is ``igk_`` and 43 URL-safe characters (32 random bytes); it is returned once, by
``create_key``, and stored only as its SHA-256. Listings show a key's id and prefix, never
the key or its hash.
"""

from __future__ import annotations

import math
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from imagegen.models import Tenant, TenantKey, utcnow
from imagegen.worker.db import session_scope
from imagegen.worker.errors import JobRequestError, TenantConflict, TenantNotFound

from .names import check_name
from .resolve import key_hash

KEY_PREFIX = "igk_"
#: characters of a key kept for display: the marker and 8 random ones
SHOWN_PREFIX = len(KEY_PREFIX) + 8


@dataclass(frozen=True)
class TenantInfo:
    id: uuid.UUID
    name: str
    weight: float
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "id": str(self.id), "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: never the key, never its hash."""

    id: uuid.UUID
    tenant: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        stamps = ("created_at", "last_used_at", "revoked_at")
        data = {**asdict(self), "id": str(self.id)}
        return data | {k: data[k].isoformat() if data[k] else None for k in stamps}


@dataclass(frozen=True)
class NewKey:
    """A key just created: ``key`` is shown this once."""

    info: KeyInfo
    key: str


def _tenant_info(row: Tenant) -> TenantInfo:
    return TenantInfo(row.id, row.name, row.weight, row.created_at)


def _key_info(row: TenantKey, tenant: str) -> KeyInfo:
    return KeyInfo(row.id, tenant, row.prefix, row.created_at, row.last_used_at, row.revoked_at)


def create_tenant(database_url: str, name: str, *, weight: float = 1.0) -> TenantInfo:
    """A new tenant; JobRequestError for a bad name or weight, TenantConflict if it exists."""
    check_name(name)
    if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
        problem = f"the weight must be a number above 0, not {weight!r}"
        raise JobRequestError(problem, [{"field": "weight", "message": problem}])
    row = Tenant(id=uuid.uuid4(), name=name, weight=float(weight), created_at=utcnow())
    try:
        with session_scope(database_url) as session:
            session.add(row)
            session.flush()
            return _tenant_info(row)
    except IntegrityError:
        raise TenantConflict(f"a tenant named {name!r} exists already") from None


def list_tenants(database_url: str) -> list[TenantInfo]:
    with session_scope(database_url) as session:
        rows = session.execute(select(Tenant).order_by(Tenant.name)).scalars()
        return [_tenant_info(row) for row in rows]


def find_tenant(session: Session, name: str) -> Tenant:
    """The tenant named ``name``; TenantNotFound (exit code 3) if there is none."""
    check_name(name)
    row = session.execute(select(Tenant).where(Tenant.name == name)).scalar_one_or_none()
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r} (imagegen tenant list shows them)")
    return row


def create_key(database_url: str, tenant: str) -> NewKey:
    """A new key for ``tenant`` (TenantNotFound if there is none): returned once."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with session_scope(database_url) as session:
        owner = find_tenant(session, tenant)
        row = TenantKey(
            id=uuid.uuid4(),
            tenant_id=owner.id,
            key_hash=key_hash(key),
            prefix=key[:SHOWN_PREFIX],
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return NewKey(_key_info(row, owner.name), key)


def list_keys(database_url: str, tenant: str) -> list[KeyInfo]:
    """The tenant's keys, oldest first, revoked ones included."""
    with session_scope(database_url) as session:
        owner = find_tenant(session, tenant)
        rows = session.execute(
            select(TenantKey)
            .where(TenantKey.tenant_id == owner.id)
            .order_by(TenantKey.created_at, TenantKey.id)
        ).scalars()
        return [_key_info(row, owner.name) for row in rows]


def revoke_key(database_url: str, key_id: uuid.UUID) -> KeyInfo:
    """Revoke a key by its id (again: unchanged); TenantNotFound if no key has the id."""
    with session_scope(database_url) as session:
        row = session.get(TenantKey, key_id, with_for_update=True)
        if row is None:
            raise TenantNotFound(f"no API key with id {key_id}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        owner = session.get(Tenant, row.tenant_id)
        return _key_info(row, owner.name if owner else "?")
