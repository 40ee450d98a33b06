"""The one typed settings object, read from environment variables (12-factor).

Every knob of the system lives here; nothing else reads os.environ for configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from processors.scoring import DEFAULT_MAX_CONTACTS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ABM_", frozen=True, extra="ignore")

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    topic_prefix: str = Field("abm", description="prefix of every topic name")
    topic_partitions: int = Field(8, ge=1, description="partitions of topics the project creates")
    topic_replication: int = Field(1, ge=1, description="replication factor of topics the project creates")

    # Local broker (abm kafka ...)
    kafka_port: int = Field(9092, ge=1, le=65535, description="port of the local broker")
    kafka_version: str = Field("4.1.1", description="Apache Kafka version fetched from Maven Central")
    kafka_cache_dir: Path = Field(
        Path.home() / ".cache" / "abm-pulse" / "kafka",
        description="where the Kafka jars are cached between runs",
    )

    # Storage
    data_dir: Path = Field(Path(".abm"), description="root of local state: broker logs, chDB, Faust tables")
    clickhouse_url: str | None = Field(
        None,
        validation_alias=AliasChoices("CLICKHOUSE_URL", "ABM_CLICKHOUSE_URL"),
        description="http(s)://user:pass@host:port/db of a ClickHouse server; unset = embedded chDB",
    )
    events_ttl_days: int = Field(0, ge=0, description="days of event time raw events are kept in ClickHouse (0 = forever); aggregates stay")
    state_store: str = Field("rocksdb://", description="Faust table store: rocksdb:// or memory://")
    # The embedded store over ClickHouse's HTTP interface: served read-only by the worker
    # that owns it, or read-write by `abm store serve` for several workers.
    clickhouse_http_host: str = Field("127.0.0.1", description="bind address of the embedded store's ClickHouse HTTP interface")
    clickhouse_http_port: int = Field(8123, ge=1, le=65535, description="port of the embedded store's ClickHouse HTTP interface")
    clickhouse_http_user: str = Field("abm", min_length=1, description="user the HTTP interface requires")
    clickhouse_http_password: str | None = Field(
        None, description="password the HTTP interface requires; unset = the worker serves none and `abm store serve` refuses to start"
    )

    # Worker
    app_id: str = Field("abm-pulse", description="Faust app id = consumer group")
    web_host: str = Field("127.0.0.1", description="worker web server bind address")
    web_port: int = Field(6066, ge=1, le=65535, description="worker web server port (/metrics, status)")
    batch_max_events: int = Field(5000, ge=1, description="most events an agent processes per batch")
    checkpoint_max_rows: int = Field(40000, ge=1, description="checkpoint when this many rows are buffered")
    state_cache_accounts: int = Field(
        10_000, ge=1, description="account states kept in memory between checkpoints (~2 KiB each); the others are read from RocksDB when touched"
    )
    schedule_accounts_per_partition: int = Field(
        20_000, ge=1, description="accounts due soonest the fall-back schedule keeps in memory per partition; the rest are found by scanning"
    )
    checkpoint_interval_s: float = Field(
        0.75, gt=0, description="checkpoint at least this often (rows reach ClickHouse): the latency of the data"
    )
    state_interval_s: float = Field(
        5.0, gt=0, description="write changed account states (RocksDB, changelog) and commit the events behind them at least this often"
    )
    startup_wait_s: float = Field(
        60.0, ge=0, description="how long a starting worker waits for the broker and the store to answer before it exits with an error"
    )
    log_format: Literal["text", "json"] = Field("text", description="worker logs: coloured text, or one JSON object per line")
    session_timeout_s: float = Field(
        15.0, ge=6, description="a worker that stops heartbeating (killed, frozen) loses its partitions after this long"
    )
    lag_refresh_s: float = Field(5.0, gt=0, description="how often the worker measures its consumer lag for /metrics")

    # Identity resolution
    directory_max_contacts: int = Field(
        2_000_000, ge=1000, description="contacts (ids and emails) the account directory keeps in memory; least recent dropped"
    )

    # De-duplication by (source, event id)
    dedup_horizon_hours: float = Field(48.0, ge=24, description="event-time span within which a repeated event id is recognised")
    dedup_max_ids_per_account: int = Field(200_000, ge=1000, description="cap on remembered event ids per account (past it, the oldest eighth is forgotten)")

    # Scoring
    score_half_life_days: float = Field(30.0, gt=0, description="half-life of an event's score contribution")
    max_contacts_per_account: int = Field(
        DEFAULT_MAX_CONTACTS, ge=100, description="engaged contacts an account's state remembers, the most recent (and twice as many capped-day memories)"
    )
    engagement_rules: Path | None = Field(
        None, description="TOML file overriding keys of the shipped engagement rules (weights, caps, seniority, stages)"
    )
    watermark_lateness_minutes: float = Field(
        5.0, ge=0, description="allowed lateness: events wait this long in event time before they move stages, so that their order does not matter"
    )
    max_held_events_per_account: int = Field(
        20_000, ge=100, description="events an account holds for the watermark; beyond it the earliest are applied at once"
    )

    @property
    def chdb_path(self) -> Path:
        return (self.data_dir / "clickhouse").resolve()

    @property
    def faust_dir(self) -> Path:
        return (self.data_dir / "faust").resolve()

    @property
    def kafka_dir(self) -> Path:
        return (self.data_dir / "kafka").resolve()

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"
