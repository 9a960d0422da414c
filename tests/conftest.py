from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------- test data
# Committed fixtures (small cuts of real data, written by tests/data/make_fixtures.py): always there.
FIXTURES = REPO / "tests" / "data"
FIXTURE_CATALOG = FIXTURES / "fixtures.toml"
HER2ST_MINI = FIXTURES / "her2st_mini"
VISIUM_SR1 = FIXTURES / "visium_sr1"
VISIUM_SR2 = FIXTURES / "visium_sr2"

# The full real data (her2st sections C2-C6, the Space Ranger 1.0 sample): $STBENCH_TEST_DATA, else
# ../shared/data beside the repository when it exists. A fresh clone has neither: tests marked
# ``full_data`` are then skipped, and the run's summary says how many and how to enable them.
FULL_DATA_PARTS = ("her2st", "visium_spaceranger_1.0.0")
SKIP_PREFIX = "full data: "


def _full_data() -> tuple[Path | None, str]:
    env = os.environ.get("STBENCH_TEST_DATA", "").strip()
    where = Path(env).expanduser() if env else REPO.parent / "shared" / "data"
    source = f"STBENCH_TEST_DATA={env}" if env else str(where)
    if not where.is_dir():
        return None, f"{source} does not exist"
    missing = [p for p in FULL_DATA_PARTS if not (where / p).is_dir()]
    if missing:
        return None, f"{source} lacks {', '.join(missing)}/"
    return where, ""


FULL_DATA, FULL_DATA_MISSING = _full_data()
#: The full data folder; where there is none, the path it would have (tests using it are skipped).
SHARED_DATA = FULL_DATA or REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if FULL_DATA is not None:
        return
    skip = pytest.mark.skip(reason=f"{SKIP_PREFIX}{FULL_DATA_MISSING}; set STBENCH_TEST_DATA to the data folder")
    for item in items:
        if item.get_closest_marker("full_data"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if isinstance(r.longrepr, tuple) and SKIP_PREFIX in str(r.longrepr[2])]
    if FULL_DATA is not None:
        terminalreporter.write_line(f"stbench: full-data tests ran on {FULL_DATA}")
    elif skipped:
        terminalreporter.write_line(
            f"stbench: {len(skipped)} full-data test(s) skipped ({FULL_DATA_MISSING}); the committed fixtures in "
            f"tests/data ran. To run them too: STBENCH_TEST_DATA=/path/to/shared/data python -m pytest",
            yellow=True)


@pytest.fixture(scope="session")
def fixture_catalog() -> Path:
    """tests/data/fixtures.toml: her2st_mini_HVG, her2st_mini_HEG, visium_mini."""
    return FIXTURE_CATALOG


@pytest.fixture(scope="session")
def full_data() -> Path:
    """The full data folder (use with the ``full_data`` marker, which skips the test when it is absent)."""
    if FULL_DATA is None:
        pytest.skip(f"{SKIP_PREFIX}{FULL_DATA_MISSING}")
    return FULL_DATA


def fetch_fixture(root: Path, dataset: str, mirror: Path) -> Path:
    """``stbench --catalog fixtures.toml fetch DATASET --mirror MIRROR`` into ``root/data``; returns ``root``."""
    from stbench.cli import cli as group

    env = {"STBENCH_DATA": str(root / "data"), "STBENCH_CACHE": str(root / "cache")}
    result = CliRunner().invoke(group, ["--catalog", str(FIXTURE_CATALOG), "fetch", dataset, "--mirror", str(mirror)],
                                env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def her2st_mini_env(tmp_path_factory):
    """her2st_mini fetched (through the mirror, checksums verified) into a fresh STBENCH_DATA, with a fresh
    STBENCH_CACHE, both set for the whole module; yields the folder holding ``data/`` and ``cache/``.
    Pass ``--catalog`` (or ``catalogs=``) with :data:`FIXTURE_CATALOG` to name its datasets."""
    root = fetch_fixture(tmp_path_factory.mktemp("her2st_mini"), "her2st_mini_HVG", HER2ST_MINI)
    mp = pytest.MonkeyPatch()
    mp.setenv("STBENCH_DATA", str(root / "data"))
    mp.setenv("STBENCH_CACHE", str(root / "cache"))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def visium_mini_env(tmp_path_factory):
    """visium_mini (visium_sr1 + visium_sr2) fetched through the mirror into a fresh STBENCH_DATA and cache."""
    root = fetch_fixture(tmp_path_factory.mktemp("visium_mini"), "visium_mini", FIXTURES)
    mp = pytest.MonkeyPatch()
    mp.setenv("STBENCH_DATA", str(root / "data"))
    mp.setenv("STBENCH_CACHE", str(root / "cache"))
    yield root
    mp.undo()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("STBENCH_LOAD_PLUGINS", "STBENCH_TRACE_PLUGINS", "STBENCH_CATALOG", "STBENCH_PLUGINS_DIR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors gain nothing from threads, and OpenMP threads competing on a busy 2-core machine
    make the model tests tens of times slower; restore the setting afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli():
    """Invoke the stbench CLI in-process; returns click's Result (stdout and stderr separate)."""
    from stbench.cli import cli as group

    def invoke(*args: str, env: dict | None = None):
        return CliRunner().invoke(group, list(args), env=env, catch_exceptions=False)

    return invoke


def run_stbench(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m stbench`` in a fresh interpreter (for entry points and sys.path changes)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STBENCH_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "stbench", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


@pytest.fixture
def http_server():
    """Serve a folder on 127.0.0.1 (a stand-in for upstream hosts); yields a function folder -> base URL."""
    import functools
    import http.server
    import threading

    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def serve(folder: Path) -> str:
        handler = functools.partial(Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture
def stbench_dirs(tmp_path, monkeypatch):
    """Fresh data root and cache for one test."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    monkeypatch.setenv("STBENCH_DATA", str(data))
    monkeypatch.setenv("STBENCH_CACHE", str(cache))
    return data, cache
