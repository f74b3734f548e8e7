"""Tenants (issue 24 item 1): the migration, names, keys and enqueue's tenant and end user."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from functools import partial

import pytest
from sqlalchemy import create_engine, func, inspect, select, text

from imagegen.models import DEFAULT_TENANT_ID, Job, TenantKey
from imagegen.worker.db import downgrade, session_scope, upgrade
from imagegen.worker.errors import JobRequestError, TenantConflict, TenantNotFound, Unauthenticated
from imagegen.worker.tenants import keys
from imagegen.worker.tenants.resolve import key_hash, resolve_key
from tests.conftest import Stack, add_jobs
from tests.test_cli import at_once, imagegen, one_line_error

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def _count_jobs(database_url: str) -> int:
    with session_scope(database_url) as session:
        return session.execute(select(func.count()).select_from(Job)).scalar_one()


def test_migration_moves_existing_jobs_to_the_default_tenant_and_back(database_url: str) -> None:
    downgrade(database_url, "0010")
    engine = create_engine(database_url)
    assert "tenants" not in inspect(engine).get_table_names()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, prompt, params, model, status, attempts, created_at, "
                "updated_at) VALUES (:id, 'p', '{}', 'm', 'queued', 0, now(), now())"
            ),
            {"id": str(uuid.UUID(int=77))},
        )
    upgrade(database_url)
    with engine.connect() as conn:
        tenant = conn.execute(text("SELECT tenant_id FROM jobs")).scalar_one()
        default = conn.execute(text("SELECT id, name, weight FROM tenants")).one()
    assert tenant == DEFAULT_TENANT_ID
    assert tuple(default) == (DEFAULT_TENANT_ID, "default", 1.0)
    indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
    assert {"ix_jobs_tenant_id_created_at", "ix_jobs_end_user_created_at"} <= indexes
    downgrade(database_url, "0010")
    assert not {"tenants", "tenant_keys"} & set(inspect(engine).get_table_names())
    assert "tenant_id" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 1
    upgrade(database_url)
    engine.dispose()


@pytest.mark.parametrize(
    "name", ["", "Acme", "-acme", "_x", "a b", "a/b", "é", "a" * 65, "acme\n", "a;drop"]
)
def test_odd_tenant_names_are_refused(database_url: str, name: str) -> None:
    with pytest.raises(JobRequestError, match="invalid tenant name"):
        keys.create_tenant(database_url, name)
    assert [t.name for t in keys.list_tenants(database_url)] == ["default"]


def test_weights_and_duplicates(database_url: str) -> None:
    for weight in (0, -1, float("nan"), float("inf")):
        with pytest.raises(JobRequestError, match="weight"):
            keys.create_tenant(database_url, "acme", weight=weight)
    assert keys.create_tenant(database_url, "a" * 64, weight=2.5).weight == 2.5
    keys.create_tenant(database_url, "0-acme_2")
    with pytest.raises(TenantConflict, match="exists already"):
        keys.create_tenant(database_url, "0-acme_2")


def test_key_lifecycle_stores_only_a_hash(database_url: str) -> None:
    keys.create_tenant(database_url, "acme")
    new = keys.create_key(database_url, "acme")
    assert new.key.startswith("igk_") and len(new.key) >= 40
    with session_scope(database_url) as session:
        row = session.get(TenantKey, new.info.id)
        assert row is not None and row.key_hash == key_hash(new.key) != new.key
    caller = resolve_key(database_url, new.key)
    assert caller.tenant_name == "acme" and not caller.operator
    (listed,) = keys.list_keys(database_url, "acme")
    assert listed.last_used_at is not None and new.key not in json.dumps(listed.to_json())
    resolve_key(database_url, new.key)  # within a minute: last_used_at is not written again
    assert keys.list_keys(database_url, "acme")[0].last_used_at == listed.last_used_at
    assert listed.last_used_at is not None
    later = listed.last_used_at + timedelta(minutes=2)
    resolve_key(database_url, new.key, now=later)  # a minute on: written again
    assert keys.list_keys(database_url, "acme")[0].last_used_at == later
    keys.revoke_key(database_url, new.info.id)
    with pytest.raises(Unauthenticated):
        resolve_key(database_url, new.key)
    with pytest.raises(Unauthenticated):
        resolve_key(database_url, new.key + "x")
    with pytest.raises(TenantNotFound):
        keys.revoke_key(database_url, uuid.uuid4())
    with pytest.raises(TenantNotFound, match="no tenant named 'nobody'"):
        keys.create_key(database_url, "nobody")


def test_enqueue_records_tenant_and_end_user(stack: Stack) -> None:
    keys.create_tenant(stack.database_url, "acme")
    job_id = stack.enqueue("a fox", tenant="acme", end_user="user 42 ✓")
    default_id = stack.enqueue("a fox")
    with session_scope(stack.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.end_user == "user 42 ✓"
        assert job.tenant.name == "acme"
        assert session.get(Job, default_id).tenant_id == DEFAULT_TENANT_ID  # type: ignore[union-attr]
    from imagegen.worker.jobs.enqueue import enqueue_many

    many = enqueue_many(
        [{"prompt": "x", "tenant": "acme", "end_user": "u"}, "y"],
        settings=stack.settings(),
        app=stack.app(),
    )
    with session_scope(stack.database_url) as session:
        tenants = [session.get(Job, i).tenant.name for i in many]  # type: ignore[union-attr]
    assert tenants == ["acme", "default"]


def test_idempotency_keys_are_per_tenant(stack: Stack) -> None:
    keys.create_tenant(stack.database_url, "acme")
    mine = stack.enqueue("a fox", tenant="acme", idempotency_key="order-1")
    theirs = stack.enqueue("another fox", idempotency_key="order-1")  # no conflict, no leak
    assert mine != theirs
    assert stack.enqueue("a fox", tenant="acme", idempotency_key="order-1") == mine


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"tenant": "nobody"}, "unknown tenant 'nobody'"),
        ({"tenant": "Bad Name"}, "invalid tenant name"),
        ({"end_user": ""}, "end_user must be 1 to 200"),
        ({"end_user": "x" * 201}, "end_user must be 1 to 200"),
        ({"end_user": "a\x1bb"}, "printable"),
        ({"end_user": "   "}, "printable"),
    ],
)
def test_bad_tenant_or_end_user_is_refused_with_nothing_written(
    stack: Stack, fields: dict[str, str], words: str
) -> None:
    with pytest.raises(JobRequestError, match=words):
        stack.enqueue("a fox", **fields)
    from imagegen.worker.jobs.enqueue import enqueue_many

    with pytest.raises(JobRequestError, match=words):
        enqueue_many(["ok", {"prompt": "x", **fields}], settings=stack.settings(), app=stack.app())
    assert _count_jobs(stack.database_url) == 0


@pytest.mark.slow
def test_cli_tenant_and_key_lifecycle(stack: Stack) -> None:
    created = imagegen(stack, "tenant", "create", "acme", "--weight", "2")
    assert created.returncode == 0, created.stderr
    uuid.UUID(created.stdout.strip())
    listed = json.loads(imagegen(stack, "tenant", "list", "--json").stdout)
    assert {(t["name"], t["weight"]) for t in listed} == {("default", 1.0), ("acme", 2.0)}
    made = imagegen(stack, "tenant", "key", "create", "acme")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert made.stdout == key + "\n" and key.startswith("igk_")  # the key alone
    shown = imagegen(stack, "tenant", "key", "list", "acme", "--json")
    (row,) = json.loads(shown.stdout)
    assert key not in shown.stdout and key_hash(key) not in shown.stdout
    assert set(row) == {"id", "tenant", "prefix", "created_at", "last_used_at", "revoked_at"}
    assert row["revoked_at"] is None and key.startswith(row["prefix"])
    revoked = imagegen(stack, "tenant", "key", "revoke", row["id"])
    assert revoked.returncode == 0, revoked.stderr
    (row,) = json.loads(imagegen(stack, "tenant", "key", "list", "acme", "--json").stdout)
    assert row["revoked_at"] is not None
    with pytest.raises(Unauthenticated):
        resolve_key(stack.database_url, key)


@pytest.mark.slow
def test_cli_errors_are_one_line_with_their_exit_codes(stack: Stack) -> None:
    expected = [  # the arguments, the exit code, words of the one line
        (["tenant", "create", "Bad!"], 2, "invalid tenant name"),
        (["tenant", "create", "default"], 4, "exists already"),
        (["tenant", "key", "create", "nobody"], 3, "no tenant named"),
        (["tenant", "key", "list", "nobody", "--json"], 3, "nobody"),
        (["tenant", "key", "revoke", str(uuid.uuid4())], 3, "no API key"),
        (["tenant", "key", "revoke", "nope"], 2, "not a key id"),
        (["enqueue", "a fox", "--tenant", "nobody"], 2, "unknown tenant 'nobody'"),
        (["enqueue", "a fox", "--end-user", "a\x1bb"], 2, "end_user"),
    ]
    runs = at_once(partial(imagegen, stack, *args) for args, _, _ in expected)
    for done, (_, code, words) in zip(runs, expected, strict=True):
        one_line_error(done, code, words)
    assert _count_jobs(stack.database_url) == 0
    assert imagegen(stack, "tenant", "create", "acme").returncode == 0
    done = imagegen(stack, "enqueue", "a fox", "--tenant", "acme", "--end-user", "u-1")
    assert done.returncode == 0, done.stderr
    shown = json.loads(imagegen(stack, "job", done.stdout.strip(), "--json").stdout)
    assert (shown["tenant"], shown["end_user"]) == ("acme", "u-1")
    assert imagegen(stack, "enqueue", "another fox").returncode == 0  # the default tenant's
    listed = json.loads(imagegen(stack, "jobs", "--tenant", "acme", "--json").stdout)
    assert [j["id"] for j in listed] == [shown["id"]]
    assert len(json.loads(imagegen(stack, "jobs", "--json").stdout)) == 2
    one_line_error(imagegen(stack, "jobs", "--tenant", "nobody"), 3, "no tenant named")


def test_rows_written_without_a_tenant_get_the_default(database_url: str) -> None:
    (job_id,) = add_jobs(database_url, 1, "queued")  # a writer that predates tenants
    with session_scope(database_url) as session:
        assert session.get(Job, job_id).tenant_id == DEFAULT_TENANT_ID  # type: ignore[union-attr]
