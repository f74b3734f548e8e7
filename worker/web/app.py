"""The FastAPI application: every route but ``/healthz`` and fal's webhook needs a key.

Clients send ``Authorization: Bearer <key>``: ``IMAGEGEN_API_KEY`` is the operator's (every
tenant's jobs, ``/metrics``), a tenant's key (``imagegen tenant key create``) sees and makes
only that tenant's jobs (``worker.web.auth``). fal's webhook authenticates by its ED25519
signature instead (fal cannot send our key). OpenAPI is served at ``/docs`` (and ``/openapi.json``).
"""

from __future__ import annotations

from celery import Celery
from fastapi import Depends, FastAPI

from imagegen.worker.errors import ConfigurationError
from imagegen.worker.settings import Settings, get_settings

from . import access, errors, fal_webhook, health, images, jobs, ui, uploads
from .auth import require_caller, require_operator


def create_app(settings: Settings | None = None, celery: Celery | None = None) -> FastAPI:
    """The API; raises ConfigurationError when IMAGEGEN_API_KEY is not set."""
    settings = settings or get_settings()
    if settings.api_key is None or not settings.api_key.get_secret_value().strip():
        raise ConfigurationError("IMAGEGEN_API_KEY is not set: the API refuses to run open")

    app = FastAPI(
        title="imagegen",
        summary="Queue image generations on fal.ai and read their outcomes.",
        version="1.0",
    )
    app.add_middleware(errors.BodyCap, settings=settings)
    app.state.settings = settings
    app.state.celery = celery
    app.state.storage = None  # opened on first use: worker.web.images.app_storage
    guarded = [Depends(require_caller)]
    app.include_router(jobs.router, dependencies=guarded)
    app.include_router(uploads.router, dependencies=guarded)
    app.include_router(images.router, dependencies=guarded)
    app.include_router(health.router)
    app.include_router(health.metrics_router, dependencies=[Depends(require_operator)])
    app.include_router(fal_webhook.router)
    ui.mount(app)  # the dashboard's pages: their own login (cookie) or the same bearer key
    errors.install(app)
    app.add_middleware(access.AccessLog)  # outermost: logs the body cap's 413s too
    return app
