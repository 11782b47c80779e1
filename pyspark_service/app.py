"""Container entry point of the streaming service: `logpipe stream` with settings from LOGPIPE_* variables."""

import sys

from logpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["stream", *sys.argv[1:]]))
