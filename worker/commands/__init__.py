"""The ``imagegen`` comforts: --version, config, doctor, enqueue-bulk, retry, enqueue --wait.

Each module does the work and returns data; ``verbs`` holds the thin Typer commands, and
``register`` adds them to the ``imagegen`` app.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from worker.commands import verbs

    verbs.register(app)
