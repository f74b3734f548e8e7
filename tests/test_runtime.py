"""The worker process builds one Runtime, however many threads ask for it first."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.conftest import Stack


def test_tasks_that_start_at_once_share_one_runtime(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.tasks as tasks
    from worker.settings import get_settings

    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    real_pool = tasks.GatewayPool

    def slow_pool(settings: Any) -> Any:  # widens the window in which threads race
        time.sleep(0.2)
        return real_pool(settings)

    monkeypatch.setattr(tasks, "GatewayPool", slow_pool)
    get_settings.cache_clear()
    tasks._build_runtime.cache_clear()
    try:
        built: list[Any] = []
        threads = [threading.Thread(target=lambda: built.append(tasks.runtime())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(built) == 8
        assert len({id(runtime) for runtime in built}) == 1
    finally:
        tasks._build_runtime.cache_clear()
        get_settings.cache_clear()


@pytest.mark.slow
def test_a_threads_pool_worker_sets_its_gil_switch_interval(stack: Stack) -> None:
    """IMAGEGEN_GIL_SWITCH_INTERVAL_S reaches the worker process (its warm-up logs it)."""
    stack.start_worker(extra_env={"IMAGEGEN_GIL_SWITCH_INTERVAL_S": "0.07"})
    deadline = time.monotonic() + 20
    while "worker.warmed" not in stack.logs():
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)
    warmed = next(line for line in stack.logs().splitlines() if "worker.warmed" in line)
    assert "gil_switch_interval_s=0.07" in warmed, warmed
