#!/bin/bash
# Entry point of the ClickHouse container (docker-compose.yml): writes the read-only dashboard
# account from the environment, then hands over to the image's own entrypoint, which creates
# CLICKHOUSE_USER (the warehouse's account) and CLICKHOUSE_DB on first start.
#
# The file is rewritten on every start, so a changed CLICKHOUSE_READONLY_PASSWORD in .env takes
# effect with `docker compose up -d clickhouse`. Only the password's SHA-256 is written.
# USERS_D and NEXT_ENTRYPOINT exist for tests/test_compose.py, which runs this script on the host.
set -euo pipefail
users_d="${USERS_D:-/etc/clickhouse-server/users.d}"
next_entrypoint="${NEXT_ENTRYPOINT:-/entrypoint.sh}"

user="${CLICKHOUSE_READONLY_USER:?CLICKHOUSE_READONLY_USER is not set}"
password="${CLICKHOUSE_READONLY_PASSWORD:?CLICKHOUSE_READONLY_PASSWORD is not set}"
db="${CLICKHOUSE_DB:-default}"

# Both end up as an XML element name and inside a GRANT: identifier characters only.
for value in "$user" "$db"; do
  if [[ ! "$value" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    echo "entrypoint: '$value' is not a plain identifier (letters, digits, _)" >&2
    exit 1
  fi
done
if [[ "$user" == "${CLICKHOUSE_USER:-default}" ]]; then
  echo "entrypoint: CLICKHOUSE_READONLY_USER must differ from CLICKHOUSE_USER" >&2
  exit 1
fi

hash="$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)"
cat >"$users_d/zz-readonly-user.xml" <<XML
<clickhouse>
    <users>
        <${user}>
            <password_sha256_hex>${hash}</password_sha256_hex>
            <networks><ip>::/0</ip></networks>
            <profile>dashboards</profile>
            <quota>default</quota>
            <access_management>0</access_management>
            <grants><query>GRANT SELECT ON ${db}.*</query></grants>
        </${user}>
    </users>
</clickhouse>
XML

exec "$next_entrypoint" "$@"
