"""Billed cost from fal's units, unknown kept as None, and "possibly billed" upper bounds."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from imagegen.worker.cost.billed import (
    SubmitFate,
    billed_cost,
    job_cost,
    parse_units,
    submission_cost,
    usd,
)

D = Decimal
EST = D("0.211")


@pytest.mark.parametrize(
    ("units", "price", "billed"),
    [
        ("0.08", "1", "0.080000"),
        ("0.03", "1.0", "0.030000"),
        ("3", "0.1", "0.300000"),  # exact: 3 x 0.1 is 0.3, not 0.30000000000000004
        ("0.1234565", "1", "0.123457"),  # half up at the 7th place
        ("0.1234564", "1", "0.123456"),
        ("0.0000004", "1", "0.000000"),
        ("0", "1", "0.000000"),
        ("2.5", "0.000001", "0.000003"),
    ],
)
def test_billed_is_units_times_unit_price_to_6_places(units: str, price: str, billed: str) -> None:
    got = billed_cost(D(units), D(price))
    assert got == D(billed)
    assert str(got) == billed  # 6 places, as a Decimal


def test_unknown_units_or_price_bill_unknown_not_zero() -> None:
    assert billed_cost(None, D(1)) is None
    assert billed_cost(D("0.5"), None) is None
    assert billed_cost(D(0), D(1)) == D(0)  # a reported 0 is a known zero


@pytest.mark.parametrize(
    ("header", "units"),
    [("0.08", D("0.08")), ("0", D(0)), (" 1.5 ", D("1.5")), ("12", D(12))],
)
def test_parse_units(header: str, units: Decimal) -> None:
    assert parse_units(header) == units


@pytest.mark.parametrize("header", [None, "", "abc", "-1", "NaN", "Infinity", "1e999999999"])
def test_unparseable_units_are_unknown(
    header: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert parse_units(header, request_id="rid-1") is None
    if header is not None:
        assert "rid-1" in caplog.text


def test_created_request_bills_what_fal_reported() -> None:
    sub = submission_cost(SubmitFate.CREATED, units=D("0.08"), unit_price=D(1), estimate_usd=EST)
    assert (sub.billable_units, sub.billed_usd) == (D("0.08"), D("0.08"))
    assert not sub.possibly_billed
    assert sub.spend_upper_bound_usd == D("0.08")


def test_created_request_with_unknown_units_is_bounded_by_the_estimate() -> None:
    sub = submission_cost(SubmitFate.CREATED, units=None, unit_price=D(1), estimate_usd=EST)
    assert sub.billable_units is None and sub.billed_usd is None
    assert sub.spend_upper_bound_usd == D("0.211")


def test_refusal_reporting_zero_units_is_a_known_zero() -> None:
    # a 422 refusal with x-fal-billable-units: 0 (fal's SDK sets 0 on validation errors)
    sub = submission_cost(SubmitFate.CREATED, units=D(0), unit_price=D(1), estimate_usd=EST)
    assert sub.billed_usd == D(0) and sub.spend_upper_bound_usd == D(0)


def test_not_created_costs_nothing_when_fal_said_nothing() -> None:
    sub = submission_cost(SubmitFate.NOT_CREATED, units=None, unit_price=D(1), estimate_usd=EST)
    assert sub.billable_units is None and sub.billed_usd is None  # unknown, as reported
    assert sub.spend_upper_bound_usd == D(0)  # but no request existed to bill


def test_lost_answer_is_possibly_billed_up_to_the_estimate() -> None:
    sub = submission_cost(SubmitFate.ANSWER_LOST, units=D(5), unit_price=D(1), estimate_usd=EST)
    assert sub.possibly_billed
    assert sub.billable_units is None and sub.billed_usd is None  # no result was read
    assert sub.spend_upper_bound_usd == EST


def test_job_cost_sums_submissions() -> None:
    subs = [
        submission_cost(SubmitFate.NOT_CREATED, units=None, unit_price=D(1), estimate_usd=EST),
        submission_cost(SubmitFate.ANSWER_LOST, units=None, unit_price=D(1), estimate_usd=EST),
        submission_cost(SubmitFate.CREATED, units=D("0.16"), unit_price=D(1), estimate_usd=EST),
    ]
    cost = job_cost(EST, subs)
    assert cost.billable_units == D("0.16")
    assert cost.billed_usd == D("0.16")
    assert cost.possibly_billed
    assert cost.spend_upper_bound_usd == D("0.371")  # 0 + 0.211 (lost) + 0.16 (billed)
    assert cost.estimate_usd == D("0.211000")


def test_job_cost_is_unknown_when_a_created_request_is() -> None:
    subs = [
        submission_cost(SubmitFate.CREATED, units=D("0.16"), unit_price=D(1), estimate_usd=EST),
        submission_cost(SubmitFate.CREATED, units=None, unit_price=D(1), estimate_usd=EST),
    ]
    cost = job_cost(EST, subs)
    assert cost.billable_units is None and cost.billed_usd is None
    assert not cost.possibly_billed
    assert cost.spend_upper_bound_usd == D("0.371")


def test_job_cost_counts_units_reported_on_a_submit_error() -> None:
    sub = submission_cost(SubmitFate.NOT_CREATED, units=D("0.5"), unit_price=D(2), estimate_usd=EST)
    cost = job_cost(EST, [sub])
    assert cost.billed_usd == D(1) and cost.spend_upper_bound_usd == D(1)


def test_a_job_that_never_reached_fal_is_a_known_zero() -> None:
    cost = job_cost(EST, [])
    assert (cost.billable_units, cost.billed_usd, cost.spend_upper_bound_usd) == (0, 0, 0)
    assert not cost.possibly_billed


def test_usd_rounds_half_up() -> None:
    assert usd(D("0.0000005")) == D("0.000001")
    assert usd(D("1")) == D("1.000000")
