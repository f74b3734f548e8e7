"""The Celery application: Redis as broker, Postgres (the job table) as the source of truth.

Each job is a few short tasks (SUBMIT_TASK, COLLECT_TASK, then STORE_TASK, on JOB_QUEUE;
job callbacks on CALLBACK_QUEUE): a task holds a worker thread or process for milliseconds
to a few seconds, never for fal's latency, so concurrency is ordinary Celery sizing for
short tasks, e.g. ``--concurrency 32`` per process, prefork or threads.

Reliability settings (see shared reference notes on Celery + Redis): acks_late with
reject_on_worker_lost so a killed worker's task is redelivered, prefetch
IMAGEGEN_PREFETCH_MULTIPLIER (a guarded move of the job row makes a message delivered twice
harmless), and a short visibility timeout (IMAGEGEN_VISIBILITY_TIMEOUT_S, 90 s): the messages
a SIGKILLed worker had taken come back within about that long (kombu checks every 5 s), not
an hour later. It stays above the longest task (one POST or GET, IMAGEGEN_SUBMIT_TIMEOUT_S)
and every retry countdown, which ``worker.task_states`` caps at half of it (a longer wait,
a fleet-wide cool-down say, is enforced in Redis and re-checked).
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from celery import Celery
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

from imagegen.worker.constants import (
    CALLBACK_QUEUE,
    CALLBACK_TASK,
    COLLECT_TASK,
    COOLDOWN_TASK,
    JOB_QUEUE,
    NEXT_QUEUE,
    PURGE_INTERVAL_S,
    PURGE_TASK,
    STORE_TASK,
    SUBMIT_TASK,
    SWEEP_TASK,
)
from imagegen.worker.settings import Settings, get_settings


def create_app(settings: Settings) -> Celery:
    # worker.events: buffered task events survive a broker reconnect (celery/celery#8541)
    app = Celery(
        "imagegen",
        broker=settings.redis_url,
        include=["imagegen.worker.tasks"],
        events="imagegen.worker.events:Events",
    )
    redis = settings.redis_url.startswith(("redis", "unix"))
    transport: dict[str, Any] = {}
    if redis:
        transport = {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=settings.visibility_timeout_s if redis else None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=JOB_QUEUE,
        task_routes={
            SUBMIT_TASK: {"queue": JOB_QUEUE},
            COLLECT_TASK: {"queue": NEXT_QUEUE},
            STORE_TASK: {"queue": NEXT_QUEUE},
            CALLBACK_TASK: {"queue": CALLBACK_QUEUE},
            COOLDOWN_TASK: {"queue": CALLBACK_QUEUE},
        },
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        # Running tasks go on through a broker reconnect: their job rows guard against the
        # redelivered message (Celery's default until 6.0, said here, not in a warning).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_timeout=3,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        worker_hijack_root_logger=False,
        # A stage is one call to fal and a few writes; enforced by the prefork pool only
        # (the threads pool relies on the HTTP timeouts), below the visibility timeout.
        task_soft_time_limit=settings.visibility_timeout_s * 2 // 3,
        task_time_limit=settings.visibility_timeout_s * 5 // 6,
        beat_schedule={
            "sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_s},
            # retention is off unless asked for: nothing is deleted on a schedule by default
            **(
                {"purge": {"task": PURGE_TASK, "schedule": PURGE_INTERVAL_S}}
                if settings.image_retention_days or settings.prompt_retention_days
                else {}
            ),
        },
    )
    return app


app = create_app(get_settings())


@celeryd_after_setup.connect
def _quiet_reconnects(**_: Any) -> None:
    """Celery warns (7 lines) on every broker reconnect that the setting above may change
    in 6.0; after its logging setup, which shows every such warning."""
    warnings.filterwarnings(
        "ignore",
        message=r"\s*In Celery 5.1 we introduced an optional breaking change",
        category=CPendingDeprecationWarning,
    )


def worker_argv(*, concurrency: int, name: str | None = None, loglevel: str = "INFO") -> list[str]:
    """The documented way to start a worker process, as an argv (demo, tests, benchmarks)."""
    argv = [sys.executable, "-m", "celery", "-A", "imagegen.worker", "worker", "--pool", "threads"]
    argv += ["--concurrency", str(concurrency), "-Q", f"{JOB_QUEUE},{NEXT_QUEUE},{CALLBACK_QUEUE}"]
    argv += ["--without-gossip"]
    argv += ["--without-mingle", "-l", loglevel]
    return argv + (["-n", name] if name else [])


#: the worker's ``-l/--loglevel``, which our own log lines follow too (set at worker start)
_log_level = logging.INFO


@worker_init.connect
def _check_configuration(sender: Any = None, **_: Any) -> None:
    """Fail at worker start, not per job, when FAL_KEY is missing for the real fal.ai."""
    from imagegen.worker.errors import ConfigurationError
    from imagegen.worker.fal.gateway import resolve_key
    from imagegen.worker.logs import configure, get_logger

    global _log_level
    level = getattr(sender, "loglevel", None)
    _log_level = level if isinstance(level, int) else logging.INFO
    settings = get_settings()
    configure(settings.log_format, _log_level)
    if settings.worker_metrics_port is not None:
        from imagegen.worker.metrics import serve_worker_metrics

        serve_worker_metrics(settings.worker_metrics_port)
    try:
        resolve_key(settings)
    except ConfigurationError as exc:
        get_logger(__name__).critical("worker.misconfigured", error=str(exc))
        raise SystemExit(f"imagegen worker not started: {exc}") from None


@worker_process_init.connect
def _per_process(**_: Any) -> None:
    from imagegen.worker.logs import configure

    configure(get_settings().log_format, _log_level)


@setup_logging.connect
def _logging(loglevel: Any = None, **_: Any) -> None:
    """Celery's own lines (worker and beat) through our renderer: with a receiver connected
    here Celery installs no handler of its own and does not redirect stdout."""
    from imagegen.worker.logs import configure

    global _log_level
    _log_level = loglevel if isinstance(loglevel, int) else _log_level
    configure(get_settings().log_format, _log_level)


@celeryd_init.connect
def _worker_starting(instance: Any = None, **_: Any) -> None:
    """Before Celery's first words: our logging (its warnings too); in JSON mode no banner
    (lines of plain text) and its signal handlers' lines ("Warm shutdown") as JSON."""
    from imagegen.worker.logs import celery_says_json, configure

    settings = get_settings()
    configure(settings.log_format, _log_level)
    if instance is not None and settings.log_format == "json":
        instance.quiet = True
        celery_says_json()


@worker_process_shutdown.connect
def _metrics_process_gone(**_: Any) -> None:
    from imagegen.worker.metrics import process_gone

    process_gone()
