"""The ``imagegen`` command: enqueue, inspect and operate. Rich for people, --json for programs.

Each module named in ``COMMAND_MODULES`` registers its commands on ``worker.cli.app.cli``
when imported; a new group of commands is a new module added to that tuple.
"""

from __future__ import annotations

import importlib

from worker.cli.app import cli

#: The command modules, in the order their commands are listed in ``imagegen --help``.
COMMAND_MODULES = ("jobs", "ops", "serve")

for _name in COMMAND_MODULES:
    importlib.import_module(f"worker.cli.{_name}")

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="imagegen")
