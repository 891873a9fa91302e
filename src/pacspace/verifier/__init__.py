"""The evidence verifier for anyone: one self-contained HTML page (`pacspace verifier`) that checks an evidence
bundle in the browser with WebCrypto, as client.evidence.verify_bundle does in Python."""
