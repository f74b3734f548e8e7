"""What the poller does beside its checks, on short timers: queued jobs past their
deadline failed, free fal slots granted to waiting jobs (the fair share), stage messages
that were lost (Redis was away, a worker was killed with messages it had taken) published
again, and the at-fal gauge. The sweeper does the same on its longer schedule: a host
without a poller loses nothing, it only waits longer."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from imagegen.models import utcnow
from imagegen.worker import metrics
from imagegen.worker.fal import due
from imagegen.worker.jobs import fairshare
from imagegen.worker.jobs.hooks import fire
from imagegen.worker.jobs.sweeper import STAGED, republish

if TYPE_CHECKING:
    from imagegen.worker.fal.poller import Poller


class Housekeeping:
    EXPIRE_EVERY_S = 1.0
    COUNT_EVERY_S = 5.0

    def __init__(self, poller: Poller) -> None:
        self.poller = poller
        self._expire_at = self._count_at = 0.0

    async def maybe_run(self) -> None:
        now = time.monotonic()
        poller = self.poller
        if now >= self._expire_at:
            self._expire_at = now + self.EXPIRE_EVERY_S
            moved = await poller._db(lambda db: due.expire_queued(db, utcnow()))
            for one in moved:
                await asyncio.to_thread(fire, one, poller.app)
            # slots freed without a grant (a lease that ran out, a crash): to waiting jobs
            args = (poller.settings, poller.app, poller.limiter)
            await asyncio.to_thread(fairshare.grant, *args, always=True)
        if now >= self._count_at:
            self._count_at = now + self.COUNT_EVERY_S
            metrics.IN_FLIGHT.set(await poller._db(due.count_at_fal))
            # every 5 s, not the sweeper's minute: after a crash the stall is the grace alone
            await asyncio.to_thread(republish, poller.settings, poller.app, utcnow(), STAGED)
