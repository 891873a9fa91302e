"""``pacspace``: one parser, one place that turns errors into a stderr line and an exit code."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import NoReturn

from .. import __version__, exitcodes
from ..errors import PacspaceError
from . import (admin_commands, client_commands, console_commands, log_commands, monitor_commands, recorder_commands,
               witness_commands)

EXIT_OK = exitcodes.OK
EXIT_FAILURE = exitcodes.FAILURE
EXIT_USAGE = exitcodes.USAGE


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default: its value, ``off`` for a flag, or what the help itself says.

    An option whose default is None must say in its help what applies without it, as
    ``(default: ...)``; tests/test_cli_help.py checks every option of every command.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or not action.option_strings or action.required or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0:
            return f"{text} (default: off)"
        if action.default is None or action.default == []:
            return text
        shown = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """The parser of pacspace and of each of its commands: a usage error is one line on stderr, exit 2."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("pacspace").strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_USAGE, f"pacspace: error: {where}{message} (see `{self.prog} --help`)\n")


def version() -> str:
    try:
        return metadata.version("pacspace")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pacspace",
        description="pacspace: a verifiable recordation log for usage-based billing. Exit codes: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"pacspace {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    log_commands.register(sub)
    admin_commands.register(sub)
    client_commands.register(sub)
    monitor_commands.register(sub)
    console_commands.register(sub)
    witness_commands.register(sub)
    recorder_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error, already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.run(args) or EXIT_OK)
    except PacspaceError as exc:
        print(f"pacspace: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pacspace: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED
    except OSError as exc:
        print(f"pacspace: error: {one_line(describe_os_error(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except sqlite3.Error as exc:
        print(f"pacspace: error: database: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception:
        if os.environ.get("PACSPACE_DEBUG"):
            raise
        print("pacspace: error: unexpected internal error, a bug in pacspace: please report the command that caused "
              "it (PACSPACE_DEBUG=1 shows where it happened)", file=sys.stderr)
        return EXIT_FAILURE


def one_line(text: str) -> str:
    """An error message as one printable line: a server's or a file's text may hold newlines or terminal escapes."""
    return "".join(c if c.isprintable() else " " for c in text)


def describe_os_error(exc: OSError) -> str:
    """What the operating system refused, in words, with the file it concerns: never the exception's repr."""
    reason = exc.strerror or "the operating system refused"
    return f"{exc.filename}: {reason}" if exc.filename else reason


if __name__ == "__main__":
    sys.exit(main())
