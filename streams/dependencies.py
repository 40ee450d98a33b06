"""The broker and the store at start: a worker started before them (a compose stack
coming up, a pod rescheduled while its broker restarts) waits for them instead of
crash-looping, and one that cannot reach them says which one, through which setting,
in one line instead of a traceback."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from aiokafka.errors import KafkaConnectionError
from clickhouse_connect.driver.exceptions import OperationalError

log = logging.getLogger(__name__)
Result = TypeVar("Result")

# Failures to connect only: any other error (a bad migration, a refused setting) is not
# cured by waiting, and keeps its traceback.
NOT_CONNECTED = (KafkaConnectionError, OperationalError)
RETRY_EVERY_S = 1.0


class Unreachable(RuntimeError):
    """A dependency did not answer within the start-up wait."""


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
