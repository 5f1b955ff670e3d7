"""The mypyc build of the hot modules: used when current, never when a source changed after it."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import pytest

from shared import compiled_modules as hot


def fake_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the hot modules' sources and a build directory whose manifest matches them."""
    root, build = tmp_path / "root", tmp_path / "build"
    for module in hot.HOT_MODULES:
        target = hot.source_path(module, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(hot.source_path(module), target)
    build.mkdir()
    (build / hot.MANIFEST).write_text(json.dumps({"sources": hot.source_digests(root)}))
    return root, build


def test_a_build_from_the_current_sources_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_COMPILED", raising=False)
    root, build = fake_tree(tmp_path)
    assert hot.build_state(build, root)[0] is True


def test_one_edited_source_disables_the_whole_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The modules of one build call each other natively: a stale windows.py compiled into the
    # build would keep running under an edited windowed_agent, so none of it may be used.
    monkeypatch.delenv("MESH_COMPILED", raising=False)
    root, build = fake_tree(tmp_path)
    edited = hot.source_path("shared.windows", root)
    edited.write_text(edited.read_text() + "\n# an edit after the build\n")
    usable, why = hot.build_state(build, root)
    assert usable is False
    assert why.startswith("stale") and "shared.windows" in why


def test_no_build_or_switched_off_means_pure_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, build = fake_tree(tmp_path)
    monkeypatch.setenv("MESH_COMPILED", "0")
    assert hot.build_state(build, root) == (False, "MESH_COMPILED=0")
    monkeypatch.delenv("MESH_COMPILED")
    (build / hot.MANIFEST).unlink()
    assert hot.build_state(build, root)[0] is False


@pytest.mark.skipif(os.environ.get("MESH_COMPILED") == "0", reason="pure Python asked for (MESH_COMPILED=0)")
def test_the_suite_runs_the_compiled_hot_modules() -> None:
    """The test command builds them (deploy/setup.sh), so the suite checks the code the services
    run. Fails when the build failed or is stale, saying why; MESH_COMPILED=0 tests pure Python."""
    usable, why = hot.decision()
    assert usable, f"hot modules not compiled: {why}"
    for module in hot.HOT_MODULES:
        loaded = importlib.import_module(module).__file__ or ""
        assert loaded.startswith(str(hot.BUILD_DIR)) and not loaded.endswith(".py"), (module, loaded)
