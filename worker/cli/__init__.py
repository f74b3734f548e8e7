"""The ``imagegen`` command: enqueue, inspect and operate. Rich for people, --json for programs.

Each module named in ``COMMAND_MODULES`` registers its commands on ``worker.cli.app.cli``
when imported; a new group of commands is a new module added to that tuple. Errors become
one line and an exit code in ``main`` (see ``worker.cli.errors``), whichever command raised.
"""

from __future__ import annotations

import importlib
import sys

from imagegen.worker.cli.app import cli, state
from imagegen.worker.cli.errors import report

#: The command modules, in the order their commands are listed in ``imagegen --help``.
COMMAND_MODULES = ("jobs", "ops", "comforts", "media", "serve", "poller", "tenants")

for _name in COMMAND_MODULES:
    importlib.import_module(f"imagegen.worker.cli.{_name}")

__all__ = ["cli", "main"]


def main() -> None:
    try:
        cli(prog_name="imagegen")
    except Exception as exc:
        if state.debug:
            raise
        sys.exit(report(exc))
