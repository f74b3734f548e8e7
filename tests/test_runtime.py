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
