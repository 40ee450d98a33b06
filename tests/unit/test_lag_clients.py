"""streams.lag asks the broker every few seconds from a running worker: a broker that is
down must not leave a client behind at every refresh."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from deploy.local.kafka import free_port
from streams.lag import PartitionLag, group_lag, oldest_waiting_ms

ASKS: list[Callable[[str], Awaitable[Any]]] = [
    lambda bootstrap: group_lag(bootstrap, "group", ["topic"]),
    lambda bootstrap: oldest_waiting_ms(bootstrap, [PartitionLag("topic", 0, committed=3, log_end=5)]),
]


@pytest.mark.parametrize("ask", ASKS, ids=["group_lag", "oldest_waiting_ms"])
def test_no_client_is_left_open_when_the_broker_is_down(ask: Callable[[str], Awaitable[Any]]) -> None:
    reported: list[str] = []

    async def asked_of_nobody() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context["message"]))
        with pytest.raises(KafkaConnectionError):
            await ask(f"127.0.0.1:{free_port()}")  # nothing listens there
        gc.collect()  # an unclosed client reports itself when collected

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(asked_of_nobody())
    assert reported == [] and [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []
