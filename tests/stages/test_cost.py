"""Cost in the job row: the estimate at enqueue, fal's units and the bill at collect, and
"possibly billed" for a submit whose answer was lost (worker/cost/record.py)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from imagegen.models import JobStatus, utcnow
from imagegen.worker.errors import JobRequestError, PricingUnavailable
from imagegen.worker.fal import fake
from imagegen.worker.fal.fake import FakeFal
from imagegen.worker.jobs import collect, submit
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.jobs.enqueue import _row
from imagegen.worker.jobs.params import validate_request
from tests.stages.kit import RecordingApp, add_job, job, make_deps, to_collecting


def test_a_job_is_estimated_at_enqueue_by_the_price_table(deps: Deps) -> None:
    row = job(deps, add_job(deps))  # defaults: landscape_4_3 (1k), high, one image
    assert row["estimated_cost_usd"] == Decimal("0.211")
    request = validate_request(
        {"prompt": "x", "quality": "low", "num_images": 3, "image_size": "2048x1536"},
        settings=deps.settings,
    )
    assert _row(request, deps.settings, utcnow())["estimated_cost_usd"] == Decimal("0.036")


def test_a_job_the_table_cannot_price_is_refused_naming_the_entry(
    url: str, fal: FakeFal, app: RecordingApp, tmp_path: Path
) -> None:
    table = tmp_path / "prices.toml"
    table.write_text(
        "[size_buckets]\n1k = 1048576\n\n[quality_aliases]\n\n"
        '[models."openai/gpt-image-2".per_image]\nlow = { 1k = 0.006 }\n'
    )
    deps = make_deps(url, fal, app, IMAGEGEN_PRICE_TABLE=str(table))
    request = validate_request({"prompt": "x", "quality": "high"}, settings=deps.settings)
    with pytest.raises(JobRequestError, match="high") as caught:
        _row(request, deps.settings, utcnow())
    assert "IMAGEGEN_PRICE_TABLE" in str(caught.value) and "not queued" in str(caught.value)


def test_collect_records_fals_units_and_the_bill(
    deps: Deps, fal: FakeFal, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagegen.worker.cost import record
    from imagegen.worker.cost.pricing import FixedPricing

    # fal's pricing API is not reachable here: a fixed unit price (as for the emulator)
    monkeypatch.setattr(record, "unit_prices", lambda _settings: FixedPricing(Decimal("2")))
    from imagegen.models import DEFAULT_TENANT_ID
    from imagegen.worker import metrics

    spend = metrics.SPEND.labels(str(DEFAULT_TENANT_ID))
    before = spend._value.get()
    fal.units = Decimal("0.25")
    job_id = add_job(deps)
    to_collecting(deps, job_id)
    assert collect.run(job_id, deps).summary == "succeeded"
    assert spend._value.get() - before == pytest.approx(0.5)  # the tenant's spend counter
    row = job(deps, job_id)
    assert (row["billable_units"], row["billed_cost_usd"]) == (Decimal("0.25"), Decimal("0.5"))
    assert row["possibly_billed"] is False


def test_units_fal_did_not_send_are_unknown_not_zero(deps: Deps, fal: FakeFal) -> None:
    fal.units = None
    job_id = add_job(deps)
    to_collecting(deps, job_id)
    collect.run(job_id, deps)
    row = job(deps, job_id)
    assert row["billable_units"] is None and row["billed_cost_usd"] is None


def test_a_refusal_in_the_result_records_what_fal_billed(deps: Deps, fal: FakeFal) -> None:
    fal.units = Decimal("0")
    job_id = add_job(deps)
    fal.then(fake.refuse_at_result("violence"))
    to_collecting(deps, job_id)
    assert collect.run(job_id, deps).summary == "refused:violence"
    row = job(deps, job_id)
    assert row["status"] is JobStatus.REFUSED and row["billable_units"] == Decimal("0")


def test_a_submit_whose_answer_was_lost_is_possibly_billed(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps)
    fal.then(fake.no_answer())
    assert submit.run(job_id, deps).failed
    row = job(deps, job_id)
    assert row["possibly_billed"] is True and row["billed_cost_usd"] is None
    assert row["estimated_cost_usd"] == Decimal("0.211")  # spend's upper bound


class _NoPricing:
    def unit_price(self, endpoint_id: str) -> Decimal:
        raise PricingUnavailable(f"no answer from fal's pricing API for {endpoint_id!r}")


def test_a_unit_price_that_cannot_be_read_leaves_the_bill_unknown(
    deps: Deps, fal: FakeFal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fal's pricing API does not answer: the units are kept, the bill is NULL, never 0."""
    from imagegen.worker.cost import record

    monkeypatch.setattr(record, "unit_prices", lambda _settings: _NoPricing())
    fal.units = Decimal("0.25")
    job_id = add_job(deps)
    to_collecting(deps, job_id)
    collect.run(job_id, deps)
    row = job(deps, job_id)
    assert row["billable_units"] == Decimal("0.25") and row["billed_cost_usd"] is None
