"""ClickHouse through clickhouse-connect: embedded chDB (chdb://path) or a server (http(s)://...).

The same SQL runs on both. chDB has no async client and one process owns a path, so the warehouse
runs every call on one dedicated thread (`ClickHouse.run`), off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def connect(dsn: str, *, ca_cert: str = "", verify: bool = True) -> Client:
    if dsn.startswith("chdb://"):
        path = Path(dsn.removeprefix("chdb://")).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{path}")
    parts = urlsplit(dsn)
    if parts.scheme not in ("http", "https"):
        raise ValueError("CLICKHOUSE_DSN must start with chdb://, http:// or https://")
    tls: dict[str, Any] = {"verify": verify}
    if ca_cert:
        tls["ca_cert"] = ca_cert
    return clickhouse_connect.get_client(dsn=dsn, **(tls if parts.scheme == "https" else {}))


def redact(dsn: str) -> str:
    """The DSN without its password, for logs."""
    parts = urlsplit(dsn)
    if parts.password:
        return dsn.replace(f":{parts.password}@", ":***@")
    return dsn


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped in shared/migrations, in order."""
    out = []
    for f in resources.files("shared.migrations").iterdir():
        m = MIGRATION_NAME.match(f.name)
        if m:
            out.append((int(m.group(1)), f.name, f.read_text()))
    return sorted(out)


def statements(sql: str) -> list[str]:
    """Split a migration file on ';' at line ends (migrations hold no ';' inside strings)."""
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


def migrate(client: Client) -> list[str]:
    """Apply the migrations not yet recorded in schema_migrations. Returns the ones applied."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version"
    )
    done = {r[0] for r in client.query("SELECT version FROM schema_migrations").result_rows}
    applied = []
    for version, name, sql in migrations():
        if version in done:
            continue
        for stmt in statements(sql):
            client.command(stmt)
        client.insert("schema_migrations", [[version, name]], column_names=["version", "name"])
        applied.append(name)
        log.info("applied migration %s", name)
    return applied


def read_only_sql(sql: str) -> str:
    """Wrap a user's query so it can only read: a subquery admits no INSERT/DDL/multi-statement,
    and readonly=1 (per query, it does not stick to the session) forbids table functions too."""
    sql = sql.strip().rstrip(";")
    if not sql:
        raise ValueError("empty query")
    return f"SELECT * FROM ({sql}) SETTINGS readonly = 1"


class ClickHouse:
    """One client, one thread: every call goes through `run` so chDB is used by one thread only."""

    def __init__(self, dsn: str, *, ca_cert: str = "", verify: bool = True) -> None:
        self.dsn = dsn
        self._tls = {"ca_cert": ca_cert, "verify": verify}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Client | None = None

    def _client_sync(self) -> Client:
        if self._client is None:
            self._client = connect(self.dsn, **self._tls)
        return self._client

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._client_sync(), *args, **kwargs))

    async def migrate(self) -> list[str]:
        return await self.run(migrate)

    async def insert(self, table: str, rows: list[list[Any]], columns: list[str], token: str) -> None:
        def do(client: Client) -> None:
            # The token makes a retried batch a no-op (non_replicated_deduplication_window on tables).
            client.insert(table, rows, column_names=columns, settings={"insert_deduplication_token": token})

        await self.run(do)

    async def query_read_only(self, sql: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        wrapped = read_only_sql(sql)

        def do(client: Client) -> dict[str, Any]:
            r = client.query(wrapped, parameters=parameters)
            return {"columns": list(r.column_names), "rows": [list(row) for row in r.result_rows]}

        return await self.run(do)
