"""A read-only ClickHouse HTTP interface over the worker's embedded store.

A chDB directory belongs to one process, so while the worker runs, BI tools, `abm sql`
and clickhouse-connect reach its store through this front, which speaks the ClickHouse
HTTP protocol: the query in the body and/or the ``query`` parameter, ``param_<name>``
query parameters, ``database``, ``default_format``, credentials as headers
(``X-ClickHouse-User``/``X-ClickHouse-Key``), basic auth or parameters; errors as
``X-ClickHouse-Exception-Code`` with ClickHouse's message.

Read-only is the engine's: the front's own chDB handle runs ``SET readonly = 1`` once,
after which the engine refuses every write, DDL and settings change on it (a setting
passed as a URL parameter is tried with ``SET`` and refused by the engine the same way).
The front's handle is separate from the sink's client; chDB serves separate handles
of the one engine from separate threads concurrently, and the front serializes its own
queries (each may switch database) with a lock, in a thread off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hmac
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chdb
import lz4.frame
from aiohttp import web

from streams.settings import Settings

log = logging.getLogger(__name__)

# URL parameters of the HTTP protocol itself, not settings of the query
TRANSPORT_PARAMS = frozenset(
    {
        "query", "database", "default_format", "user", "password", "query_id", "session_id", "session_timeout",
        "session_check", "compress", "decompress", "enable_http_compression", "wait_end_of_query",
        "send_progress_in_http_headers", "http_headers_progress_interval_ms", "client_protocol_version", "buffer_size",
    }
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ERROR_CODE = re.compile(r"Code: (\d+)\.")
AUTHENTICATION_FAILED = 516
BAD_ARGUMENTS = 36


@dataclass(frozen=True, slots=True)
class Answer:
    body: bytes
    fmt: str
    read_rows: int
    read_bytes: int


class QueryError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ReadOnlyStore:
    """The front's own handle on the process's chDB engine, read-only for its lifetime."""

    def __init__(self, path: Path) -> None:
        self._conn = chdb.connect(str(path))
        self._conn.query("SET readonly = 1")
        self._lock = threading.Lock()

    def execute(self, sql: str, fmt: str, database: str, settings: dict[str, str], params: dict[str, str]) -> Answer:
        with self._lock:
            try:
                self._conn.query(f"USE `{database}`")
                for name, value in settings.items():
                    self._conn.query(f"SET {name} = '{_escape(value)}'")  # refused in readonly mode
                result = self._conn.query(sql, fmt, params=params)
            except Exception as exc:  # the engine's own error, code and message
                message = str(exc)
                found = _ERROR_CODE.search(message)
                raise QueryError(int(found.group(1)) if found else 1000, message) from exc
            return Answer(result.bytes(), fmt, result.rows_read(), result.bytes_read())

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "lz4":  # clickhouse-connect sends one frame per block: decode them all
        parts = []
        while body:
            decompressor = lz4.frame.LZ4FrameDecompressor()
            parts.append(decompressor.decompress(body))
            body = decompressor.unused_data
        return b"".join(parts)
    raise QueryError(BAD_ARGUMENTS, f"Code: {BAD_ARGUMENTS}. Unsupported Content-Encoding: {encoding}")


def _credentials(request: web.Request) -> tuple[str, str]:
    if "X-ClickHouse-User" in request.headers:
        return request.headers["X-ClickHouse-User"], request.headers.get("X-ClickHouse-Key", "")
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Basic "):
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        return user, password
    return request.query.get("user", "default"), request.query.get("password", "")


def _error(status: int, code: int, message: str) -> web.Response:
    return web.Response(
        status=status, text=message if message.endswith("\n") else message + "\n", headers={"X-ClickHouse-Exception-Code": str(code)}
    )


class SqlFront:
    def __init__(self, store: ReadOnlyStore, user: str, password: str) -> None:
        self._store = store
        self._user = user.encode()
        self._password = password.encode()

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/ping", self.ping)
        app.router.add_route("GET", "/", self.query)
        app.router.add_route("POST", "/", self.query)
        return app

    async def ping(self, _request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    async def query(self, request: web.Request) -> web.Response:
        user, password = _credentials(request)
        if not (hmac.compare_digest(user.encode(), self._user) and hmac.compare_digest(password.encode(), self._password)):
            message = f"Code: {AUTHENTICATION_FAILED}. DB::Exception: {user}: Authentication failed: password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)"
            return _error(403, AUTHENTICATION_FAILED, message)
        args = request.query
        try:
            body = _decompress(await request.read(), request.headers.get("Content-Encoding", "").lower())
            text = "\n".join(part for part in (args.get("query", ""), body.decode("utf-8", errors="replace")) if part)
            if not text.strip():
                raise QueryError(BAD_ARGUMENTS, f"Code: {BAD_ARGUMENTS}. DB::Exception: Empty query. (BAD_ARGUMENTS)")
            settings = {k: v for k, v in args.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
            bad = [name for name in settings if not _IDENTIFIER.match(name)]
            if bad:
                raise QueryError(BAD_ARGUMENTS, f"Code: {BAD_ARGUMENTS}. DB::Exception: Unknown setting {bad[0]!r}. (BAD_ARGUMENTS)")
            database = args.get("database", "default")
            if not _IDENTIFIER.match(database):
                raise QueryError(BAD_ARGUMENTS, f"Code: {BAD_ARGUMENTS}. DB::Exception: Bad database name. (BAD_ARGUMENTS)")
            fmt = args.get("default_format") or request.headers.get("X-ClickHouse-Format") or "TabSeparated"
            params = {k[len("param_") :]: v for k, v in args.items() if k.startswith("param_")}
            answer = await asyncio.to_thread(self._store.execute, text, fmt, database, settings, params)
        except QueryError as exc:
            return _error(500, exc.code, str(exc))
        summary = f'{{"read_rows":"{answer.read_rows}","read_bytes":"{answer.read_bytes}"}}'
        headers = {"X-ClickHouse-Summary": summary, "X-ClickHouse-Format": answer.fmt, "X-ClickHouse-Timezone": "UTC"}
        if "query_id" in args:
            headers["X-ClickHouse-Query-Id"] = args["query_id"]
        return web.Response(body=answer.body, headers=headers, content_type="application/octet-stream")


async def start_front(settings: Settings) -> web.AppRunner:
    """Serves the front on ``ABM_CLICKHOUSE_HTTP_HOST:ABM_CLICKHOUSE_HTTP_PORT`` until the runner is cleaned up."""
    assert settings.clickhouse_http_password is not None
    front = SqlFront(ReadOnlyStore(settings.chdb_path), settings.clickhouse_http_user, settings.clickhouse_http_password)
    runner = web.AppRunner(front.application(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.clickhouse_http_host, settings.clickhouse_http_port).start()
    log.info("read-only ClickHouse HTTP interface on http://%s:%d", settings.clickhouse_http_host, settings.clickhouse_http_port)
    return runner


def serves_front(settings: Settings) -> bool:
    """The worker serves the front for its embedded store when a password is configured."""
    return settings.clickhouse_url is None and settings.clickhouse_http_password is not None


def front_client(settings: Settings) -> Any | None:
    """A clickhouse-connect client on a running worker's front, or None when none answers."""
    if not serves_front(settings):
        return None
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import OperationalError

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
