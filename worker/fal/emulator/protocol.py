"""Answers for the queue protocol: submit, status, result, cancel and image files."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Any

from .media import billable_units
from .png import colour_for, make_png, noise_png
from .reply import (
    DROP,
    HANG,
    PLAIN_ERROR_PAGE,
    Reply,
    html_reply,
    json_reply,
    rid_header,
    truncated_json_reply,
)
from .scenario import CONTENT_POLICY, policy_422, refusal_message
from .state import CancelOutcome, Request

SIZE_PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_SIZE = SIZE_PRESETS["landscape_4_3"]
MAX_EDGE = 4096
MAX_IMAGES = 8
_FILE_NAME = re.compile(r"(\d+)\.png")
BILLABLE_UNITS_HEADER = "x-fal-billable-units"


def _edge(value: Any) -> int | None:
    valid = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_EDGE
    return int(value) if valid else None


def parse_size(value: Any) -> tuple[int, int]:
    """An `image_size` preset name or {"width", "height"}; anything else gives the default."""
    if isinstance(value, str):
        return SIZE_PRESETS.get(value, DEFAULT_SIZE)
    if isinstance(value, dict):
        width, height = _edge(value.get("width")), _edge(value.get("height"))
        if width is not None and height is not None:
            return width, height
    return DEFAULT_SIZE


def parse_num_images(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return min(value, MAX_IMAGES)
    return 1


def _logs(req: Request) -> list[dict[str, Any]]:
    stamp = datetime.fromtimestamp(req.created_wall, UTC).isoformat()
    message = f"Generating {req.num_images} image(s) at {req.width}x{req.height}"
    return [{"message": message, "level": "INFO", "source": "USER", "timestamp": stamp}]


class Protocol:
    """Builds replies; URLs point at `host_port` over https."""

    def __init__(self, host_port: str) -> None:
        self.base_url = f"https://{host_port}"

    def request_url(self, req: Request) -> str:
        return f"{self.base_url}/{req.app}/requests/{req.rid}"

    def submit_ok(self, req: Request) -> Reply:
        url = self.request_url(req)
        body = {
            "status": "IN_QUEUE",
            "request_id": req.rid,
            "response_url": url,
            "status_url": url + "/status",
            "cancel_url": url + "/cancel",
            "queue_position": req.queue_position,
        }
        reply = json_reply(200, body, rid_header(req.rid))
        if req.step.name == "slow":
            return dataclasses.replace(reply, delay_s=req.step.seconds)
        return reply

    def status(self, req: Request, with_logs: bool) -> Reply:
        step, rid = req.step.name, rid_header(req.rid)
        if step == "status-drop":
            return DROP
        if step == "status-hang" and req.state != "IN_QUEUE":
            return HANG
        if req.state == "IN_QUEUE":
            queued = {"status": "IN_QUEUE", "queue_position": req.queue_position}
            return json_reply(202, queued, rid)
        logs = _logs(req) if with_logs else None
        if req.state == "IN_PROGRESS":
            return json_reply(202, {"status": "IN_PROGRESS", "logs": logs}, rid)
        if step == "status-unknown" and req.state == "COMPLETED":
            return json_reply(200, {"status": "EXPLODED"}, rid)
        body: dict[str, Any] = {
            "status": "COMPLETED",
            "logs": logs,
            "metrics": {"inference_time": req.inference_time},
        }
        body.update(_status_error(req))
        return json_reply(200, body, rid)

    def result(self, req: Request) -> Reply:
        rid = rid_header(req.rid)
        if req.state == "CANCELLED":
            return json_reply(400, {"detail": "Request was cancelled"}, rid)
        if req.state != "COMPLETED":
            return json_reply(400, {"detail": "Request is still in progress"}, rid)
        failure = _result_failure(req)
        if failure is not None:
            return failure
        units = billable_units(req.quality, req.width, req.height, req.num_images, req.inputs)
        return json_reply(200, self.output(req), rid, (BILLABLE_UNITS_HEADER, units))

    def output(self, req: Request) -> dict[str, Any]:
        data, width, height = image_for(req)
        size = len(data)
        missing = req.step.name == "url-404"
        images = [
            {
                "url": f"{self.base_url}/_files/{req.rid}/{'missing' if missing else i}.png",
                "content_type": "image/png",
                "file_name": f"{req.rid}-{i}.png",
                "file_size": size,
                "width": width,
                "height": height,
            }
            for i in range(req.num_images)
        ]
        return {"images": images, "seed": int(req.rid[:8], 16), "prompt": req.prompt}


def _status_error(req: Request) -> dict[str, str]:
    if req.state == "CANCELLED":
        return {"error": "Request cancelled", "error_type": "client_cancelled"}
    if req.step.name == "status-refuse":
        return {"error": refusal_message(req.step.arg or ""), "error_type": CONTENT_POLICY}
    if req.step.name == "runner-disconnected":
        return {"error": "Runner disconnected", "error_type": "runner_disconnected"}
    return {}


def image_for(req: Request) -> tuple[bytes, int, int]:
    """(PNG, width, height) of every output image: noise of the asked size with `bytes:N`."""
    if req.step.image_bytes is not None:
        return noise_png(req.step.image_bytes)
    return make_png(req.width, req.height, colour_for(req.rid)), req.width, req.height


def _result_failure(req: Request) -> Reply | None:
    step, rid = req.step.name, rid_header(req.rid)
    if req.load_error is not None:  # the runner could not load an input: fal's model error
        headers = [("X-Fal-Retryable", "false"), (BILLABLE_UNITS_HEADER, "0"), rid]
        return json_reply(422, {"detail": req.load_error}, *headers)
    if step in {"late-refuse", "status-refuse"}:
        return policy_422(req.step.arg or "", req.prompt, rid)
    if step == "header-refuse":
        headers = [("X-Fal-Error-Type", CONTENT_POLICY), ("X-Fal-Retryable", "false"), rid]
        return json_reply(500, {"detail": "Internal server error"}, *headers)
    if step == "runner-disconnected":
        body = {"detail": "Runner disconnected", "error_type": "runner_disconnected"}
        return json_reply(503, body, ("X-Fal-Retryable", "true"), rid)
    if step == "no-images":
        return json_reply(200, {"images": [], "seed": 1}, rid)
    if step == "result-malformed":
        return truncated_json_reply(rid)
    if step == "result-html":
        return html_reply(502, PLAIN_ERROR_PAGE)
    return None


def cancel_reply(outcome: CancelOutcome, rid: str) -> Reply:
    if outcome in {"queued", "running"}:
        return json_reply(202, {"status": "CANCELLATION_REQUESTED"}, rid_header(rid))
    if outcome == "completed":
        return json_reply(400, {"status": "ALREADY_COMPLETED"}, rid_header(rid))
    return json_reply(404, {"status": "NOT_FOUND"})


def file_reply(req: Request | None, name: str) -> Reply:
    """GET /_files/{rid}/{i}.png."""
    match = _FILE_NAME.fullmatch(name)
    if req is None or match is None or int(match.group(1)) >= req.num_images:
        return json_reply(404, {"detail": "File not found"})
    return Reply(status=200, body=image_for(req)[0], content_type="image/png")
