"""Routing for the emulator: the fal queue protocol, image files and control endpoints."""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from .inputs import EDIT_PATH, FETCH_TIMEOUT_S, edit_problems, load_inputs
from .media import edit_output_size
from .protocol import (
    DEFAULT_SIZE,
    Protocol,
    cancel_reply,
    file_reply,
    parse_num_images,
    parse_size,
)
from .reply import Reply, json_reply
from .scenario import SUBMIT_STEPS, UnknownStep, step_for, submit_reply
from .state import QueueState, Request
from .transport import TLSHandler

_REQUEST_PATH = re.compile(
    r"/(?P<app>[^/]+/[^/]+)/requests/(?P<rid>[^/]+)(?P<tail>/status|/cancel)?"
)
JWKS_PATH = "/.well-known/jwks.json"
_FILE_PATH = re.compile(r"/_files/(?P<rid>[^/]+)/(?P<name>[^/]+)")
_TRUE = {"1", "true", "yes"}
NOT_FOUND = json_reply(404, {"detail": "Not Found"})
METHOD_NOT_ALLOWED = json_reply(405, {"detail": "Method Not Allowed"})
REQUEST_NOT_FOUND = json_reply(404, {"detail": "Request not found"})
# Infrastructure answers come before anything looks at the body; the others after the schema.
_PRE_SCHEMA_STEPS = SUBMIT_STEPS - {"refuse", "refuse422", "invalid"}
# fal's answer when the account already runs as many requests as it may (strict mode).
OVER_LIMIT = json_reply(429, {"detail": "Concurrent request limit reached"}, ("Retry-After", "1"))


@dataclass
class AppContext:
    state: QueueState
    protocol: Protocol
    expected_key: str | None = None
    jwks: dict[str, Any] = field(default_factory=dict)
    #: added to every answer of fal's API (not to /_emulator/ calls): the network round
    #: trip and fal's own handling, which a local emulator otherwise answers in ~1 ms
    round_trip_s: float = 0.0
    #: how long an edit's runner waits for each http(s) input image
    input_timeout_s: float = FETCH_TIMEOUT_S


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _submit_app(path: str) -> tuple[str, str] | None:
    """(owner/app, subpath) of a submit: status and result URLs use owner/app only."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2 or parts[0].startswith("_"):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def _quality(payload: dict[str, Any]) -> str:
    quality = payload.get("quality")
    return quality if isinstance(quality, str) else "high"


class FalHandler(TLSHandler):
    app: ClassVar[AppContext]

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        body = self.read_body()
        method = "GET" if self.command == "HEAD" else self.command
        reply = self._route(method, url.path, parse_qs(url.query), body)
        if self.app.round_trip_s > 0 and not url.path.startswith("/_emulator/"):
            reply = replace(reply, delay_s=reply.delay_s + self.app.round_trip_s)
        self.perform(reply)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Reply:
        if path.startswith("/_emulator/"):
            return self._control(method, path, query, body)
        file_match = _FILE_PATH.fullmatch(path)
        if file_match is not None:
            return self._file(method, file_match)
        if path == JWKS_PATH and method == "GET":
            return json_reply(200, self.app.jwks)
        if method == "POST":
            reply = self._submit(path, body, query.get("fal_webhook", [None])[-1])
            if reply.status == 429:
                self.app.state.count_rejection()
            return reply
        match = _REQUEST_PATH.fullmatch(path.rstrip("/"))
        if match is None:
            return NOT_FOUND
        return self._auth_failure() or self._request_op(method, match, query)

    def _file(self, method: str, match: re.Match[str]) -> Reply:
        req = self.app.state.get(match["rid"]) if method == "GET" else None
        reply = file_reply(req, match["name"])
        if reply.status == 200 and self.command == "GET":
            self.app.state.count_image()
        return reply

    def _auth_failure(self) -> Reply | None:
        scheme, _, key = (self.headers.get("Authorization") or "").partition(" ")
        if scheme != "Key" or not key.strip():
            return json_reply(401, {"detail": "Missing authorization header"})
        expected = self.app.expected_key
        if expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
            return json_reply(401, {"detail": "Invalid API key"})
        return None

    def _submit(self, path: str, body: bytes, webhook_url: str | None) -> Reply:
        payload = _json_object(body)
        prompt = payload.get("prompt") if payload is not None else None
        k = self.app.state.count_submission(prompt if isinstance(prompt, str) else None)
        target = _submit_app(path)
        if target is None:
            return NOT_FOUND
        failure = self._auth_failure()
        if failure is not None:
            return failure
        if payload is None:
            return json_reply(422, {"detail": "Request body must be a JSON object"})
        return self._accept(target, payload, k, webhook_url)

    def _accept(
        self, target: tuple[str, str], payload: dict[str, Any], k: int, webhook_url: str | None
    ) -> Reply:
        prompt = payload.get("prompt")
        prompt = prompt if isinstance(prompt, str) else ""
        try:
            step = step_for(prompt, k)
        except UnknownStep as error:
            return error.reply()
        edit = target[1] == EDIT_PATH
        if edit and step.name not in _PRE_SCHEMA_STEPS:
            problems = edit_problems(payload)
            if problems:
                return json_reply(422, {"detail": problems}, ("X-Fal-Retryable", "false"))
        if step.name in SUBMIT_STEPS:
            return submit_reply(step, payload)
        req = Request(
            rid=str(uuid.uuid4()),
            app=target[0],
            prompt=prompt,
            step=step,
            width=DEFAULT_SIZE[0],
            height=DEFAULT_SIZE[1],
            num_images=parse_num_images(payload.get("num_images")),
            created_wall=time.time(),
            webhook_url=webhook_url,
            quality=_quality(payload),
        )
        self._size(req, payload, edit)
        added = self.app.state.add(req)
        return OVER_LIMIT if added is None else self.app.protocol.submit_ok(added)

    def _size(self, req: Request, payload: dict[str, Any], edit: bool) -> None:
        """Output size from `image_size`, else (edits) from the first input, which the runner
        loads here: a failure is kept for the result GET, as fal reports it after the run."""
        size = payload.get("image_size")
        if edit:
            loaded = load_inputs(payload, self.app.input_timeout_s)
            req.inputs, req.load_error = loaded.count, loaded.error
            if size is None and loaded.first_size is not None:
                req.width, req.height = edit_output_size(*loaded.first_size)
                return
        req.width, req.height = parse_size(size)

    def _request_op(self, method: str, match: re.Match[str], query: dict[str, list[str]]) -> Reply:
        app, rid, tail = match["app"], match["rid"], match["tail"]
        state, protocol = self.app.state, self.app.protocol
        if tail == "/cancel":
            if method != "PUT":
                return METHOD_NOT_ALLOWED
            known = state.get(rid)
            outcome = state.cancel(rid) if known and known.app == app else "unknown"
            return cancel_reply(outcome, rid)
        if method != "GET":
            return METHOD_NOT_ALLOWED
        counter = "status_polls" if tail == "/status" else "result_gets"
        req = state.get(rid, counter)
        if req is None or req.app != app:
            return REQUEST_NOT_FOUND
        if tail == "/status":
            with_logs = query.get("logs", ["0"])[-1].lower() in _TRUE
            return protocol.status(req, with_logs)
        return protocol.result(req)

    def _control(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Reply:
        state = self.app.state
        if path == "/_emulator/stats" and method == "GET":
            summary = query.get("summary", ["0"])[-1].lower() in _TRUE
            return json_reply(200, state.stats(summary=summary))
        if path == "/_emulator/reset" and method == "POST":
            state.reset()
            return json_reply(200, {"ok": True})
        if path == "/_emulator/config" and method == "POST":
            return self._configure(_json_object(body))
        return NOT_FOUND

    def _configure(self, payload: dict[str, Any] | None) -> Reply:
        if payload is None:
            return json_reply(400, {"detail": "config body must be a JSON object"})
        latency = payload.get("latency_s")
        limit = payload.get("concurrency_limit", ...)
        reject = payload.get("reject_over_limit", ...)
        if latency is not None and (
            isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0
        ):
            return json_reply(400, {"detail": "latency_s must be a number >= 0"})
        if (
            limit is not ...
            and limit is not None
            and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1)
        ):
            return json_reply(400, {"detail": "concurrency_limit must be an int >= 1 or null"})
        if reject is not ... and not isinstance(reject, bool):
            return json_reply(400, {"detail": "reject_over_limit must be a boolean"})
        state = self.app.state
        state.configure(None if latency is None else float(latency), limit, reject)
        body = {
            "latency_s": state.latency_s,
            "concurrency_limit": state.concurrency_limit,
            "reject_over_limit": state.reject_over_limit,
        }
        return json_reply(200, body)


def bind_handler(app: AppContext) -> type[FalHandler]:
    """A FalHandler subclass bound to one emulator's state."""
    return type("BoundFalHandler", (FalHandler,), {"app": app})
