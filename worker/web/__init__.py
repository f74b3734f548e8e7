"""The HTTP API for web apps (FastAPI): jobs, stats, health, metrics and fal's webhooks."""

from .app import create_app

__all__ = ["create_app"]
