"""``imagegen poller``: the process that watches every request at fal (one per host).

Started like a Celery worker: one ``poller.ready`` line, SIGTERM or SIGINT stops it
gracefully (the status checks under way finish, at most 5 s), a second signal exits at
once. Killing it loses nothing: the rows it had claimed come due again after the claim
window, for this poller restarted or another one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Annotated

import typer
from structlog.stdlib import BoundLogger

from imagegen.worker.cli.app import app_settings, cli
from imagegen.worker.cli.errors import errors

#: exit code of a second signal (as a shell reports a process killed by SIGINT)
FORCED_EXIT = 130


@cli.command()
def poller(
    concurrency: Annotated[
        int, typer.Option(min=1, max=4096, help="Status checks at fal at once")
    ] = 64,
) -> None:
    """Watch the requests at fal and start each job's collect when fal has finished it."""
    from imagegen.worker.logs import configure

    with errors():
        settings = app_settings()
        configure(settings.log_format)
        asyncio.run(_serve(concurrency))


async def _serve(concurrency: int) -> None:
    from imagegen.worker.celery_app import app
    from imagegen.worker.db import check_database
    from imagegen.worker.fal.limits import FalLimiter
    from imagegen.worker.fal.poller import Poller
    from imagegen.worker.logs import get_logger

    log = get_logger("worker.poller")
    settings = app_settings()
    check_database(settings.database_url)
    if settings.poller_metrics_port is not None:
        from imagegen.worker.metrics import serve_worker_metrics

        serve_worker_metrics(settings.poller_metrics_port)
    # patient, like a worker's: a Redis restart is waited out (worker.redis_client)
    limiter = FalLimiter.for_url(
        settings.redis_url,
        limit=settings.fal_concurrency,
        lease_s=settings.generation_timeout_s,
        patient=True,
    )
    poller = Poller(settings, app=app, limiter=limiter, concurrency=concurrency)
    stop = asyncio.Event()
    _on_signals(stop, log)
    mode = "webhook" if settings.webhook_url else "poll"
    log.info("poller.ready", hostname=socket.gethostname(), mode=mode, concurrency=concurrency)
    await poller.run(stop)
    log.info("poller.stopped", **dict(poller.counts))


def _on_signals(stop: asyncio.Event, log: BoundLogger) -> None:
    """First SIGTERM/SIGINT: stop gracefully; a second one: exit now."""
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        if stop.is_set():
            os._exit(FORCED_EXIT)  # the operator insists: in-flight checks are claimed rows
        log.info("poller.stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)
