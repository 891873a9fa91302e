import json
import pathlib

import pytest

VECTORS = pathlib.Path(__file__).parent / "vectors"


@pytest.fixture(scope="session")
def rfc6962() -> dict:
    return json.loads((VECTORS / "rfc6962.json").read_text())


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole run (tests/browser.py)."""
    import shutil as _shutil

    from browser import start_browser

    driver, profile = start_browser()
    yield driver
    driver.quit()
    _shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the whole run (tests/postgres_server.py), started on first use."""
    from postgres_server import start_or_fail

    server = start_or_fail()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres) -> str:
    """A fresh database of its own on the run's PostgreSQL server."""
    return postgres.database()


@pytest.fixture(scope="session")
def s3():
    """One real S3-compatible server (SeaweedFS, tests/s3_server.py) for the whole run, started on first use."""
    from s3_server import start_s3

    server = start_s3()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch) -> dict[str, str]:
    """The AWS_* variables of the run's S3 server, set in this process too (as an operator exports them)."""
    env = s3.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(params=["sqlite", "postgres"])
def log_database(request) -> str | None:
    """Where a test's log keeps its tables: None (SQLite in the data directory) or a fresh PostgreSQL database.
    A test or fixture that takes it runs once on each backend."""
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory, request):
    """Where the browser tests save their screenshots (printed at the end of the run)."""
    from browser import Screenshots

    shots = Screenshots(tmp_path_factory.mktemp("screenshots"))
    request.config.stash[SCREENSHOTS] = shots
    return shots


SCREENSHOTS = pytest.StashKey()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    shots = config.stash.get(SCREENSHOTS, None)
    if shots is not None and shots.taken:
        terminalreporter.write_line(f"browser screenshots: {shots.folder} ({len(shots.taken)} files; copies in "
                                    "/tmp/pacspace-screenshots)")
