"""docs/recorder.md shows an example of every input format the recorder reads: each one imports as documented.

The examples are taken from the document itself (its fenced blocks tagged with a format), so the
document cannot drift from what `pacspace recorder import` accepts.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from pacspace.cli.main import main
from pacspace.cli.recorder_commands import FORMATS
from pacspace.recorder.spool import Spool

DOC = Path(__file__).resolve().parent.parent / "docs" / "recorder.md"
BLOCK = re.compile(r"^```(\w+) ([\w-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def examples() -> list[tuple[str, str, str]]:
    """(language, tag, text) of each tagged block."""
    return [(m.group(1), m.group(2), m.group(3)) for m in BLOCK.finditer(DOC.read_text())]


def test_every_format_has_an_example():
    tags = {tag for _, tag, _ in examples()}
    assert set(FORMATS) <= tags and "recorder-example" in tags
    stripe = [lang for lang, tag, _ in examples() if tag == "stripe"]
    assert sorted(stripe) == ["csv", "jsonl"]  # the export as CSV, and as JSONL


def meters(spool: Spool, event_id: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], str]:
    return {(e.meter, tuple(sorted(e.dimensions.items()))): e.quantity for _, _, e in spool.find_event(event_id, None)}


def test_each_example_imports_as_documented(tmp_path):
    config = tmp_path / "recorder.toml"
    config.write_text(next(text for _, tag, text in examples() if tag == "recorder-example"))
    for n, (lang, tag, text) in enumerate(examples()):
        if tag not in FORMATS:
            continue
        path = tmp_path / f"example-{n}.{lang}"
        path.write_text(text)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["recorder", "import", str(path), "--format", tag, "--config", str(config)])
        assert code == 0, (tag, err.getvalue())
        summary = json.loads(out.getvalue())
        assert summary["rejected"] == 0 and summary["accepted"] >= len(text.strip().splitlines()) - (lang == "csv")
    spool = Spool(tmp_path / "recorder-data")
    try:
        assert meters(spool, "evt-1") == {("llm.input.uncached_tokens", (("model", "m-1"),)): "1200"}
        assert meters(spool, "req_002") == {("api.calls", (("region", "us"),)): "5"}
        assert meters(spool, "req_003") == {("api.calls", (("region", "eu"),)): "2"}
        model = (("model", "gpt-4o"),)
        assert meters(spool, "chatcmpl-123") == {
            ("llm.input.uncached_tokens", model): "500", ("llm.input.cache_read_tokens", model): "1000",
            ("llm.output.visible_tokens", model): "200", ("llm.output.reasoning_tokens", model): "100",
            ("llm.requests", model): "1"}
        model = (("model", "claude-sonnet-4-5"),)
        assert meters(spool, "msg_01") == {
            ("llm.input.uncached_tokens", model): "40", ("llm.input.cache_read_tokens", model): "2000",
            ("llm.input.cache_write_tokens", (*model, ("ttl", "5m"))): "500", ("llm.output.visible_tokens", model): "350",
            ("llm.server_tool.web_search", model): "2", ("llm.requests", model): "1"}
    finally:
        spool.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_rejected_line_is_named_and_exits_2(tmp_path, fmt):
    config = tmp_path / "recorder.toml"
    config.write_text(next(text for _, tag, text in examples() if tag == "recorder-example"))
    path = tmp_path / "events"
    path.write_text('{"id": "x"}\n' if fmt != "stripe" else "identifier,timestamp\nx,1\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["recorder", "import", str(path), "--format", fmt, "--config", str(config)])
    lines = err.getvalue().splitlines()
    assert code == 2 and json.loads(out.getvalue())["rejected"] == 1
    assert lines[0].startswith("pacspace: rejected line ") and lines[-1].startswith("pacspace: error: 1 line(s)")
