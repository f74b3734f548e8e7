"""How the CLI reports errors: one line on stderr and a documented exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError

from worker.cli.app import err
from worker.errors import ImagegenError, JobNotFound, JobRequestError


@contextmanager
def errors() -> Iterator[None]:
    """Print our errors as one clear line and exit non-zero; no stack traces for users."""
    try:
        yield
    except (JobRequestError, JobNotFound) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except ValidationError as exc:  # the environment (Settings) is invalid
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err.print(f"[red]configuration error:[/red] {problems}", highlight=False)
        raise typer.Exit(2) from None
    except ImagegenError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
