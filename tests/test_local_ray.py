"""A study without --address starts its own Ray on loopback; a study given an address that does not answer
stops at once, naming the address, instead of waiting on it (docs/cluster.md)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from helpers import ROOT, free_port, write_study

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e]

START_DEADLINE_S = 300


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env.pop("RAY_ADDRESS", None)
    # conftest keeps the tests' own Ray processes on loopback with this flag; here the study must do it
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    return env


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def _listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process, address, port) of every listening TCP socket of ``procs``."""
    out = []
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((_cmd(p)[:80], c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@pytest.fixture
def ray_tmp():
    """A Ray temp dir of our own (short path: Ray's socket names must stay under 108 bytes)."""
    d = tempfile.mkdtemp(prefix="gr", dir="/tmp")
    (Path(d) / "ray").mkdir()
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("session", ["dead", "live"])
def test_local_study_starts_its_own_ray_on_loopback(tmp_path, ray_tmp, ray_head, session):
    """Ray's session file (``<RAY_TMPDIR>/ray/ray_current_cluster``, written by ``ray start``) names a
    cluster that is gone (``dead``) or running (``live``, the tests' Ray head). A study without --address
    must neither hang on the first nor join the second: it starts its own Ray (a GCS server among the
    driver's children), and every socket that Ray opens for it listens on loopback only."""
    dead = f"127.0.0.1:{free_port()}"
    (ray_tmp / "ray" / "ray_current_cluster").write_text(dead if session == "dead" else ray_head)
    study = write_study(tmp_path / "tiny.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "gnp_study", "run", "greedy", str(study), "--output",
                             str(tmp_path / "out")], cwd=ROOT, env=_env(RAY_TMPDIR=str(ray_tmp)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + START_DEADLINE_S
        workers = []
        while time.time() < deadline and proc.poll() is None:
            procs = _tree(proc.pid)
            workers = [p for p in procs if "ImplicitFunc" in _cmd(p)]
            if workers:
                break
            time.sleep(0.2)
        assert workers, f"no trial started within {START_DEADLINE_S}s (exit {proc.poll()})"
        procs = _tree(proc.pid)
        assert any("gcs_server" in _cmd(p) for p in procs), "the study did not start its own Ray"
        sockets = _listening(procs)
        # the GCS, the raylet, the agents and the workers all listen somewhere
        assert len(sockets) >= 5, sockets
        wide = [s for s in sockets if not _is_loopback(s[1])]
        assert not wide, f"sockets of a local study outside loopback: {wide}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    assert "Traceback" not in out, out[-3000:]


@pytest.mark.timeout(300)
def test_address_that_does_not_answer_stops_at_once_with_one_line(tmp_path):
    """A study given a Ray address with nothing behind it stops within seconds, exit status 2, with one
    line naming the address and what to do (Ray alone retries for minutes, printing its warnings)."""
    address = f"127.0.0.1:{free_port()}"
    study = write_study(tmp_path / "tiny.yaml")
    proc = subprocess.run([sys.executable, "-m", "gnp_study", "run", "greedy", str(study), "--output",
                           str(tmp_path / "out"), "--address", address], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("gnp-study: error:")]
    assert len(errors) == 1 and address in errors[0], proc.stderr[-3000:]
    assert "without --address" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "trials.parquet").exists()
