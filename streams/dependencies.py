"""The broker and the store at start: a worker started before them (a compose stack
coming up, a pod rescheduled while its broker restarts) waits for them instead of
crash-looping, and a command that cannot reach them says which one, through which
setting, in one line instead of a traceback."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from aiokafka.errors import KafkaConnectionError
from clickhouse_connect.driver.exceptions import OperationalError

from streams.settings import Settings
from streams.store import data_location

log = logging.getLogger(__name__)
Result = TypeVar("Result")

# Failures to connect only: any other error (a bad migration, a refused setting) is not
# cured by waiting, and keeps its traceback.
NOT_CONNECTED = (KafkaConnectionError, OperationalError)
RETRY_EVERY_S = 1.0


class Unreachable(RuntimeError):
    """A dependency did not answer within the start-up wait."""


def kafka_named(settings: Settings) -> str:
    return f"Kafka at {settings.kafka_bootstrap} (ABM_KAFKA_BOOTSTRAP)"


def store_named(settings: Settings) -> str:
    """The store without its credentials (streams.store.data_location)."""
    return f"ClickHouse at {data_location(settings)} (CLICKHOUSE_URL)"


def unreachable_message(exc: Exception, settings: Settings) -> str:
    """One line for a failure to connect (one of NOT_CONNECTED)."""
    what = kafka_named(settings) if isinstance(exc, KafkaConnectionError) else store_named(settings)
    return f"{what} unreachable: {_first_line(exc)}"


def when_reachable(
    what: str,
    attempt: Callable[[], Result],
    wait_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    """``attempt()``'s result, retried every second while it fails to connect, for up to
    ``wait_s``; then Unreachable, naming ``what`` and the last failure."""
    deadline = clock() + wait_s
    waited = False
    while True:
        try:
            return attempt()
        except NOT_CONNECTED as exc:
            reason = _first_line(exc)
            if clock() + RETRY_EVERY_S > deadline:
                raise Unreachable(f"{what} unreachable for {wait_s:g} s: {reason}") from exc
            if not waited:
                log.warning("%s unreachable (%s); waiting up to %g s for it", what, reason, wait_s)
                waited = True
            sleep(RETRY_EVERY_S)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
