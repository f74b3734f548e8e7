"""One typed settings object, read from the environment once per process."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from imagegen.worker.constants import (
    DEFAULT_DATABASE_URL,
    DEFAULT_EDIT_MODEL,
    DEFAULT_MODEL,
    DEFAULT_REDIS_URL,
    FAL_JWKS_URL,
)


class Settings(BaseSettings):
    """Every knob of imagegen. Environment names are given in the field docs."""

    # A ./.env file (KEY=value lines) fills in what the environment leaves unset:
    # environment variables win over it, and it wins over the defaults.
    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", frozen=True, env_file=".env", env_file_encoding="utf-8"
    )

    database_url: str = Field(default=DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    redis_url: str = Field(default=DEFAULT_REDIS_URL, alias="REDIS_URL")
    fal_key: SecretStr | None = Field(default=None, alias="FAL_KEY")
    model: str = Field(default=DEFAULT_MODEL, alias="IMAGEGEN_MODEL")

    # Retry policy: submissions per job, capped exponential backoff with full jitter.
    max_attempts: int = Field(default=5, ge=1, le=50, alias="IMAGEGEN_MAX_ATTEMPTS")
    backoff_base_s: float = Field(default=2.0, gt=0, alias="IMAGEGEN_BACKOFF_BASE_S")
    backoff_cap_s: float = Field(default=120.0, gt=0, alias="IMAGEGEN_BACKOFF_CAP_S")
    retry_after_cap_s: float = Field(default=600.0, gt=0, alias="IMAGEGEN_RETRY_AFTER_CAP_S")

    # HTTP towards fal: one submit POST, then status polls with a growing interval.
    submit_timeout_s: float = Field(default=30.0, gt=0, alias="IMAGEGEN_SUBMIT_TIMEOUT_S")
    poll_timeout_s: float = Field(default=30.0, gt=0, alias="IMAGEGEN_POLL_TIMEOUT_S")
    poll_initial_s: float = Field(default=1.0, gt=0, alias="IMAGEGEN_POLL_INITIAL_S")
    poll_max_s: float = Field(default=5.0, gt=0, alias="IMAGEGEN_POLL_MAX_S")
    poll_factor: float = Field(default=1.5, ge=1.0, alias="IMAGEGEN_POLL_FACTOR")
    # How long an idle connection to fal (or its file host) is kept for the next call.
    fal_keepalive_s: float = Field(default=60.0, gt=0, alias="IMAGEGEN_FAL_KEEPALIVE_S")
    generation_timeout_s: float = Field(default=900.0, gt=0, alias="IMAGEGEN_GENERATION_TIMEOUT_S")
    resubmit_unknown: bool = Field(default=False, alias="IMAGEGEN_RESUBMIT_UNKNOWN")
    verify_images: bool = Field(default=True, alias="IMAGEGEN_VERIFY_IMAGES")
    account_lock_ttl_s: int = Field(default=900, gt=0, alias="IMAGEGEN_ACCOUNT_LOCK_TTL_S")

    # Task messages a worker process reserves: threads x IMAGEGEN_PREFETCH_MULTIPLIER.
    prefetch_multiplier: int = Field(default=2, ge=1, le=16, alias="IMAGEGEN_PREFETCH_MULTIPLIER")

    # The most Postgres connections a process opens (5 kept open, the rest closed on return).
    db_pool_size: int = Field(default=15, ge=1, le=200, alias="IMAGEGEN_DB_POOL_SIZE")

    # Leases, the sweeper and deadlines (the job row is the source of truth).
    lease_s: float = Field(default=60.0, gt=0, alias="IMAGEGEN_LEASE_S")
    # a queued job whose message may be lost (a worker killed as it took it) is published
    # again after this; a second message for a job is harmless (the claim is a guarded move)
    queued_grace_s: float = Field(default=120.0, ge=0, alias="IMAGEGEN_QUEUED_GRACE_S")
    sweep_interval_s: float = Field(default=60.0, gt=0, alias="IMAGEGEN_SWEEP_INTERVAL_S")
    job_deadline_s: float = Field(default=3600.0, gt=0, alias="IMAGEGEN_JOB_DEADLINE_S")

    # Fleet-wide cap on fal requests in flight (a Redis semaphore); unset: no cap.
    fal_concurrency: int | None = Field(default=None, ge=1, alias="IMAGEGEN_FAL_CONCURRENCY")
    # At the cap, a freed slot goes to the tenant furthest below its weighted share; false:
    # to the oldest waiting job of any tenant (plain FIFO).
    fair_share: bool = Field(default=True, alias="IMAGEGEN_FAIR_SHARE")

    # Webhook mode: fal calls back (ED25519-signed) instead of being polled; polling resumes
    # for a job whose callback has not come IMAGEGEN_WEBHOOK_FALLBACK_S after its submit.
    webhook_url: str | None = Field(default=None, alias="IMAGEGEN_WEBHOOK_URL")
    webhook_fallback_s: float = Field(default=300.0, gt=0, alias="IMAGEGEN_WEBHOOK_FALLBACK_S")
    fal_jwks_url: str = Field(default=FAL_JWKS_URL, alias="IMAGEGEN_FAL_JWKS_URL")
    webhook_tolerance_s: float = Field(default=300.0, gt=0, alias="IMAGEGEN_WEBHOOK_TOLERANCE_S")

    # The HTTP API (`imagegen api`): clients send `Authorization: Bearer <IMAGEGEN_API_KEY>`.
    api_key: SecretStr | None = Field(default=None, alias="IMAGEGEN_API_KEY")
    # Signs the dashboard's session cookie (/ui); unset: derived from IMAGEGEN_API_KEY by
    # HMAC (worker.web.ui.session), so changing that key also ends every session.
    ui_secret: SecretStr | None = Field(default=None, alias="IMAGEGEN_UI_SECRET")
    # Larger request bodies get a 413; /healthz waits this long for a worker's answer.
    api_max_body_bytes: int = Field(default=1_048_576, ge=1024, alias="IMAGEGEN_API_MAX_BODY_BYTES")
    health_worker_timeout_s: float = Field(
        default=1.0, gt=0, le=10, alias="IMAGEGEN_HEALTH_WORKER_TIMEOUT_S"
    )

    # Job-event callbacks to web apps (per-job callback_url), HMAC-SHA256 signed.
    callback_secret: SecretStr | None = Field(default=None, alias="IMAGEGEN_CALLBACK_SECRET")
    callback_timeout_s: float = Field(default=10.0, gt=0, alias="IMAGEGEN_CALLBACK_TIMEOUT_S")
    # Input validation: a callback_url naming a loopback, private or link-local address is
    # refused at enqueue (server-side request forgery) unless this allows it.
    callback_allow_private: bool = Field(default=False, alias="IMAGEGEN_CALLBACK_ALLOW_PRIVATE")

    # Moderation pre-filter (worker/moderation): refuse before the billable call to fal.
    moderation: str = Field(default="off", alias="IMAGEGEN_MODERATION")
    moderation_rules_file: Path | None = Field(default=None, alias="IMAGEGEN_MODERATION_RULES_FILE")
    openai_base_url: str = Field(
        default="https://api.openai.com/v1", alias="IMAGEGEN_OPENAI_BASE_URL"
    )
    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_moderation_model: str = Field(
        default="omni-moderation-latest", alias="IMAGEGEN_OPENAI_MODERATION_MODEL"
    )
    # The anthropic checker (worker/moderation/anthropic_api.py: why this model); it shares
    # the timeout and fail-closed settings below with the openai checker.
    anthropic_base_url: str = Field(
        default="https://api.anthropic.com", alias="IMAGEGEN_ANTHROPIC_BASE_URL"
    )
    anthropic_api_key: SecretStr | None = Field(default=None, alias="ANTHROPIC_API_KEY")
    anthropic_moderation_model: str = Field(
        default="claude-haiku-5-5", alias="IMAGEGEN_ANTHROPIC_MODERATION_MODEL"
    )
    moderation_timeout_s: float = Field(default=5.0, gt=0, alias="IMAGEGEN_MODERATION_TIMEOUT_S")
    moderation_fail_closed: bool = Field(default=False, alias="IMAGEGEN_MODERATION_FAIL_CLOSED")

    # Prometheus (logs/metrics): a worker serves its own metrics on this port when set; the
    # API's /metrics has only the API's. IMAGEGEN_METRICS_PORT is the name it had before.
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        alias="IMAGEGEN_WORKER_METRICS_PORT",
        validation_alias=AliasChoices("IMAGEGEN_WORKER_METRICS_PORT", "IMAGEGEN_METRICS_PORT"),
    )

    # The poller (`imagegen poller`) serves its own metrics (jobs at fal) on this port when set.
    poller_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, alias="IMAGEGEN_POLLER_METRICS_PORT"
    )

    # Images: every output copied to our storage (file:PATH or s3://bucket/prefix; AWS_* for S3).
    storage_url: str = Field(default="file:./imagegen-images", alias="IMAGEGEN_STORAGE_URL")
    store_images: bool = Field(default=True, alias="IMAGEGEN_STORE_IMAGES")
    store_attempts: int = Field(default=5, ge=1, le=50, alias="IMAGEGEN_STORE_ATTEMPTS")
    image_max_bytes: int = Field(default=50_000_000, ge=1024, alias="IMAGEGEN_IMAGE_MAX_BYTES")
    download_timeout_s: float = Field(default=15.0, gt=0, alias="IMAGEGEN_DOWNLOAD_TIMEOUT_S")
    presign_ttl_s: int = Field(default=3600, ge=60, le=604800, alias="IMAGEGEN_PRESIGN_TTL_S")
    # Edit jobs: input images, checked before anything is billed.
    edit_model: str = Field(default=DEFAULT_EDIT_MODEL, alias="IMAGEGEN_EDIT_MODEL")
    input_max_bytes: int = Field(default=20_000_000, ge=1024, alias="IMAGEGEN_INPUT_MAX_BYTES")
    input_max_side: int = Field(default=8192, ge=16, alias="IMAGEGEN_INPUT_MAX_SIDE")
    input_max_images: int = Field(default=16, ge=1, le=64, alias="IMAGEGEN_INPUT_MAX_IMAGES")
    input_images_via: str = Field(
        default="auto",
        pattern="^(auto|fal_upload|presigned|data_uri)$",
        alias="IMAGEGEN_INPUT_IMAGES_VIA",
    )
    input_allow_private: bool = Field(default=False, alias="IMAGEGEN_INPUT_ALLOW_PRIVATE")
    # Retention (off when unset): `imagegen purge` and the beat schedule use these.
    image_retention_days: float | None = Field(
        default=None, gt=0, alias="IMAGEGEN_IMAGE_RETENTION_DAYS"
    )
    prompt_retention_days: float | None = Field(
        default=None, gt=0, alias="IMAGEGEN_PROMPT_RETENTION_DAYS"
    )

    # Cost: an estimate at enqueue (a price table), the bill from fal's units x unit price.
    price_table: Path | None = Field(default=None, alias="IMAGEGEN_PRICE_TABLE")
    fal_pricing_url: str = Field(default="https://api.fal.ai/v1", alias="IMAGEGEN_FAL_PRICING_URL")
    fal_pricing_ttl_s: float = Field(default=3600.0, gt=0, alias="IMAGEGEN_FAL_PRICING_TTL_S")

    # Repeat offenders: this many policy refusals of one end user (else tenant) within the
    # window start a cool-down of its new jobs (0 refusals: off).
    cooldown_refusals: int = Field(default=5, ge=0, alias="IMAGEGEN_COOLDOWN_REFUSALS")
    cooldown_window_min: float = Field(default=10.0, gt=0, alias="IMAGEGEN_COOLDOWN_WINDOW_MIN")
    cooldown_min: float = Field(default=30.0, gt=0, alias="IMAGEGEN_COOLDOWN_MIN")

    # Celery / Redis.
    # How long a message a worker took may stay unacknowledged before Redis hands it out again
    # (a SIGKILLed worker's): above the longest stage; retry countdowns are capped at half.
    visibility_timeout_s: int = Field(default=90, ge=30, alias="IMAGEGEN_VISIBILITY_TIMEOUT_S")
    log_format: str = Field(
        default="console", pattern="^(console|json)$", alias="IMAGEGEN_LOG_FORMAT"
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        """Parse the DSN once, here; plain postgres URLs get the psycopg 3 driver."""
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"DATABASE_URL is not a valid SQLAlchemy URL: {exc}") from None
        if url.drivername in ("postgres", "postgresql"):
            url = url.set(drivername="postgresql+psycopg")
        return url.render_as_string(hide_password=False)

    @field_validator("moderation")
    @classmethod
    def _moderation(cls, value: str) -> str:
        from imagegen.worker.moderation import parse_spec  # a ValueError naming the valid values

        return ",".join(parse_spec(value)) or "off"

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError("IMAGEGEN_WEBHOOK_URL must be an http(s) URL fal can reach")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("redis", "rediss", "unix", "sqla+sqlite"):
            raise ValueError(
                "REDIS_URL must look like redis://host:6379/0 "
                "(or sqla+sqlite:///file.db, the demo's embedded broker)"
            )
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
