#!/usr/bin/env python3
"""One tenant's flood against another's latency (issue 17). Run by hand; results go in docs/performance.md.

    python3 tools/bench_flood.py --work /var/tmp/pacspace-bench-flood [--workers 2] [--src DIR]

Starts a real `pacspace serve` on a fresh data directory, with its soft RLIMIT_NOFILE at 1,024 (the common
default). An honest provider (acme) appends records to its relationship with an honest customer (bob), one
at a time, each on a new connection, and bob reads them back (GET .../records) and fetches /checkpoint.
Their latencies (p50, p99) are measured alone, then under each flood from another party, each flood sent
by a process of its own and started a few seconds before the measurement:

- slow:     1,100 connections that send a request head a byte every 2 s (slowloris), reopened when closed;
- huge:     a customer (mallory) sends 64 MiB batch bodies on 8 connections, as fast as the server reads;
- parse:    a provider (evil) sends 60 MiB batches of 10,000 well-formed but bad records on 2 connections;
- bad:      evil sends batches of bad items (issue 17's shapes) on 16 connections;
- framing:  requests with a NUL in a header on 16 connections, each answered 400.

The server and the honest client run on core 0, each flood on core 1 (a flooding party sends from its own
machine; on one core, its sending would take the server's CPU and measure the machine, not the server).

Prints a table with each phase's p50/p99 and their ratio to the phase alone, the honest operations done (the
first honest failure ends a phase, and is shown), and the server's log growth in bytes a second, and the cores the server used. ``--src`` runs the server from another source tree (a copy of an
older pacspace, for comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

from pacspace.keys import PartyKeys, wrap_secret
from pacspace.records.body import GENESIS_PREV, Common, Delta, Genesis, Line, body_hash
from pacspace.records.body import PartyKeys as NamedKeys
from pacspace.records.seal import RelationshipKeys, Sealed, seal

B64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
FLOODS = ("slow", "huge", "parse", "bad", "framing")
MiB = 1 << 20


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def named(name: str, keys: PartyKeys) -> NamedKeys:
    j = keys.public.to_json()
    return NamedKeys(name, j["x25519"], j["ed25519"])


class Rel:
    """A relationship and the chain of its records, sealed by its provider."""

    def __init__(self, rid: str, provider: str, customer: str, keys: PartyKeys, customer_keys: PartyKeys) -> None:
        self.rid, self.provider, self.customer = rid, provider, customer
        self.keys, self.customer_keys = keys, customer_keys
        self.secret = RelationshipKeys.generate()
        self.next_seq, self.head = 0, GENESIS_PREV

    def creation(self) -> dict[str, object]:
        g = seal(Genesis(Common(self.rid, 0, GENESIS_PREV, "g", "2026-11-01T00:00:00Z"), named(self.provider, self.keys),
                         named(self.customer, self.customer_keys), "hourly"), self.secret, self.keys.ed25519)
        self.next_seq, self.head = 1, body_hash(g.body)
        return {"relationship": self.rid, "customer": self.customer, "cadence": "hourly",
                "wraps": {"provider": B64(wrap_secret(self.secret.secret, self.keys.public, self.rid, 0)),
                          "customer": B64(wrap_secret(self.secret.secret, self.customer_keys.public, self.rid, 0))},
                "genesis": {"seq": 0, "tag": B64(g.tag), "ciphertext": B64(g.blob)}}

    def next_delta(self) -> Sealed:
        """The next record; the chain moves on only once it is stored (:meth:`stored`)."""
        n = self.next_seq
        body = Delta(Common(self.rid, n, self.head, secrets.token_hex(6), "2026-11-02T00:00:00Z"), "2026-11",
                     "2026-11-02T00:00:00Z", "2026-11-02T00:59:59Z", (Line("llm.requests", "request", str(n), {}),))
        return seal(body, self.secret, self.keys.ed25519)

    def stored(self, sealed: Sealed) -> None:
        self.next_seq, self.head = sealed.seq + 1, body_hash(sealed.body)


def pacspace(*args: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-m", "pacspace", *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


async def setup(url: str, data: Path, env: dict[str, str]) -> dict[str, object]:
    """The parties and one relationship each for the honest pair (acme, bob) and the attackers (evil, mallory)."""
    tokens = {name: pacspace("admin", "party", "add", name, "--role", role, "--data", str(data), env=env)
              for name, role in (("acme", "provider"), ("bob", "customer"), ("evil", "provider"), ("mallory", "customer"))}
    keys = {name: PartyKeys.generate() for name in tokens}
    async with aiohttp.ClientSession() as s:
        for name, token in tokens.items():
            pub = keys[name].public
            async with s.put(f"{url}/v1/me/keys", json={"x25519": B64(pub.x25519), "ed25519": B64(pub.ed25519)},
                             headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, await r.text()
        rels = {"acme": Rel("acme:honest", "acme", "bob", keys["acme"], keys["bob"]),
                "evil": Rel("evil:flood", "evil", "mallory", keys["evil"], keys["mallory"])}
        for name, rel in rels.items():
            async with s.post(f"{url}/v1/relationships", json=rel.creation(),
                              headers={"Authorization": f"Bearer {tokens[name]}"}) as r:
                assert r.status == 201, await r.text()
    return {"tokens": tokens, "honest": rels["acme"]}


async def measure(url: str, tokens: dict[str, str], rel: Rel, count: int) -> dict[str, object]:
    """``count`` appends by acme and as many reads by bob (records, then the checkpoint), one at a time, each on
    a new connection. The first failure ends the phase: what it left undecided is settled once the flood stops."""
    appends: list[float] = []
    reads: list[float] = []
    failures: list[str] = []
    unsure: Sealed | None = None
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), timeout=timeout) as s:
        for _ in range(count):
            sealed = rel.next_delta()
            body = {"seq": sealed.seq, "tag": B64(sealed.tag), "ciphertext": B64(sealed.blob)}
            t0 = time.perf_counter()
            try:
                async with s.post(f"{url}/v1/relationships/{rel.rid}/records", json=body,
                                  headers={"Authorization": f"Bearer {tokens['acme']}"}) as r:
                    await r.read()
                    status: object = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status = type(exc).__name__
            if status != 201:
                failures.append(f"append {status}")
                unsure = sealed
                break
            appends.append(time.perf_counter() - t0)
            rel.stored(sealed)
            t0 = time.perf_counter()
            try:
                async with s.get(f"{url}/v1/relationships/{rel.rid}/records?after_seq={max(0, sealed.seq - 10)}",
                                 headers={"Authorization": f"Bearer {tokens['bob']}"}) as r:
                    await r.read()
                    ok = r.status == 200
                async with s.get(f"{url}/checkpoint") as r:
                    await r.read()
                    ok = ok and r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if not ok:
                failures.append("read")
                break
            reads.append(time.perf_counter() - t0)
    return {"append_p50": pct(appends, 50), "append_p99": pct(appends, 99), "read_p50": pct(reads, 50),
            "read_p99": pct(reads, 99), "done": len(reads), "failures": failures, "unsure": unsure}


async def resync(url: str, tokens: dict[str, str], rel: Rel, unsure: Sealed | None) -> None:
    """After a failed append: whether it went in all the same (its answer was lost)."""
    if unsure is not None:
        async with aiohttp.ClientSession() as s:
            if await _was_stored(s, url, tokens["acme"], rel.rid, unsure.seq):
                rel.stored(unsure)


async def _was_stored(s: aiohttp.ClientSession, url: str, token: str, rid: str, seq: int) -> bool:
    """After a failed append: whether the record went in all the same (its answer was lost)."""
    for _ in range(30):
        try:
            async with s.get(f"{url}/v1/relationships/{rid}/records?after_seq={seq - 1}&limit=1",
                             headers={"Authorization": f"Bearer {token}"}) as r:
                if r.status == 200:
                    return any(rec["seq"] == seq for rec in (await r.json())["records"])
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(1)
    raise SystemExit("the server does not answer")


# --- the floods, each run as a process of its own: `bench_flood.py --attack KIND ...` ---------------------


async def flood_slow(url: str, tokens: dict[str, str], stop: float) -> None:
    host, port = url.split("//")[1].split(":")
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    async def one() -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"POST /v1/records HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                while time.monotonic() < stop and not reader.at_eof():
                    writer.write(b"a")
                    await writer.drain()
                    try:
                        await asyncio.wait_for(reader.read(1024), 2.0)
                    except asyncio.TimeoutError:
                        pass
                writer.close()
            except OSError:
                await asyncio.sleep(0.1)

    await asyncio.gather(*(one() for _ in range(1100)))


async def _flood_posts(url: str, token: str, body: bytes, declared: int, connections: int, stop: float) -> None:
    host, port = url.split("//")[1].split(":")
    head = (f"POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()

    async def one() -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(head)
                sent = 0
                while sent < declared and not reader.at_eof() and time.monotonic() < stop:
                    piece = body[sent : sent + MiB]
                    writer.write(piece)
                    await writer.drain()
                    sent += len(piece)
                await asyncio.wait_for(reader.read(1 << 16), 30)
                writer.close()
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(connections)))


def _bad_batch(rid: str, items: int, pad: int) -> bytes:
    item = {"relationship": rid, "seq": 0, "tag": "", "ciphertext": {}, "pad": "A" * pad}
    return json.dumps({"records": [item] * items}).encode()


async def flood_huge(url: str, tokens: dict[str, str], stop: float) -> None:
    body = b'{"records": [' + b'{"pad": "' + b"A" * (64 * MiB) + b'"}]}'
    await _flood_posts(url, tokens["mallory"], body, len(body), 8, stop)


async def flood_parse(url: str, tokens: dict[str, str], stop: float) -> None:
    body = _bad_batch("evil:flood", 10_000, 6000)
    await _flood_posts(url, tokens["evil"], body, len(body), 2, stop)


async def flood_bad(url: str, tokens: dict[str, str], stop: float) -> None:
    shapes = [{"relationship": "evil:flood", "seq": 0, "tag": "", "ciphertext": {}},
              {"relationship": "evil:flood", "seq": "x"}, {"relationship": "evil:flood"}, [], None]
    body = json.dumps({"records": shapes * 20}).encode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens['evil']}",
                                              "Content-Type": "application/json"}) as s:
        async def one() -> None:
            while time.monotonic() < stop:
                try:
                    async with s.post(f"{url}/v1/records", data=body) as r:
                        await r.read()
                except aiohttp.ClientError:
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(16)))


async def flood_framing(url: str, tokens: dict[str, str], stop: float) -> None:
    host, port = url.split("//")[1].split(":")

    async def one() -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
                await asyncio.wait_for(reader.read(), 10)
                writer.close()
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(16)))


def attack(kind: str, url: str, tokens: dict[str, str], seconds: float) -> None:
    flood = {"slow": flood_slow, "huge": flood_huge, "parse": flood_parse, "bad": flood_bad, "framing": flood_framing}
    asyncio.run(flood[kind](url, tokens, time.monotonic() + seconds))


# --- the run ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of the server and its workers, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        pids = [str(pid), *Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return 0.0
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def start_server(data: Path, port: int, workers: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        os.sched_setaffinity(0, {0})

    argv = [sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port)]
    if workers:
        argv += ["--workers", str(workers)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env, preexec_fn=limit_fds)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pacspace-bench-flood"))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--count", type=int, default=200, help="honest appends (and reads) per phase")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds each flood runs before measuring")
    parser.add_argument("--src", type=Path, help="serve from this source tree's src/ (an older pacspace)")
    parser.add_argument("--floods", default=",".join(FLOODS))
    parser.add_argument("--attack", choices=FLOODS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        attack(args.attack, args.url, json.loads(args.tokens), args.seconds)
        return 0
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    # The server and the honest client on core 0, each flood on core 1: the flooding party's own machine
    # (its CPU, and the kernel's work of sending) is not the server's.
    os.sched_setaffinity(0, {0})
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(args.src.resolve() / "src")
    data, port = args.work / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    log = args.work / "server.log"
    subprocess.run([sys.executable, "-m", "pacspace", "init", "--data", str(data)], check=True, capture_output=True, env=env)
    server = start_server(data, port, args.workers, env, log)
    try:
        state = asyncio.run(setup(url, data, env))
        tokens, rel = state["tokens"], state["honest"]
        assert isinstance(tokens, dict) and isinstance(rel, Rel)
        cpu, t0 = cpu_seconds(server.pid), time.monotonic()
        rows = [("alone", asyncio.run(measure(url, tokens, rel, args.count)), 0.0, 0.0)]
        rows[0] = (*rows[0][:3], (cpu_seconds(server.pid) - cpu) / (time.monotonic() - t0))
        for kind in args.floods.split(","):
            size = log.stat().st_size
            cpu, t0 = cpu_seconds(server.pid), time.monotonic()
            flood = subprocess.Popen([sys.executable, __file__, "--attack", kind, "--url", url, "--tokens", json.dumps(tokens),
                                      "--seconds", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=lambda: os.sched_setaffinity(0, {1}))
            time.sleep(args.warmup)
            try:
                result = asyncio.run(measure(url, tokens, rel, args.count))
            finally:
                flood.kill()
                flood.wait()
            elapsed = time.monotonic() - t0
            rows.append((kind, result, (log.stat().st_size - size) / elapsed, (cpu_seconds(server.pid) - cpu) / elapsed))
            if server.poll() is not None:
                raise SystemExit(f"the server exited during the {kind} flood")
            time.sleep(3)  # the server closes the flood's connections
            asyncio.run(resync(url, tokens, rel, result["unsure"]))  # type: ignore[arg-type]
        base = rows[0][1]
        print(f"{'phase':8} {'append p50':>10} {'p99':>8} {'x p50':>6} {'x p99':>6}   {'read p50':>8} {'p99':>8} "
              f"{'x p50':>6} {'x p99':>6}   {'done':>5} {'failed':>12} {'log B/s':>8} {'cores':>5}")
        for kind, r, log_rate, cores in rows:
            ms = lambda k: f"{r[k] * 1000:7.1f}ms"  # noqa: E731
            ratio = lambda k: f"{r[k] / base[k]:6.2f}"  # noqa: E731
            print(f"{kind:8} {ms('append_p50'):>10} {ms('append_p99'):>8} {ratio('append_p50')} {ratio('append_p99')}   "
                  f"{ms('read_p50'):>8} {ms('read_p99'):>8} {ratio('read_p50')} {ratio('read_p99')}   "
                  f"{r['done']:5d} {','.join(r['failures']) or '-':>12} {log_rate:8.0f} {cores:5.2f}")
        return 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
