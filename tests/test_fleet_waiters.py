"""Regression tests: jobs waiting for a fleet slot must neither hold one nor starve the fleet.

1. A run waiting in ``wait_for_turn`` must not take a slot when it renews its job lease
   (``keep_lease`` used to force-acquire: waiters past lease_s/2 filled the semaphore).
2. Webhook mode: parked requests hold every slot, waiters hold every worker thread, and the
   runs woken by the callbacks queue behind them: fal's callback must free the slot.
"""

from __future__ import annotations

import pytest

from tests.conftest import Stack, unique

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # every test here runs real processes


def test_waiters_past_half_their_lease_do_not_take_fleet_slots(stack: Stack) -> None:
    stack.emulator.configure(latency_s=3.0, concurrency_limit=None)
    stack.emulator.reset()  # the emulator is shared: its counters start here
    stack.env.update({"IMAGEGEN_FAL_CONCURRENCY": "1", "IMAGEGEN_LEASE_S": "4"})
    stack.start_worker("--concurrency", "4")
    ids = [stack.enqueue(unique(f"waiter {i}")) for i in range(4)]
    jobs = [stack.wait_terminal(i, timeout_s=40) for i in ids]
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert stack.emulator.stats()["active_peak"] == 1


def test_webhook_mode_does_not_deadlock_when_slots_and_threads_run_out(stack: Stack) -> None:
    stack.emulator.configure(latency_s=1.0, concurrency_limit=None)
    stack.emulator.reset()
    stack.env.update({"IMAGEGEN_FAL_CONCURRENCY": "2"})
    api = stack.start_api()
    stack.env.update(
        {"IMAGEGEN_WEBHOOK_URL": f"{api}/fal/webhook", "IMAGEGEN_WEBHOOK_FALLBACK_S": "300"}
    )
    stack.start_worker("--concurrency", "2")
    ids = [stack.enqueue(unique(f"burst {i}")) for i in range(8)]
    jobs = [stack.wait_terminal(i, timeout_s=40) for i in ids]
    assert {j["status"] for j in jobs} == {"succeeded"}
    stats = stack.emulator.stats()
    assert stats["status_polls_total"] == 0 and stats["active_peak"] <= 2
