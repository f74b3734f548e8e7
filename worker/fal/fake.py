"""An in-memory fal queue for unit tests: the stand-in for ``worker.fal.gateway.FalGateway``.

Like dramatiq's ``StubBroker``: it implements what the stages use of fal (the
``worker.jobs.deps.Gateway`` protocol, plus ``status``) with no network, no emulator and
no fal-client, and records every call. Each submission follows a scripted ``Step``; its
error answers go through ``worker.fal.answers.classify_answer``, the real gateway's
classifier, so a test sees the very exceptions a real answer of that shape raises::

    fal = FakeFal()
    fal.script("a cat", rate_limited(retry_after_s=3), succeed(images=2))  # per prompt
    fal.then(no_answer())  # the next submission, whatever its prompt (per call)
    ... drive worker.jobs.submit.run / collect.run with Deps(gateway=fal, ...) ...
    assert fal.submits_of("a cat") == 2 and fal.cancels == []

A prompt's k-th submission uses its k-th step (the last one repeats); the per-call steps
of ``then`` come first. Unscripted submissions succeed with one image.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from imagegen.worker.constants import CONTENT_POLICY
from imagegen.worker.errors import FalError, PermanentFalError, TransientFalError
from imagegen.worker.fal.answers import classify_answer
from imagegen.worker.fal.gateway import FalResult, FalStatus, SubmitHooks

#: fal's CDN, as the fake's image URLs name it
FILES_URL = "https://fake.fal.media/files"


@dataclass(frozen=True)
class Reply:
    """One error answer from fal: an HTTP status (headers, JSON body), or none at all.

    ``status`` None: no answer came (a timeout, a dropped connection). ``connected`` False:
    the connection could not be opened, so a submit never left (``SubmitHooks.not_sent``).
    """

    status: int | None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    connected: bool = True

    def error(self, call: str) -> FalError:
        if self.status is None:
            kind = "ReadTimeout" if self.connected else "ConnectError"
            return TransientFalError(f"no answer from fal to the {call} ({kind}: fake)")
        raw = json.dumps(self.body).encode() if self.body is not None else b""
        return classify_answer(self.status, dict(self.headers), raw)


@dataclass(frozen=True)
class Step:
    """One submission's script: how fal answers its submit, then each read of its result.

    ``submit`` None: accepted (a request id). ``results``: the answers to successive result
    reads, None meaning the images (the last one repeats). ``failure``: what status() shows
    for a request that failed at fal (error_type, error).
    """

    submit: Reply | None = None
    results: tuple[Reply | None, ...] = (None,)
    images: int = 1
    failure: tuple[str, str] | None = None


def succeed(images: int = 1) -> Step:
    return Step(images=images)


def _policy_400(category: str) -> Reply:
    # the seed's shape: {"detail": {"error", "category", "message"}}
    message = f"Your request was flagged by our content policy ({category})."
    return Reply(
        400, {"detail": {"error": CONTENT_POLICY, "category": category, "message": message}}
    )


def _policy_422(category: str) -> Reply:
    # fal's documented model error: a 422 ``detail`` list
    entry = {
        "loc": ["body", "prompt"],
        "msg": f"Your request was flagged by our content policy ({category}).",
        "type": CONTENT_POLICY,
        "ctx": {"category": category},
    }
    return Reply(422, {"detail": [entry]}, {"X-Fal-Retryable": "false"})


def refuse_at_submit(category: str = "celebrity_likeness") -> Step:
    """fal refuses the prompt in its answer to the submit (400 content_policy_violation)."""
    return Step(submit=_policy_400(category))


def refuse_at_result(category: str = "hate_protected_group") -> Step:
    """fal accepts the request, then refuses it in its result (422 content_policy_violation)."""
    return Step(results=(_policy_422(category),))


def unavailable(status: int = 503) -> Step:
    """The submit is answered with a transient error page (an nginx-style 5xx)."""
    return Step(submit=Reply(status, {"detail": "Service Unavailable"}))


def rate_limited(retry_after_s: float | None = 1.0) -> Step:
    """The submit is answered 429, with Retry-After when ``retry_after_s`` is given."""
    headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else {}
    return Step(submit=Reply(429, {"detail": "Too many requests"}, headers))


def no_answer() -> Step:
    """The submit POST left and no answer came: fal may or may not have the request."""
    return Step(submit=Reply(None))


def not_connected() -> Step:
    """The connection could not be opened: the submit never left (not a submission)."""
    return Step(submit=Reply(None, connected=False))


def rejected(status: int = 422) -> Step:
    """The submit is rejected for good (a validation error)."""
    entry = {"loc": ["body", "num_images"], "msg": "Input is invalid", "type": "value_error"}
    return Step(submit=Reply(status, {"detail": [entry]}, {"X-Fal-Retryable": "false"}))


def account_locked() -> Step:
    """fal answers the submit 403 "User is locked" (an exhausted balance)."""
    detail = "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai."
    return Step(submit=Reply(403, {"detail": detail}))


def failed_at_fal(error_type: str = "runner_disconnected") -> Step:
    """fal accepted the request, then its generation failed (a new submission may pass)."""
    headers = {"X-Fal-Error-Type": error_type}
    reply = Reply(500, {"detail": "The runner went away", "error_type": error_type}, headers)
    return Step(results=(reply,), failure=(error_type, "The runner went away"))


def result_unavailable(status: int = 503) -> Step:
    """The request finished, but reading its result fails once (then it reads fine)."""
    return Step(results=(Reply(status, {"detail": "Service Unavailable"}), None))


@dataclass
class Submit:
    """One recorded submit call; ``request_id`` None when fal gave none."""

    model: str
    arguments: dict[str, Any]
    webhook_url: str | None
    request_id: str | None = None
    error: FalError | None = None

    @property
    def prompt(self) -> str:
        return str(self.arguments.get("prompt"))


@dataclass
class _Request:
    model: str
    step: Step
    reads: int = 0
    cancelled: bool = False


class FakeFal:
    """fal's queue in memory (``worker.jobs.deps.Gateway``); every call is recorded.

    ``while_sending``: called with the submit's arguments while its POST is out (after
    ``hooks.sending()``), for what happens meanwhile: a cancel, a worker that dies (raise).
    ``units``: the ``x-fal-billable-units`` every result read reports (None: no header),
    on the result and on the error a failed read raises alike.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, tuple[Step, ...]] = {}
        self._next: list[Step] = []
        self._requests: dict[str, _Request] = {}
        self.submits: list[Submit] = []
        self.results: list[str] = []
        self.statuses: list[str] = []
        self.checked: list[str] = []
        self.cancels: list[str] = []
        self.uploads: list[tuple[int, str]] = []
        self.while_sending: Callable[[dict[str, Any]], object] | None = None
        self.units: Decimal | None = Decimal("1")

    # scripting
    def script(self, prompt: str, *steps: Step) -> None:
        """The prompt's submissions follow ``steps`` in order (the last one repeats)."""
        self._scripts[prompt] = steps

    def then(self, *steps: Step) -> None:
        """The next submissions, whatever their prompt, follow ``steps`` (once each)."""
        self._next.extend(steps)

    def submits_of(self, prompt: str) -> int:
        return sum(1 for s in self.submits if s.prompt == prompt)

    def _step(self, prompt: str) -> Step:
        with self._lock:
            if self._next:
                return self._next.pop(0)
            steps = self._scripts.get(prompt)
            if not steps:
                return Step()
            k = sum(1 for s in self.submits if s.prompt == prompt)
        return steps[min(k, len(steps) - 1)]

    def _request(self, request_id: str) -> _Request:
        request = self._requests.get(request_id)
        if request is None:  # fal's answer for a request id it does not know
            raise classify_answer(404, {}, b'{"detail": "Request not found"}')
        return request

    # the Gateway protocol
    def submit(
        self,
        model: str,
        arguments: dict[str, Any],
        hooks: SubmitHooks,
        webhook_url: str | None = None,
    ) -> str:
        step = self._step(str(arguments.get("prompt")))
        call = Submit(model, dict(arguments), webhook_url)
        with self._lock:
            self.submits.append(call)
        hooks.sending()
        reply = step.submit
        if reply is not None and not reply.connected:
            hooks.not_sent()
        elif self.while_sending is not None:
            self.while_sending(dict(arguments))
        if reply is not None:
            call.error = reply.error("submit")
            raise call.error
        request_id = str(uuid.uuid4())
        with self._lock:
            self._requests[request_id] = _Request(model, step)
        call.request_id = request_id
        return request_id

    def status(self, model: str, request_id: str) -> FalStatus:
        """Every request is COMPLETED at once (with its error when it failed at fal)."""
        self.statuses.append(request_id)
        request = self._request(request_id)
        if request.cancelled:
            return FalStatus("COMPLETED", error="cancelled", error_type="client_cancelled")
        if request.step.failure is not None:
            error_type, error = request.step.failure
            return FalStatus("COMPLETED", error=error, error_type=error_type)
        return FalStatus("COMPLETED")

    def result(self, model: str, request_id: str) -> dict[str, Any]:
        return self.result_with_units(model, request_id).output

    def result_with_units(self, model: str, request_id: str) -> FalResult:
        self.results.append(request_id)
        request = self._request(request_id)
        results = request.step.results
        reply = results[min(request.reads, len(results) - 1)]
        request.reads += 1
        if reply is not None:
            error = reply.error("result")
            error.billable_units = self.units if reply.status is not None else None
            raise error
        images = [
            {"url": f"{FILES_URL}/{request_id}/{n}.png", "content_type": "image/png"}
            for n in range(request.step.images)
        ]
        return FalResult({"images": images, "seed": 42}, self.units)

    def upload(self, data: bytes, content_type: str) -> str:
        with self._lock:
            self.uploads.append((len(data), content_type))
            return f"https://fake.fal.media/uploads/{len(self.uploads)}"

    def check_images(self, images: list[dict[str, Any]]) -> None:
        for image in images:
            url = str(image["url"])
            self.checked.append(url)
            if not url.startswith(FILES_URL):
                raise PermanentFalError(f"fal returned an image URL that answers 404: {url}")

    def cancel(self, model: str, request_id: str) -> None:
        self.cancels.append(request_id)
        self._request(request_id).cancelled = True
