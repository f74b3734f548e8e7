"""The one exception hierarchy of imagegen.

``ImagegenError`` is the root. Input and lookup errors are raised to callers of the
enqueue API and the CLI; ``FalError`` and its subclasses are what the fal gateway turns
every answer from fal into. Only ``worker.fal.gateway`` sees fal-client's own exceptions.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class ImagegenError(Exception):
    """Root of every error imagegen raises on purpose."""


class ConfigurationError(ImagegenError):
    """The environment does not describe a usable setup (bad URL, missing FAL_KEY, ...)."""


class JobRequestError(ImagegenError, ValueError):
    """A job request is invalid; nothing was written or published.

    ``problems`` lists ``{"field": ..., "message": ...}`` per problem (the HTTP API's 422).
    """

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [{"field": "request", "message": message}]


class IdempotencyConflict(JobRequestError):
    """The idempotency key is already used by a job with other parameters."""


class JobNotFound(ImagegenError, LookupError):
    """No job has this id."""


class TenantNotFound(ImagegenError, LookupError):
    """No tenant has this name (or no key has this id)."""


class TenantConflict(ImagegenError):
    """A tenant with this name exists already."""


class Unauthenticated(ImagegenError):
    """An API key that no tenant has, or one that was revoked (the API's 401)."""


class ApiError(ImagegenError):
    """The HTTP API answered an error ``worker.client`` has no better class for."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class EnqueueError(ImagegenError):
    """The job could not be handed to the broker; no job row was left behind."""


# Service and state errors, for the CLI's exit codes and the API's 503 / 409 (issue 21, cli).
class ServiceUnavailable(ImagegenError):
    """A service imagegen needs cannot be used now (unreachable, refusing, not migrated).

    The message names the service by its DSN without the password, and says what to do.
    """

    def __init__(self, message: str, *, service: str, dsn: str | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.dsn = dsn


class JobConflict(ImagegenError):
    """The job's state does not allow the operation (cancelling a finished job)."""


class MediaError(ImagegenError):
    """An image could not be fetched, checked or stored (outputs and input images alike).

    ``retryable``: may pass on another try (a timeout, a 5xx, storage down); False for an
    answer that will not change (not an image, too large, a private address, a 404).
    """

    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class BadImage(MediaError):
    """The bytes are not an image of an accepted type, or its dimensions are out of bounds."""


class ImageTooLarge(BadImage):
    """The image (or its download) is over the byte limit."""


class UnsafeURL(MediaError):
    """A URL we will not fetch: not http(s), or its host is this machine or a private network."""


class DownloadFailed(MediaError):
    """The download did not complete (connection, timeout, an HTTP error answer)."""

    retryable = True


class StorageFailed(MediaError):
    """The image store (local directory or S3) did not take, give or delete an object."""

    retryable = True


class FalError(ImagegenError):
    """An answer from fal (or the lack of one), classified; carries what fal said."""

    retryable: bool = False
    #: ``x-fal-billable-units`` of the answer, when it carried one (a 422 may be billed);
    #: None: fal did not say (unknown, never read as 0). Set by the gateway's result read.
    billable_units: Decimal | None = None

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_type: str | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.error_type = error_type
        self.detail = detail


class PolicyRefusal(FalError):
    """The prompt was refused for content policy; permanent, never retried.

    ``source`` is ``fal``, or ``prefilter`` when our moderation step (``checker``: rules,
    openai) refused it before anything was sent.
    """

    def __init__(
        self,
        category: str,
        message: str,
        *,
        soft: bool,
        source: str = "fal",
        checker: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.category = category
        self.soft = soft
        self.source = source
        self.checker = checker


class TransientFalError(FalError):
    """A failure that may pass (429, 5xx, timeout, dropped connection); retried with backoff."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        resubmit: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s
        #: True when fal's request itself ended in failure, so trying again means a new
        #: (billable) submission; False when the request may still be alive at fal.
        self.resubmit = resubmit


class PermanentFalError(FalError):
    """fal rejected the request for good (validation, auth, not found, malformed answer)."""


class AccountLocked(PermanentFalError):
    """fal locked the account (403 "User is locked"): stop submitting until an operator acts."""


class RequestCancelled(PermanentFalError):
    """fal reports the request cancelled (``client_cancelled``): the job was cancelled."""


class DeadlineExceeded(PermanentFalError):
    """The job's deadline passed before fal finished it."""


# imagegen retry (worker/cli/retry.py)
class NotRetryable(ImagegenError):
    """The job cannot be retried: it did not fail (a refusal, a success, a cancel) or it
    was retried already."""


# Flower's view of a run (worker.tasks): the row has the outcome, these carry it to Celery.
class JobFailed(ImagegenError):
    """The job ended ``failed`` (recorded); its task raises it so Flower shows FAILURE."""


class JobRetrying(ImagegenError):
    """The job runs again later; Flower shows it (and its reason) while the task is RETRY."""


# Cost (worker/cost): a job is refused rather than priced at a guess.
class PriceUnknown(ImagegenError):
    """The price table has no entry for this model, quality or size: no estimate is made."""


class PricingUnavailable(ImagegenError):
    """fal's pricing API gave no usable unit price (refused the key, failed, odd answer).

    ``retryable``: a 5xx or no answer may pass later; a 401/403 or a malformed answer will not.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class QuotaExceeded(JobRequestError):
    """Queuing the job would pass one of its tenant's quotas; nothing was written.

    ``quota``: which one (``max_in_flight``, ``max_jobs_per_day``, ``max_spend_per_day_usd``,
    ``max_spend_per_month_usd``); ``retry_after_s``: when it may pass (the API's Retry-After).
    """

    def __init__(self, message: str, *, quota: str, retry_after_s: int) -> None:
        super().__init__(message, [{"field": quota, "message": message}])
        self.quota = quota
        self.retry_after_s = retry_after_s


class CoolingDown(QuotaExceeded):
    """The end user (or tenant) is in a repeat-offender cool-down: too many refused prompts
    recently; new jobs are refused until it ends (or an operator lifts it)."""
