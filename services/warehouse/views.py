"""Read-only SQL over the warehouse's ClickHouse (the way to query an embedded chDB while the
warehouse owns it): GET /query?sql=...  or POST /query with the SQL as the body."""

from __future__ import annotations

import hmac
from typing import Any

from faust import web

from services.warehouse.agents import ensure_schema, insert_failures, inserted_rows
from services.warehouse.app import app, clickhouse, settings


def authorized(request: web.Request) -> bool:
    if settings.query_token is None:
        return True
    expected = f"Bearer {settings.query_token.get_secret_value()}"
    return hmac.compare_digest(request.headers.get("Authorization", ""), expected)


@app.page("/query")
class Query(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return await self.run(request, request.query.get("sql", ""))

    async def post(self, request: web.Request) -> web.Response:
        return await self.run(request, await request.text())

    async def run(self, request: web.Request, sql: str) -> web.Response:
        if not authorized(request):
            return self.json({"error": "missing or wrong bearer token"}, status=401)
        if not sql.strip():
            return self.json({"error": "give the SQL as ?sql=... or as the POST body"}, status=400)
        await ensure_schema()
        try:
            result = await clickhouse.query_read_only(sql)
        except Exception as exc:  # a user's bad SQL is a 400, never a crash
            return self.json({"error": str(exc).splitlines()[0][:500]}, status=400)
        return self.json(result)


@app.page("/stats")
async def stats(view: web.View, request: web.Request) -> Any:
    return view.json({"inserted_rows": dict(inserted_rows), "insert_failures": dict(insert_failures)})
