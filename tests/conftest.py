from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
