"""``pacspace``: one parser, one place that turns errors into a stderr line and an exit code."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence

from .. import exitcodes
from ..errors import PacspaceError
from . import admin_commands, client_commands, log_commands, monitor_commands, recorder_commands, witness_commands

EXIT_OK = exitcodes.OK
EXIT_FAILURE = exitcodes.FAILURE
EXIT_USAGE = exitcodes.USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacspace",
        description="pacspace: a verifiable recordation log for usage-based billing.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    log_commands.register(sub)
    admin_commands.register(sub)
    client_commands.register(sub)
    monitor_commands.register(sub)
    witness_commands.register(sub)
    recorder_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or EXIT_OK)
    except PacspaceError as exc:
        print(f"pacspace: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pacspace: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        print(f"pacspace: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except sqlite3.Error as exc:
        print(f"pacspace: error: database: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
