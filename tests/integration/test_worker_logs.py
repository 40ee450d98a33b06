"""ABM_LOG_FORMAT=json: every line the worker logs is one JSON object."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from deploy.local.worker_process import WorkerProcess
from streams.topics import prepare_topics
from tests.integration.support import isolated_settings

pytestmark = pytest.mark.integration


def test_json_logs(kafka_bootstrap, tmp_path):
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    asyncio.run(prepare_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log", extra_env={"ABM_LOG_FORMAT": "json"})
    worker.start()
    try:
        worker.wait_drained(timeout_s=60)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    lines = [line for line in (tmp_path / "worker.log").read_text().splitlines() if line.strip()]
    entries = [orjson.loads(line) for line in lines]  # raises on any line that is not JSON
    assert len(entries) > 10
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert any("Signal received" in entry["message"] for entry in entries)  # logged up to the end
