#!/usr/bin/env python3
"""A third-party C2SP verifier over every checkpoint the log publishes under a changed policy. Run by hand.

    apt-get install golang-go golang-golang-x-mod-dev      # Go and golang.org/x/mod, from Debian: no module proxy
    python3 tools/c2sp_third_party_check.py

On loopback: two witnesses; the log serves with a policy that needs w0 and takes
appends; then restarts with a policy that needs w0 and w1 (the latest checkpoint
is cosigned again at start-up) and takes more. Every /checkpoint answer and every
stored checkpoint is then checked by tools/c2sp_verify (Go's golang.org/x/mod/sumdb
note and tlog packages), with the served tiles and entry bundles. Exits non-zero
on the first checkpoint the verifier rejects.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import entry, free_port, new_log  # noqa: E402

from pacspace.config import ServerConfig  # noqa: E402
from pacspace.datadir import load_signer  # noqa: E402
from pacspace.note import NoteSigner  # noqa: E402
from pacspace.sequencer import SequencerConfig  # noqa: E402
from pacspace.server.app import create_app  # noqa: E402
from pacspace.server.context import SERVICE  # noqa: E402
from pacspace.server.witness_app import create_witness_app  # noqa: E402
from pacspace.storage.sqlite import SqliteLog  # noqa: E402


def build(out: Path) -> Path:
    if shutil.which("go") is None or not Path("/usr/share/gocode/src/golang.org/x/mod/sumdb/note").is_dir():
        sys.exit("needs Go and golang.org/x/mod: apt-get install golang-go golang-golang-x-mod-dev")
    binary = out / "c2sp_verify"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOCACHE": str(out / "gocache")}
    subprocess.run(["go", "build", "-o", str(binary), str(ROOT / "tools" / "c2sp_verify" / "main.go")], check=True, env=env)
    return binary


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="c2sp-check-"))
    verifier = build(base)
    vkey = new_log(base / "log")
    signer = load_signer(base / "log")
    witnesses = [NoteSigner(f"witness.example/w{i}", Ed25519PrivateKey.generate()) for i in range(2)]
    runners, lines = [], []
    for i, w in enumerate(witnesses):
        (base / f"w{i}").mkdir()
        port = free_port()
        runners.append(await serve(create_witness_app(base / f"w{i}", w, {signer.name: signer.verifier}), port))
        lines.append(f"witness w{i} {w.cosignature_verifier.vkey()} http://127.0.0.1:{port}")
    policies = [f"log {vkey}\n{lines[0]}\nquorum w0\n",
                f"log {vkey}\n{lines[0]}\n{lines[1]}\ngroup both all w0 w1\nquorum both\n"]
    published: list[bytes] = []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for run, text in enumerate(policies):
        (base / "policy").write_text(text)
        app = create_app(ServerConfig(data_dir=base / "log", sequencer=SequencerConfig(pool_interval=0.01),
                                      witness_policy=base / "policy", witness_timeout=2.0))
        runner = await serve(app, port)
        sequencer = app[SERVICE].sequencer
        published.append(sequencer.latest.format())
        for batch in range(3):
            await sequencer.submit_many([entry(run * 1000 + batch * 100 + i) for i in range(100 + batch)])
            published.append(sequencer.latest.format())
        if run == len(policies) - 1:
            break
        await runner.cleanup()
    store = SqliteLog.open(base / "log", readonly=True)
    stored = list(store.checkpoints_newest_first())
    store.close()
    files = []
    for i, note in enumerate(published + stored):
        path = base / f"checkpoint-{i:03d}"
        path.write_bytes(note)
        files.append(str(path))
    keys = [w.cosignature_verifier.vkey() for w in witnesses] + [signer.cosignature_verifier.vkey()]
    args = [str(verifier), "-log", vkey, "-url", url, *(a for k in keys for a in ("-witness", k))]
    print(f"{len(published)} checkpoints published, {len(stored)} stored; verifying them with golang.org/x/mod", flush=True)
    code = (await asyncio.to_thread(subprocess.run, [*args, *files])).returncode
    # Every checkpoint published under the second policy carries both witnesses' cosignatures.
    if code == 0:
        later = [str(base / f"checkpoint-{i:03d}") for i in range(len(published) // 2, len(published))]
        code = (await asyncio.to_thread(subprocess.run, [*args[:3], *args[5:], "-require", "witness.example/w0",
                                                         "-require", "witness.example/w1", *later],
                                        capture_output=True)).returncode
        print("ok: every checkpoint published under the changed policy carries w0's and w1's cosignatures"
              if code == 0 else "FAIL: a checkpoint under the changed policy lacks a required cosignature")
    await runner.cleanup()
    for r in runners:
        await r.cleanup()
    shutil.rmtree(base, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
