"""The emulator's GPT Image 2 edit endpoint, big images and billable units, via real fal-client."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from imagegen.worker.fal.emulator import FalEmulator

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

EDIT = "openai/gpt-image-2/edit"


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def emu() -> Iterator[FalEmulator]:
    with FalEmulator(latency_s=0.1, input_timeout_s=2.0) as emulator:
        yield emulator


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/slow.png":  # longer than the emulator's input timeout (2 s)
            time.sleep(3)
        super().do_GET()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain-http server on 127.0.0.1 serving a 1000x750 PNG and a text file."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "in.png").write_bytes(png_bytes(1000, 750))
    (root / "notes.txt").write_text("not an image")
    handler = functools.partial(_QuietFiles, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fal(emu: FalEmulator, script: str) -> Any:
    """Run `script` (with `c`, a fal_client.SyncClient) in a subprocess; its last line as JSON."""
    code = "import json, fal_client\nc = fal_client.SyncClient(key='test')\n" + script
    env = {**os.environ, **emu.env(), "FAL_KEY": "test", "NO_PROXY": "127.0.0.1,localhost"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=40
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def edit(emu: FalEmulator, args: dict[str, Any]) -> dict[str, Any]:
    """Submit through fal-client, then status and result by id; the outcome as a dict."""
    script = f"""
args = json.loads({json.dumps(json.dumps(args))})
out = {{}}
try:
    h = c.submit({EDIT!r}, args)
    out["submit"] = {{"request_id": h.request_id, "status_url": h.status_url,
                     "response_url": h.response_url}}
    out["result"] = c.result({EDIT!r}, h.request_id)
    out["status"] = type(c.status({EDIT!r}, h.request_id)).__name__
except fal_client.client.FalClientHTTPError as e:
    out["error"] = {{"status": e.status_code, "body": e.response.json()}}
print(json.dumps(out))
"""
    return dict(fal(emu, script))


def raw_get(emu: FalEmulator, url: str) -> httpx.Response:
    tls = ssl.create_default_context(cafile=emu.ca_file)
    headers = {"Authorization": "Key test"}
    with httpx.Client(verify=tls, trust_env=False, headers=headers, timeout=10) as client:
        return client.get(url)


def test_edit_with_data_uri_polls_owner_app_urls_and_sizes_from_input(emu: FalEmulator) -> None:
    out = edit(emu, {"prompt": "make it blue", "image_urls": [data_uri(png_bytes(1000, 750))]})
    rid = out["submit"]["request_id"]
    base = f"https://{emu.host_port}/openai/gpt-image-2/requests/{rid}"  # no /edit
    assert out["submit"]["response_url"] == base
    assert out["submit"]["status_url"] == base + "/status"
    assert out["status"] == "Completed"
    image = out["result"]["images"][0]
    assert (image["width"], image["height"]) == (1008, 752)  # multiples of 16
    data = raw_get(emu, image["url"]).content
    assert Image.open(io.BytesIO(data)).size == (1008, 752)


def test_edit_with_http_input_and_explicit_size(emu: FalEmulator, files: str) -> None:
    args = {"prompt": "x", "image_urls": [f"{files}/in.png"], "mask_url": f"{files}/in.png"}
    out = edit(emu, args)
    assert out["result"]["images"][0]["width"] == 1008
    out = edit(emu, {**args, "image_size": "square"})
    assert (out["result"]["images"][0]["width"], out["result"]["images"][0]["height"]) == (
        512,
        512,
    )


def _detail(out: dict[str, Any], status: int = 422) -> dict[str, Any]:
    assert "error" in out, out
    assert out["error"]["status"] == status
    details = out["error"]["body"]["detail"]
    assert isinstance(details, list) and len(details) == 1, details
    return dict(details[0])


@pytest.mark.parametrize(
    ("image_urls", "loc", "kind"),
    [
        (None, ["body", "image_urls"], "missing"),
        ([], ["body", "image_urls"], "sequence_too_short"),
        ("http://x/a.png", ["body", "image_urls"], "list_type"),
        ([7], ["body", "image_urls", 0], "string_type"),
        (["ftp://x/a.png"], ["body", "image_urls", 0], "url_scheme"),
        (["data:text/plain;base64,aGk="], ["body", "image_urls", 0], "value_error"),
        (["http://x/a.png"] * 17, ["body", "image_urls"], "sequence_too_long"),
    ],
)
def test_schema_errors_are_422_at_submit(
    emu: FalEmulator, image_urls: Any, loc: list[Any], kind: str
) -> None:
    args: dict[str, Any] = {"prompt": "p"}
    if image_urls is not None:
        args["image_urls"] = image_urls
    out = edit(emu, args)
    assert "submit" not in out  # refused by the POST itself
    entry = _detail(out)
    assert entry["loc"] == loc
    assert entry["type"] == kind
    assert isinstance(entry["msg"], str) and entry["msg"]


def test_prompt_and_mask_are_checked(emu: FalEmulator) -> None:
    good = [data_uri(png_bytes(64, 64))]
    entry = _detail(edit(emu, {"image_urls": good}))
    assert (entry["loc"], entry["type"]) == (["body", "prompt"], "missing")
    entry = _detail(edit(emu, {"prompt": "p", "image_urls": good, "mask_url": "file:///m.png"}))
    assert (entry["loc"], entry["type"]) == (["body", "mask_url"], "url_scheme")


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        ("missing.png", "file_download_error", "HTTP 404"),
        ("slow.png", "file_download_error", "ReadTimeout"),
        ("notes.txt", "image_load_error", "not an image"),
    ],
)
def test_unloadable_input_fails_the_run(
    emu: FalEmulator, files: str, name: str, kind: str, reason: str
) -> None:
    good = data_uri(png_bytes(64, 64))
    out = edit(emu, {"prompt": "p", "image_urls": [good, f"{files}/{name}"]})
    assert "submit" in out  # accepted: inputs are fetched by the runner
    entry = _detail(out)
    assert entry["loc"] == ["body", "image_urls", 1]
    assert entry["type"] == kind
    assert "image_urls[1]" in entry["msg"] and reason in entry["msg"]
    assert entry["input"] == f"{files}/{name}"


def test_undecodable_data_uri_fails_the_run(emu: FalEmulator) -> None:
    out = edit(emu, {"prompt": "p", "image_urls": [data_uri(b"GIF89a garbage", "gif")]})
    assert "submit" in out
    entry = _detail(out)
    assert (entry["loc"], entry["type"]) == (["body", "image_urls", 0], "image_load_error")


def test_edit_refusals_use_the_scenario_directives(emu: FalEmulator) -> None:
    good = [data_uri(png_bytes(64, 64))]
    at_submit = edit(emu, {"prompt": "[[fal:refuse422:celebrity_likeness]] a", "image_urls": good})
    assert "submit" not in at_submit
    assert _detail(at_submit)["type"] == "content_policy_violation"
    late = edit(emu, {"prompt": "[[fal:late-refuse:trademark_ip]] b", "image_urls": good})
    assert "submit" in late
    entry = _detail(late)
    assert (entry["type"], entry["ctx"]["category"]) == ("content_policy_violation", "trademark_ip")


@pytest.mark.parametrize("size", [1_000_000, 8_000_000])
def test_bytes_modifier_gives_images_of_that_size(emu: FalEmulator, size: int) -> None:
    good = [data_uri(png_bytes(64, 64))]
    out = edit(emu, {"prompt": f"[[fal:ok+bytes:{size}]] big", "image_urls": good})
    image = out["result"]["images"][0]
    assert image["file_size"] == size
    response = raw_get(emu, image["url"])
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == size
    assert len(response.content) == size
    decoded = Image.open(io.BytesIO(response.content))
    assert decoded.size == (image["width"], image["height"])
    decoded.load()


def test_result_carries_billable_units(emu: FalEmulator) -> None:
    script = f"""
h = c.submit("openai/gpt-image-2", {{"prompt": "t2i", "quality": "low", "num_images": 2,
             "image_size": {{"width": 1024, "height": 1024}}}})
h.get()
e = c.submit({EDIT!r}, {{"prompt": "e", "image_urls": [{data_uri(png_bytes(64, 64))!r}]}})
e.get()
print(json.dumps([h.response_url, e.response_url]))
"""
    t2i_url, edit_url = fal(emu, script)
    assert raw_get(emu, t2i_url).headers["x-fal-billable-units"] == "0.02"  # 2 x 0.01 x 1 MP
    # default quality high, sized from the 64x64 input (816x816, under 1 MP): 0.16 + 0.005
    assert raw_get(emu, edit_url).headers["x-fal-billable-units"] == "0.165"
