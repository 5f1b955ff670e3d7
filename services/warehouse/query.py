"""`python -m services.warehouse.query "SELECT ..."`: read-only SQL against the running warehouse
(with embedded chDB the warehouse owns the files, so queries go through its /query endpoint)."""

from __future__ import annotations

import sys

import orjson
import urllib3

from shared.settings import get_settings


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    s = get_settings()
    headers = {"Authorization": f"Bearer {s.query_token.get_secret_value()}"} if s.query_token else {}
    url = f"http://{s.web_host}:{s.warehouse_web_port}/query"
    r = urllib3.PoolManager().request("POST", url, body=argv[0].encode(), headers=headers, timeout=60)
    body = orjson.loads(r.data)
    if r.status != 200:
        print(f"error: {body.get('error')}", file=sys.stderr)
        return 1
    print("\t".join(body["columns"]))
    for row in body["rows"]:
        print("\t".join("" if v is None else str(v) for v in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
