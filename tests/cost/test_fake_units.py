"""FakeFal reports settable billable units, on results and failed result reads alike."""

from __future__ import annotations

from decimal import Decimal

import pytest

from imagegen.worker.errors import PolicyRefusal
from imagegen.worker.fal.fake import FakeFal, refuse_at_result

MODEL = "openai/gpt-image-2"


class _NoHooks:
    def sending(self) -> None:
        pass

    def not_sent(self) -> None:
        pass


def test_default_and_set_units() -> None:
    fal = FakeFal()
    rid = fal.submit(MODEL, {"prompt": "a cat"}, _NoHooks())
    assert fal.result_with_units(MODEL, rid).billable_units == Decimal(1)
    fal.units = Decimal("0.25")
    got = fal.result_with_units(MODEL, rid)
    assert got.billable_units == Decimal("0.25")
    assert got.output == fal.result(MODEL, rid)  # result() is the output alone
    fal.units = None
    assert fal.result_with_units(MODEL, rid).billable_units is None


def test_a_refused_result_carries_the_units() -> None:
    fal = FakeFal()
    fal.script("a duel", refuse_at_result("violence"))
    fal.units = Decimal(0)
    rid = fal.submit(MODEL, {"prompt": "a duel"}, _NoHooks())
    with pytest.raises(PolicyRefusal) as raised:
        fal.result_with_units(MODEL, rid)
    assert raised.value.billable_units == Decimal(0)
