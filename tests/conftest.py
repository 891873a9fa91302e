import json
import pathlib

import pytest

VECTORS = pathlib.Path(__file__).parent / "vectors"


@pytest.fixture(scope="session")
def rfc6962() -> dict:
    return json.loads((VECTORS / "rfc6962.json").read_text())
