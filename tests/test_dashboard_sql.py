"""Every SQL query of the Grafana dashboard runs, as written, on the project's schema.

The queries come from deploy/grafana/dashboards/*.json (panels, annotations, template variables);
Grafana's macros are expanded the way the ClickHouse data source plugin (v4) expands them; the
schema is the one shared.clickhouse.migrate builds, in a fresh chDB seeded with sample facts. So a
migration that renames or drops a column a panel uses fails here, not on someone's dashboard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
import yaml

from services.report.sample import sample_facts, seed
from shared.clickhouse import migrate, migrations

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/clickhouse.yaml"

END = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
HOURS = 3
FROM_S = int((END - timedelta(hours=HOURS)).timestamp())
TO_S = int(END.timestamp())
INTERVAL_S = 300
CAMPAIGNS = ["c-01", "c-03"]  # the $campaign variable, as if two were picked

# Tables a migration numbered here creates. While that migration file does not exist yet, panels on
# its tables are skipped; once it exists they must run like every other.
PENDING_MIGRATIONS = {
    "fct_device_engagement": 2,
    "fct_user": 2,
    "fct_item": 2,
    "fct_experiment": 2,
    "fct_experiment_readout": 2,
}
TABLE_REF = re.compile(r"\b(?:FROM|JOIN)\s+(fct_\w+)", re.IGNORECASE)


# --- the queries ------------------------------------------------------------------------------


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))  # panels inside collapsed rows

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["rawSql"]
    for a in dashboard.get("annotations", {}).get("list", []):
        if "target" in a:
            yield f"annotation {a['name']!r}", a["target"]["rawSql"]
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]
            yield f"variable {v['name']!r}", q["rawSql"] if isinstance(q, dict) else q


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for name, sql in _targets(json.loads(path.read_text())):
            out.append((f"{path.name}: {name}", sql))
    return out


QUERIES = dashboard_queries()


def _call_args(sql: str, start: int) -> tuple[list[str], int]:
    """The comma-separated top-level arguments of the call whose '(' is at sql[start]; and the end."""
    depth, args, current = 0, [], []
    for i in range(start, len(sql)):
        c = sql[i]
        if c == "(":
            depth += 1
            if depth == 1:
                continue
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(current).strip())
                return args, i + 1
        elif c == "," and depth == 1:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(c)
    raise ValueError(f"unbalanced parentheses in {sql!r}")


def _expand_calls(sql: str, macro: str, expand: Any) -> str:
    while (m := re.search(re.escape(macro) + r"\s*\(", sql)) is not None:
        args, end = _call_args(sql, m.end() - 1)
        sql = sql[: m.start()] + expand(*args) + sql[end:]
    return sql


def expand_macros(sql: str) -> str:
    """Grafana's variables and the ClickHouse plugin's macros, as plain SQL for the test range."""
    # $__conditionalAll(condition, $var): the condition when values are picked, 1=1 for "All"
    sql = _expand_calls(sql, "$__conditionalAll", lambda cond, _var: cond)
    quoted = ",".join(f"'{c}'" for c in CAMPAIGNS)
    sql = sql.replace("${campaign:singlequote}", quoted).replace("${campaign}", quoted)
    sql = re.sub(r"\$campaign\b", quoted, sql)
    ms = (FROM_S * 1000, TO_S * 1000)
    sql = _expand_calls(
        sql,
        "$__timeFilter_ms",
        lambda c: f"{c} >= fromUnixTimestamp64Milli({ms[0]}) AND {c} <= fromUnixTimestamp64Milli({ms[1]})",
    )
    sql = _expand_calls(
        sql, "$__timeFilter", lambda c: f"{c} >= toDateTime({FROM_S}) AND {c} <= toDateTime({TO_S})"
    )
    sql = _expand_calls(
        sql,
        "$__timeInterval_ms",
        lambda c: f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL {INTERVAL_S * 1000} millisecond)",
    )
    sql = _expand_calls(
        sql, "$__timeInterval", lambda c: f"toStartOfInterval(toDateTime({c}), INTERVAL {INTERVAL_S} second)"
    )
    for macro, value in (
        ("$__fromTime_ms", f"fromUnixTimestamp64Milli({ms[0]})"),
        ("$__toTime_ms", f"fromUnixTimestamp64Milli({ms[1]})"),
        ("$__fromTime", f"toDateTime({FROM_S})"),
        ("$__toTime", f"toDateTime({TO_S})"),
        ("$__interval_s", str(INTERVAL_S)),
    ):
        sql = sql.replace(macro, value)
    if "$" in sql:
        raise AssertionError(f"a macro or variable this test does not know: {sql}")
    return sql


def migration_versions() -> set[int]:
    return {version for version, _name, _sql in migrations()}


def pending_tables(sql: str) -> list[str]:
    """Tables the query uses whose migration has not been written yet."""
    present = migration_versions()
    return [
        t for t in TABLE_REF.findall(sql) if t in PENDING_MIGRATIONS and PENDING_MIGRATIONS[t] not in present
    ]


# --- the database -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def facts() -> dict[str, list[dict[str, Any]]]:
    return sample_facts(END, hours=HOURS)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, facts: dict[str, list[dict[str, Any]]]) -> Iterator[Any]:
    c = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('chdb')}")
    migrate(c)
    missing = seed(c, facts)
    # A table may be missing only while its migration does not exist.
    present = migration_versions()
    assert all(t in PENDING_MIGRATIONS and PENDING_MIGRATIONS[t] not in present for t in missing), missing
    yield c
    c.close()


# --- tests ------------------------------------------------------------------------------------


def test_there_are_queries_to_check() -> None:
    assert DASHBOARDS, "no dashboard JSON in deploy/grafana/dashboards"
    assert len(QUERIES) >= 10


@pytest.mark.parametrize(("name", "sql"), QUERIES, ids=[n for n, _ in QUERIES])
def test_query_runs_and_returns_rows(client: Any, name: str, sql: str) -> None:
    if waiting := pending_tables(sql):
        pytest.skip(f"migration creating {', '.join(waiting)} does not exist yet")
    result = client.query(expand_macros(sql))
    # The sample covers every table and the whole range: an empty result means a wrong filter.
    assert result.result_rows, f"{name} returned no rows"


def test_fact_tables_are_read_with_final() -> None:
    """Every fact table is a ReplacingMergeTree: without FINAL a re-emitted window counts twice."""
    for name, sql in QUERIES:
        for m in TABLE_REF.finditer(sql):
            after = sql[m.end() :]
            assert re.match(r"\s+(?:AS\s+\w+\s+)?FINAL\b", after, re.IGNORECASE), (
                f"{name}: {m.group(1)} without FINAL"
            )


def test_every_table_is_created_by_a_migration() -> None:
    created = {
        t for _v, _n, sql in migrations() for t in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", sql)
    }
    for name, sql in QUERIES:
        for table in TABLE_REF.findall(sql):
            assert table in created or table in pending_tables(sql), f"{name}: no migration creates {table}"


def _query(name_part: str) -> str:
    matches = [sql for name, sql in QUERIES if name_part in name]
    assert len(matches) == 1, f"{name_part!r} matches {len(matches)} queries"
    return expand_macros(matches[0])


def test_campaign_numbers_count_each_window_once(client: Any, facts: dict[str, list[dict[str, Any]]]) -> None:
    """The sample writes every window twice (version 1 with no clicks, version 2): the panels must
    show exactly the version-2 numbers."""
    lo, hi = datetime.fromtimestamp(FROM_S, UTC), datetime.fromtimestamp(TO_S, UTC)
    final = [
        r
        for r in facts["fct_campaign_ctr"]
        if r["version"] == 2 and r["campaign_id"] in CAMPAIGNS and lo <= r["window_start"] <= hi
    ]
    rows = client.query(_query("'CTR per campaign'")).result_rows
    assert len(rows) == len(final)
    assert min(ctr for _t, _c, ctr in rows) > 0  # version 1 rows have ctr 0
    impressions, clicks, ctr = client.query(_query("'Impressions, clicks and CTR in range'")).result_rows[0]
    assert impressions == sum(r["impressions"] for r in final)
    assert clicks == sum(r["clicks"] for r in final)
    assert ctr == pytest.approx(clicks / impressions)


def _data_sources(node: Any) -> Iterator[dict[str, str]]:
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for v in node.values():
            yield from _data_sources(v)
    elif isinstance(node, list):
        for v in node:
            yield from _data_sources(v)


def test_panels_use_the_provisioned_data_source() -> None:
    provisioned = {d["uid"]: d["type"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        refs = [ds for ds in _data_sources(dashboard) if ds.get("type") != "grafana"]  # built-in annotations
        assert refs
        for ds in refs:
            assert provisioned.get(ds["uid"]) == ds["type"], f"{path.name}: {ds} is not provisioned"
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), "panel ids must be unique"
        assert dashboard["uid"], "a fixed uid keeps links to the dashboard stable"


def test_macro_expansion() -> None:
    sql = "SELECT 1 WHERE $__timeFilter(a.t) AND $__conditionalAll(x IN (${campaign:singlequote}), $campaign)"
    assert expand_macros(sql) == (
        f"SELECT 1 WHERE a.t >= toDateTime({FROM_S}) AND a.t <= toDateTime({TO_S}) AND x IN ('c-01','c-03')"
    )
