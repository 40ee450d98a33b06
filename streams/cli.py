"""The `abm` command line."""

from __future__ import annotations

import logging

import click

from deploy.local.kafka import kafka_group
from streams.compiled import stale_compiled_message, stale_compiled_modules
from streams.settings import Settings
from streams.simulator import simulate_command


class CommandLine(click.Group):
    """A broker or store a command cannot reach ends it with one line naming it and its
    setting (streams.dependencies), not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        from streams.dependencies import NOT_CONNECTED, Unreachable, unreachable_message

        try:
            return super().invoke(ctx)
        except Unreachable as exc:
            raise click.ClickException(str(exc)) from exc
        except NOT_CONNECTED as exc:
            raise click.ClickException(unreachable_message(exc, Settings())) from exc


@click.group(cls=CommandLine, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ABM Pulse: real-time account-based marketing on Kafka, Faust and ClickHouse.

    Configuration comes from ABM_* environment variables (see README.md).
    """
    stale = stale_compiled_modules()
    if stale:
        raise click.ClickException(stale_compiled_message(stale))


@main.command()
@click.option("--loglevel", default="info", show_default=True, help="worker log level")
def worker(loglevel: str) -> None:
    """Run the stream worker: validate, resolve, score and write to ClickHouse."""
    from streams.worker import run_worker

    run_worker(Settings(), loglevel)


@main.command()
def migrate() -> None:
    """Apply the ClickHouse migrations that are not applied yet."""
    from streams.store import apply_migrations, apply_retention, data_location, open_client

    settings = Settings()
    client = open_client(settings)
    applied = apply_migrations(client)
    for migration in applied:
        click.echo(f"applied {migration.version:03d}_{migration.name}")
    click.echo(f"{len(applied)} migration(s) applied to {data_location(settings)}")
    if apply_retention(client, settings.events_ttl_days):
        click.echo(f"events retention set to {settings.events_ttl_days or 'forever'} day(s)")


@main.command()
@click.argument("query")
@click.option("--json", "as_json", is_flag=True, help="print the rows as a JSON array of objects")
def sql(query: str, as_json: bool) -> None:
    """Run a SQL query on the store and print the result (tab-separated, with a header).

    With the embedded store, a running worker's read-only HTTP interface answers when
    ABM_CLICKHOUSE_HTTP_PASSWORD is set; otherwise the store is opened directly (stop the worker
    first: a chDB directory belongs to one process). CLICKHOUSE_URL may also name a
    worker's interface.
    """
    import orjson

    from streams.clickhouse_http import front_client
    from streams.store import open_client, open_store

    settings = Settings()
    # a server (or a worker's read-only interface) is queried as it is: no migration
    client = front_client(settings) or (open_client(settings) if settings.clickhouse_url else open_store(settings))
    result = client.query(query)
    if as_json:
        rows = [dict(zip(result.column_names, row)) for row in result.result_rows]
        click.echo(orjson.dumps(rows, default=str).decode())
        return
    click.echo("\t".join(result.column_names))
    for row in result.result_rows:
        click.echo("\t".join(str(value) for value in row))


@main.group()
def store() -> None:
    """The ClickHouse store: serve the embedded one to other processes."""


@store.command()
@click.option("--read-only", is_flag=True, help="refuse writes (enforced by the engine): for BI tools")
def serve(read_only: bool) -> None:
    """Serve the embedded store over ClickHouse's HTTP interface until Ctrl-C or SIGTERM.

    A chDB directory belongs to one process: this one owns it, and several workers
    (CLICKHOUSE_URL=http://USER:PASSWORD@HOST:PORT/default), `abm sql`, clickhouse-connect
    and BI tools share it through this server.
    """
    import asyncio
    import signal

    from streams.clickhouse_http import ClickHouseHttpFront, Credentials
    from streams.store import data_location, open_read_only_client, open_store

    settings = Settings()
    if settings.clickhouse_url:
        raise click.UsageError("CLICKHOUSE_URL is set: that server already speaks HTTP; `abm store serve` serves the embedded store")
    if not settings.clickhouse_http_password:
        raise click.UsageError("set ABM_CLICKHOUSE_HTTP_PASSWORD: the store is never served without a password")
    client = open_store(settings)  # migrated by its owner first
    front = ClickHouseHttpFront(
        open_read_only_client(settings) if read_only else client,
        Credentials(settings.clickhouse_http_user, settings.clickhouse_http_password),
    )

    async def run() -> None:
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
        runner = await front.serve(settings.clickhouse_http_host, settings.clickhouse_http_port)
        click.echo(
            f"serving {data_location(settings)} {'read-only ' if read_only else ''}on "
            f"http://{settings.clickhouse_http_host}:{settings.clickhouse_http_port} (user {settings.clickhouse_http_user})"
        )
        try:
            await stopping.wait()
        finally:
            await runner.cleanup()

    asyncio.run(run())


@main.command()
@click.option("--group", default=None, help="consumer group  [default: ABM_APP_ID]")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
@click.option("--watch", type=click.FloatRange(min=0.5), default=None, help="print again every N seconds until Ctrl-C")
@click.option("--max-lag", type=click.IntRange(min=0), default=None, help="exit with status 1 when the total lag exceeds N")
def lag(group: str | None, as_json: bool, watch: float | None, max_lag: int | None) -> None:
    """Consumer lag per topic and partition: committed offset vs. log end, from the broker."""
    import asyncio
    import time

    import orjson

    from streams.lag import group_lag, lag_rows, lag_table
    from streams.topics import consumed_topics

    settings = Settings()
    group = group or settings.app_id
    while True:
        rows = lag_rows(group, asyncio.run(group_lag(settings.kafka_bootstrap, group, consumed_topics(settings))))
        click.echo(orjson.dumps(rows).decode() if as_json else lag_table(rows))
        total = sum(int(row["lag"]) for row in rows)
        if max_lag is not None and total > max_lag:
            click.echo(f"total lag {total} exceeds {max_lag}", err=True)
            raise SystemExit(1)
        if watch is None:
            return
        time.sleep(watch)
        click.echo()


@main.command()
@click.option("--duration", default=20.0, show_default=True, help="seconds of simulated traffic")
@click.option("--rate", default=3000.0, show_default=True, help="simulated events per second")
@click.option("--accounts", default=300, show_default=True, help="simulated accounts")
@click.option("--seed", default=42, show_default=True, help="simulation seed")
def demo(duration: float, rate: float, accounts: int, seed: int) -> None:
    """Start a broker, the worker and the simulator; then print the funnel from ClickHouse."""
    from deploy.local.demo import run_demo

    run_demo(Settings(), duration, rate, accounts, seed)


main.add_command(kafka_group)
main.add_command(simulate_command)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
