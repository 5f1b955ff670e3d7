"""The test harness restarts a worker the recovery watchdog stopped, as compose would; only that."""

from types import SimpleNamespace

from tests.mesh_harness import WATCHDOG_STOP, Mesh, Service


def stopped(tmp_path, name, returncode, log_text):
    log = tmp_path / f"{name}.log"
    log.write_text(log_text)
    proc = SimpleNamespace(poll=lambda: returncode, returncode=returncode)
    return Service(name, proc, 0, log, 0, "ctr", name[3:])


def test_only_a_worker_stopped_by_the_recovery_watchdog_is_started_again(tmp_path, monkeypatch):
    mesh = Mesh("127.0.0.1:1", tmp_path)
    mesh.services = {
        "ctr": stopped(tmp_path, "ctr", 1, f"... [CRITICAL] {WATCHDOG_STOP} applied nothing for 120 s"),
        "ctr-2": stopped(tmp_path, "ctr-2", 1, "... agent failed, stopping the worker: KafkaError"),
        "ctr-3": stopped(tmp_path, "ctr-3", 0, f"{WATCHDOG_STOP} (but it exited cleanly)"),
        "ctr-4": stopped(tmp_path, "ctr-4", None, WATCHDOG_STOP),  # still running
    }
    started = []
    monkeypatch.setattr(mesh, "start", lambda service, **how: started.append((service, how["instance"])))
    mesh.supervise()
    assert started == [("ctr", "")] and mesh.restarted == ["ctr"]
    assert sorted(mesh.services) == ["ctr-2", "ctr-3", "ctr-4"]
