"""`python -m services.generator --help`: see services/generator/cli.py."""

from services.generator.cli import main

raise SystemExit(main())
