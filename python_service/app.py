"""Container entry point of the producer service: `logpipe produce` with settings from LOGPIPE_* variables."""

import sys

from logpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["produce", *sys.argv[1:]]))
