"""Who may use the console and how its answers are framed.

- It listens on loopback unless told otherwise; any other address needs
  ``--allow-remote`` and an access token. A request then carries the token as
  ``Authorization: Bearer`` or signs in once through the login form, which
  sets a session cookie (HttpOnly, SameSite=Strict). Tokens are compared in
  constant time and never logged or echoed.
- On loopback, the Host header must name a loopback address: a web page that
  rebinds its own name to 127.0.0.1 (DNS rebinding) gets nothing.
- Every POST carries the console's CSRF token (a form field, or the
  ``X-Pacspace-CSRF`` header from its script), and an Origin, if sent, must be
  the console's own: another site's page cannot accept an invitation for you.
- Every answer forbids framing, sniffing and referrers; pages get a strict
  Content-Security-Policy (scripts and styles from the console itself only).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field

from aiohttp import web

from .. import exitcodes
from ..errors import MalformedInput, PacspaceError

COOKIE = "pacspace_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-Pacspace-CSRF"
MIN_TOKEN = 16
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "X-Frame-Options": "DENY", "Cache-Control": "no-store", "Cross-Origin-Opener-Policy": "same-origin",
           "Cross-Origin-Resource-Policy": "same-origin"}
OPEN_PATHS = ("/login", "/static/")  # reachable before signing in


class Refused(PacspaceError):
    """A request the console refuses: another site's form, a wrong Host, a missing CSRF token."""

    code = "forbidden"
    http_status = 403
    exit_code = exitcodes.USAGE


class NotSignedIn(PacspaceError):
    code = "unauthorized"
    http_status = 401
    exit_code = exitcodes.USAGE


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """The console's access rules for one run: its token (if any), and secrets drawn anew at each start."""

    token: str | None
    loopback: bool
    session: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @classmethod
    def create(cls, host: str, allow_remote: bool, token: str | None) -> Access:
        """The rules for listening on ``host``; MalformedInput for an unsafe combination."""
        loopback = is_loopback(host)
        if not loopback and not allow_remote:
            raise MalformedInput(f"--host {host} is not a loopback address: the console shows your bills to anyone "
                                 "who reaches it, so pass --allow-remote and a token (--token or PACSPACE_UI_TOKEN)")
        if token is not None and len(token) < MIN_TOKEN:
            raise MalformedInput(f"the console's token is at least {MIN_TOKEN} characters (try `openssl rand -hex 16`)")
        if not loopback and token is None:
            raise MalformedInput("--allow-remote needs a token: --token or PACSPACE_UI_TOKEN, at least "
                                 f"{MIN_TOKEN} characters")
        return cls(token, loopback)

    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def signed_in(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and self.token_ok(auth[len("Bearer "):]):
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.session.encode())

    def host_ok(self, request: web.Request) -> bool:
        if not self.loopback:
            return True
        host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        return is_loopback(host)

    def csrf_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf.encode())


async def check_request(access: Access, request: web.Request) -> None:
    """Raise Refused or NotSignedIn for a request the console must not serve (see the module docstring)."""
    if not access.host_ok(request):
        raise Refused("this console answers only to its loopback address (the Host header names another)")
    if not access.signed_in(request) and not request.path.startswith(OPEN_PATHS):
        raise NotSignedIn("sign in with the console's token")
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            raise Refused("a form from another site cannot act on this console")
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            given = str((await request.post()).get(CSRF_FIELD, ""))
        if not access.csrf_ok(given or ""):
            raise Refused("the request lacks this console's CSRF token: reload the page and try again")


def frame(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response
