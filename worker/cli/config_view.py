"""``imagegen config`` and ``imagegen --version``: what this process runs with."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import SecretStr

from imagegen.worker.settings import Settings

MASK = "********"


def imagegen_version() -> str:
    try:
        return version("imagegen")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def settings_in_force(settings: Settings, env_file: Path = Path(".env")) -> dict[str, Any]:
    """Every setting by its environment name: its value (secrets masked, passwords cut
    from URLs) and where it came from: ``env``, ``.env`` or ``default``."""
    from_file = {k.upper() for k in dotenv_values(env_file)} if env_file.is_file() else set()
    from_env = {k.upper() for k in os.environ}
    shown: dict[str, Any] = {}
    for name, field in sorted(Settings.model_fields.items(), key=lambda kv: kv[1].alias or ""):
        env_name = field.alias or name.upper()
        source = "env" if env_name in from_env else ".env" if env_name in from_file else "default"
        shown[env_name] = {"value": _shown(getattr(settings, name)), "source": source}
    return shown


def _shown(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def mask_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``MASK``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
