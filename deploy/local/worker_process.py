"""Runs `abm worker` and `abm store serve` as child processes: for the demo, the integration tests and the bench."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka.errors import KafkaError

from streams.lag import group_lag, total_lag
from streams.settings import Settings


@dataclass
class AbmProcess:
    """An `abm` command run as a child process, its output in a log file."""

    settings: Settings
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def command(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        """True once the process serves what it is for."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The environment with every one of these settings, so the child runs on exactly them."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABM_") and k != "CLICKHOUSE_URL"}
        for name, value in self.settings.model_dump().items():
            if value is not None:
                variable = "CLICKHOUSE_URL" if name == "clickhouse_url" else f"ABM_{name.upper()}"
                env[variable] = str(value.resolve()) if isinstance(value, Path) else str(value)
        env.update(self.extra_env)
        return env

    def start(self, ready_timeout_s: float = 120.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *self.command()],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.command()[0]} exited with {self._process.returncode}; log: {self.log_path}\n{self.log_tail()}")
            if self.answers():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{self.command()[0]} not ready after {ready_timeout_s}s; log: {self.log_path}\n{self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (final checkpoint, leave the group), SIGKILL if it hangs."""
        if self._process is None or self._process.poll() is not None:
            return None if self._process is None else self._process.returncode
        self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()

    def wait_exit(self, timeout_s: float) -> int:
        """The exit status of a process that is to stop on its own."""
        assert self._process is not None
        return self._process.wait(timeout_s)

    def kill(self) -> None:
        """kill -9: no checkpoint, no goodbye."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"{self.command()[0]} died with {self._process.returncode}; log: {self.log_path}\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class WorkerProcess(AbmProcess):
    """`abm worker`: ready once its status page answers."""

    def command(self) -> list[str]:
        return ["worker"]

    def answers(self) -> bool:
        return self.status() is not None

    def status(self) -> dict | None:
        """The worker's /abm/status document, or None while it does not answer."""
        url = f"http://127.0.0.1:{self.settings.web_port}/abm/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return orjson.loads(response.read())
        except OSError:
            return None

    def readiness(self) -> tuple[int, dict]:
        """The worker's /readyz: HTTP status and document."""
        url = f"http://127.0.0.1:{self.settings.web_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, orjson.loads(error.read())

    def ready(self) -> bool:
        """True once /readyz answers 200 (directory loaded, tables recovered, sink healthy)."""
        try:
            return self.readiness()[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float, poll_s: float = 0.05) -> None:
        """Waits until /readyz answers 200."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {timeout_s}s\n{self.log_tail()}")
            time.sleep(poll_s)

    def metrics(self) -> str:
        """The worker's /metrics page (Prometheus text format)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.web_port}/metrics", timeout=10) as response:
            return response.read().decode()

    def rss_bytes(self, peak: bool = False) -> int:
        """Resident memory of the worker process now, or its peak so far."""
        assert self._process is not None
        field = "VmHWM:" if peak else "VmRSS:"
        for line in Path(f"/proc/{self._process.pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc status")

    def cpu_seconds(self) -> float:
        """CPU time the worker process has used so far, all threads, user and system: what
        an event costs, whoever else shares the cores."""
        assert self._process is not None
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def lag(self) -> int:
        from streams.topics import consumed_topics

        topics = consumed_topics(self.settings)
        return total_lag(asyncio.run(group_lag(self.settings.kafka_bootstrap, self.settings.app_id, topics)))

    def wait_drained(self, timeout_s: float, poll_s: float = 0.5) -> float:
        """Waits until the group has committed everything in its input topics; returns when."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if self.lag() == 0:
                    return time.monotonic()
            except KafkaError as exc:
                # e.g. the group coordinator of a brand-new broker is still loading
                if not getattr(exc, "retriable", False):
                    raise
            time.sleep(poll_s)
        raise TimeoutError(f"worker still lagging after {timeout_s}s; log: {self.log_path}\n{self.log_tail()}")


@dataclass
class StoreServerProcess(AbmProcess):
    """`abm store serve`: the embedded store over ClickHouse's HTTP interface, so that
    several workers (and BI tools) share one engine."""

    read_only: bool = False

    def command(self) -> list[str]:
        return ["store", "serve", *(["--read-only"] if self.read_only else [])]

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.clickhouse_http_port}/ping", timeout=2) as response:
                return response.read() == b"Ok.\n"
        except OSError:
            return False

    @property
    def url(self) -> str:
        """CLICKHOUSE_URL for the clients of this store."""
        s = self.settings
        return f"http://{s.clickhouse_http_user}:{s.clickhouse_http_password}@127.0.0.1:{s.clickhouse_http_port}/default"
