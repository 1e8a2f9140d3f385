"""``python -m prunekit`` runs the CLI."""

from prunekit.cli import main

raise SystemExit(main())
