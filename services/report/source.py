"""Where the report reads facts from: the running warehouse's /query endpoint (the way to read an
embedded chDB the warehouse owns), or a ClickHouse DSN directly (a server, or a chDB no process owns).

Both return plain rows. Times are selected as epoch milliseconds by the queries themselves, so the
report does not depend on how a transport encodes a DateTime64 (JSON strings vs datetime objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import urllib3

from shared.clickhouse import connect, read_only_sql


class QueryError(Exception):
    """The query ran and failed (e.g. a table that does not exist yet): one section is lost."""


class SourceUnavailable(Exception):
    """Nothing answers (warehouse down, wrong URL or DSN): there is no report to make."""


@dataclass(frozen=True)
class Rows:
    columns: list[str]
    rows: list[list[Any]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


class Source(Protocol):
    def query(self, sql: str) -> Rows: ...

    def close(self) -> None: ...


class WarehouseSource:
    """POST /query of the warehouse service (read-only SQL; bearer token if QUERY_TOKEN is set)."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = urllib3.Timeout(connect=5.0, read=timeout_s)
        self.http = urllib3.PoolManager(retries=False)

    def query(self, sql: str) -> Rows:
        try:
            r = self.http.request(
                "POST", self.url, body=sql.encode(), headers=self.headers, timeout=self.timeout
            )
        except urllib3.exceptions.HTTPError as exc:
            raise SourceUnavailable(f"cannot reach the warehouse at {self.url}: {exc}") from exc
        try:
            body = orjson.loads(r.data)
        except orjson.JSONDecodeError as exc:
            raise SourceUnavailable(f"{self.url} answered {r.status} with no JSON") from exc
        if r.status == 401:
            raise SourceUnavailable(f"{self.url}: {body.get('error')} (set QUERY_TOKEN)")
        if r.status != 200:
            raise QueryError(str(body.get("error", f"HTTP {r.status}")))
        return Rows(list(body["columns"]), [list(row) for row in body["rows"]])

    def close(self) -> None:
        self.http.clear()


class ClickHouseSource:
    """A direct connection. With chDB only when no warehouse runs on that path: one process owns it."""

    def __init__(self, dsn: str) -> None:
        try:
            self.client = connect(dsn)
        except Exception as exc:  # driver errors vary by transport; all mean "no source"
            raise SourceUnavailable(f"cannot connect to ClickHouse: {exc}") from exc

    def query(self, sql: str) -> Rows:
        try:
            # The same read-only wrapping /query applies, so both paths accept the same SQL.
            r = self.client.query(read_only_sql(sql))
        except Exception as exc:  # a server error names the problem in its first line
            raise QueryError(str(exc).strip().splitlines()[0][:500]) from exc
        return Rows(list(r.column_names), [list(row) for row in r.result_rows])

    def close(self) -> None:
        # chDB opens one engine path per process: a handle left open blocks any other path.
        self.client.close()
