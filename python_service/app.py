"""Container entry point of the producer service: `logpipe produce LOG [flags]`, settings from LOGPIPE_* variables.

With `--generate-if-missing SIZE`, a missing LOG is first generated as the demo's sample (`logpipe generate`, the
demo's seed). Both steps run in this one process, so the SIGTERM of `docker compose stop` reaches whichever runs:
a generate step run by `sh` never got it (Docker's init signals its own child only) and left `<LOG>.partial`.
"""

import argparse
import sys
from pathlib import Path

from logpipe.cli import main
from logpipe.commands.demo import SAMPLE_SEED


def run(argv: list[str]) -> int:
    """Generate the sample if asked and LOG is missing, then produce LOG with the other arguments."""
    p = argparse.ArgumentParser(prog="app.py", add_help=False)
    p.add_argument("--generate-if-missing", metavar="SIZE", default=None)
    ours, produce_args = p.parse_known_args(argv)
    log = next((a for a in produce_args if not a.startswith("-")), None)
    if ours.generate_if_missing and log and not Path(log).exists():
        code = main(["generate", "--size", ours.generate_if_missing, "--seed", str(SAMPLE_SEED), "--out", log])
        if code:
            return code
    return main(["produce", *produce_args])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
