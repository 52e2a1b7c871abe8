"""Shared fixtures: one local Ray head per test session, bound to 127.0.0.1, stopped by its own pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numerics

numerics.pin()  # before anything imports torch: the same kernels on every machine (tests/numerics.py)

import pytest  # noqa: E402
from helpers import free_port, ray_bin, unmarked_ray_items  # noqa: E402

# Every Ray process started by the tests (heads, drivers, workers) uses the same auth mode.
os.environ["RAY_AUTH_MODE"] = "disabled"
# Keep every Ray process of the tests on loopback: without this flag Ray replaces 127.0.0.1 by the
# machine's address (services.resolve_ip_for_localhost).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parent.parent
RAY_START_TIMEOUT_S = 120


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"Ray head did not open port {port} within {timeout}s")


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a process we started (and its children) by its own process group id."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def ray_head():
    """A Ray head (``ray start --head --block``) on 127.0.0.1 with 2 CPUs; yields its GCS address."""
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="gnpray")
    cmd = [ray_bin(), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
           "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
           f"--temp-dir={tmp}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, proc, RAY_START_TIMEOUT_S)
        time.sleep(2)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Refuse a collection in which a test uses the Ray head without the ``ray`` marker, so that
    ``-m "not ray"`` never starts Ray."""
    bad = unmarked_ray_items(items)
    if bad:
        raise pytest.UsageError("tests that use the ray_head fixture without the ray marker: " + ", ".join(bad))
