"""A bounded fuzz run of the API from its own OpenAPI document (schemathesis), as a provider, a customer and a
stranger, against a real server on 127.0.0.1: no answer is a 5xx, and every answer is what the document says
(status, content type, headers, body schema). The long run (10^5 cases) is tools/fuzz_api.py, by hand."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator

import pytest
import schemathesis
from helpers import add_two_parties, new_log, register_two_homes
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pacspace.config import ServerConfig
from pacspace.records.batchwire import CONTENT_TYPE, BatchRecord, encode_records
from pacspace.sequencer import SequencerConfig
from pacspace.server.app import create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
TOKENS = {"provider": "tok-acme", "customer": "tok-bob", "stranger": "tok-nobody"}
CALLERS = sorted(TOKENS)
EXAMPLES = 9  # per operation, three as each caller: about 180 requests

# The binary batch body (docs/api.md, Binary batches): schemathesis cannot draw it from the document, so bytes
# of any kind, and well-formed bodies of records naming random relationships.
_WIRE = st.builds(BatchRecord, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True),
                  st.integers(0, (1 << 62) - 1), st.binary(min_size=32, max_size=32), st.binary(min_size=61, max_size=200))
schemathesis.openapi.media_type(CONTENT_TYPE, st.one_of(st.binary(max_size=300),
                                                        st.lists(_WIRE, min_size=1, max_size=4).map(encode_records)))


class Served:
    """The app on 127.0.0.1 in a thread of its own, with acme, bob and one relationship between them."""

    def __init__(self, base) -> None:  # type: ignore[no-untyped-def]
        from aiohttp import web

        new_log(base / "log")
        add_two_parties(base / "log")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # Refusals out of reach: a fuzzer is one party refused many times a second (see tools/fuzz_api.py).
        app = create_app(ServerConfig(data_dir=base / "log", sequencer=SequencerConfig(pool_interval=0.005),
                                      refusal_rate=1e9))
        self.runner = web.AppRunner(app, access_log=None)

        async def start() -> str:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            port = self.runner.addresses[0][1]
            return f"http://127.0.0.1:{port}"

        self.url = self.run(start(), 30)
        self.rid = self.run(self._seed(base), 60)
        self.turns = itertools.count()
        self.next_seq = 1

    def run(self, coro, timeout: float):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _seed(self, base) -> str:  # type: ignore[no-untyped-def]
        from pacspace.client.http import PacspaceClient
        from pacspace.client.records import create_relationship

        acme, _ = await register_two_homes(self.url, base)
        async with PacspaceClient(self.url, "tok-acme") as c:
            return str((await create_relationship(c, acme.keys(), "acme", "bob", "hourly"))["relationship"])

    def stop(self) -> None:
        self.run(self.runner.cleanup(), 60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    server = Served(tmp_path_factory.mktemp("fuzz"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(served: Served):  # type: ignore[no-untyped-def]
    # The fuzzing phase only: the coverage phase's boundary cases take most of a minute a caller (the long run
    # by hand, tools/fuzz_api.py, has every phase).
    config = schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}}})
    return schemathesis.openapi.from_url(served.url + "/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_answer_is_a_5xx_or_differs_from_the_openapi_document(case, served):  # type: ignore[no-untyped-def]
    caller = CALLERS[next(served.turns) % len(CALLERS)]  # each operation as each caller in turn
    steer(case, served)
    response = case.call_and_validate(base_url=served.url, headers={"Authorization": f"Bearer {TOKENS[caller]}"},
                                      checks=CHECKS, timeout=30)
    if response.status_code == 201 and case.operation.path == "/v1/relationships/{rid}/records":
        served.next_seq += 1


def steer(case, served: Served) -> None:  # type: ignore[no-untyped-def]
    """Point some cases where random values rarely go: a real relationship, its next seq, a new relationship
    with a real customer; the server cannot open records, so a well-shaped random one is taken."""
    params = case.path_parameters or {}
    if "rid" in params and len(params["rid"]) % 2:
        params["rid"] = served.rid
    body = case.body if isinstance(case.body, dict) else {}
    if case.operation.path == "/v1/relationships/{rid}/records" and params.get("rid") == served.rid and "seq" in body:
        body["seq"] = served.next_seq
    if case.operation.path == "/v1/relationships" and isinstance(body.get("genesis"), dict) and next(served.turns) % 2:
        body.update(customer="bob", relationship=f"acme:fuzz-{next(served.turns)}")
        body["genesis"]["seq"] = 0
