"""Structured logging. Prompts are user data: log a job id and a short hash, never the text.

One renderer for every line a process writes: structlog's events and stdlib records
(Celery's, uvicorn's, libraries') all go through one ``ProcessorFormatter`` on the root
logger, so ``IMAGEGEN_LOG_FORMAT=json`` gives one JSON object per line throughout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
from structlog.stdlib import ProcessorFormatter

#: What every line carries, whether it came from structlog or from a stdlib logger.
_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

#: Libraries that log routine steps at INFO (httpx every request, fal-client's polls too;
#: alembic each plugin it loads): theirs only when something is wrong.
_CHATTY = ("httpx", "httpcore", "alembic.runtime.plugins")


def prompt_hash(prompt: str) -> str:
    """A short, stable fingerprint of a prompt for logs."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def formatter(log_format: str = "console") -> ProcessorFormatter:
    """The stdlib formatter that renders every record, ours and foreign, the same way."""
    renderer: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if log_format == "json"
        else [structlog.dev.ConsoleRenderer(colors=False)]
    )
    return ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[ProcessorFormatter.remove_processors_meta, *renderer],
    )


def configure(log_format: str = "console", level: int = logging.INFO) -> None:
    """structlog and the root logger to stderr, as key=value lines or JSON, at ``level``."""
    _configure_structlog(level)
    handler = _StderrHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    # ours replaced, anyone else's (a test runner's capture) left alone
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)]
    root.addHandler(handler)
    root.setLevel(level)
    _quiet_chatty(level)
    logging.captureWarnings(True)


def uvicorn_log_config(log_format: str, level: int = logging.INFO) -> dict[str, Any]:
    """uvicorn's ``log_config``: applied by uvicorn in each server process (``--workers``
    starts fresh ones), it builds our formatter there and hands uvicorn's loggers to it."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "imagegen": {"()": _formatter_for_dict_config, "log_format": log_format, "level": level}
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "imagegen",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def celery_says_json() -> None:
    """Celery's worker writes a few lines from its signal handlers ("worker: Warm shutdown")
    straight to a file descriptor, past logging (no locks in a signal handler): these too
    become one JSON line each, still written the same lock-free way."""
    import celery.apps.worker

    celery.apps.worker.safe_say = _say_json


def _say_json(msg: str, f: Any = sys.__stderr__) -> None:
    line = {
        "event": msg,
        "level": "info",
        "logger": "celery.apps.worker",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.write(f.fileno(), (json.dumps(line) + "\n").encode())


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def _formatter_for_dict_config(log_format: str, level: int) -> ProcessorFormatter:
    # dictConfig is the one hook uvicorn runs in every server process: structlog goes with it.
    _configure_structlog(level)
    _quiet_chatty(level)
    return formatter(log_format)


def _quiet_chatty(level: int) -> None:
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to ``sys.stderr`` as it is when a line is written (a test's capture, say)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_structlog(level: int) -> None:
    structlog.configure(
        processors=[*_SHARED, ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
