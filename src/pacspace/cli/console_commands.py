"""``pacspace ui`` (the customer's console) and ``pacspace verifier`` (the page an auditor opens)."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import PacspaceError
from ..files import read_text
from .argtypes import port, seconds
from .listen import listen
from .party import DEFAULT_URL, common, home_of

UI_TOKEN_ENV = "PACSPACE_UI_TOKEN"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "ui",
        help="(customer) the console: bills, invoice checks and evidence in a browser",
        description="Serve the customer's console from the monitor's verified copy (PACSPACE_HOME/monitor.db): "
        "relationships and invitations, each billing period's status, totals and usage chart, every record with its "
        "proof, an invoice check (pacspace JSON, Stripe, Lago or CSV), and the report, CSV and evidence bundle to "
        "download. It polls the log server (PACSPACE_URL, with this party's PACSPACE_TOKEN) in the background and "
        "on request, and shows what was verified when the server is down. It listens on loopback unless given "
        "--allow-remote and a token (docs/console.md).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (not loopback: --allow-remote and a token)")
    p.add_argument("--port", type=port, default=8070, help="port to listen on")
    p.add_argument("--allow-remote", action="store_true", help="allow an address other than loopback (needs a token)")
    p.add_argument("--token", default=None, help=f"the console's own access token, at least 16 characters, "
                   f"asked of every browser (default: ${UI_TOKEN_ENV}, else none: loopback only). This is not the "
                   "party's server token, which comes from PACSPACE_TOKEN")
    p.add_argument("--interval", type=seconds(), default=300.0, metavar="SECONDS", help="seconds between polls")
    p.add_argument("--mapping", type=Path, metavar="FILE",
                   help="the invoice name mapping to use when a check gives none (default: none)")
    p.add_argument("--prices", type=Path, metavar="FILE",
                   help="the price sheet to use when a check gives none (default: none: quantities only)")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey (default: the one pinned in PACSPACE_HOME)")
    common(p, server=False)
    p.set_defaults(run=cmd_ui)

    p = sub.add_parser(
        "verifier",
        help="write verifier.html: anyone checks an evidence bundle in a browser",
        description="Write one self-contained HTML page that checks an evidence bundle (`pacspace evidence "
        "export`) entirely in the browser, with no network access and no install: the checkpoints' signatures, the "
        "inclusion proofs, each record's ciphertext and signature, the chain and the close's totals. Prints the "
        "page's SHA-256 (as sha256sum does): compare it before trusting a copy.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE.html", help="the page to write")
    p.set_defaults(run=cmd_verifier)


def cmd_ui(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..console.app import create_console_app

    config = _console_config(args)
    sock = listen(args.host, args.port)  # bound before anything is opened or said
    app = create_console_app(config)
    host = f"[{args.host}]" if ":" in args.host else args.host
    polls = f"polls {config.server.url} every {args.interval:g} s" if config.server else \
        "no PACSPACE_TOKEN: it shows the verified copy and does not poll"
    print(f"pacspace: console on http://{host}:{args.port}/ ({polls})", file=sys.stderr)
    web.run_app(app, sock=sock, print=None, access_log=None)
    return 0


def _console_config(args: argparse.Namespace) -> Any:
    """Everything the console needs, checked before it listens: a bad file or setting is exit 2."""
    from ..client.http import server_url
    from ..client.invoice_mapping import load_mapping
    from ..client.prices import load_prices
    from ..console.poller import Server
    from ..console.security import Access
    from ..console.state import ConsoleConfig

    token = args.token if args.token is not None else os.environ.get(UI_TOKEN_ENV) or None
    access = Access.create(args.host, args.allow_remote, token)
    mapping = load_mapping(read_text(args.mapping, "--mapping")) if args.mapping else None
    prices = load_prices(read_text(args.prices, "--prices")) if args.prices else None
    home = home_of(args)
    log_key = home.log_key(args.log_key)
    url = server_url(os.environ.get("PACSPACE_URL") or DEFAULT_URL)
    party_token = os.environ.get("PACSPACE_TOKEN")
    server = Server(url, party_token) if party_token else None
    return ConsoleConfig(home, log_key, access, server, args.interval, mapping, prices)


def cmd_verifier(args: argparse.Namespace) -> int:
    from ..verifier.page import verifier_page
    from .main import version

    page = verifier_page(version()).encode("utf-8")
    try:
        args.out.write_bytes(page)
    except OSError as exc:
        raise PacspaceError(f"cannot write the page to {args.out}: {exc.strerror or 'the system refused'}") from None
    print(f"{hashlib.sha256(page).hexdigest()}  {args.out}")
    print(f"pacspace: wrote {args.out}: give it with this SHA-256, and check a copy's with `sha256sum {args.out}`",
          file=sys.stderr)
    return 0
