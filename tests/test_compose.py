"""docker-compose.yml, checked without a Docker engine: valid against the Compose Specification's
JSON schema (vendored in tests/vendor), pinned images, a health check on every long-running service,
no secret in the file, and every variable it reads documented in .env.example."""

from __future__ import annotations

import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests/vendor/compose-spec.json"
ENV_EXAMPLE = ROOT / ".env.example"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is a literal $.
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
SECRETS = {
    "CLICKHOUSE_PASSWORD",
    "CLICKHOUSE_READONLY_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
    "SLACK_BOT_TOKEN",
    "SLACK_WEBHOOK_URL",
    "QUERY_TOKEN",
}


def raw_text() -> str:
    return COMPOSE_FILE.read_text()


def compose() -> dict[str, Any]:
    return yaml.safe_load(raw_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value
    return out


def references(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every variable reference, escaped $$ excluded."""
    text = text.replace("$$", "")
    return [(m[0] or m[3], m[1] or None, m[2]) for m in VARIABLE.findall(text)]


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation, for the forms this file uses. A missing required variable fails."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        value = env.get(name)
        # with a colon an empty value counts as unset, without one only an unset variable does
        empty = not value if op in (":-", ":?") else value is None
        if op and op.endswith("-") and empty:
            return arg
        if op and op.endswith("?") and empty:
            raise AssertionError(f"required variable {name} is not set: {arg}")
        return value or ""

    return VARIABLE.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def resolved(env: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(interpolate(raw_text(), env))


def filled_env() -> dict[str, str]:
    """.env.example as a user would fill it in: the secrets set, everything else as shipped."""
    env = env_example()
    return env | {name: "test-Secret-1" for name in SECRETS if not env.get(name)}


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


# --- schema -----------------------------------------------------------------------------------


def validate(doc: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_matches_the_compose_specification() -> None:
    validate(compose())


def test_matches_the_specification_once_interpolated() -> None:
    validate(resolved(filled_env()))


def test_the_schema_rejects_what_compose_rejects() -> None:
    """The vendored schema is really in force (a wrong key or type fails)."""
    broken = compose()
    broken["services"]["kafka"]["restart_policy"] = "always"
    with pytest.raises(AssertionError, match="restart_policy"):
        validate(broken)
    broken = compose()
    broken["services"]["warehouse"]["depends_on"]["kafka"]["condition"] = "service_ready"
    with pytest.raises(AssertionError, match="depends_on"):
        validate(broken)


# --- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env_name", ["compose defaults", ".env.example"])
def test_every_image_is_pinned(env_name: str) -> None:
    env = {} if env_name == "compose defaults" else filled_env()
    doc = resolved(env | {n: "x" for n in SECRETS if n not in env})
    for name, svc in doc["services"].items():
        image = svc.get("image")
        assert image, f"{name}: no image (a built service names its image too, so all share one build)"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"


def test_kafka_matches_the_local_broker_version() -> None:
    local = re.search(r'KAFKA_VERSION="\$\{KAFKA_VERSION:-([^}]+)\}"', (ROOT / "deploy/kafka.sh").read_text())
    assert local is not None
    assert services()["kafka"]["image"] == f"apache/kafka:${{KAFKA_VERSION:-{local.group(1)}}}"
    assert env_example()["KAFKA_VERSION"] == local.group(1)


def test_the_dockerfile_is_pinned_and_runs_as_a_user() -> None:
    text = (ROOT / "deploy/Dockerfile").read_text()
    default_image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert default_image is not None and re.fullmatch(r"python:3\.11[\w.-]*", default_image.group(1))
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


# --- health and start order -------------------------------------------------------------------


def one_shots(svcs: dict[str, dict[str, Any]]) -> set[str]:
    return {
        dep
        for svc in svcs.values()
        for dep, cond in (svc.get("depends_on") or {}).items()
        if cond.get("condition") == "service_completed_successfully"
    }


def test_every_long_running_service_has_a_health_check() -> None:
    svcs = services()
    for name, svc in svcs.items():
        check = svc.get("healthcheck") or {}
        if name in one_shots(svcs):
            assert svc.get("restart") == "no", f"{name}: a one-shot must not be restarted"
            continue
        assert check.get("test") and not check.get("disable"), f"{name}: no health check"
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name}: no restart policy"


def test_dependencies_wait_for_health() -> None:
    svcs = services()
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions, not a list"
        for dep, cond in deps.items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            assert cond.get("condition") in ("service_healthy", "service_completed_successfully"), (name, dep)
            if cond["condition"] == "service_healthy":
                assert svcs[dep].get("healthcheck", {}).get("test"), f"{dep} has no health check to wait for"


def test_faust_health_checks_probe_the_service_port() -> None:
    for name, svc in services().items():
        command = svc.get("command")
        if not (isinstance(command, list) and command[:1] == ["faust"]):
            continue
        module = command[command.index("-A") + 1]
        assert module == f"services.{name}" and "worker" in command, f"{name}: {command}"
        port = svc["environment"][f"{name.upper()}_WEB_PORT"]
        assert f"http://127.0.0.1:{port}/" in " ".join(svc["healthcheck"]["test"]), name


def test_containers_use_the_internal_listener() -> None:
    svcs = services()
    advertised = svcs["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name, svc in svcs.items():
        bootstrap = (svc.get("environment") or {}).get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            assert f"//{bootstrap}" in advertised, f"{name}: {bootstrap} is not an advertised listener"


def test_the_warehouse_is_the_only_writer() -> None:
    writers = [n for n, s in services().items() if "CLICKHOUSE_DSN" in (s.get("environment") or {})]
    assert writers == ["warehouse"]


def test_bind_mounts_exist() -> None:
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


# --- variables and secrets --------------------------------------------------------------------


def test_every_variable_is_documented_in_env_example() -> None:
    documented = env_example()
    used = {name for name, _op, _arg in references(raw_text())}
    assert used, "the compose file reads no variable at all?"
    missing = sorted(used - set(documented))
    assert not missing, f"add to .env.example: {missing}"


def test_no_secret_in_the_file() -> None:
    refs = references(raw_text())
    for name, op, arg in refs:
        if name in SECRETS:
            assert op in (":?", ":-") and (op == ":?" or arg == ""), f"{name} has a default: {arg!r}"
    for name in ("CLICKHOUSE_PASSWORD", "CLICKHOUSE_READONLY_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert (name, ":?") in {(n, o) for n, o, _a in refs}, f"{name} must be required (${{{name}:?...}})"
        assert env_example()[name] == "", f".env.example must not ship a value for {name}"
    # nothing that looks like a credential is written out literally
    assert not re.search(r"(?i)(password|token|secret)\s*[:=]\s*[\"']?[A-Za-z0-9]{6,}", raw_text())


def test_compose_refuses_to_start_without_the_passwords() -> None:
    env = filled_env()
    del env["CLICKHOUSE_PASSWORD"]
    with pytest.raises(AssertionError, match="CLICKHOUSE_PASSWORD"):
        resolved(env)


# --- the ClickHouse account for dashboards ----------------------------------------------------


def test_clickhouse_xml_is_well_formed() -> None:
    files = sorted((ROOT / "deploy/clickhouse").rglob("*.xml"))
    assert files
    for f in files:
        assert ET.parse(f).getroot().tag == "clickhouse", f


def run_entrypoint(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "deploy/clickhouse/entrypoint.sh"), "--ok"],
        env={"PATH": os.environ["PATH"], "USERS_D": str(tmp_path), "NEXT_ENTRYPOINT": "echo", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_readonly_account_is_written_from_the_environment(tmp_path: Path) -> None:
    r = run_entrypoint(
        tmp_path,
        CLICKHOUSE_READONLY_USER="grafana",
        CLICKHOUSE_READONLY_PASSWORD="p<&>ss",
        CLICKHOUSE_DB="adclick",
        CLICKHOUSE_USER="adclick",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "--ok"  # handed over to the image's entrypoint with the arguments
    text = (tmp_path / "zz-readonly-user.xml").read_text()
    assert "p<&>ss" not in text  # only the hash
    user = ET.fromstring(text).find("users/grafana")
    assert user is not None
    assert user.findtext("profile") == "dashboards"
    assert user.findtext("grants/query") == "GRANT SELECT ON adclick.*"
    assert len(user.findtext("password_sha256_hex") or "") == 64


@pytest.mark.parametrize(
    "env",
    [
        {"CLICKHOUSE_READONLY_USER": "gra fana", "CLICKHOUSE_READONLY_PASSWORD": "x"},
        {"CLICKHOUSE_READONLY_USER": "grafana", "CLICKHOUSE_READONLY_PASSWORD": "x", "CLICKHOUSE_DB": "a;b"},
        {
            "CLICKHOUSE_READONLY_USER": "adclick",
            "CLICKHOUSE_READONLY_PASSWORD": "x",
            "CLICKHOUSE_USER": "adclick",
        },
        {"CLICKHOUSE_READONLY_USER": "grafana"},
    ],
)
def test_readonly_account_refuses_bad_settings(tmp_path: Path, env: dict[str, str]) -> None:
    r = run_entrypoint(tmp_path, **env)
    assert r.returncode != 0
    assert not (tmp_path / "zz-readonly-user.xml").exists()
