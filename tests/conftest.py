"""Shared pytest fixtures."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import pytest
from hypothesis import settings as hypothesis_settings

from deploy.local.kafka import LocalKafka, free_ports
from streams.compiled import stale_compiled_message, stale_compiled_modules
from streams.settings import Settings

# Property tests assert outcomes, not speed: a cold import or a busy CI machine must not
# turn a slow first example into a failure.
hypothesis_settings.register_profile("abm", deadline=None)
hypothesis_settings.load_profile("abm")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Tests must not pass or fail on code that is no longer there (streams.compiled)."""
    stale = stale_compiled_modules()
    if stale:
        raise pytest.UsageError(stale_compiled_message(stale))


@pytest.fixture(scope="session")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A real single-node Kafka broker for the whole session, on free ports.

    Jars come from the Settings cache dir, so only the first run ever downloads them.
    """
    settings = Settings()
    port, controller_port = free_ports(2)
    kafka = LocalKafka(
        data_dir=tmp_path_factory.mktemp("kafka"),
        port=port,
        controller_port=controller_port,
        cache_dir=settings.kafka_cache_dir,
        version=settings.kafka_version,
    )
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka: LocalKafka) -> str:
    return local_kafka.bootstrap


NO_SERVER = (
    "CLICKHOUSE_URL is not set: this variant runs against a ClickHouse 24+ server "
    "(http(s)://user:pass@host:port; none can be installed on this machine); the embedded variant runs instead"
)


@contextmanager
def server_database() -> Iterator[str]:
    """CLICKHOUSE_URL pointing at a fresh database on that server, dropped afterwards; skips
    (saying why) when CLICKHOUSE_URL is unset."""
    url = os.environ.get("CLICKHOUSE_URL")
    if not url:
        pytest.skip(NO_SERVER)
    from streams.store import open_client

    admin = open_client(Settings(CLICKHOUSE_URL=url))
    name = f"abm_test_{uuid.uuid4().hex[:12]}"
    admin.command(f"CREATE DATABASE {name}")
    try:
        yield urlparse(url)._replace(path=f"/{name}").geturl()
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name} SYNC")
        admin.close()


@pytest.fixture(params=["embedded", "server"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for the embedded store; a fresh database of CLICKHOUSE_URL's server (or a skip)."""
    if request.param == "embedded":
        yield None
        return
    with server_database() as url:
        yield url
