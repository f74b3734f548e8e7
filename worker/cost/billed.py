"""Billed cost: fal's billable units x its unit price, and what an unknown or lost answer counts.

fal bills per request in units of the endpoint's price (``x-fal-billable-units`` on the result
GET). Unknown is None everywhere here, never 0: a job whose units fal did not report has an
unknown bill, not a free one. A submit whose answer was lost may have created a request fal
runs and bills (its submit has no idempotency key), so it is "possibly billed" and its
estimate counts as an upper bound of spend.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum

log = logging.getLogger(__name__)

BILLABLE_UNITS_HEADER = "x-fal-billable-units"
#: money is kept to a millionth of a dollar (fal's billing events report nano-USD)
USD_PLACES = Decimal("0.000001")
#: more units than any one request could be billed: the header is garbage, not a bill (and
#: quantizing a number this size to 6 places would overflow Decimal's precision)
MAX_UNITS = Decimal(10) ** 9


def parse_units(value: str | None, *, request_id: str | None = None) -> Decimal | None:
    """The header's units as a Decimal; None when absent or not a number in [0, MAX_UNITS]."""
    if value is None:
        return None
    try:
        units = Decimal(value.strip())
    except InvalidOperation:
        units = None
    if units is None or not units.is_finite() or not 0 <= units <= MAX_UNITS:
        # the value is fal's, not user data; logged so an odd header is noticed
        log.warning("ignoring x-fal-billable-units %r (request %s)", value[:40], request_id)
        return None
    return units


def usd(amount: Decimal) -> Decimal:
    """An amount of dollars rounded (half up) to 6 places."""
    return amount.quantize(USD_PLACES, rounding=ROUND_HALF_UP)


def billed_cost(units: Decimal | None, unit_price: Decimal | None) -> Decimal | None:
    """``units x unit_price`` in USD to 6 places; None when either is unknown."""
    if units is None or unit_price is None:
        return None
    return usd(units * unit_price)


class SubmitFate(StrEnum):
    """What became of one submit POST, as far as billing goes."""

    #: fal answered the submit with an error: it made no request, so nothing ran
    NOT_CREATED = "not_created"
    #: fal gave a request id: it bills what the result GET reported
    CREATED = "created"
    #: the POST left and no answer came: fal may have a request it runs and bills
    ANSWER_LOST = "answer_lost"


@dataclass(frozen=True)
class SubmissionCost:
    """The cost of one submission to fal.

    ``billable_units`` is what fal reported (None: it did not say); ``billed_usd`` is None
    when the units or the unit price are unknown.
    """

    fate: SubmitFate
    billable_units: Decimal | None
    billed_usd: Decimal | None
    estimate_usd: Decimal

    @property
    def possibly_billed(self) -> bool:
        return self.fate is SubmitFate.ANSWER_LOST

    @property
    def spend_upper_bound_usd(self) -> Decimal:
        """The most this submission can have cost: the bill when known, else the estimate.

        NOT_CREATED with no units counts 0: no request existed to run (fal: 5xx is never
        charged, and a submit refused before a request id creates none).
        """
        if self.billed_usd is not None:
            return self.billed_usd
        if self.fate is SubmitFate.NOT_CREATED:
            return Decimal(0)
        return usd(self.estimate_usd)


def submission_cost(
    fate: SubmitFate,
    *,
    units: Decimal | None,
    unit_price: Decimal | None,
    estimate_usd: Decimal,
) -> SubmissionCost:
    """One submission's cost from what fal reported (units may be 0, or None: unknown).

    A lost answer has no result GET, so its units are unknown whatever is passed.
    """
    if fate is SubmitFate.ANSWER_LOST:
        units = None
    return SubmissionCost(fate, units, billed_cost(units, unit_price), estimate_usd)


@dataclass(frozen=True)
class JobCost:
    """A job's cost over all its submissions (a retried job may have several).

    ``billable_units`` / ``billed_usd``: sums of what fal reported; None when a request it
    created has unknown units (or price). ``possibly_billed``: some submit's answer was lost.
    """

    estimate_usd: Decimal
    billable_units: Decimal | None
    billed_usd: Decimal | None
    possibly_billed: bool
    spend_upper_bound_usd: Decimal


def job_cost(estimate_usd: Decimal, submissions: Iterable[SubmissionCost]) -> JobCost:
    """Add a job's submissions up; a job that never reached fal costs a known 0."""
    units: Decimal | None = Decimal(0)
    billed: Decimal | None = Decimal(0)
    possibly = False
    bound = Decimal(0)
    for sub in submissions:
        bound += sub.spend_upper_bound_usd
        possibly = possibly or sub.possibly_billed
        if sub.fate is SubmitFate.ANSWER_LOST:
            continue  # nothing was read: it counts in `bound` only
        if sub.fate is SubmitFate.NOT_CREATED and sub.billable_units is None:
            continue  # no request existed, and fal said nothing: 0
        units = None if units is None or sub.billable_units is None else units + sub.billable_units
        billed = None if billed is None or sub.billed_usd is None else billed + sub.billed_usd
    return JobCost(usd(estimate_usd), units, billed, possibly, bound)
