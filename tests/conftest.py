"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from deploy.local.kafka import LocalKafka, free_ports
from streams.settings import Settings

# Property tests assert outcomes, not speed: a cold import or a busy CI machine must not
# turn a slow first example into a failure.
hypothesis_settings.register_profile("abm", deadline=None)
hypothesis_settings.load_profile("abm")


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
