"""The `abm` command line."""

from __future__ import annotations

import click

from deploy.local.kafka import kafka_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ABM Pulse: real-time account-based marketing on Kafka, Faust and ClickHouse.

    Configuration comes from ABM_* environment variables (see README.md).
    """


main.add_command(kafka_group)
