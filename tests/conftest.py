"""Session fixtures: one real Apache Kafka broker for the whole run (started by deploy/kafka.sh
unless KAFKA_BOOTSTRAP_SERVERS already points at a live one), and a fresh mesh per test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mesh_harness import ROOT, Mesh, free_port, port_open


class KafkaBroker:
    """The session's broker. `restart()` works only for a broker this session started itself."""

    def __init__(self, bootstrap: str, env: dict[str, str] | None) -> None:
        self.bootstrap = bootstrap
        self.env = env  # None: an external broker we must not touch
        self.script = str(ROOT / "deploy" / "kafka.sh")

    def stop(self) -> None:
        assert self.env is not None, "not our broker"
        subprocess.run(["bash", self.script, "stop"], env=self.env, check=True)

    def start(self) -> None:
        assert self.env is not None, "not our broker"
        subprocess.run(["bash", self.script, "start"], env=self.env, check=True)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    given = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    if given:
        host, port = given.rsplit(":", 1)
        assert port_open(host, int(port)), f"TEST_KAFKA_BOOTSTRAP_SERVERS={given} does not answer"
        yield KafkaBroker(given, None)
        return
    # Our own broker on free ports and a throwaway state dir: never touches a mesh you run locally.
    state = tmp_path_factory.mktemp("kafka")
    env = {
        **os.environ,
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_STATE_DIR": str(state),
    }
    broker = KafkaBroker(f"127.0.0.1:{env['KAFKA_PORT']}", env)
    broker.start()
    try:
        yield broker
    finally:
        subprocess.run(["bash", broker.script, "stop"], env=env, check=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def mesh_factory(kafka_bootstrap: str, tmp_path: Path) -> Iterator[callable]:
    meshes: list[Mesh] = []

    def make(**overrides: str) -> Mesh:
        workdir = tmp_path / f"mesh{len(meshes)}"
        workdir.mkdir()
        m = Mesh(kafka_bootstrap, workdir, {k: str(v) for k, v in overrides.items()})
        meshes.append(m)
        return m

    yield make
    for m in meshes:
        m.stop_all()
        m.delete_topics()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """deploy/test.sh reruns a test that timed out, and a rerun that passes leaves only its name in
    the summary: write why it timed out into the log at once."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None and "TimeoutError" in call.excinfo.typename:
        reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"\n[timed out, may be rerun] {item.nodeid} ({report.when}):")
            reporter.write_line(str(call.excinfo.value)[:20000])
