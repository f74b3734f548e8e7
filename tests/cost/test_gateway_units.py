"""FalGateway reads ``x-fal-billable-units`` from the result GET, against the real emulator.

The session emulator (tests/conftest.py) serves HTTPS; the gateway drives the unmodified
fal-client at it. The emulator's units: num_images x rate[quality] x started megapixels +
0.005 per input image (docs/emulator.md).
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fal_client import client as fal_client_module
from PIL import Image

from imagegen.worker.errors import FalError, PermanentFalError, PolicyRefusal
from imagegen.worker.fal.gateway import FalGateway, FalResult
from tests.conftest import unique

pytestmark = pytest.mark.timeout(60)

T2I = "openai/gpt-image-2"
EDIT = "openai/gpt-image-2/edit"


class _NoHooks:
    def sending(self) -> None:
        pass

    def not_sent(self) -> None:
        pass


@pytest.fixture
def gateway(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FalGateway]:
    emulator.configure(latency_s=0.05)
    # fal-client reads its host at import; a conftest that imported it before the session's
    # emulator was up (tests/stages) left fal.ai's there, so point it at the emulator here
    monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", f"https://{emulator.host_port}/")
    gw = FalGateway(key="test-key-not-secret", submit_timeout_s=5, poll_timeout_s=5)
    yield gw
    gw.close()


def _run(gw: FalGateway, model: str, args: dict[str, Any]) -> FalResult:
    """Submit, wait for COMPLETED, read the result with its units."""
    rid = gw.submit(model, args, _NoHooks())
    deadline = time.monotonic() + 20
    while not gw.status(model, rid).done:
        assert time.monotonic() < deadline, "the emulator never completed the request"
        time.sleep(0.05)
    return gw.result_with_units(model, rid)


def _png_data_uri(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_text_to_image_units(gateway: FalGateway) -> None:
    # 1536x1024 is 1.5 MP, so 2 started megapixels: 1 x 0.04 x 2
    args = {"prompt": unique("a fox"), "quality": "medium", "num_images": 1}
    args["image_size"] = {"width": 1536, "height": 1024}
    got = _run(gateway, T2I, args)
    assert got.billable_units == Decimal("0.08")
    assert isinstance(got.billable_units, Decimal)
    assert len(got.output["images"]) == 1


def test_edit_units_count_the_input_images(gateway: FalGateway) -> None:
    # 2 images x 0.01 (low) x 1 MP + 0.005 x 2 inputs (an image and a mask)
    uri = _png_data_uri(64, 64)
    args = {
        "prompt": unique("paint it blue"),
        "image_urls": [uri],
        "mask_url": uri,
        "image_size": "square_hd",
        "quality": "low",
        "num_images": 2,
    }
    got = _run(gateway, EDIT, args)
    assert got.billable_units == Decimal("0.03")
    assert len(got.output["images"]) == 2


def test_result_keeps_working_without_units(gateway: FalGateway) -> None:
    rid = gateway.submit(T2I, {"prompt": unique("a hen"), "quality": "low"}, _NoHooks())
    while not gateway.status(T2I, rid).done:
        time.sleep(0.05)
    assert len(gateway.result(T2I, rid)["images"]) == 1


def test_units_absent_is_none_not_zero(gateway: FalGateway) -> None:
    # the emulator's no-images step answers 200 without the header
    got = _run(gateway, T2I, {"prompt": unique("[[fal:no-images]] an owl")})
    assert got.billable_units is None
    assert got.output["images"] == []


def test_an_error_answer_carries_its_units(gateway: FalGateway) -> None:
    # an input that is not an image: fal's 422 model error, with x-fal-billable-units: 0
    args = {"prompt": unique("fix it"), "image_urls": ["data:image/png;base64,aGVsbG8="]}
    with pytest.raises(PermanentFalError) as raised:
        _run(gateway, EDIT, args)
    assert raised.value.http_status == 422
    assert raised.value.billable_units == Decimal(0)
    assert raised.value.billable_units is not None


def test_a_refusal_without_the_header_has_unknown_units(gateway: FalGateway) -> None:
    with pytest.raises(PolicyRefusal) as raised:
        _run(gateway, T2I, {"prompt": unique("[[fal:late-refuse:violence]] a duel")})
    assert raised.value.billable_units is None


def test_fal_error_defaults_to_unknown_units() -> None:
    assert FalError("x").billable_units is None
