"""A single-node Apache Kafka (KRaft) broker for development and tests, without Docker.

The broker's jars come from Maven Central (Maven resolves the full runtime classpath of
`org.apache.kafka:kafka_2.13`), are cached per version, and the broker runs as a detached
JVM whose PID is kept in a file under its data directory, so `abm kafka stop` in another
shell (or a later test session) can find and end it.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
POM_TEMPLATE = HERE / "kafka-pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
VERSION_PLACEHOLDER = "@KAFKA_VERSION@"

# Explicit heap: the broker's default (1/4 of RAM) is far more than a dev broker needs,
# and a fixed floor avoids early GC churn while it starts.
BROKER_JVM_ARGS = ("-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true")
TOOL_JVM_ARGS = ("-Xmx256m", "-Djava.awt.headless=true")
LOG_TAIL_LINES = 40


class KafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped."""


# --------------------------------------------------------------------------- jars


def _require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise KafkaError(f"`{name}` was not found on PATH; it is needed to {why}.")
    return path


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    # Maven colours its output even with -B; escapes would garble our error messages.
    return "\n".join(_ANSI_ESCAPE.sub("", text).splitlines()[-lines:])


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Two processes (e.g. parallel test sessions) may fetch the same version at once;
    # an advisory lock makes the second one wait and then reuse the first one's download.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_kafka_jars(cache_dir: Path, version: str) -> Path:
    """Return `cache_dir/<version>/libs`, holding the broker's runtime classpath.

    Fetches it with Maven on first use. A marker file is written only after Maven
    succeeded, so an interrupted or failed fetch is redone from scratch next time.
    """
    version_dir = Path(cache_dir).expanduser().resolve() / version
    libs = version_dir / "libs"
    marker = version_dir / ".complete"
    pom_text = POM_TEMPLATE.read_text().replace(VERSION_PLACEHOLDER, version)
    # The marker names the pom it was fetched for: a changed pom fetches again.
    done = f"{version} {hashlib.sha256(pom_text.encode()).hexdigest()}\n"
    if marker.is_file() and marker.read_text() == done:
        return libs
    with _file_lock(version_dir / ".lock"):
        if marker.is_file() and marker.read_text() == done:  # fetched while we waited
            return libs
        mvn = _require_tool("mvn", "fetch the Kafka jars from Maven Central")
        _require_tool("java", "run Maven and the Kafka broker")
        marker.unlink(missing_ok=True)
        pom = version_dir / "pom.xml"
        pom.write_text(pom_text)
        # Maven copies into a scratch dir that is renamed at the end, so `libs` never
        # holds a half-copied classpath.
        staging = version_dir / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(libs, ignore_errors=True)
        cmd = [
            mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]  # fmt: skip
        result = subprocess.run(cmd, cwd=version_dir, capture_output=True, text=True)
        if result.returncode != 0:
            output = _tail(result.stdout + result.stderr)
            raise KafkaError(
                f"Maven failed ({result.returncode}) to fetch Kafka {version} jars:\n{output}"
            )
        if not (staging / f"kafka_2.13-{version}.jar").is_file():
            raise KafkaError(f"Maven finished but kafka_2.13-{version}.jar is missing in {staging}")
        staging.rename(libs)
        marker.write_text(done)
    return libs


# --------------------------------------------------------------------------- helpers


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports that are free on 127.0.0.1 right now (all held open while picking)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (for tests)."""
    return free_ports(1)[0]


def _port_in_use(port: int) -> bool:
    # SO_REUSEADDR like the JVM's server sockets: a port in TIME_WAIT is usable, a listener is not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _new_cluster_id() -> str:
    # Same format as Kafka's Uuid.randomUuid(): url-safe base64 of 16 bytes without padding,
    # never starting with "-" (it would be read as a command-line flag).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _pid_alive(pid: int) -> bool:
    # Reap the child if we started it in this process: a zombie still answers kill(pid, 0).
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            # A zombie leader may still have live threads (the JVM's shutdown hooks run
            # after its main thread ended): gone only once reaped, or once no thread is left.
            try:
                return os.waitpid(pid, os.WNOHANG)[0] != pid
            except ChildProcessError:  # not ours to reap
                return len(list(Path(f"/proc/{pid}/task").iterdir())) > 1
    return True


def _cmdline(pid: int) -> list[str] | None:
    """The process's argv, or None where /proc is unavailable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return [] if Path("/proc/self").exists() else None
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")


def _read_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            return _tail(handle.read().decode(errors="replace"), lines)
    except OSError:
        return ""


async def _metadata_probe(host: str, port: int, timeout_s: float) -> str | None:
    """Send a real Metadata request; return the cluster id if the broker answered with itself."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    conn = await asyncio.wait_for(
        create_conn(host, port, client_id="abm-kafka-probe", request_timeout_ms=int(timeout_s * 1000)),
        timeout_s,
    )
    try:
        response = await conn.send(MetadataRequest([]))
    finally:
        conn.close()
    if not response.brokers:
        return None
    return str(getattr(response, "cluster_id", "") or "")


def _run_probe(host: str, port: int, timeout_s: float) -> str | None:
    # start() is synchronous but may be called from async code (e.g. an async fixture),
    # where asyncio.run() is not allowed: then probe on a private loop in a worker thread.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_metadata_probe(host, port, timeout_s))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _metadata_probe(host, port, timeout_s)).result()


# --------------------------------------------------------------------------- broker


@dataclass(frozen=True)
class KafkaStatus:
    running: bool
    pid: int | None
    bootstrap: str
    log_path: Path


@dataclass
class LocalKafka:
    """A single-node KRaft broker+controller whose whole state lives in `data_dir`."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    cache_dir: Path = Path.home() / ".cache" / "abm-pulse" / "kafka"
    version: str = "4.1.1"
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.cache_dir = Path(self.cache_dir).expanduser()

    # Layout of data_dir -------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / "stdout.log"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "data"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "kafka.pid"

    # State --------------------------------------------------------------------------

    def _owns(self, pid: int) -> bool:
        # The PID file may outlive the broker and the PID be reused by another program;
        # only a live kafka.Kafka running our server.properties counts as "our broker".
        if not _pid_alive(pid):
            return False
        argv = _cmdline(pid)
        if argv is None:  # no /proc (not Linux): trust the PID file
            return True
        return "kafka.Kafka" in argv and str(self.config_path) in argv

    def _running_pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._owns(pid) else None

    def status(self) -> KafkaStatus:
        pid = self._running_pid()
        return KafkaStatus(pid is not None, pid, self.bootstrap, self.log_path)

    # Start --------------------------------------------------------------------------

    def _server_properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # Static single voter on loopback: survives a changed broker port and never
            # listens beyond this machine.
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.storage_dir),
            "num.partitions": "8",
            "default.replication.factor": "1",
            "auto.create.topics.enable": "true",
            # One broker: every internal topic must make do with a single replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Above the event contract's 1 MiB, so an oversized event still reaches the
            # worker and is dead-lettered with its reason rather than refused upstream.
            "message.max.bytes": str(4 << 20),
            # Consumers in tests should get partitions at once, not after 3 s.
            "group.initial.rebalance.delay.ms": "0",
            # A dev broker: keep a day or 1 GiB per partition, in 128 MiB segments.
            "log.retention.hours": "24",
            "log.retention.bytes": str(1 << 30),
            "log.segment.bytes": str(128 << 20),
            "log.retention.check.interval.ms": "300000",
        }
        lines = ["# Written by deploy/local/kafka.py on every start; edits are overwritten."]
        lines += [f"{key}={value}" for key, value in props.items()]
        return "\n".join(lines) + "\n"

    def _java_cmd(self, libs: Path, main_class: str, jvm_args: tuple[str, ...]) -> list[str]:
        java = _require_tool("java", "run the Kafka broker")
        return [
            java,
            *jvm_args,
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.log_dir}",
            # Kafka keeps logging while it shuts down; without log4j's own shutdown hook
            # those lines still reach server.log instead of stdout via SimpleLogger.
            "-Dlog4j2.shutdownHookEnabled=false",
            "-cp",
            f"{libs}/*",  # the JVM expands the wildcard itself
            main_class,
        ]

    def run_tool(self, main_class: str, *args: str, timeout_s: float = 120.0) -> str:
        """Runs one of Kafka's own command-line tools against this broker; its stdout."""
        libs = ensure_kafka_jars(self.cache_dir, self.version)
        cmd = [*self._java_cmd(libs, main_class, TOOL_JVM_ARGS), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise KafkaError(f"{main_class} failed ({result.returncode}):\n{_tail(result.stdout + result.stderr)}")
        return result.stdout

    def _format_storage(self, libs: Path) -> None:
        # meta.properties marks formatted storage; formatting again would fail (or, with
        # --ignore-formatted, silently keep a cluster id we never recorded).
        if (self.storage_dir / "meta.properties").is_file():
            return
        cmd = self._java_cmd(libs, "kafka.tools.StorageTool", TOOL_JVM_ARGS)
        cmd += ["format", "-t", _new_cluster_id(), "-c", str(self.config_path)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise KafkaError(
                f"formatting {self.storage_dir} failed:\n{_tail(result.stdout + result.stderr)}"
            )

    def _cluster_id(self) -> str | None:
        try:
            text = (self.storage_dir / "meta.properties").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
        return None

    def _spawn(self, libs: Path) -> subprocess.Popen[bytes]:
        cmd = self._java_cmd(libs, "kafka.Kafka", BROKER_JVM_ARGS) + [str(self.config_path)]
        with self.stdout_path.open("ab") as out:
            # Own session: Ctrl-C in the starting shell and the parent's exit do not reach
            # the broker; it is ended only through its PID.
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{process.pid}\n")
        return process

    def _failure(self, reason: str) -> KafkaError:
        return KafkaError(
            f"Kafka broker {reason}.\n--- {self.stdout_path} ---\n{_read_tail(self.stdout_path, 15)}"
            f"\n--- {self.log_path} ---\n{_read_tail(self.log_path)}"
        )

    def _wait_ready(self, pid: int, deadline: float) -> None:
        expected = self._cluster_id()
        while True:
            if not _pid_alive(pid):
                raise self._failure(f"process {pid} exited during start")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"was not ready on {self.bootstrap} in time")
            # A cheap TCP connect first, so the Kafka client is only used (and only logs
            # connection errors) once the listener is up.
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                cluster = _run_probe("127.0.0.1", self.port, min(5.0, remaining))
            except Exception:  # noqa: BLE001 - refused, reset, timeout, protocol error: not yet
                cluster = None
            if cluster is not None and (not expected or not cluster or cluster == expected):
                return
            time.sleep(0.2)

    def start(self, timeout: float = 90) -> None:
        """Start the broker and wait until it answers a Metadata request; no-op if running.

        `timeout` bounds the broker's start, not a first-time download of the jars.
        """
        if self._running_pid() is not None:
            return
        libs = ensure_kafka_jars(self.cache_dir, self.version)
        deadline = time.monotonic() + timeout
        for port in (self.port, self.controller_port):
            if _port_in_use(port):
                raise KafkaError(f"port {port} on 127.0.0.1 is already in use")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._server_properties())
        self._format_storage(libs)
        self._process = self._spawn(libs)
        try:
            self._wait_ready(self._process.pid, deadline)
        except BaseException:
            # A broker that did not come up (or a start aborted by Ctrl-C) must not linger.
            self._terminate(self._process.pid, timeout=10)
            raise

    # Stop ---------------------------------------------------------------------------

    def _terminate(self, pid: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            # SIGKILL the whole session: nothing the broker spawned may outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 10):
                raise KafkaError(f"Kafka broker {pid} survived SIGKILL")
        self.pid_path.unlink(missing_ok=True)
        self._forget_process()

    def _forget_process(self) -> None:
        # Let our Popen (if we spawned the broker) record the exit, even when another
        # LocalKafka stopped it or _pid_alive reaped it; else Popen warns "still running".
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1)
            self._process = None

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the broker (SIGKILL after `timeout` s) and remove its PID file; no-op if not running."""
        pid = self._running_pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)  # stale file of a dead broker
            self._forget_process()
            return
        self._terminate(pid, timeout)


# --------------------------------------------------------------------------- CLI


def _configured_port(data_dir: Path) -> int | None:
    """The broker port in an existing server.properties, so stop/status find a broker
    that was started with --port without repeating it."""
    with contextlib.suppress(OSError, ValueError):
        for line in (data_dir / "server.properties").read_text().splitlines():
            if line.startswith("advertised.listeners="):
                return int(line.rsplit(":", 1)[1])
    return None


def _from_settings(
    data_dir: Path | None, port: int | None, controller_port: int | None
) -> LocalKafka:
    from streams.settings import Settings

    settings = Settings()
    data_dir = (data_dir or settings.kafka_dir).expanduser().resolve()
    kafka_port = port or _configured_port(data_dir) or settings.kafka_port
    return LocalKafka(
        data_dir=data_dir,
        port=kafka_port,
        controller_port=controller_port or kafka_port + 1,
        cache_dir=settings.kafka_cache_dir,
        version=settings.kafka_version,
    )


_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Broker state directory [default: $ABM_DATA_DIR/kafka].",
)
_port_option = click.option(
    "--port", type=int, default=None, help="Broker port [default: $ABM_KAFKA_PORT or 9092]."
)
_controller_port_option = click.option(
    "--controller-port", type=int, default=None, help="KRaft controller port [default: port+1]."
)


@click.group(name="kafka")
def kafka_group() -> None:
    """Run a local single-node Kafka broker (jars fetched from Maven Central)."""


@kafka_group.command()
@_data_dir_option
@_port_option
@_controller_port_option
@click.option("--timeout", type=float, default=90, show_default=True, help="Seconds to wait for readiness.")
def start(data_dir: Path | None, port: int | None, controller_port: int | None, timeout: float) -> None:
    """Start the broker in the background and wait until it serves requests."""
    kafka = _from_settings(data_dir, port, controller_port)
    began = time.monotonic()
    try:
        kafka.start(timeout=timeout)
    except KafkaError as err:
        raise click.ClickException(str(err)) from err
    state = kafka.status()
    click.echo(f"kafka running pid={state.pid} bootstrap={state.bootstrap} ({time.monotonic() - began:.1f}s)")


@kafka_group.command()
@_data_dir_option
@click.option("--timeout", type=float, default=30, show_default=True, help="Seconds before SIGKILL.")
def stop(data_dir: Path | None, timeout: float) -> None:
    """Stop the broker started from this data directory (SIGTERM, then SIGKILL)."""
    kafka = _from_settings(data_dir, None, None)
    was = kafka.status()
    try:
        kafka.stop(timeout=timeout)
    except KafkaError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"kafka stopped pid={was.pid}" if was.running else "kafka not running")


@kafka_group.command()
@_data_dir_option
@_port_option
def status(data_dir: Path | None, port: int | None) -> None:
    """Show whether the broker is running; exit code 1 if it is not."""
    state = _from_settings(data_dir, port, None).status()
    click.echo(
        f"running={str(state.running).lower()} pid={state.pid or '-'} "
        f"bootstrap={state.bootstrap} log={state.log_path}"
    )
    if not state.running:
        raise SystemExit(1)
