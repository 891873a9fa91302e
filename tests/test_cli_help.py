"""Every command, argument and option of the pacspace command has a help line, and every option shows its default.

The parser is walked (cli.main.build_parser), so a new option is checked without editing this file. An
option's default is shown as ``(default: ...)``: its value, ``off`` for a flag, or, where the value is
None, what applies without it, in the option's own help.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from contextlib import redirect_stdout

import pytest

from pacspace.cli.main import HelpFormatter, build_parser, main


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


ALL = list(parsers(build_parser()))


def _skipped(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._HelpAction, argparse._VersionAction))


@pytest.mark.parametrize("path,parser", ALL, ids=[" ".join(p) or "pacspace" for p, _ in ALL])
def test_every_argument_has_help_and_every_option_its_default(path, parser):
    formatter = HelpFormatter(prog="pacspace")
    missing = []
    for action in parser._actions:
        if _skipped(action):
            continue
        name = "/".join(action.option_strings) or action.dest
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if not choice.help:
                    missing.append(f"command {choice.dest}: no help")
            continue
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{name}: no help")
            continue
        if action.option_strings and not action.required:
            shown = formatter._get_help_string(action) or ""
            if "(default: " not in shown:
                missing.append(f"{name}: its help does not show its default")
    assert not missing, f"pacspace {' '.join(path)}: " + "; ".join(missing)


def help_text(*args: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main([*args, "--help"]) == 0
    return out.getvalue()


def test_the_help_shows_the_defaults():
    serve = help_text("serve")
    assert "(default: 8080)" in serve and "(default: 0.005)" in serve and "(default: auto)" in serve and "(default: ./pacspace-data)" in serve
    assert "(default: the existing log's; localhost/pacspace for a new one)" in " ".join(serve.split())
    monitor = " ".join(help_text("monitor").split())
    assert "(default: 60)" in monitor and "--once poll once and exit with the poll's code (default: off)" in monitor
    assert "(default: $PACSPACE_TOKEN)" in monitor
    assert "(default: 60)" in " ".join(help_text("recorder", "serve").split())


def test_version():
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--version"]) == 0
    name, version = out.getvalue().split()
    assert name == "pacspace" and version[0].isdigit()
