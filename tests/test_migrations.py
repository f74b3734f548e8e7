"""Alembic is the only author of the schema: up, down, and the models match."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from imagegen.worker.db import alembic_config, downgrade, upgrade


@pytest.mark.timeout(60)
def test_upgrade_downgrade_and_models_match(database_url: str) -> None:
    # The test database is already at head (cloned from the migrated template).
    command.check(alembic_config(database_url))  # raises if models and migrations differ
    downgrade(database_url, "base")
    engine = create_engine(database_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(database_url)
    tables = set(inspect(engine).get_table_names())
    assert {"jobs", "job_attempts"} <= tables
    indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
    assert {"ix_jobs_status_created_at", "ix_jobs_refusal_category_created_at"} <= indexes
    partial = _indexdefs(engine)
    for name, column in PARTIAL.items():  # migration 0007: only the rows with a value
        assert partial[name].endswith(f"WHERE ({column} IS NOT NULL)"), partial[name]
    assert "UNIQUE" in partial["uq_jobs_idempotency_key"]
    downgrade(database_url, "0006")  # and back: the full indexes and the unique constraint
    assert not any("WHERE" in d for d in _indexdefs(engine).values())
    upgrade(database_url)
    engine.dispose()


PARTIAL = {
    "ix_jobs_refusal_category_created_at": "refusal_category",
    "ix_jobs_fal_request_id": "fal_request_id",
    "uq_jobs_idempotency_key": "idempotency_key",
}


def _indexdefs(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'")
        ).all()
    return {name: definition for name, definition in rows}


def test_sqlite_default_migrates(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    upgrade(url)
    command.check(alembic_config(url))
    engine = create_engine(url)
    assert {"jobs", "job_attempts"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_an_idempotency_key_stays_unique_under_the_partial_index(database_url: str) -> None:
    """The key's uniqueness is the database's (enqueue's race falls back on it), not only
    enqueue's look-up; jobs without a key never conflict."""
    engine = create_engine(database_url)
    insert_job = text(
        "INSERT INTO jobs (id, prompt, params, model, status, attempts, idempotency_key, "
        "created_at, updated_at) VALUES (gen_random_uuid(), 'p', '{}', 'm', 'queued', 0, :key, "
        "now(), now())"
    )
    with engine.begin() as conn:
        conn.execute(insert_job, [{"key": "order-17"}, {"key": None}, {"key": None}])
    with pytest.raises(IntegrityError, match="uq_jobs_idempotency_key"), engine.begin() as conn:
        conn.execute(insert_job, {"key": "order-17"})
    engine.dispose()
