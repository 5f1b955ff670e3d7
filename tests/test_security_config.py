"""Security settings become client configuration without leaking secrets."""

import logging
import ssl

import faust
import pytest

from shared.clickhouse import read_only_sql, redact
from shared.kafka_security import aiokafka_kwargs, faust_credentials
from shared.settings import Settings


def test_plaintext_by_default():
    s = Settings(_env_file=None)
    assert faust_credentials(s) is None
    assert aiokafka_kwargs(s) == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_builds_credentials_for_faust_and_aiokafka():
    s = Settings(
        _env_file=None,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="scram-sha-512",
        kafka_sasl_username="mesh",
        kafka_sasl_password="s3cr3t-pw",
    )
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism.value == "SCRAM-SHA-512" and isinstance(creds.ssl_context, ssl.SSLContext)
    kw = aiokafka_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_plain_password"] == "s3cr3t-pw"
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    assert "s3cr3t-pw" not in repr(s)  # SecretStr hides it from reprs and logs


def test_ssl_only_and_bad_sasl_config():
    assert isinstance(
        faust_credentials(Settings(_env_file=None, kafka_security_protocol="SSL")), faust.SSLCredentials
    )
    with pytest.raises(ValueError, match="KAFKA_SASL_USERNAME"):
        faust_credentials(Settings(_env_file=None, kafka_security_protocol="SASL_PLAINTEXT"))
    with pytest.raises(ValueError, match="KAFKA_SASL_MECHANISM"):
        aiokafka_kwargs(
            Settings(
                _env_file=None,
                kafka_security_protocol="SASL_PLAINTEXT",
                kafka_sasl_mechanism="GSSAPI",
                kafka_sasl_username="u",
                kafka_sasl_password="p",
            )
        )


def test_clickhouse_dsn_password_is_redacted_and_secret(caplog):
    s = Settings(_env_file=None, clickhouse_dsn="https://writer:pa55word@ch.example:8443/db")
    assert "pa55word" not in repr(s) and "pa55word" not in str(s.clickhouse_dsn)
    assert redact(s.clickhouse_dsn.get_secret_value()) == "https://writer:***@ch.example:8443/db"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("x").info("settings: %s", s)
    assert "pa55word" not in caplog.text


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "DROP TABLE fct_campaign_ctr",
        "SELECT 1; DROP TABLE t",
        "ALTER TABLE t DELETE WHERE 1",
    ],
)
def test_read_only_wrapping_turns_writes_into_syntax_errors(sql, tmp_path):
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path}")
    client.command("CREATE TABLE t (a UInt8) ENGINE = MergeTree ORDER BY a")
    with pytest.raises(Exception):  # noqa: B017 - any refusal is fine; the table must survive
        client.query(read_only_sql(sql))
    assert client.query("SELECT count() FROM t").result_rows == [(0,)]
    for attack in (
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:1/', 'CSV')",
    ):
        with pytest.raises(Exception, match="readonly"):
            client.query(read_only_sql(attack))
