"""GatewayPool: a gateway is never lent to two calls at once, and warm ones are reused."""

from __future__ import annotations

import threading

from tests.conftest import Stack, unique
from worker.fal_gateway import GatewayPool

MODEL = "openai/gpt-image-2"


class _Hooks:
    def __init__(self) -> None:
        self.sent = 0

    def sending(self) -> None:
        self.sent += 1

    def not_sent(self) -> None:
        self.sent -= 1


def test_calls_at_the_same_time_get_distinct_gateways_and_the_last_returned_comes_back(
    stack: Stack,
) -> None:
    pool = GatewayPool(stack.settings())
    with pool._lent() as first, pool._lent() as second:
        assert first is not second
    with pool._lent() as again:
        assert again is first  # last in, first out: the warmest connections
    assert pool.created == 2


def test_many_threads_polling_need_only_as_many_clients_as_calls_at_once(stack: Stack) -> None:
    pool = GatewayPool(stack.settings())
    hooks = _Hooks()
    request_id = pool.submit(MODEL, {"prompt": unique("pool")}, hooks)
    assert hooks.sent == 1
    errors: list[BaseException] = []
    at_once = threading.BoundedSemaphore(4)  # 32 threads, never more than 4 calls at a time

    def poll() -> None:
        try:
            for _ in range(10):
                with at_once:
                    pool.status(MODEL, request_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert 1 <= pool.created <= 4  # not one client per thread (32), nor per call (320)
    created = pool.created
    for _ in range(20):  # one caller at a time: no new client
        pool.status(MODEL, request_id)
    assert pool.created == created


def test_a_full_pool_makes_callers_queue_instead_of_building_more_clients(stack: Stack) -> None:
    pool = GatewayPool(stack.settings(), size=2)
    got_third = threading.Event()

    def third() -> None:
        with pool._lent():
            got_third.set()

    with pool._lent(), pool._lent():
        waiter = threading.Thread(target=third)
        waiter.start()
        assert not got_third.wait(0.3)  # both clients are lent: the third call queues
    assert got_third.wait(5.0)  # ... and gets one as soon as a call returns
    waiter.join()
    assert pool.created == 2


def test_fill_builds_every_client_once_at_worker_start(stack: Stack) -> None:
    pool = GatewayPool(stack.settings(), size=5)
    with pool._lent():  # one already built and lent
        pool.fill()
    assert pool.created == 5
    pool.fill()  # nothing missing: nothing built
    assert pool.created == 5
    lent = [pool._lent() for _ in range(5)]
    gateways = {id(cm.__enter__()) for cm in lent}
    assert len(gateways) == 5 and pool.created == 5  # all five from the filled pool
    for cm in lent:
        cm.__exit__(None, None, None)
