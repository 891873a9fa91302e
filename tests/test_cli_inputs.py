"""No input makes the pacspace command print a traceback or a raw Python message.

Every command is found by walking the parser (cli.main.build_parser), so a new command is covered
without editing this file. Each one is given, one at a time: malformed files for each of its path
arguments (missing, a directory, binary, empty, truncated JSON, JSON of the wrong shape, not UTF-8),
bad numbers for each numeric option, odd strings for each string option, and, for the commands that
talk to a server, a URL without a scheme, other malformed URLs, an unreachable server and no token.

Each run must exit with a documented code (pacspace.exitcodes) and, when it fails, say so in exactly
one line on stderr that starts with ``pacspace:``; no output may hold a traceback or the text of a
Python exception. The commands run in this process (fast enough to try every case); the last test
runs the issue's own examples as separate processes, as a user would.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import free_port

from pacspace import exitcodes
from pacspace.cli.main import build_parser, main
from pacspace.client.home import Home
from pacspace.note import NoteSigner

DOCUMENTED = {exitcodes.OK, exitcodes.FAILURE, exitcodes.USAGE, exitcodes.UNREACHABLE, exitcodes.INVOICE_DIFFERS,
              exitcodes.INCOMPLETE, exitcodes.VERIFICATION_FAILED, exitcodes.RULE_BROKEN, *exitcodes.DETECTIONS.values()}
# What a Python exception's text looks like when it leaks to a user.
RAW = re.compile(
    r"Traceback|Errno|codec can't|invalid literal|KeyError|IndexError|TypeError|ValueError|AttributeError|"
    r"RuntimeError|index out of range|not subscriptable|has no attribute|NoneType|object is not|unhashable|"
    r"argument of type|must be str|must be real number|expected str|ssl:default|(?i:connect call failed)|"
    r"unexpected internal error|"
    r"pacspace: error: '[^' ]*'$|"  # a KeyError's text: the repr of one key, and nothing else
    r"pacspace: error: [0-9]+$",
    re.MULTILINE,
)
# Commands that run until stopped: given the options that make them stop, or fail fast (a port held below).
EXTRA = {("monitor",): ["--once"]}
# Path options that name a file the command writes, and directories; every other path is read.
OUTPUTS = {"out", "report"}
DIRECTORIES = {"home", "data"}
# Commands that report each rejected input line on stderr before their one error line.
PER_LINE = {("recorder", "import"): "pacspace: rejected line "}


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*prefix, name))
    if parser.get_default("run") is not None:
        yield prefix, parser


ALL = sorted(commands(build_parser()), key=lambda c: c[0])


def is_path(action: argparse.Action) -> bool:
    return action.type is Path or action.dest in DIRECTORIES | OUTPUTS | {"file"}


def is_number(action: argparse.Action) -> bool:
    if action.type in (int, float):
        return True
    try:
        return action.type is not None and not is_path(action) and isinstance(action.type("1"), (int, float))
    except Exception:
        return False


def takes(action: argparse.Action, value: str) -> bool:
    try:
        action.type(value)  # type: ignore[misc]
    except Exception:
        return False
    return True


class Fixtures:
    """Well-formed inputs, so that each case differs from a sound command in one argument only."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        home = Home(self.home)
        home.create_keys()
        self.log_signer = NoteSigner("example.com/fuzz-log", Ed25519PrivateKey.generate())
        home.pin_log_key(self.log_signer.verifier.vkey())
        self.fingerprint = home.keys().public.fingerprint()
        witness = NoteSigner("example.com/fuzz-witness", Ed25519PrivateKey.generate())
        self.policy = tmp / "policy.txt"
        self.policy.write_text(f"log {self.log_signer.verifier.vkey()}\n"
                               f"witness w1 {witness.cosignature_verifier.vkey()}\nquorum w1\n")
        self.config = tmp / "recorder.toml"
        self.config.write_text('[recorder]\ndata = "spool"\n\n[[customers]]\nref = "c1"\nrelationship = "acme:00"\n'
                               '\n[meters.prompt]\nmeter = "llm.input.uncached_tokens"\nunit = "token"\nvalue = "tokens"\n')
        self.invoice = tmp / "invoice.json"
        self.invoice.write_text(json.dumps({"relationship": "acme:00", "period": "2026-11", "lines": []}))
        self.lines = tmp / "lines.json"
        self.lines.write_text(json.dumps([{"meter": "m", "unit": "u", "quantity": "1", "dimensions": {}}]))
        self.any_json = tmp / "object.json"
        self.any_json.write_text("{}")
        self.out_dir = tmp / "out"
        self.out_dir.mkdir()
        self.bad = self._malformed(tmp / "bad")
        self.strangers: dict[str, str] = {}

    def path(self, dest: str) -> str:
        named = {"home": self.home, "config": self.config, "policy": self.policy, "witness_policy": self.policy,
                 "invoice": self.invoice, "lines": self.lines, "data": self.tmp / "data"}
        if dest in OUTPUTS:
            return str(self.out_dir / dest)
        return str(named.get(dest, self.any_json))

    def string(self, dest: str) -> str:
        return {"relationship": "acme:00", "customer": "bob", "name": "bob", "period": "2026-11", "meter": "m",
                "quantity": "1", "event_id": "e1", "role": "customer", "provider_key": self.fingerprint,
                "customer_key": self.fingerprint, "origin": "example.com/fuzz", "host": "127.0.0.1",
                "log_key": self.log_signer.verifier.vkey()}.get(dest, "x")

    @staticmethod
    def _malformed(base: Path) -> dict[str, Path]:
        base.mkdir()
        files = {
            "binary": b"\x00\xff\xfe\x89PNG\r\n\x1a\n" + bytes(range(256)),
            "empty": b"",
            "not utf-8": b'{"format": "pacspace.evidence/v1", "note": "\xe9t\xe9"}',
            "truncated": b'{"format": "pacspace.evidence/v1", "records": [{"seq": 0, "tag": "',
            "json list": b"[1, 2, 3]",
            "json string": b'"x"',
            "json number": b"12345678901234567890",
            "json null": b"null",
            "wrong shape: proofs": b'{"format": "pacspace.event-proof/v1", "proofs": [1]}',
            "wrong shape: proof item": b'{"proofs": [{"relationship": 1, "seq": "x", "event": []}]}',
            "wrong shape: checkpoints": b'{"format": "pacspace.evidence/v1", "relationship": "acme:00", '
                                        b'"period": "2026-11", "checkpoints": "x", "records": "y"}',
            "wrong shape: fork": b'{"format": "pacspace.fork-evidence/v1", "earlier": 1, "later": []}',
            "wrong shape: invoice": b'{"relationship": "acme:00", "period": "2026-11", "lines": [{"quantity": []}]}',
            "wrong shape: lines": b'[{"meter": {}, "quantity": null, "dimensions": 3}]',
            "jsonl of odd lines": b'{"specversion": "1.0"}\n[1]\n"x"\n{"usage": 1, "id": 2}\n',
            "csv with odd columns": b"identifier,timestamp\n1,2,3,4\n,,\n",
            "toml of odd types": b'[recorder]\ndata = 1\n[[customers]]\nref = 2\n[meters]\nx = 3\n',
            "receipt-like text": b"c2sp.org/tlog-proof@v1\nindex x\n\nnot a checkpoint\n",
            "policy-like text": b"log not-a-vkey\nwitness\nquorum nobody\n",
        }
        out = {}
        for name, data in files.items():
            path = base / name.replace(" ", "_").replace(":", "")
            path.write_bytes(data)
            out[name] = path
        out["missing"] = base / "missing.json"
        out["a directory"] = base
        return out


def argv_for(path: tuple[str, ...], parser: argparse.ArgumentParser, fx: Fixtures, port: int,
             change: dict[str, str | None]) -> list[str]:
    """The command with every required or needed argument well-formed, except those in ``change``."""
    argv = [*path]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or action.nargs == 0:
            continue
        dest = action.dest
        if dest in change:
            value = change[dest]
        elif is_path(action):
            value = fx.path(dest)
        elif dest == "port":
            value = str(port)
        elif is_number(action):
            continue
        elif action.choices:
            value = sorted(action.choices)[0]
        elif action.option_strings and not action.required and dest not in ("meter", "quantity", "customer_key",
                                                                            "provider_key", "log_key"):
            continue
        else:
            value = fx.string(dest)
        if value is None:
            continue
        argv += [value] if not action.option_strings else [action.option_strings[-1], value]
    return [*argv, *EXTRA.get(path, [])]


Case = tuple[str, dict[str, str | None], dict[str, str | None], set[int] | None]


def cases(path: tuple[str, ...], parser: argparse.ArgumentParser, fx: Fixtures) -> Iterator[Case]:
    """(what, changed arguments, changed environment, the exit codes it may have if only some may) for each
    malformed input of one command."""
    usage, unreachable = {exitcodes.USAGE}, {exitcodes.OK, exitcodes.UNREACHABLE}  # OK: never asks the server
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or action.nargs == 0:
            continue
        dest = action.dest
        if is_path(action):
            for name, bad in fx.bad.items():
                if dest in OUTPUTS:
                    bad = bad if name == "a directory" else bad / "inside" if name != "missing" else bad.parent / "no" / "x"
                input_file = dest not in OUTPUTS | DIRECTORIES and name in ("missing", "a directory", "binary")
                yield f"{dest}: {name}", {dest: str(bad)}, {}, usage if input_file else None
        elif is_number(action):
            for value in ("x", "-1", "0", "1.5", "nan", "inf", "1e999", "99999999999999999999"):
                if dest == "port" and value == "0":
                    continue  # a free port: the command would serve
                never = value in ("x", "-1", "nan", "inf", "1e999") or (value == "1.5" and not takes(action, value))
                yield f"{dest}: {value!r}", {dest: value}, {}, usage if never else None
        elif dest != "host" and not action.choices:
            for value in ("", " ", "-1", "x" * 300, "é/../\u202e", "2026-13", "1/2"):
                yield f"{dest}: {value[:20]!r}", {dest: value}, {}, None
    if any(a.dest == "url" for a in parser._actions):
        for url in ("127.0.0.1:8080", "localhost", "ftp://example.com/", "http://", "http://[::1", "http://a b/"):
            yield f"url: {url!r}", {"url": url}, {}, usage
        for url in (f"http://127.0.0.1:{free_port()}", f"https://127.0.0.1:{free_port()}/x"):
            yield f"url: {url!r}", {"url": url}, {}, unreachable
        for name, url in fx.strangers.items():
            yield f"url: {name}", {"url": url}, {}, None
        yield "no token", {}, {"PACSPACE_TOKEN": None}, usage


def run_in_process(argv: list[str], env: dict[str, str | None]) -> tuple[int, str, str]:
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except BaseException as exc:  # what would have been a traceback
        code = -1
        err.write(f"escaped: {type(exc).__name__}: {exc}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue(), err.getvalue()


def faults(path: tuple[str, ...], code: int, out: str, err: str) -> list[str]:
    found = []
    if code not in DOCUMENTED:
        found.append(f"exit {code} is not a documented code")
    if RAW.search(out) or RAW.search(err):
        found.append("a raw Python message or traceback")
    if re.search(r"[\x00-\x09\x0b-\x1f\x7f]", err):
        found.append("a control character on stderr (a terminal escape, say)")
    lines = [line for line in err.splitlines() if line.strip()]
    if code != exitcodes.OK:
        prefix = PER_LINE.get(path)
        head = [line for line in lines[:-1] if not (prefix and line.startswith(prefix))]
        if head or not lines or not lines[-1].startswith("pacspace:"):
            found.append("not exactly one stderr line starting with 'pacspace:'")
    elif any(not line.startswith("pacspace:") for line in lines):
        found.append("a stderr line not starting with 'pacspace:'")
    return found


@pytest.fixture
def fixtures(tmp_path):
    """Fresh for each command: a command that succeeds (init on a missing directory) changes nothing for another."""
    return Fixtures(tmp_path / "fixtures")


class Stranger(http.server.BaseHTTPRequestHandler):
    """A server that is not pacspace's: it answers every request with the same status and body."""

    body = b""
    ctype = "text/html"
    status = 200

    def _answer(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", self.ctype)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def strangers():
    """Servers on 127.0.0.1 that answer what pacspace's never would: HTML, an empty JSON object, JSON of odd types."""
    answers = {"a web page": (200, b"<html>hello</html>", "text/html"),
               "an empty JSON object": (200, b"{}", "application/json"),
               "JSON of odd types": (200, b'{"name": 1, "vkey": [], "keys": "x", "relationships": {}, "records": 3, '
                                          b'"role": null, "wrap": 5, "provider_keys": "k", "customer": []}',
                                     "application/json"),
               "an error page of many lines": (502, b"<html>\n<body>\x1b[31mbad gateway\n</body>\n</html>\n", "text/html"),
               "an error of many lines": (500, b'{"error": "x", "message": "one\\ntwo\\u001b[2J"}', "application/json")}
    servers = {}
    for name, (status, body, ctype) in answers.items():
        handler = type("Handler", (Stranger,), {"body": body, "ctype": ctype, "status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    yield {name: f"http://127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    for server in servers.values():
        server.shutdown()


@pytest.fixture
def held_port():
    """A port something listens on: a command that gets as far as serving fails instead of serving."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("path,parser", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_every_command_on_malformed_input(path, parser, fixtures, strangers, held_port, tmp_path, monkeypatch):
    fixtures.strangers = strangers
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("PACSPACE_HOME", str(fixtures.home))
    monkeypatch.setenv("PACSPACE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PACSPACE_TOKEN", "tok-fuzz")
    failures = []
    ran = 0
    for what, change, env, expect in cases(path, parser, fixtures):
        argv = argv_for(path, parser, fixtures, held_port, change)
        code, out, err = run_in_process(argv, env)
        ran += 1
        found = faults(path, code, out, err)
        if expect is not None and code not in expect:
            found.append(f"exit {code}, not {sorted(expect)}")
        for fault in found:
            failures.append(f"{' '.join(path)} [{what}] -> {fault}: exit {code}\n    argv: {argv}\n    stderr: {err.strip()[:500]!r}")
    assert ran > 0
    assert not failures, f"{len(failures)} of {ran} cases:\n" + "\n".join(failures)


def test_the_walk_finds_every_command():
    found = {" ".join(p) for p, _ in ALL}
    assert {"serve", "evidence verify-event", "recorder flush", "admin party add", "witness serve"} <= found
    assert len(found) >= 30


@pytest.mark.parametrize("args,content", [
    (["evidence", "verify-event"], b'{"proofs":[1]}'),
    (["evidence", "verify"], b'{"format": "pacspace.evidence/v1", "checkpoints": "x"}'),
    (["receipt", "verify"], b"\xff\xfe not utf-8"),
    (["evidence", "verify"], None),  # a file that does not exist
])
def test_the_issues_examples_as_a_user_runs_them(args, content, tmp_path, fixtures):
    path = tmp_path / "input.json"
    if content is not None:
        path.write_bytes(content)
    env = {**os.environ, "PACSPACE_HOME": str(fixtures.home)}
    result = subprocess.run([sys.executable, "-m", "pacspace", *args, str(path)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == exitcodes.USAGE, result.stderr
    assert not RAW.search(result.stderr) and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("pacspace: error: ")


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "http://127.0.0.1:{free}"])
def test_a_bad_or_unreachable_url_as_a_user_meets_it(url, tmp_path, fixtures):
    url = url.format(free=free_port())  # a port nobody listens on, chosen when the test runs
    env = {**os.environ, "PACSPACE_HOME": str(fixtures.home), "PACSPACE_TOKEN": "t", "PACSPACE_URL": url}
    result = subprocess.run([sys.executable, "-m", "pacspace", "relationship", "list"], capture_output=True,
                            text=True, env=env, timeout=120)
    expected = exitcodes.UNREACHABLE if url.startswith("http://") else exitcodes.USAGE
    assert result.returncode == expected, result.stderr
    assert not RAW.search(result.stderr) and len(result.stderr.splitlines()) == 1, result.stderr
    assert url in result.stderr
