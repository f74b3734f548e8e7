"""Alembic is the only author of the schema: up, down, and the models match."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

from worker.db import alembic_config, downgrade, upgrade


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
    engine.dispose()


def test_sqlite_default_migrates(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    upgrade(url)
    command.check(alembic_config(url))
    engine = create_engine(url)
    assert {"jobs", "job_attempts"} <= set(inspect(engine).get_table_names())
    engine.dispose()
