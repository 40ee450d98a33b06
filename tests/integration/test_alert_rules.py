"""The Prometheus alert rules in deploy/prometheus, checked and unit-tested by promtool
(taken from Debian's prometheus package on first use)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deploy.local.promtool import ensure_promtool
from streams.settings import Settings

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> Path:
    return ensure_promtool(Settings().kafka_cache_dir.parent / "promtool")


def test_rules_are_valid(promtool):
    checked = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout


def test_rules_fire_when_and_only_when_expected(promtool):
    tested = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=RULES, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_test():
    rules = (RULES / "alerts.yml").read_text()
    tests = (RULES / "alerts.test.yml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
    assert len(alerts) == 7
    for alert in alerts:
        assert f"alertname: {alert}" in tests, alert
