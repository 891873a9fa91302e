"""The async HTTP client: the only I/O of the client side. A provider's billing code can import it."""

from __future__ import annotations

import asyncio
import base64
import json as json_module
import os
import re
from types import TracebackType
from typing import Any

import aiohttp
import yarl

from .. import exitcodes
from ..errors import MalformedInput, PacspaceError
from ..records import batchwire
from ..records.batchwire import BatchRecord

# The server refused the request itself: its arguments (a relationship, a party, a value) or its token.
_REQUEST_REFUSED = {400, 401, 403, 404, 413}
_HOST = re.compile(r"[A-Za-z0-9._~%:\[\]-]+")
# How servers from before the binary batch encoding refuse its body ("request body is not JSON", "... not UTF-8 JSON").
_NOT_JSON = re.compile(r"\bnot (UTF-8 )?JSON\b")


class ServerError(PacspaceError):
    """The server answered with an error; ``code`` is its stable error code."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.http_status = status
        self.code = code
        self.body = body or {}

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return exitcodes.USAGE if self.http_status in _REQUEST_REFUSED else exitcodes.FAILURE


class Unreachable(PacspaceError):
    code = "unreachable"
    exit_code = exitcodes.UNREACHABLE


def server_url(text: str) -> str:
    """``text`` as a server's base URL (http or https, with a host), without a trailing slash; MalformedInput if not."""
    try:
        url = yarl.URL(text.strip())
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host or not _HOST.fullmatch(url.host):
        raise MalformedInput(f"the server URL {text!r} is not an http:// or https:// URL with a host, "
                             "such as http://127.0.0.1:8080")
    return str(url).rstrip("/")


def _why(exc: BaseException) -> str:
    """Why a request got no answer, in words (aiohttp's own messages name its internals)."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate is not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "the TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno
        return os.strerror(code).lower() if code else "the connection failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "the answer is not well-formed HTTP"
    return "the connection failed"


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json_module.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class PacspaceClient:
    """``async with PacspaceClient(url, token) as client: ...``. The token is sent only as a Bearer header."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = server_url(url)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        # Set once the server refused the binary batch encoding (a server from before it): JSON from then on.
        self.batch_as_json = False

    async def __aenter__(self) -> PacspaceClient:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None, raw: bool = False
    ) -> Any:
        """The answer's JSON object (its bytes with ``raw``); ServerError for an error or an answer of another shape."""
        status, ctype, data = await self._exchange(method, path, json=json, params=params)
        if raw:
            return data
        body = _json_object(data) if ctype == "application/json" else None
        if body is None:
            raise ServerError(status, "not_pacspace", f"{self.url}{path} did not answer with a JSON object: is "
                              f"{self.url} a pacspace server?")
        return body

    async def _exchange(self, method: str, path: str, **kwargs: Any) -> tuple[int, str, bytes]:
        """A successful answer's status, content type and bytes; ServerError for an error answer."""
        if self._session is None:
            raise RuntimeError("use `async with PacspaceClient(...)`")
        try:
            async with self._session.request(method, self.url + path, **kwargs) as resp:
                data = await resp.read()
                status, ctype = resp.status, resp.content_type
        except aiohttp.InvalidURL:
            raise MalformedInput(f"{self.url}{path} is not a URL") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise Unreachable(f"cannot reach {self.url}: {_why(exc)}") from None
        if status >= 400:
            body = _json_object(data)
            if body is None:
                raise ServerError(status, "http_error", " ".join(data[:200].decode(errors="replace").split()))
            raise ServerError(status, str(body.get("error", "error")), str(body.get("message", "")), body)
        return status, ctype, data

    async def _answer(self, method: str, path: str, fields: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """``_request``'s JSON object, with ``fields`` (name -> type or tuple of types) checked: callers may index
        them. ServerError (exit 1) if the answer is not of that shape."""
        body: dict[str, Any] = await self._request(method, path, **kwargs)
        _check_shape(body, fields, f"{self.url}{path}")
        return body

    # --- public log ---------------------------------------------------------

    async def log_info(self) -> dict[str, Any]:
        return await self._answer("GET", "/v1/log", {"vkey": str})

    async def checkpoint(self) -> bytes:
        return await self._request("GET", "/checkpoint", raw=True)  # type: ignore[no-any-return]

    async def inclusion(self, index: int, size: int) -> dict[str, Any]:
        return await self._answer("GET", "/v1/proof/inclusion", {"hashes": [str]}, params={"index": index, "size": size})

    async def consistency(self, old: int, size: int) -> dict[str, Any]:
        return await self._answer("GET", "/v1/proof/consistency", {"hashes": [str]}, params={"old": old, "size": size})

    async def tile(self, path: str) -> bytes:
        """A tile or entry bundle by its C2SP path (``tile/0/x001/234``), as served."""
        return await self._request("GET", "/" + path, raw=True)  # type: ignore[no-any-return]

    # --- private ------------------------------------------------------------

    async def me(self) -> dict[str, Any]:
        return await self._answer("GET", "/v1/me", {"name": str, "role": str, "keys": (_KEYS, None)})

    async def register_keys(self, x25519: bytes, ed25519: bytes) -> dict[str, Any]:
        return await self._answer("PUT", "/v1/me/keys", {}, json={"x25519": b64(x25519), "ed25519": b64(ed25519)})

    async def party_keys(self, name: str) -> dict[str, Any]:
        return await self._answer("GET", f"/v1/parties/{name}/keys", {"keys": (_KEYS, None)})

    async def create_relationship(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._answer("POST", "/v1/relationships", {**_RELATIONSHIP, "receipt": _RECEIPT}, json=body)

    async def relationships(self, state: str | None = None) -> list[dict[str, Any]]:
        """The caller's relationships; ``state`` is pending, accepted, declined or all (the server's default:
        all for a provider, accepted for a customer)."""
        params = {"state": state} if state else None
        answer = await self._answer("GET", "/v1/relationships", {"relationships": [_RELATIONSHIP]}, params=params)
        return answer["relationships"]  # type: ignore[no-any-return]

    async def accept(self, rid: str, signature: bytes) -> dict[str, Any]:
        return await self._answer("POST", f"/v1/relationships/{rid}/acceptance", _RELATIONSHIP,
                                  json={"signature": b64(signature)})

    async def decline(self, rid: str) -> dict[str, Any]:
        return await self._answer("POST", f"/v1/relationships/{rid}/decline", _RELATIONSHIP, json={})

    async def relationship(self, rid: str) -> dict[str, Any]:
        return await self._answer("GET", f"/v1/relationships/{rid}", {
            **_RELATIONSHIP, "wrap": (str, None), "provider_keys": (_KEYS, None), "customer_keys": (_KEYS, None)})

    async def append(self, rid: str, seq: int, tag: bytes, blob: bytes) -> dict[str, Any]:
        return await self._answer("POST", f"/v1/relationships/{rid}/records", _RECEIPT,
                                  json={"seq": seq, "tag": b64(tag), "ciphertext": b64(blob)})

    async def append_batch(self, records: list[BatchRecord] | list[dict[str, Any]]) -> dict[str, Any]:
        """POST /v1/records: ``{"accepted", "rejected", "checkpoint", "results"}``, one result per record.

        BatchRecords go in the binary encoding (records/batchwire.py), and their results come without
        ``leaf_hash`` (it is SHA-256(0x00 || entry), from the record's own tag and ciphertext). A server that
        refuses that encoding (415, or a 400 that the body is not JSON: a server from before it, which
        appended nothing) gets the same records as JSON, now and for the rest of this client's session.
        Items given as dicts (docs/api.md's JSON items) go as JSON.
        """
        if records and isinstance(records[0], BatchRecord) and not self.batch_as_json:
            try:
                return await self._append_binary(records)
            except ServerError as exc:
                if not _refuses_binary(exc):
                    raise
                self.batch_as_json = True
        items = [r.to_json() if isinstance(r, BatchRecord) else r for r in records]
        return await self._answer("POST", "/v1/records", {"results": [dict]}, json={"records": items})

    async def _append_binary(self, records: list[BatchRecord]) -> dict[str, Any]:
        body = batchwire.encode_records(records)
        headers = {"Content-Type": batchwire.CONTENT_TYPE,
                   "Accept": f"{batchwire.RESULTS_TYPE}, application/json;q=0.5"}
        status, ctype, data = await self._exchange("POST", "/v1/records", data=body, headers=headers)
        where = f"{self.url}/v1/records"
        if ctype != batchwire.RESULTS_TYPE:
            answer = _json_object(data) if ctype == "application/json" else None
            if answer is None:
                raise ServerError(status, "not_pacspace", f"{where} did not answer with a JSON object: is "
                                  f"{self.url} a pacspace server?")
            _check_shape(answer, {"results": [dict]}, where)
            return answer
        try:
            decoded = batchwire.decode_results(data)
        except MalformedInput as exc:
            raise ServerError(status, "unexpected_answer", f"{where} answered malformed results: {exc}") from None
        if len(decoded.results) != len(records):
            raise ServerError(status, "unexpected_answer", f"{where} answered {len(decoded.results)} results for "
                              f"{len(records)} records")
        results = [{"relationship": r.relationship, "seq": r.seq, "status": "ok", "index": result}
                   if type(result) is int else result for r, result in zip(records, decoded.results)]
        checkpoint = None if decoded.checkpoint is None else decoded.checkpoint.decode(errors="replace")
        return {"accepted": decoded.accepted, "rejected": decoded.rejected, "checkpoint": checkpoint,
                "results": results}

    async def records(self, rid: str, after_seq: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        body = await self._answer("GET", f"/v1/relationships/{rid}/records", {"records": [_RECORD]},
                                  params={"after_seq": after_seq, "limit": limit})
        return body["records"]  # type: ignore[no-any-return]


# The shapes of the server's answers that callers rely on (docs/api.md): a dict is an object with those fields,
# a one-element list a list of such items, a tuple any one of its types, None null.
_KEYS = {"x25519": str, "ed25519": str}
_RELATIONSHIP = {"relationship": str, "provider": str, "customer": str}
_RECEIPT = {"seq": int, "index": int, "proof": str}
_RECORD = {"seq": int, "index": int, "tag": str, "ciphertext": str}


def _refuses_binary(exc: ServerError) -> bool:
    """Whether an error answer to a binary batch says the server does not take the encoding: nothing was appended."""
    message = str(exc.body.get("message", ""))
    return exc.http_status == 415 or (exc.http_status == 400 and _NOT_JSON.search(message) is not None)


def _matches(value: Any, kind: Any) -> bool:
    if kind is None:
        return value is None
    if isinstance(kind, tuple):
        return any(_matches(value, k) for k in kind)
    if isinstance(kind, list):
        return isinstance(value, list) and all(_matches(item, kind[0]) for item in value)
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            return False
        # Inline for the flat fields of a page's thousand rows; anything else recurses.
        for k, t in kind.items():
            item = value.get(k)
            if t is int:
                if type(item) is not int:
                    return False
            elif t is str:
                if not isinstance(item, str):
                    return False
            elif not _matches(item, t):
                return False
        return True
    if kind is int:
        return type(value) is int  # JSON gives plain ints; a bool is not one
    return isinstance(value, kind)


def _check_shape(body: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    for name, kind in fields.items():
        if not _matches(body.get(name), kind):
            raise ServerError(200, "unexpected_answer", f"{where} answered without a well-formed {name}: is it a "
                              "pacspace server of this version?", body)
