"""Container entry point of the producer service: `logpipe produce LOG [flags]`, settings from LOGPIPE_* variables.

With `--generate-if-missing SIZE`, a missing LOG is first generated as the demo's sample (`logpipe generate`, the
demo's seed). Both steps run in this one process, so the SIGTERM of `docker compose stop` reaches whichever runs:
a generate step run by `sh` never got it (Docker's init signals its own child only) and left `<LOG>.partial`.
"""

import argparse
import sys

from logpipe.cli import build_parser, main
from logpipe.commands.demo import SAMPLE_SEED


def run(argv: list[str]) -> int:
    """Generate the sample if asked and LOG is missing, then produce LOG with the other arguments."""
    p = argparse.ArgumentParser(prog="app.py", add_help=False)
    p.add_argument("--generate-if-missing", metavar="SIZE", default=None)
    ours, produce_args = p.parse_known_args(argv)
    if ours.generate_if_missing:
        # LOG as `logpipe produce` reads it (the first word not starting with "-" may be a flag's value)
        log = build_parser().parse_args(["produce", *produce_args]).file
        if not log.exists():
            code = main(["generate", "--size", ours.generate_if_missing, "--seed", str(SAMPLE_SEED), "--out",
                         str(log)])
            if code:
                return code
    return main(["produce", *produce_args])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
