"""Every SQL block in the README's "Example queries" section runs on the migrated schema and
returns rows (sample facts in a fresh chDB), so a schema change that breaks the docs fails here."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import clickhouse_connect
import pytest

from services.report.sample import sample_facts, seed
from shared.clickhouse import migrate

README = Path(__file__).resolve().parents[1] / "README.md"


def example_queries() -> list[str]:
    text = README.read_text()
    section = text.split("### Example queries", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    c = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('readme')}")
    migrate(c)
    seed(c, sample_facts(datetime.now(UTC)))
    return c


def test_there_are_example_queries():
    assert len(example_queries()) >= 6


@pytest.mark.parametrize("sql", example_queries(), ids=lambda q: q.split("\n", 1)[0][:40])
def test_example_query_runs_and_returns_rows(client, sql):
    rows = client.query(sql).result_rows
    assert rows, sql
