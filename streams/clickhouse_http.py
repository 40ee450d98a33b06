"""The ClickHouse HTTP interface over an embedded (chDB) store.

A chDB directory belongs to one process, so the process that owns it serves it to
everyone else: other workers, `abm sql`, BI tools, clickhouse-connect's HTTP client.
Statements run on the real engine through the owner's clickhouse-connect client;
this module only speaks the protocol (query in the URL or body, `param_*` query
parameters, settings as URL parameters, compressed insert bodies, ClickHouse errors).

Read-only serving is the engine's, never SQL parsing: the front is then given a handle of
its own on which ``readonly = 1`` was set once (streams.store.open_read_only_client), so
the engine refuses every write, DDL and setting change, and no client's ``SET`` can
reach the handle the sink writes through.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
import sys
import tempfile
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import lz4.frame
from aiohttp import web
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from streams.settings import Settings
from streams.store import open_read_only_client

if sys.version_info >= (3, 14):
    from compression import zstd as _zstd
else:  # clickhouse-connect's own dependency
    from backports import zstd as _zstd

log = logging.getLogger(__name__)

# URL parameters about the HTTP exchange, not settings of the statement.
_TRANSPORT_PARAMS = frozenset(
    {
        "query", "database", "user", "password", "query_id", "session_id", "session_timeout", "session_check",
        "compress", "decompress", "enable_http_compression", "http_zlib_compression_level", "default_format",
        "wait_end_of_query", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
        "client_protocol_version", "buffer_size", "http_response_buffer_size",
    }
)
_INSERT_HEAD = re.compile(rb"^\s*(INSERT\s+INTO\s.*?)\s+FORMAT\s+(\w+)[ \t]*\r?\n?", re.IGNORECASE | re.DOTALL)
_ERROR_CODE = re.compile(r"Code: (\d+)")
AUTHENTICATION_FAILED = 516
UNKNOWN_DATABASE = 81


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str

    def admit(self, request: web.Request) -> bool:
        user, password = _presented_credentials(request)
        return hmac.compare_digest(user.encode(), self.user.encode()) and hmac.compare_digest(
            password.encode(), self.password.encode()
        )


class ClickHouseHttpFront:
    """Serves one clickhouse-connect client (normally the owner's chDB store) over HTTP."""

    def __init__(self, client: Client, credentials: Credentials) -> None:
        self._client = client
        self._credentials = credentials
        self._lock = threading.Lock()  # one statement at a time on the handle

    def application(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/ping", self._ping)
        app.router.add_route("*", "/", self._statement)
        return app

    async def serve(self, host: str, port: int) -> web.AppRunner:
        """Starts listening; the caller cleans the returned runner up."""
        runner = web.AppRunner(self.application(), auto_decompress=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner

    async def _ping(self, _request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    async def _statement(self, request: web.Request) -> web.Response:
        if not self._credentials.admit(request):
            return _error(403, AUTHENTICATION_FAILED, "Authentication failed: password is incorrect, or there is no user with such name.")
        params = request.query
        if params.get("database", "default") != "default":
            return _error(404, UNKNOWN_DATABASE, f"Database {params['database']} does not exist.")
        try:
            body = _decoded(await request.read(), request.headers.get("Content-Encoding", ""))
        except ValueError as exc:
            return _error(400, 0, str(exc))
        settings = {k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and not k.startswith("param_")}
        # Values come in ClickHouse's escaped text format, for the engine to parse by type.
        parameters = {k[len("param_"):]: ParameterText(v) for k, v in params.items() if k.startswith("param_")}
        text = params.get("query", "").encode()
        try:
            result = await asyncio.to_thread(self._run, text, body, parameters, settings)
        except ClickHouseError as exc:
            message = str(exc)
            code = _ERROR_CODE.search(message)
            return _error(500, int(code.group(1)) if code else 0, message)
        headers = {"X-ClickHouse-Timezone": "UTC", "X-ClickHouse-Summary": '{"read_rows":"0","written_rows":"0"}'}
        if "query_id" in params:
            headers["X-ClickHouse-Query-Id"] = params["query_id"]
        return web.Response(body=result, headers=headers)

    def _run(self, text: bytes, body: bytes, parameters: Mapping[str, str], settings: dict[str, str]) -> bytes:
        """Runs one statement: ``text`` from the URL, ``body`` the rest of it or an insert's data."""
        statement = text + (b" " if text and body else b"") + body
        head = _INSERT_HEAD.match(statement)
        with self._lock:
            if head is None:
                return self._client.raw_query(statement.decode(), parameters=dict(parameters), settings=settings)
            data = statement[head.end():]
            with tempfile.NamedTemporaryFile(prefix="abm-insert-", suffix=f".{head.group(2).decode()}") as file:
                file.write(data)
                file.flush()
                path = file.name.replace("\\", "\\\\").replace("'", "\\'")
                self._client.command(
                    f"{head.group(1).decode()} FROM INFILE '{path}' FORMAT {head.group(2).decode()}",
                    settings=settings,
                )
            return b""


def _presented_credentials(request: web.Request) -> tuple[str, str]:
    """ClickHouse accepts credentials as basic auth, X-ClickHouse-* headers or URL params."""
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Basic "):
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        return user, password
    headers, params = request.headers, request.query
    return (
        headers.get("X-ClickHouse-User", params.get("user", "default")),
        headers.get("X-ClickHouse-Key", params.get("password", "")),
    )


class ParameterText:
    """A `param_*` value exactly as the request carried it: the engine parses it by its
    placeholder's type (String, Array(String), Map, ...), as a server does.
    clickhouse-connect escapes a str parameter again, which broke arrays; any other
    type it passes on as ``str(value)``."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def _decoded(body: bytes, encoding: str) -> bytes:
    """The request body without its Content-Encoding; clickhouse-connect sends lz4 and
    zstd bodies as one frame per block, so every frame is decoded."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "deflate"):
        return zlib.decompress(body, 47)  # 47: zlib or gzip header, detected
    if encoding == "lz4":
        return _each_lz4_frame(body)
    if encoding == "zstd":
        return _zstd.decompress(body)  # decodes every frame
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _each_lz4_frame(body: bytes) -> bytes:
    parts = []
    while body:
        frame = lz4.frame.LZ4FrameDecompressor()
        parts.append(frame.decompress(body))
        body = frame.unused_data
    return b"".join(parts)


def _error(status: int, code: int, message: str) -> web.Response:
    text = message if message.startswith("Code:") else f"Code: {code}. DB::Exception: {message}"
    return web.Response(status=status, text=text + "\n", headers={"X-ClickHouse-Exception-Code": str(code)})


def serves_front(settings: Settings) -> bool:
    """The worker serves its embedded store read-only when a password is configured."""
    return settings.clickhouse_url is None and settings.clickhouse_http_password is not None


async def start_front(settings: Settings) -> web.AppRunner:
    """The worker's read-only interface on its own handle; serves until cleaned up."""
    assert settings.clickhouse_http_password is not None
    front = ClickHouseHttpFront(open_read_only_client(settings), Credentials(settings.clickhouse_http_user, settings.clickhouse_http_password))
    runner = await front.serve(settings.clickhouse_http_host, settings.clickhouse_http_port)
    log.info("read-only ClickHouse HTTP interface on http://%s:%d", settings.clickhouse_http_host, settings.clickhouse_http_port)
    return runner


def front_client(settings: Settings) -> Client | None:
    """A clickhouse-connect client on a running worker's read-only interface, or None
    when none answers."""
    if not serves_front(settings):
        return None
    import clickhouse_connect

    host = settings.clickhouse_http_host
    try:
        return clickhouse_connect.get_client(
            host="127.0.0.1" if host in ("0.0.0.0", "::") else host,
            port=settings.clickhouse_http_port,
            username=settings.clickhouse_http_user,
            password=settings.clickhouse_http_password,
            connect_timeout=2,
        )
    except OperationalError:
        return None
