"""The `logpipe` command line: wires settings, logging and signals, then hands off to a subcommand module."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from logpipe import __version__
from logpipe.config import Settings, load_settings, unknown_environment
from logpipe.health import ServiceDied, ServiceTimeout
from logpipe.stack.jars import StackError

# subcommands in help order; any other module in logpipe.commands is appended
ORDER = ["demo", "stack", "generate", "produce", "stream", "verify", "bench", "health"]


def setup_logging(verbose: int = 0) -> None:
    """Logs to stderr; rich formatting when stderr is a terminal."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    for noisy in ("py4j", "urllib3", "hdfs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kafka-python logs every refused connection while a broker starts; our code reports real failures itself
    logging.getLogger("kafka").setLevel(logging.WARNING if verbose > 0 else logging.CRITICAL)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from LOGPIPE_* env, overridden by any CLI flag whose dest is a Settings field."""
    fields = Settings.model_fields
    return load_settings(**{k: v for k, v in vars(args).items() if k in fields})


def add_setting_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add `--<name>` flags (default: unset) overriding the Settings fields `names`. Their help gives the setting's
    default (what applies when neither the flag nor its LOGPIPE_* variable is set) and, for a fixed set of values,
    the values (argparse then refuses others before any work starts). A LOGPIPE_* variable set now is shown with
    its value: that, not the default, is what applies without the flag."""
    import os

    for name in names:
        field = Settings.model_fields[name]
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        default = "" if field.default in (None, "") else f" (default: {field.default})"
        env = f"LOGPIPE_{name.upper()}"
        now = os.environ.get(env, "")  # empty counts as unset (env_ignore_empty)
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, choices=choices,
                            help=((field.description or name.replace("_", " ")) + default
                                  + (f" [env {env}, set now: {now}]" if now else f" [env {env}]"))
                            .replace("%", "%%"))  # argparse formats help with %


def size_bytes(text: str) -> int:
    """An argparse type for a size in decimal units ('40MB', '2.5GB'): its bytes, or the parser's error, before
    any work starts."""
    from logpipe.generator import parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be more than 0 bytes")
    return size


def output_file_problem(path: Path, flag: str) -> str | None:
    """Why a command could not write its output file `path` (given with `flag`): a folder, a folder that cannot be
    made, no right to write; or None. Checked before the command's long work, not after it. Makes the missing
    folders; a file it had to create to learn that is removed again (a symbolic link, even to a file not made yet,
    stays one: its target is tried; an existing file is not emptied)."""
    if path.is_dir():
        return f"{flag} {path} is a folder: give a file name"
    target = path.resolve()
    blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return f"cannot write {flag} {path}: {blocking} is a file, not a folder"
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a"):
            pass
    except OSError as exc:
        return f"cannot write {flag} {path}: {exc.strerror or exc}"
    if not existed:
        target.unlink(missing_ok=True)
    return None


def misplaced_flag(args: argparse.Namespace, choice: str, applies: dict[str, tuple[str, ...]]) -> str | None:
    """What is wrong when a flag was given to a command's choice it does nothing for (`stack status --wipe`,
    `health kafka --max-age`): `applies` maps a flag's dest to the values of `args.<choice>` it serves; None when
    every flag given applies. Refused rather than ignored: a user who gave it expected it to act."""
    chosen = getattr(args, choice)
    for dest, choices in applies.items():
        given = getattr(args, dest, None)
        if given is not None and given is not False and chosen not in choices:  # `--max-age 0` is given too
            serves = " and ".join(f"`logpipe {args.command} {c}`" for c in choices)
            return f"--{dest.replace('_', '-')} applies to {serves} only"
    return None


def exit_on_termination() -> None:
    """SIGTERM (`kill`, `timeout`, a cancelled CI job) and SIGHUP (a closed terminal) end the command as Ctrl-C
    does, through its clean-up (SystemExit 128 + signal): Python's default action ends the process alone, and a
    child started in a session of its own (a benchmark stage, the AOT training's Spark JVM) would run on."""
    import signal

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logpipe", description="Streaming access-log analytics: a log file -> Kafka -> Spark Structured "
        "Streaming -> sliding-window counts, rate-limit and failure-surge alerts, as Parquet on HDFS.",
        epilog="Settings come from LOGPIPE_* environment variables (the most used: the README's Configuration section; "
               "every one, with its default and meaning: logpipe.config.Settings); a command's flags override them. "
               "`logpipe COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"logpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging (and kafka's own)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import logpipe.commands as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__)]
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        importlib.import_module(f"logpipe.commands.{name}").register(sub)
    # each command's --help opens with its one-line summary (the text `logpipe --help` lists it with)
    for listed in sub._choices_actions:
        command = sub.choices[listed.dest]
        command.description = command.description or listed.help
    _verbose_anywhere(parser)
    return parser


def _option_of(parser: argparse.ArgumentParser, command: str, dest: str) -> str | None:
    """The flag of `command` (or of a command under it) that sets `dest` (`produce --client` sets
    producer_client), or None."""
    def walk(p: argparse.ArgumentParser) -> str | None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                found = next((f for sub in action.choices.values() if (f := walk(sub))), None)
                if found:
                    return found
            elif action.dest == dest and action.option_strings:
                return max(action.option_strings, key=len)
        return None

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return walk(sub.choices[command])


def _verbose_anywhere(parser: argparse.ArgumentParser) -> None:
    """`-v` after a command too (`logpipe health kafka -v`), where users put it: every (sub)command takes it. Its
    default is left out, so a command's parser does not reset a `-v` given before the command's name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                if not any("-v" in a.option_strings for a in command._actions):
                    command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                                         help="debug logging (as `logpipe -v`)")
                _verbose_anywhere(command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    for name, meant in unknown_environment():
        print(f"logpipe: warning: {name} is not a setting: it is ignored"
              + (f" (did you mean {meant}?)" if meant else ""), file=sys.stderr)
    try:
        if getattr(args, "needs_spark", False):  # said before any other work (a demo would start the stack first)
            importlib.import_module("pyspark")
        result: Any = args.func(args)
    except ValidationError as exc:  # a bad flag or LOGPIPE_* value: say which, without a traceback
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            if not name:  # a rule across settings (e.g. slide <= window): the message names them
                print(f"logpipe: invalid settings: {err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
                continue
            option = _option_of(parser, args.command, name) if name in vars(args) else None  # this command's
            flag = f"flag {option} or " if option else ""
            print(f"logpipe: invalid setting {name} = {err.get('input')!r} ({flag}LOGPIPE_{name.upper()}): "
                  f"{err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except (StackError, ServiceTimeout, ServiceDied) as exc:  # the stack could not start: the message says why
        print(f"logpipe {args.command}: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("pyspark", "py4j"):
            raise
        # the spark extra is left out of the producer's and the notebook's images
        print(f"logpipe {args.command}: needs pyspark, which is not installed here: pip install 'logpipe[spark]' "
              "(`make setup` installs it; in compose, the streaming image has it)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
