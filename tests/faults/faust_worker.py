"""`python -m tests.faults.faust_worker -A services.x worker`: faust's command line, with the
faults the environment asks for armed first (tests only; see tests/faults/changelog_loss.py)."""

from faust.cli.faust import cli

import tests.faults.changelog_loss  # noqa: F401  (arms itself from the environment)

if __name__ == "__main__":
    cli()
