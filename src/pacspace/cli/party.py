"""What every party command shares: its home, server and token arguments, and one way to run against the server.

Party commands read PACSPACE_URL, PACSPACE_TOKEN and PACSPACE_HOME (or --url, --token, --home).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import MalformedInput
from ..client.home import Home, HomeError, default_home
from ..client.http import PacspaceClient
from ..files import read_text

DEFAULT_URL = "http://127.0.0.1:8080"


def common(p: argparse.ArgumentParser, server: bool = True) -> None:
    p.add_argument("--home", type=Path, default=None, metavar="DIR",
                   help="this party's state directory (default: $PACSPACE_HOME, else ~/.pacspace)")
    if server:
        p.add_argument("--url", default=None, help=f"the server's URL (default: $PACSPACE_URL, else {DEFAULT_URL})")
        p.add_argument("--token", default=None, help="this party's bearer token (default: $PACSPACE_TOKEN)")


def home_of(args: argparse.Namespace) -> Home:
    path = getattr(args, "home", None) or default_home()
    if path.exists() and not path.is_dir():
        raise HomeError(f"the home {path} is not a directory (set PACSPACE_HOME or --home to a directory)")
    return Home(path)


def server_of(args: argparse.Namespace) -> tuple[str, str]:
    """The server's URL and this party's token, from the arguments or the environment."""
    url = getattr(args, "url", None) or os.environ.get("PACSPACE_URL") or DEFAULT_URL
    token = getattr(args, "token", None) or os.environ.get("PACSPACE_TOKEN")
    if not token:
        raise MalformedInput("no token: set PACSPACE_TOKEN or pass --token")
    return url, token


def run(args: argparse.Namespace, body: Callable[[PacspaceClient, Home], Awaitable[int]]) -> int:
    url, token = server_of(args)
    home = home_of(args)

    async def main() -> int:
        async with PacspaceClient(url, token) as client:
            return await body(client, home)

    return asyncio.run(main())


def policy_of(args: argparse.Namespace) -> Any:
    from ..policy import parse_policy

    if not getattr(args, "policy", None):
        return None
    return parse_policy(read_text(args.policy, "--policy"))


def print_witnessed(args: argparse.Namespace, note: Any) -> int | None:
    """With --policy: require the quorum, report the earliest witness time (independent proof of when), return it."""
    from ..policy import require_quorum

    policy = policy_of(args)
    if policy is None:
        return None
    cosigners = require_quorum(policy, note)
    if not cosigners:
        return None
    name, first = min(cosigners.items(), key=lambda item: item[1])
    when = datetime.fromtimestamp(first, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"witnessed: by {', '.join(sorted(cosigners))}; earliest cosignature {when} ({name})")
    return first
