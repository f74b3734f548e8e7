"""Cost end to end: a real worker and the emulator's x-fal-billable-units header."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.conftest import Stack, unique

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


def test_a_job_records_its_estimate_fals_units_and_the_bill(running: Stack) -> None:
    job_id = running.enqueue(unique("a harbour at night"), size="1536x1024", quality="medium")
    job = running.wait_terminal(job_id)
    assert job["status"] == "succeeded", job
    assert Decimal(job["estimated_cost_usd"]) == Decimal("0.107")  # the 2k bucket, medium
    # the emulator's units (its own formula); no pricing API there: 1 USD a unit
    assert Decimal(job["billable_units"]) == Decimal("0.08")
    assert Decimal(job["billed_cost_usd"]) == Decimal("0.08")
    assert job["possibly_billed"] is False
