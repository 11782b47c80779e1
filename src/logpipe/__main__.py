"""`python -m logpipe` runs the CLI."""

from logpipe.cli import main

raise SystemExit(main())
