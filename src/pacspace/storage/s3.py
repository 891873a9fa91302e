"""An S3-compatible bucket, as the object store of a log (``--objects s3://BUCKET[/PREFIX]``).

A few operations, nothing else: GET an object (or a range of it), PUT one only if the key is free
(``If-None-Match: *``), PUT one unconditionally (the bucket's ``checkpoint``, the one object that changes),
DELETE one, and HEAD the bucket. Requests
are signed with AWS Signature Version 4 (``sign_v4``, a pure function checked against AWS's published
example in the tests). Endpoint and credentials come from the standard environment variables:
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (default: AWS itself), ``AWS_REGION`` or
``AWS_DEFAULT_REGION`` (default us-east-1), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
``AWS_SESSION_TOKEN``. Objects are addressed path-style (``ENDPOINT/BUCKET/KEY``) when an endpoint is given,
virtual-hosted (``BUCKET.s3.REGION.amazonaws.com``) on AWS.

Written on http.client rather than an SDK: the four calls and their signature are ~150 lines, where
botocore would add tens of megabytes and its own threads to every pacspace process.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import MalformedInput, ObjectStoreFailed

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Seconds one request may wait on the store; one that takes longer is treated as down (an object is at most
# a few MiB: a bundle, or a pack of blobs, blobs.PACK_BYTES). A read waiting on a hung store holds up the server's shutdown by at most this much.
TIMEOUT = 10.0
# The largest object pacspace stores: an entry bundle of 256 entries of at most 65,535 bytes, each with its
# 2-byte length. A store that answers with more is refused before it is read.
MAX_OBJECT = 256 * (2 + 0xFFFF)
_CHUNK = 1 << 16
log = logging.getLogger("pacspace.storage")
_UNRESERVED = "-_.~"  # SigV4 encodes everything but these (and '/' in a path)


@dataclass(frozen=True)
class S3Location:
    """``s3://BUCKET[/PREFIX]``: the bucket, and the key prefix every object of the log is under."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        if not url.startswith("s3://"):
            raise MalformedInput(f"--objects takes s3://BUCKET[/PREFIX], not {url!r}")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        # S3's bucket naming rules: 3-63 of lower-case letters, digits, '.' and '-'.
        if not (3 <= len(bucket) <= 63 and all(c.islower() or c.isdigit() or c in ".-" for c in bucket)):
            raise MalformedInput(f"--objects: {bucket!r} is not an S3 bucket name")
        prefix = prefix.strip("/")
        if any(part in (".", "..") for part in prefix.split("/")):
            raise MalformedInput(f"--objects: the prefix {prefix!r} has a '.' or '..' segment, which stores resolve")
        return cls(bucket, prefix + "/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def sign_v4(method: str, host: str, path: str, headers: Mapping[str, str], payload_sha256: str, when: datetime.datetime,
            region: str, credentials: Credentials, query: str = "") -> str:
    """The Authorization header of an S3 request (AWS Signature Version 4, single-chunk payload).

    ``headers`` are the headers to sign besides host, x-amz-date and x-amz-content-sha256, which are always
    signed; ``path`` is already URI-encoded; ``query`` is the canonical query string.
    """
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    signed = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    signed |= {"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256}
    names = sorted(signed)
    canonical = "\n".join([method, path, query, *(f"{n}:{signed[n]}" for n in names), "", ";".join(names),
                           payload_sha256])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + credentials.secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope},SignedHeaders={';'.join(names)},"
            f"Signature={signature}")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


class S3Bucket:
    """One bucket (and prefix) of an S3-compatible store. Safe to share between threads: each thread keeps its
    own keep-alive connection."""

    def __init__(self, location: S3Location, *, endpoint: str | None, region: str, credentials: Credentials) -> None:
        self.location = location
        self.region = region
        self._credentials = credentials
        if endpoint:
            url = urllib.parse.urlsplit(endpoint)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise MalformedInput(f"the S3 endpoint {endpoint!r} is not an http(s):// URL")
            self._https = url.scheme == "https"
            self._host = url.netloc
            self._base = url.path.rstrip("/") + "/" + location.bucket
            self._where = f"at {endpoint}"
        else:
            self._https = True
            self._host = f"{location.bucket}.s3.{region}.amazonaws.com"
            self._base = ""
            self._where = f"at AWS ({self._host}; AWS_ENDPOINT_URL is unset)"
        self._local = threading.local()

    @classmethod
    def from_env(cls, location: S3Location, env: Mapping[str, str] | None = None) -> S3Bucket:
        env = os.environ if env is None else env
        # Stripped: a secret mounted from a file often ends with a newline, which no header may carry.
        access, secret = (env.get("AWS_ACCESS_KEY_ID") or "").strip(), (env.get("AWS_SECRET_ACCESS_KEY") or "").strip()
        token = (env.get("AWS_SESSION_TOKEN") or "").strip()
        if not access or not secret:
            raise MalformedInput(f"{location} needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        return cls(location, endpoint=endpoint, region=region,
                   credentials=Credentials(access, secret, token or None))

    def __str__(self) -> str:
        return str(self.location)

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is none."""
        response = self._request("GET", key)
        if response.status == 404:
            return None
        self._expect(response, "GET", key, 200)
        return response.body

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        """``length`` bytes of the object from ``start`` (an HTTP Range request), or None if there is no object. A
        store that answers with the whole object is cut to the range; one that answers shorter gives fewer bytes
        (which the caller's check refuses)."""
        response = self._request("GET", key, headers={"Range": f"bytes={start}-{start + length - 1}"})
        if response.status == 404:
            return None
        if response.status == 416:  # the object is shorter than it should be: no bytes, which the caller refuses
            return b""
        if response.status == 200:
            return response.body[start:start + length]
        self._expect(response, "GET", key, 206)
        return response.body

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` at ``key`` unless an object is there: True if stored, False if one was there already
        (which may hold other bytes: the caller compares). Durable once it returns True (S3's contract)."""
        response = self._request("PUT", key, data, {"If-None-Match": "*"})
        if response.status == 412:
            return False
        self._expect(response, "PUT", key, 200)
        return True

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing what is there."""
        self._expect(self._request("PUT", key, data), "PUT", key, 200)

    def delete(self, key: str) -> None:
        """Remove the object at ``key``, if there is one."""
        response = self._request("DELETE", key)
        if response.status not in (200, 204, 404):
            self._expect(response, "DELETE", key, 204)

    def check(self) -> None:
        """Raise ObjectStoreFailed unless the bucket exists and these credentials may use it."""
        response = self._request("HEAD", None)
        if response.status == 404:
            raise ObjectStoreFailed(f"{self.location}: no such bucket at the endpoint (create it first)")
        if response.status in (401, 403):
            raise ObjectStoreFailed(f"{self.location}: these credentials may not use the bucket (HTTP {response.status})")
        self._expect(response, "HEAD", None, 200)

    def _expect(self, response: Response, method: str, key: str | None, status: int) -> None:
        if response.status != status:
            code = _error_code(response.body)
            what = f"{self.location}/{key}" if key else str(self.location)
            raise ObjectStoreFailed(f"{method} {what}: HTTP {response.status}{f' {code}' if code else ''}")

    def _request(self, method: str, key: str | None, body: bytes = b"",
                 headers: Mapping[str, str] | None = None) -> Response:
        path = self._base + ("/" + urllib.parse.quote(self.location.prefix + key, safe="/" + _UNRESERVED)
                             if key is not None else "")
        path = path or "/"
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        extra = dict(headers or {})
        if body:
            # Not every S3-compatible store checks x-amz-content-sha256 (SeaweedFS does not, and keeps an empty object
            # for a PUT whose sender died after its headers), but they check Content-MD5: a body cut short is refused.
            extra["Content-MD5"] = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")
        if self._credentials.session_token:
            extra["X-Amz-Security-Token"] = self._credentials.session_token
        when = datetime.datetime.now(datetime.timezone.utc)
        send = {**extra, "Host": self._host, "X-Amz-Date": when.strftime("%Y%m%dT%H%M%SZ"),
                "X-Amz-Content-SHA256": payload, "Content-Length": str(len(body)),
                "Authorization": sign_v4(method, self._host, path, extra, payload, when, self.region,
                                         self._credentials)}
        # One retry on a fresh connection, for a keep-alive connection the store closed while it was idle; never
        # after a timeout, which would double the wait on a hung store.
        deadline = time.monotonic() + TIMEOUT
        for attempt in (0, 1):
            conn, reused = self._connection(fresh=attempt > 0)
            try:
                conn.request(method, path, body=body or None, headers=send)
                reply = conn.getresponse()
                return Response(reply.status, _read(reply, deadline))
            except ValueError:  # a header value http.client refuses: say which header, never its value
                conn.close()
                raise ObjectStoreFailed(f"{method} {self.location}/{key or ''}: a credential in the environment is "
                                        "not a valid HTTP header value") from None
            except ObjectStoreFailed as exc:  # an answer too long or too slow: the connection is not reused
                conn.close()
                raise ObjectStoreFailed(f"{method} {self.location}/{key or ''}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                stale = reused and isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected))
                if attempt or not stale:
                    raise ObjectStoreFailed(f"{method} {self.location}/{key or ''} {self._where}: "
                                            f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    def _connection(self, *, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it served an earlier request (and may have been closed since)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and not fresh:
            return conn, True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = self._local.conn = cls(self._host, timeout=TIMEOUT)
        return conn, False


def open_bucket(url: str) -> S3Bucket:
    """The object store a log recorded (``url``), with this process's credentials: ObjectStoreFailed if it has
    none (this server's configuration, not a client's request, so it is logged too)."""
    try:
        return S3Bucket.from_env(S3Location.parse(url))
    except MalformedInput as exc:
        log.error("%s", exc)
        raise ObjectStoreFailed(f"this server cannot read the log's object store: {exc}") from None


def _read(reply: http.client.HTTPResponse, deadline: float) -> bytes:
    """The body, within the request's deadline (a store that sends a byte at a time is not waited on forever) and
    at most MAX_OBJECT bytes (one that sends more is not read into memory)."""
    declared = reply.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_OBJECT:
        raise ObjectStoreFailed(f"the store answered with {int(declared):,} bytes, more than any object")
    parts: list[bytes] = []
    size = 0
    while chunk := reply.read1(_CHUNK):
        size += len(chunk)
        if size > MAX_OBJECT:
            raise ObjectStoreFailed("the store answered with more bytes than any object")
        if time.monotonic() > deadline:
            raise ObjectStoreFailed(f"the store took more than {TIMEOUT:.0f} s to answer")
        parts.append(chunk)
    reply.close()  # a HEAD's answer too: read1 leaves it open, and the connection would take no next request
    return b"".join(parts)


def _error_code(body: bytes) -> str:
    """The <Code> of an S3 error document, if the body is one."""
    start, end = body.find(b"<Code>"), body.find(b"</Code>")
    return body[start + 6:end].decode("ascii", "replace") if 0 <= start < end else ""
