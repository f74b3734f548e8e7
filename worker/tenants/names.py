"""What a tenant name and an end-user id may be; pure checks (``worker.jobs.params`` uses them)."""

from __future__ import annotations

import re

from imagegen.worker.errors import JobRequestError

#: lower case so that names never differ by case only; a leading letter or digit keeps them
#: clear of option syntax (``-x``) in the CLI
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_END_USER_CHARS = 200


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a tenant name (None: it is one)."""
    if not isinstance(name, str):
        return "a tenant name is a string"
    if not NAME_RE.fullmatch(name):
        return (
            f"invalid tenant name {name[:70]!r}: 1 to 64 characters of a-z, 0-9, _ and -, "
            "starting with a letter or digit"
        )
    return None


def check_name(name: str) -> str:
    """``name`` if it is a valid tenant name, else JobRequestError saying what is allowed."""
    problem = name_problem(name)
    if problem is not None:
        raise JobRequestError(problem, [{"field": "tenant", "message": problem}])
    return name


def end_user_problem(value: str) -> str | None:
    """Why ``value`` is not an end-user id: 1-200 printable characters, not blank."""
    if not 1 <= len(value) <= MAX_END_USER_CHARS:
        return f"end_user must be 1 to {MAX_END_USER_CHARS} characters, not {len(value)}"
    if not value.isprintable() or not value.strip():
        return "end_user must be printable characters (no control characters, not blank)"
    return None
