"""verifier.html: one self-contained page that checks an evidence bundle in any current browser. Pure.

The page holds its script and style sheet inline, and a Content-Security-Policy
that allows exactly those two (by their SHA-256) and nothing else: no network
connection, no other script, no form submission, no image from anywhere. It is
the same bytes for every copy a pacspace version writes, so its SHA-256 can be
compared across machines (docs/console.md).
"""

from __future__ import annotations

import base64
import hashlib
import html
from pathlib import Path

SCRIPT = (Path(__file__).parent / "verifier.js").read_text(encoding="utf-8")
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:60rem;padding:0 1.5rem;color:#1f2328}
*{box-sizing:border-box}label{display:block;margin:.6rem 0}input[type=text]{width:100%;font-family:ui-monospace,monospace;padding:.4rem}
#verdict{font-size:1.2rem;padding:1rem;border-radius:.5rem;margin:1rem 0;background:#eaeef2}
#verdict[data-verdict=ok]{background:#1a7f37;color:#fff}#verdict[data-verdict=failed]{background:#b42318;color:#fff}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #d0d7de;padding:.35rem .5rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}#steps li{margin:.3rem 0;color:#1a7f37}
#findings{border-left:.3rem solid #b42318;padding:.5rem .5rem .5rem 2rem;background:#fff1f0}#findings li{margin:.3rem 0}
#key-source[data-source=bundle]{background:#fff8c5;padding:.5rem}code{word-break:break-all}
.small{font-size:.85rem;color:#57606a}
"""


def _hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def policy() -> str:
    return (f"default-src 'none'; script-src '{_hash(SCRIPT)}'; style-src '{_hash(STYLE)}'; connect-src 'none'; "
            "img-src 'none'; form-action 'none'; base-uri 'none'")


def verifier_page(version: str) -> str:
    """The page's text: the same for every call with the same version."""
    if "</script" in SCRIPT.lower() or "</style" in STYLE.lower():
        raise AssertionError("the inline script or style would end its element early")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy()}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pacspace evidence verifier</title>
<style>{STYLE}</style></head><body>
<h1>Check a pacspace evidence bundle</h1>
<p>This page checks a billing period's evidence bundle entirely in your browser: the log's signatures on its
checkpoints, each record's inclusion in the log, each record opened with its own key and signed by the provider,
the chain of records, the protocol rules each record must follow, and the close's totals. It sends nothing anywhere and loads nothing: its security policy
forbids every network connection.</p>
<label>1. The log's verifier key (vkey), as its operator publishes it (optional: without it, the key inside the bundle
is used, which only shows the bundle agrees with itself):
<input type="text" id="vkey" spellcheck="false" autocomplete="off" placeholder="example.com/billing-log+edb7f3e8+AQ…"></label>
<label>2. The evidence bundle (<code>pacspace evidence export</code> writes it):
<input type="file" id="bundle" accept=".json,application/json"></label>
<button type="button" id="check">Check again</button>
<div id="verdict" data-verdict="pending" role="status" aria-live="polite">Choose a bundle.</div>
<p id="reason"></p>
<ul id="findings" hidden aria-label="Findings: authentic records that break a protocol rule"></ul>
<p id="key-source"></p>
<div id="summary"></div>
<table id="totals" hidden><caption>The close's totals, as the provider signed them and as checked here</caption>
<thead><tr><th>Meter</th><th>Dimensions</th><th>Quantity</th><th>Unit</th></tr></thead><tbody></tbody></table>
<ol id="steps"></ol>
<p class="small">pacspace {html.escape(version)} verifier. Before you trust this page, compare its SHA-256
(<code>sha256sum verifier.html</code>) with the one <code>pacspace verifier</code> printed for whoever gave it to you.</p>
<script>{SCRIPT}</script>
</body></html>
"""
