"""A PostgreSQL URL as pacspace shows it: never with its password (messages, logs, the data directory's mark)."""

from __future__ import annotations

import re

# The password of the user-info part (every libpq host list form: host, host:port, h1:p1,h2:p2), and the
# query parameters that carry secrets.
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*):[^@/?#]*@")
_SECRET = re.compile(r"(?P<name>[?&](?:password|sslpassword)=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` without its password, wherever libpq's URL syntax can hold one."""
    return _SECRET.sub(r"\g<name>***", _USERINFO.sub(r"\g<head>:***@", url))


def has_password(url: str) -> bool:
    return redact(url) != url
