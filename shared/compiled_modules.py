"""The hot modules compiled with mypyc, used only when built from these very sources.

`deploy/compile_hot_modules.py` (run by deploy/setup.sh) compiles HOT_MODULES into
.build/compiled/<python>-<platform>/ and writes a manifest of the sources' SHA-256. A package
holding hot modules calls `prefer_compiled(__name__, __path__)` first thing, which puts that build
ahead of the sources on the package's search path when the manifest matches every source.

Why all or nothing: the modules of one mypyc build call each other natively, so a compiled
windowed_agent keeps calling the compiled `add` even after windows.py was edited. One changed
source (an edit after the build) therefore disables the whole build, with a warning; run
deploy/setup.sh again to rebuild. MESH_COMPILED=0 in the environment forces pure Python (for A/B
benchmarks, or to debug in the sources). The code is the same either way: mypyc compiles the
.py files as they are, only faster (bench/engagement_cpu.py, bench/ingest_cpu.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
import sysconfig
from pathlib import Path

log = logging.getLogger(__name__)

# Chosen by profile: the per-event code of ingest, ctr and engagement (the window engine, the
# watermarks, the bundles, the parsers, the join, engagement's metrics and distinct sets). Their
# callers (the agents) stay Python: faust's decorators need them to be.
HOT_MODULES = (
    "shared.watermarks",
    "shared.windows",
    "shared.windowed_agent",
    "shared.bundles",
    "services.ingest.formats",
    "services.ingest.validating",
    "services.ingest.join",
    "services.ingest.joining",
    "services.engagement.metrics",
    "services.engagement.distinct",
    "services.engagement.fan_out",
)
GROUP = "adclick_hot"  # the name of the build's shared library: adclick_hot__mypyc.*.so
ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / ".build" / "compiled" / f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
MANIFEST = "manifest.json"


def source_path(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digests(root: Path = ROOT) -> dict[str, str]:
    return {m: hashlib.sha256(source_path(m, root).read_bytes()).hexdigest() for m in HOT_MODULES}


def build_state(build_dir: Path = BUILD_DIR, root: Path = ROOT) -> tuple[bool, str]:
    """(usable, why): a build is usable when switched on, present, and made from today's sources."""
    if os.environ.get("MESH_COMPILED", "1").strip() == "0":
        return False, "MESH_COMPILED=0"
    return build_matches(build_dir, root)


def build_matches(build_dir: Path = BUILD_DIR, root: Path = ROOT) -> tuple[bool, str]:
    """(current, why): the build is present and made from today's sources, switched on or not."""
    try:
        recorded = json.loads((build_dir / MANIFEST).read_text())["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, f"no build in {build_dir} (deploy/setup.sh makes one)"
    try:
        current = source_digests(root)
    except OSError as exc:  # an installed copy without sources
        return False, f"sources unreadable: {exc}"
    changed = sorted(m for m in HOT_MODULES if recorded.get(m) != current[m])
    if changed:
        return False, f"stale build: {', '.join(changed)} changed since (deploy/setup.sh rebuilds)"
    return True, f"compiled with mypyc ({build_dir})"


@functools.cache
def decision() -> tuple[bool, str]:
    """Taken once per process, before the first hot module is imported."""
    usable, why = build_state()
    if usable:
        sys.path.append(str(BUILD_DIR))  # where the build's shared library is imported from
    elif why.startswith("stale"):
        log.warning("hot modules: pure Python: %s", why)
    return usable, why


def prefer_compiled(package: str, path: list[str]) -> None:
    """Search `package`'s compiled build before its sources (mutates the package's __path__)."""
    usable, _ = decision()
    compiled = BUILD_DIR.joinpath(*package.split("."))
    if usable and compiled.is_dir() and str(compiled) not in path:
        path.insert(0, str(compiled))
