"""Compile the hot modules (shared.compiled_modules.HOT_MODULES) with mypyc, beside the sources.

    .venv/bin/python deploy/compile_hot_modules.py [--force]

deploy/setup.sh runs it; it returns at once when the build matches the sources. The build goes to
.build/compiled/<python>-<platform>/ (never next to the .py files, where Python would import a stale
extension ahead of an edited source) with a manifest of the sources it was made from; the services
use it only while that manifest matches (shared/compiled_modules.py). Needs mypy (a dev dependency)
and a C compiler; without them the services run the same code as pure Python.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# This process (and the compiler's child) only reads the sources: importing `shared` must neither
# use nor warn about the build it is about to replace. The up-to-date check below ignores it.
os.environ["MESH_COMPILED"] = "0"

from shared import compiled_modules as hot  # noqa: E402

LOG = ROOT / ".build" / "compile.log"


def compile_into(target: Path) -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    with tempfile.TemporaryDirectory(prefix="mypyc-") as tmp:
        # mypy's flags first: third-party packages without stubs are Any; errors in the modules the
        # hot ones import (not compiled) are not this build's business.
        paths = ["--ignore-missing-imports", "--follow-imports=silent"]
        paths += [str(hot.source_path(m).relative_to(ROOT)) for m in hot.HOT_MODULES]
        extensions = mypycify(paths, opt_level="3", group_name=hot.GROUP, target_dir=str(Path(tmp) / "c"))
        setup(
            name="adclick-hot-modules",
            ext_modules=extensions,
            script_args=["-q", "build_ext", "--build-lib", str(target), "--build-temp", str(Path(tmp) / "o")],
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--force", action="store_true", help="rebuild even when the build matches the sources")
    p.add_argument("--into", type=Path, help=argparse.SUPPRESS)  # the child process's build directory
    a = p.parse_args()
    os.chdir(ROOT)  # mypycify takes the sources' paths relative to the working directory
    if a.into is not None:
        compile_into(a.into)
        return 0
    current, why = hot.build_matches()
    if current and not a.force:
        print(f"[compile] up to date: {why}", file=sys.stderr)
        return 0
    digests = hot.source_digests()  # before compiling: an edit during the build makes it stale, not wrong
    started = time.monotonic()
    staging = hot.BUILD_DIR.with_name(hot.BUILD_DIR.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    # In a child process writing to a log: mypy's and the compiler's chatter stays out of setup's
    # output unless the build fails.
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("w") as out:
        child = subprocess.run(
            [sys.executable, __file__, "--into", str(staging)],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if child.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = LOG.read_text(errors="replace").splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        print(f"[compile] mypyc build failed (log: {LOG}): the services run as pure Python", file=sys.stderr)
        return 1
    (staging / hot.MANIFEST).write_text(json.dumps({"sources": digests, "group": hot.GROUP}, indent=1) + "\n")
    shutil.rmtree(hot.BUILD_DIR, ignore_errors=True)
    staging.rename(hot.BUILD_DIR)
    print(
        f"[compile] {len(hot.HOT_MODULES)} hot modules compiled in {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
