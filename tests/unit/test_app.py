"""How the Faust app is configured where a setting decides correctness, not speed."""

from __future__ import annotations

from streams.app import create_app
from streams.settings import Settings


def test_table_partitions_have_no_standby_copies(tmp_path):
    # Faust drops standby changelog records fetched while it resumes the flow after a
    # recovery (its changelog queue is cleared on resume); the worker that then takes
    # the partition over restores the accounts of the dropped records from nothing.
    # Without standbys every restore replays the changelog as an active recovery.
    app = create_app(Settings(data_dir=tmp_path))
    assert app.conf.table_standby_replicas == 0
