"""The async HTTP client: the only I/O of the client side. A provider's billing code can import it."""

from __future__ import annotations

import base64
from types import TracebackType
from typing import Any

import aiohttp

from .. import exitcodes
from ..errors import PacspaceError


class ServerError(PacspaceError):
    """The server answered with an error; ``code`` is its stable error code."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.http_status = status
        self.code = code
        self.body = body or {}


class Unreachable(PacspaceError):
    code = "unreachable"
    exit_code = exitcodes.UNREACHABLE


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class PacspaceClient:
    """``async with PacspaceClient(url, token) as client: ...``. The token is sent only as a Bearer header."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PacspaceClient:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        if self._session is None:
            raise RuntimeError("use `async with PacspaceClient(...)`")
        try:
            async with self._session.request(method, self.url + path, json=json, params=params) as resp:
                data = await resp.read()
                if resp.status >= 400:
                    try:
                        body = await resp.json(content_type=None)
                        raise ServerError(resp.status, body.get("error", "error"), body.get("message", ""), body)
                    except (ValueError, AttributeError):
                        raise ServerError(resp.status, "http_error", data[:200].decode(errors="replace")) from None
                if resp.content_type == "application/json":
                    return await resp.json()
                return data
        except aiohttp.ClientError as exc:
            raise Unreachable(f"cannot reach {self.url}: {exc}") from None

    # --- public log ---------------------------------------------------------

    async def log_info(self) -> dict[str, Any]:
        return await self._request("GET", "/v1/log")  # type: ignore[no-any-return]

    async def checkpoint(self) -> bytes:
        return await self._request("GET", "/checkpoint")  # type: ignore[no-any-return]

    async def inclusion(self, index: int, size: int) -> dict[str, Any]:
        return await self._request("GET", "/v1/proof/inclusion", params={"index": index, "size": size})  # type: ignore[no-any-return]

    async def consistency(self, old: int, size: int) -> dict[str, Any]:
        return await self._request("GET", "/v1/proof/consistency", params={"old": old, "size": size})  # type: ignore[no-any-return]

    async def tile(self, path: str) -> bytes:
        """A tile or entry bundle by its C2SP path (``tile/0/x001/234``), as served."""
        data = await self._request("GET", "/" + path)
        if not isinstance(data, bytes):
            raise ServerError(200, "http_error", f"/{path} is not a tile")
        return data

    # --- private ------------------------------------------------------------

    async def me(self) -> dict[str, Any]:
        return await self._request("GET", "/v1/me")  # type: ignore[no-any-return]

    async def register_keys(self, x25519: bytes, ed25519: bytes) -> dict[str, Any]:
        return await self._request("PUT", "/v1/me/keys", json={"x25519": b64(x25519), "ed25519": b64(ed25519)})  # type: ignore[no-any-return]

    async def party_keys(self, name: str) -> dict[str, Any]:
        return await self._request("GET", f"/v1/parties/{name}/keys")  # type: ignore[no-any-return]

    async def create_relationship(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", "/v1/relationships", json=body)  # type: ignore[no-any-return]

    async def relationships(self, state: str | None = None) -> list[dict[str, Any]]:
        """The caller's relationships; ``state`` is pending, accepted, declined or all (the server's default:
        all for a provider, accepted for a customer)."""
        params = {"state": state} if state else None
        return (await self._request("GET", "/v1/relationships", params=params))["relationships"]  # type: ignore[no-any-return]

    async def accept(self, rid: str, signature: bytes) -> dict[str, Any]:
        return await self._request(  # type: ignore[no-any-return]
            "POST", f"/v1/relationships/{rid}/acceptance", json={"signature": b64(signature)}
        )

    async def decline(self, rid: str) -> dict[str, Any]:
        return await self._request("POST", f"/v1/relationships/{rid}/decline", json={})  # type: ignore[no-any-return]

    async def relationship(self, rid: str) -> dict[str, Any]:
        return await self._request("GET", f"/v1/relationships/{rid}")  # type: ignore[no-any-return]

    async def append(self, rid: str, seq: int, tag: bytes, blob: bytes) -> dict[str, Any]:
        return await self._request(  # type: ignore[no-any-return]
            "POST", f"/v1/relationships/{rid}/records", json={"seq": seq, "tag": b64(tag), "ciphertext": b64(blob)}
        )

    async def append_batch(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._request("POST", "/v1/records", json={"records": records})  # type: ignore[no-any-return]

    async def records(self, rid: str, after_seq: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        body = await self._request(
            "GET", f"/v1/relationships/{rid}/records", params={"after_seq": after_seq, "limit": limit}
        )
        return body["records"]  # type: ignore[no-any-return]
