"""How the CLI reports errors: one line on stderr, with the fix, and a documented exit code.

Exit codes: 0 done; 1 any other error (an unexpected one says how to see its traceback);
2 usage (bad arguments, invalid input or configuration); 3 not found (no such job, tenant
or key);
4 conflict (the job's state or an idempotency key does not allow it, the tenant exists); 69 service
unavailable (Postgres or Redis unreachable, refusing connections, or not migrated; sysexits'
EX_UNAVAILABLE). ``imagegen --debug ...`` raises instead, with the traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import click
import typer
from pydantic import ValidationError
from rich.text import Text

from imagegen.worker.cli.app import err, state
from imagegen.worker.cli.views import printable
from imagegen.worker.errors import (
    ConfigurationError,
    EnqueueError,
    IdempotencyConflict,
    ImagegenError,
    JobConflict,
    JobNotFound,
    JobRequestError,
    NotRetryable,
    ServiceUnavailable,
    TenantConflict,
    TenantNotFound,
)

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAVAILABLE = 69

#: Checked in order: a subclass before its base.
_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (IdempotencyConflict, EXIT_CONFLICT),
    (JobConflict, EXIT_CONFLICT),
    (NotRetryable, EXIT_CONFLICT),
    (TenantConflict, EXIT_CONFLICT),
    (JobNotFound, EXIT_NOT_FOUND),
    (TenantNotFound, EXIT_NOT_FOUND),
    (JobRequestError, EXIT_USAGE),
    (ConfigurationError, EXIT_USAGE),
    (ServiceUnavailable, EXIT_UNAVAILABLE),
    (EnqueueError, EXIT_UNAVAILABLE),
    (ImagegenError, EXIT_ERROR),
)


def report(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr; returns the exit code for it."""
    exc = _ours(exc)
    if isinstance(exc, ValidationError):  # the environment (Settings) is invalid
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        _line("configuration error", problems)
        return EXIT_USAGE
    for kind, code in _CODES:
        if isinstance(exc, kind):
            _line("error", str(exc))
            return code
    _line(
        "unexpected error",
        f"{type(exc).__name__}: {exc} (rerun with `imagegen --debug ...` for the traceback)",
    )
    return EXIT_ERROR


def _line(label: str, message: str) -> None:
    text = printable(" ".join(message.split()))
    err.print(Text.assemble((f"{label}: ", "red"), text), highlight=False)


def _ours(exc: BaseException) -> BaseException:
    """A driver's connection error as our ``ServiceUnavailable`` (the DSN without password)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        from imagegen.worker.cli.app import app_settings
        from imagegen.worker.db import database_unavailable

        return database_unavailable(app_settings().database_url, exc)
    if isinstance(exc, RedisConnectionError | RedisTimeout):
        from imagegen.worker.cli.app import app_settings

        dsn = _without_password(app_settings().redis_url)
        return ServiceUnavailable(
            f"Redis {dsn} is unreachable ({exc}): start Redis or fix REDIS_URL",
            service="redis",
            dsn=dsn,
        )
    return exc


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


@contextmanager
def errors() -> Iterator[None]:
    """Report any error raised inside as one line and exit with its code (``--debug``:
    let it through, with its traceback)."""
    try:
        yield
    except (click.exceptions.Exit, click.Abort, click.ClickException):
        raise
    except Exception as exc:
        if state.debug:
            raise
        raise typer.Exit(report(exc)) from None
