"""Retention runs on a beat schedule only when a retention is set (off by default)."""

from __future__ import annotations

from imagegen.worker.celery_app import create_app
from imagegen.worker.constants import PURGE_TASK
from imagegen.worker.settings import Settings


def test_no_purge_is_scheduled_by_default() -> None:
    schedule = create_app(Settings()).conf.beat_schedule
    assert PURGE_TASK not in {entry["task"] for entry in schedule.values()}


def test_a_retention_schedules_the_daily_purge() -> None:
    for name in ("IMAGEGEN_IMAGE_RETENTION_DAYS", "IMAGEGEN_PROMPT_RETENTION_DAYS"):
        schedule = create_app(Settings(**{name: "30"})).conf.beat_schedule
        assert schedule["purge"] == {"task": PURGE_TASK, "schedule": 86_400.0}
