"""Shared test helpers: building logs through the real sequencer, and an independent tile reader."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from pacspace.datadir import init_log

ORIGIN = "example.com/test-log"


def entry(i: int) -> bytes:
    """A deterministic 65-byte entry, shaped like pacspace's public entry."""
    digest = hashlib.sha256(i.to_bytes(8, "big")).digest()
    return b"\x01" + digest + hashlib.sha256(digest).digest()


def new_log(path: Path, origin: str = ORIGIN, database: str | None = None) -> str:
    """Create a log (its tables in ``database``, a PostgreSQL URL, if given); returns its vkey."""
    return init_log(path, origin, int(time.time()), database).verifier.vkey()


async def sequence(store, signer, batches: list[list[bytes]], clock=time.time) -> None:  # type: ignore[no-untyped-def]
    """Append ``batches`` to ``store`` (a writable log) through the real sequencer, one submission each."""
    import asyncio

    from pacspace.datadir import load_state
    from pacspace.sequencer import Sequencer, SequencerConfig

    sequencer = Sequencer(store, signer, load_state(store, signer), SequencerConfig(pool_interval=0.005), clock=clock)
    task = asyncio.create_task(sequencer.run())
    try:
        for batch in batches:
            await sequencer.submit_many(batch)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def reference_tile(leaf_hashes: list[bytes], level: int, n: int, width: int) -> bytes:
    """C2SP tlog-tiles, straight from the definition: hash i is MTH(D[(n*256+i)*256**l : ...])."""
    from pacspace.merkle import ListHashReader, tree_hash

    out = []
    span = 256**level
    for i in range(width):
        start = (n * 256 + i) * span
        out.append(tree_hash(span, ListHashReader(leaf_hashes[start : start + span])))
    return b"".join(out)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the test server binds it next)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def add_two_parties(data_dir: Path, database: str | None = None) -> None:
    """A provider ``acme`` (token ``tok-acme``) and a customer ``bob`` (``tok-bob``), as the operator adds them
    (to the log's records in ``database``, a PostgreSQL URL, if given)."""
    from pacspace.datadir import open_records

    store = open_records(data_dir, database)
    store.add_party("acme", "provider", "tok-acme", 1)
    store.add_party("bob", "customer", "tok-bob", 1)
    store.close()


async def register_two_homes(url: str, base: Path):  # type: ignore[no-untyped-def]
    """Both parties' homes under ``base``: keys created, public halves registered, log key pinned."""
    from pacspace.client.home import Home
    from pacspace.client.http import PacspaceClient

    acme, bob = Home(base / "acme"), Home(base / "bob")
    for home, token in ((acme, "tok-acme"), (bob, "tok-bob")):
        async with PacspaceClient(url, token) as c:
            keys = home.create_keys()
            await c.register_keys(keys.public.x25519, keys.public.ed25519)
            home.pin_log_key((await c.log_info())["vkey"])
    return acme, bob


async def served_log_with_two_homes(aiohttp_client, base: Path, database: str | None = None):  # type: ignore[no-untyped-def]
    """A log server (in-process, real storage) under ``base/log`` with acme and bob, their homes registered; its
    tables in ``database`` (a PostgreSQL URL) if given.

    Returns (url, acme's home, bob's home).
    """
    from pacspace.config import ServerConfig
    from pacspace.sequencer import SequencerConfig
    from pacspace.server.app import create_app

    new_log(base / "log", database=database)
    add_two_parties(base / "log", database)
    app = create_app(ServerConfig(data_dir=base / "log", sequencer=SequencerConfig(pool_interval=0.01),
                                  database=database))
    url = str((await aiohttp_client(app)).make_url("")).rstrip("/")
    acme, bob = await register_two_homes(url, base)
    return url, acme, bob


def wait_for_health(url: str, attempts: int = 400) -> None:
    """Poll ``url``/health until a server process started a moment ago answers (about 20 s at most)."""
    import urllib.request

    for _ in range(attempts):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no answer from {url}/health")


def wait_for_witness(port: int, attempts: int = 400) -> None:
    """Poll a `pacspace witness serve` started a moment ago until it answers (a 404 for an unknown origin)."""
    import urllib.error
    import urllib.request

    for _ in range(attempts):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/checkpoint?origin=x", timeout=1)
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no witness answered on port {port}")


async def fill_log(data: Path, count: int, chunk: int = 50_000) -> None:
    """Grow the log in ``data`` by ``count`` entries through the sequencer's bulk path (for benchmarks)."""
    import asyncio

    from pacspace.datadir import load_signer, load_state
    from pacspace.sequencer import Sequencer, SequencerConfig
    from pacspace.storage.sqlite import SqliteLog

    signer = load_signer(data)
    store = SqliteLog.open(data)
    seq = Sequencer(store, signer, load_state(store, signer), SequencerConfig(pool_capacity=max(chunk, 262_144)))
    task = asyncio.create_task(seq.run())
    for start in range(0, count, chunk):
        await seq.submit_many([entry(i) for i in range(start, min(count, start + chunk))])
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    store.close()


async def accept_as(url: str, home, token: str, rid: str):  # type: ignore[no-untyped-def]
    """The customer verifies the invitation ``rid`` and signs its acceptance (pacspace relationship accept)."""
    from pacspace.client.consent import accept
    from pacspace.client.http import PacspaceClient

    async with PacspaceClient(url, token) as c:
        return await accept(c, home, rid, home.log_key())


def hour(n: int, day: str = "2026-11-02") -> tuple[str, str]:
    """The n-th one-hour window from ``day``'s midnight (n < 24): distinct windows for distinct deltas."""
    return f"{day}T{n:02d}:00:00Z", (f"{day}T{n + 1:02d}:00:00Z" if n < 23 else f"{day}T23:59:59Z")


def cli(*args: str, env: dict[str, str], code: int | None = 0):  # type: ignore[no-untyped-def]
    """Run the pacspace command as a user would; assert its exit code unless ``code`` is None."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pacspace", *args], capture_output=True, text=True, env=env, timeout=120)
    if code is not None:
        assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
    return result


class World:
    """A real `pacspace serve` process on a data directory under ``tmp``, and parties with their homes."""

    def __init__(self, tmp: Path, extra_serve: tuple[str, ...] = (), database: str | None = None) -> None:
        """``database``: keep the log and its records in this PostgreSQL database (PACSPACE_DATABASE for the
        operator's commands and the server), instead of the data directory."""
        import os

        self.tmp = tmp
        self.data = tmp / "pacspace-data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = extra_serve
        self.proc = None
        self.base = {k: v for k, v in os.environ.items() if k != "PACSPACE_DATABASE"}
        self.base["PACSPACE_URL"] = self.url
        if database is not None:
            self.base["PACSPACE_DATABASE"] = database
        self.env: dict[str, dict[str, str]] = {}

    def start(self) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pacspace", "serve", "--data", str(self.data), "--port", str(self.port),
             "--pool-interval", "0.02", *self.extra],
            cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.base,
        )
        wait_for_health(self.url)

    def stop(self) -> None:
        import signal

        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def party(self, name: str, role: str) -> dict[str, str]:
        """Added by the operator, its keys created and registered (`pacspace keys init`); returns its environment."""
        token = cli("admin", "party", "add", name, "--role", role, "--data", str(self.data), env=self.base).stdout.strip()
        env = {**self.base, "PACSPACE_TOKEN": token, "PACSPACE_HOME": str(self.tmp / name)}
        cli("keys", "init", env=env)
        self.env[name] = env
        return env

    def home(self, name: str):  # type: ignore[no-untyped-def]
        from pacspace.client.home import Home

        return Home(Path(self.env[name]["PACSPACE_HOME"]))

    def token(self, name: str) -> str:
        return self.env[name]["PACSPACE_TOKEN"]


async def rogue_invitation(client, provider, name: str, customer: str, flaw: str) -> str:  # type: ignore[no-untyped-def]
    """A relationship a provider (``name``, its home ``provider``) creates naming ``customer``, with a ``flaw``:
    ``bad_wrap`` (the secret is not wrapped to the customer's key), ``wrong_keys`` (the genesis names other keys
    for the customer), or ``unaccepted`` (nothing wrong, and a record written to it before any acceptance)."""
    import base64
    import os
    import secrets

    from pacspace.client.records import now_utc
    from pacspace.keys import PartyKeys, PublicKeys, wrap_secret
    from pacspace.records.body import GENESIS_PREV, Common, Delta, Genesis, Line, body_hash
    from pacspace.records.body import PartyKeys as NamedKeys
    from pacspace.records.seal import RelationshipKeys, seal

    theirs = (await client.party_keys(customer))["keys"]
    customer_keys = PublicKeys.from_json({"x25519": theirs["x25519"], "ed25519": theirs["ed25519"]})
    named = PartyKeys.generate().public if flaw == "wrong_keys" else customer_keys
    rid, rkeys, mine = f"{name}:{secrets.token_hex(12)}", RelationshipKeys.generate(), provider.keys()

    def as_named(who: str, keys: PublicKeys) -> NamedKeys:
        j = keys.to_json()
        return NamedKeys(who, j["x25519"], j["ed25519"])

    sealed = seal(Genesis(Common(rid, 0, GENESIS_PREV, "g", now_utc()), as_named(name, mine.public),
                          as_named(customer, named)), rkeys, mine.ed25519)
    wrap = os.urandom(80) if flaw == "bad_wrap" else wrap_secret(rkeys.secret, customer_keys, rid, 0)
    await client.create_relationship({
        "relationship": rid, "customer": customer, "cadence": "hourly", "billing_cycle": "monthly",
        "wraps": {"provider": base64.b64encode(wrap_secret(rkeys.secret, mine.public, rid, 0)).decode(),
                  "customer": base64.b64encode(wrap).decode()},
        "genesis": {"seq": 0, "tag": base64.b64encode(sealed.tag).decode(),
                    "ciphertext": base64.b64encode(sealed.blob).decode()}})
    if flaw == "unaccepted":
        body = Delta(Common(rid, 1, body_hash(sealed.body), "d", now_utc()), "2026-11", *hour(0), (Line("m", "u", "-5", {}),))
        extra = seal(body, rkeys, mine.ed25519)
        await client.append(rid, 1, extra.tag, extra.blob)
    return rid


class Proxy:
    """A misbehaving server in front of a real one, changing one thing: ``alter(path, body)`` rewrites an answer's
    body, ``lose(method, path)`` says whether to drop the answer (504, after the real server has handled the request), and
    ``route(path)`` picks the server that answers a path."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.alter = lambda path, body: body
        self.lose = lambda method, path: False
        self.route = lambda path: self.upstream

    async def handle(self, request):  # type: ignore[no-untyped-def]
        import aiohttp
        from aiohttp import web

        async with aiohttp.ClientSession() as s:
            async with s.request(request.method, self.route(request.path) + request.path_qs, headers={
                k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")
            }, data=await request.read()) as r:
                body = await r.read()
                ctype = r.headers.get("Content-Type", "application/octet-stream")
                status = r.status
        if self.lose(request.method, request.path):
            return web.Response(status=504, text="the answer was lost on the way")
        return web.Response(body=self.alter(request.path, body), status=status, headers={"Content-Type": ctype})

    def app(self):  # type: ignore[no-untyped-def]
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


async def read_answer(reader, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    """One HTTP/1.1 answer from a raw connection: (status, headers with lower-case names, body); raises
    TimeoutError if it does not arrive within ``timeout`` seconds (a bound for a hung test, not a measurement)."""
    import asyncio

    async def read() -> tuple[int, dict[str, str], bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body

    return await asyncio.wait_for(read(), timeout)


async def closed_by_peer(reader, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    """Whether the server closes this raw connection within ``timeout`` seconds (reading and dropping what it sends)."""
    import asyncio

    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def http_call(port: int, method: str, path: str, body: object | None = None, token: str = "tok-acme",
              timeout: float = 30) -> tuple[int, bytes]:
    """One request to a server process on 127.0.0.1, JSON in; (status, body)."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def sealed_record(seq: int) -> dict[str, object]:
    """A record as a provider's client sends it: a random tag and ciphertext (the log never opens either)."""
    import base64
    import os

    from pacspace.records.seal import BLOB_OVERHEAD

    return {"seq": seq, "tag": base64.b64encode(os.urandom(32)).decode(),
            "ciphertext": base64.b64encode(os.urandom(BLOB_OVERHEAD + 100)).decode()}


def post_record(port: int, rid: str, seq: int, record: dict, token: str = "tok-acme") -> tuple[int, bytes]:  # type: ignore[type-arg]
    """acme's record of ``rid`` (with bob) at ``seq``: its genesis (creating the relationship) or the next one."""
    import base64

    if seq == 0:
        wraps = {"provider": base64.b64encode(b"p" * 40).decode(), "customer": base64.b64encode(b"c" * 40).decode()}
        return http_call(port, "POST", "/v1/relationships",
                         {"relationship": rid, "customer": "bob", "genesis": record, "wraps": wraps}, token)
    return http_call(port, "POST", f"/v1/relationships/{rid}/records", record, token)
