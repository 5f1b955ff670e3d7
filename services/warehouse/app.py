from shared.app import make_app
from shared.clickhouse import ClickHouse
from shared.settings import get_settings

settings = get_settings()
# All its input comes through a direct reader (agents.py), and it has no tables: no faust consumer.
app = make_app("warehouse", settings.warehouse_web_port, faust_consumer=False)
# The one owner of the ClickHouse connection (with chDB: of its files) in the mesh.
clickhouse = ClickHouse(
    settings.clickhouse_dsn.get_secret_value(),
    ca_cert=settings.clickhouse_ca_cert,
    verify=settings.clickhouse_verify_tls,
)
