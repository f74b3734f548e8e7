"""Cost as the job table records it: the estimate at enqueue, the bill at collect.

The estimate comes from the configured price table (IMAGEGEN_PRICE_TABLE, else the shipped
one); a job it cannot price is refused at enqueue with the missing entry named, never
queued to be billed at an unknown price. The bill is fal's billable units of the result
GET times the endpoint's unit price from fal's pricing API (a fixed 1 USD/unit against the
emulator, which has no pricing API); a unit price that cannot be read leaves the bill
unknown (NULL), never 0.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from functools import lru_cache
from typing import Any

from imagegen.worker.cost.billed import billed_cost
from imagegen.worker.cost.estimate import estimate_cost
from imagegen.worker.cost.price_table import PriceTable
from imagegen.worker.cost.pricing import FixedPricing, PricingClient, UnitPrices
from imagegen.worker.errors import ImagegenError, JobRequestError, PriceUnknown
from imagegen.worker.logs import get_logger
from imagegen.worker.settings import Settings

log = get_logger(__name__)
_lock = threading.Lock()


@lru_cache(maxsize=4)
def _table(path: str | None) -> PriceTable:
    return PriceTable.load(path)


def estimate(settings: Settings, model: str, params: dict[str, Any], inputs: int = 0) -> Decimal:
    """The job's estimated cost; JobRequestError naming what the price table lacks."""
    with _lock:
        table = _table(str(settings.price_table) if settings.price_table else None)
    try:
        return estimate_cost(table, model, params, input_images=inputs)
    except PriceUnknown as exc:
        message = f"{exc} (IMAGEGEN_PRICE_TABLE): the job cannot be priced, so it is not queued"
        raise JobRequestError(message, [{"field": "model", "message": message}]) from None


@lru_cache(maxsize=4)
def _prices(production: bool, base_url: str, ttl_s: float, key: str | None) -> UnitPrices:
    if not production:
        return FixedPricing()
    return PricingClient(key=key or "", base_url=base_url, ttl_s=ttl_s)


def unit_prices(settings: Settings) -> UnitPrices:
    from imagegen.worker.fal.gateway import targets_production

    key = settings.fal_key.get_secret_value() if settings.fal_key else None
    with _lock:
        return _prices(
            targets_production(), settings.fal_pricing_url, settings.fal_pricing_ttl_s, key
        )


def bill(settings: Settings, model: str, units: Decimal | None) -> dict[str, Any]:
    """``billable_units`` and ``billed_cost_usd`` for the row (None: not known)."""
    if units is None:
        return {"billable_units": None, "billed_cost_usd": None}
    try:
        price: Decimal | None = unit_prices(settings).unit_price(model)
    except ImagegenError as exc:  # the units are kept: the bill can be worked out later
        log.warning("cost.unit_price_unknown", model=model, error=str(exc))
        price = None
    return {"billable_units": units, "billed_cost_usd": billed_cost(units, price)}
