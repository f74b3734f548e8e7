"""Our log lines follow the worker's ``-l/--loglevel`` (``celery worker -l WARNING``)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from worker import celery_app
from worker.logs import get_logger


@pytest.mark.usefixtures("restore_structlog")
def test_the_worker_loglevel_filters_our_own_lines(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        celery_app._check_configuration(sender=SimpleNamespace(loglevel=logging.WARNING))
        log = get_logger("tests.level")
        log.info("job.succeeded", job_id="j1")
        log.warning("job.failed", job_id="j2")
        celery_app._per_process()  # a prefork child keeps the level
        get_logger("tests.level.child").info("job.succeeded", job_id="j3")
        err = capsys.readouterr().err
        assert "job.failed" in err and "j2" in err
        assert "job.succeeded" not in err
        celery_app._check_configuration(sender=SimpleNamespace(loglevel=logging.INFO))
        get_logger("tests.level.info").info("job.succeeded", job_id="j4")
        assert "j4" in capsys.readouterr().err
    finally:
        celery_app._log_level = logging.INFO
