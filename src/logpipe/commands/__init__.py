"""CLI subcommands: each module here has `register(subparsers)` and is picked up by logpipe.cli."""
