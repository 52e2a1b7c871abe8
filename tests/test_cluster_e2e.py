"""A real local Ray cluster: a head (``ray start --head`` with the job server) and, in the second test,
a worker node process; a tiny study submitted as a Ray job, followed to success, its outputs checked in
the study folder, and every Ray process stopped by the process id this test started.

In cluster mode Ray 2.60 replaces ``--node-ip-address=127.0.0.1`` by the machine's own address, so the
nodes bind the loopback addresses 127.0.0.2 and 127.0.0.3, which it leaves alone; the job server is bound
to 127.0.0.1 (``--dashboard-host``). Every process runs with
``RAY_AUTH_MODE=disabled``. Every wait is bounded. Each node gets its own free dashboard-agent port
(Ray's fixed default, 52365, collides with any other Ray on the machine and the head's job agent then
never registers) and its own temp dir.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gnp_study import jobs
from helpers import free_port, ray_bin

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 300
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
       "MPLBACKEND": "Agg"}
ENV.pop("RAY_ADDRESS", None)
ENV["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # multi-node on one machine (see Cluster)
ENV.pop("RAY_API_SERVER_ADDRESS", None)


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop processes this test started, with their children, by their own process group ids
    (``ray start --block`` shuts its node down on SIGTERM; SIGKILL after 10 s)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


class Cluster:
    """A Ray head started here; ``add_worker`` starts a worker node process joined to it."""

    def __init__(self, num_cpus: int = 2):
        self.port, self.dashboard_port = free_port(), free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="gnpr", dir="/tmp")  # short: Ray's socket paths
        self.temp_dirs = [self.temp_dir]
        self.log_dir = Path(tempfile.mkdtemp(prefix="gnpray-logs"))
        self.procs: list[subprocess.Popen] = []
        # The nodes' working directory: none of the repository's folders (the examples' packages must
        # reach the trials through a job's runtime environment, not from a node's cwd).
        self.cwd = tempfile.mkdtemp(prefix="gnpray-cwd")
        self.job_address = f"http://127.0.0.1:{self.dashboard_port}"
        # Multi-node needs Ray's cluster mode, in which Ray rewrites 127.0.0.1 (and only that loopback
        # address) to the machine's address; the nodes therefore bind 127.0.0.2, 127.0.0.3, ...: other
        # loopback addresses, so all traffic stays on the loopback interface.
        self.gcs_address = f"127.0.0.2:{self.port}"
        self._spawn("head", [ray_bin(), "start", "--head", "--node-ip-address=127.0.0.2", f"--port={self.port}",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                             "--include-dashboard=true", f"--num-cpus={num_cpus}", "--num-gpus=0",
                             f"--dashboard-agent-listen-port={free_port()}",
                             "--disable-usage-stats", f"--temp-dir={self.temp_dir}", "--block"])
        jobs.wait_for_nodes(self.job_address, 1, timeout_s=START_TIMEOUT_S, poll_s=1.0)

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, env=env or ENV, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def add_worker(self, num_cpus: int = 1) -> None:
        # Its own temp dir: two nodes on one machine sharing a session folder delete each other's
        # unpacked runtime environments (the job's working_dir vanished under the driver).
        temp = tempfile.mkdtemp(prefix="gnpw", dir="/tmp")
        self.temp_dirs.append(temp)
        self._spawn(f"worker{len(self.procs)}", [
            ray_bin(), "start", f"--address={self.gcs_address}", f"--node-ip-address=127.0.0.{len(self.procs) + 2}",
            f"--num-cpus={num_cpus}", "--num-gpus=0", f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats", f"--temp-dir={temp}", "--block"])
        jobs.wait_for_nodes(self.job_address, len(self.procs), timeout_s=START_TIMEOUT_S, poll_s=1.0)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.log_dir.glob("*.log")))

    def stop(self) -> None:
        _stop(list(reversed(self.procs)))  # workers first, then the head
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.log_dir, ignore_errors=True)
        shutil.rmtree(self.cwd, ignore_errors=True)


@pytest.fixture
def cluster():
    c = Cluster(num_cpus=2)
    try:
        yield c
    finally:
        c.stop()


def tiny_study(path: Path, seeds=(0, 1)) -> Path:
    """The shipped digits study shrunk through its own fields: 1 epoch, 1-value grids, small data."""
    src = ROOT / "search_spaces" / "digits.yaml"
    raw = yaml.safe_load(src.read_text()) if src.is_file() else {
        "data": {"dataset": "digits", "augmentation": "none"}, "model": {"name": "small_cnn"},
        "training": {"batch_size": 64, "lr": 0.05, "momentum": 0.9}, "resources": {"cpus_per_trial": 1}}
    raw["name"] = "tiny_cluster"
    raw["data"]["train_subset"] = 300
    raw["training"]["epochs"] = 1
    raw["stages"] = {"standard": {"search": "grid", "space": {"lr": [0.05]}},
                     "sam": {"r": [0.05]},
                     "gnp": {"alpha": [0.5], "alpha_extra": [], "figure2_r": [0.05]}}
    raw["seeds"] = list(seeds)
    raw["resources"] = {"cpus_per_trial": 1, "gpus_per_trial": 0}
    raw["max_failures"] = 0
    path.write_text(yaml.safe_dump(raw))
    return path


def follow(job_id: str, address: str, timeout_s: float = JOB_TIMEOUT_S) -> tuple[str, str]:
    """``jobs.follow_logs`` in a thread, bounded: (final status, log text); the job is stopped on timeout."""
    out, box = io.StringIO(), {}

    def target():
        try:
            box["status"] = jobs.follow_logs(job_id, address, out=out)
        except Exception as e:  # noqa: BLE001 - reported below
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        jobs.stop_job(job_id, address)
        pytest.fail(f"job {job_id} did not end within {timeout_s}s:\n{out.getvalue()[-3000:]}")
    if "error" in box:
        raise box["error"]
    return box["status"], out.getvalue()


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gnp_study", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def expected_trials(study: Path, out: Path) -> int:
    from gnp_study.protocol import plan
    from gnp_study.spec import load_spec

    spec = load_spec(study)
    decisions = json.loads((out / "decisions.json").read_text())
    return sum(len(plan(s, spec, decisions)) for s in ("standard", "sam", "gnp"))


def check_outputs(study: Path, out: Path) -> pd.DataFrame:
    for name in ("study.yaml", "trials.parquet", "epochs.parquet", "decisions.json", "results.md",
                 "report.html"):
        assert (out / name).is_file(), f"{name} missing in {sorted(p.name for p in out.iterdir())}"
    assert set(json.loads((out / "decisions.json").read_text())) == {"standard", "sam", "gnp"}
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == expected_trials(study, out)
    assert (trials["status"] == "completed").all(), trials[["stage", "status", "error"]]
    assert "<html" in (out / "report.html").read_text().lower()
    return trials


def test_submit_follow_and_outputs_match_a_local_run(cluster, tmp_path):
    study = tiny_study(tmp_path / "tiny.yaml")
    out = tmp_path / "cluster_out"
    # submit through the real CLI, as a user would
    res = cli("submit", str(study), "--address", cluster.job_address, "--output", str(out),
              "--python", sys.executable)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().splitlines()[-1]
    assert job_id.startswith("gnp-study-tiny-")

    status, log = follow(job_id, cluster.job_address)
    assert status == "SUCCEEDED", log[-4000:] + cluster.logs()
    st = cli("status", job_id, "--address", cluster.job_address)
    assert (st.returncode, st.stdout.strip()) == (0, "SUCCEEDED")
    lg = cli("logs", job_id, "--address", cluster.job_address, "--no-follow")
    assert lg.returncode == 0 and "gnp_study_job/tiny.yaml" in lg.stdout
    unknown = cli("status", "raysubmit_does_not_exist", "--address", cluster.job_address)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert unknown.stderr.strip().count("\n") == 0, unknown.stderr
    stop = cli("stop", job_id, "--address", cluster.job_address)
    assert stop.returncode == 0 and "already ended" in stop.stdout

    trials = check_outputs(study, out)
    info = json.loads((out / "run_info.json").read_text())
    assert info["finished"] and info["hardware"]["ray_nodes"] == 1

    # the same study run locally (its own Ray) gives the same trials and the same numbers
    local = tmp_path / "local_out"
    res = cli("run", "greedy", str(study), "--output", str(local), timeout=JOB_TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    local_trials = check_outputs(study, local)
    key = ["stage", "config_key", "seed"]
    a = trials.sort_values(key).reset_index(drop=True)
    b = local_trials.sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key])
    pd.testing.assert_series_equal(a["best_test_error"], b["best_test_error"], atol=1e-9, rtol=0)
    assert json.loads((out / "decisions.json").read_text()) == json.loads((local / "decisions.json").read_text())


def test_trials_run_on_both_nodes(cluster, tmp_path):
    from ray.util.state import list_nodes

    cluster.add_worker(num_cpus=1)
    nodes = {n.node_id for n in list_nodes(address=cluster.job_address, filters=[("state", "=", "ALIVE")])}
    assert len(nodes) == 2
    study = tiny_study(tmp_path / "tiny.yaml", seeds=(0, 1, 2, 3))
    out = tmp_path / "out"
    job_id = jobs.submit_study(study, cluster.job_address, output=str(out), python=sys.executable)
    status, log = follow(job_id, cluster.job_address)
    assert status == "SUCCEEDED", log[-4000:] + cluster.logs()
    trials = check_outputs(study, out)
    assert set(trials["node"]) == nodes, (set(trials["node"]), nodes)
    info = json.loads((out / "run_info.json").read_text())
    assert info["hardware"]["ray_nodes"] == 2


# ------------------------------------------------------------------ the user's own package, shipped
#: The package of examples/tabular (its model and data), imported by the study's import paths.
TABULAR_PKG = "tabular_gnp"


def tabular_copy(dest: Path, import_log: Path) -> Path:
    """examples/tabular (study.yaml and its package) copied into ``dest``, shrunk to the least that runs
    every stage: 1 epoch, 1 seed, one value per stage (3 trials). The copied package's ``__init__.py``
    also appends ``<pid> <its own __file__>`` to ``import_log`` at each import, so the test sees where
    every process took the package from. Returns the copied study file."""
    shutil.copytree(ROOT / "examples" / "tabular", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    study = dest / "study.yaml"
    raw = yaml.safe_load(study.read_text())
    raw["training"]["epochs"] = 1
    raw["stages"] = {"standard": {"space": {"lr": [0.05]}}, "sam": {"r": [0.05]},
                     "gnp": {"alpha": [0.5], "figure3_alpha": [0.5]}}
    raw["seeds"] = [0]
    raw["checkpoint_every"] = raw["report_every"] = 1
    raw["max_failures"] = 0
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    init = dest / TABULAR_PKG / "__init__.py"
    init.write_text(init.read_text() + "\nimport os as _os\n\nwith open(" + repr(str(import_log)) + ", 'a') as _f:\n"
                    "    _f.write(f'{_os.getpid()} {__file__}\\n')\n")
    return study


def forget_package() -> None:
    """Drop the copied package from this process's modules (``check_outputs`` loads the study here, which
    imports it from the test's temporary copy; a later test's copy would otherwise find it in
    ``sys.modules``)."""
    for mod in [m for m in sys.modules if m == TABULAR_PKG or m.startswith(TABULAR_PKG + ".")]:
        del sys.modules[mod]


def imports_by_pid(import_log: Path, skip: set[int]) -> dict[int, set[str]]:
    """``{pid: {package __init__.py paths}}`` from :func:`tabular_copy`'s log, without the pids in ``skip``."""
    out: dict[int, set[str]] = {}
    for line in import_log.read_text().splitlines() if import_log.is_file() else []:
        pid, path = line.split(" ", 1)
        if int(pid) not in skip:
            out.setdefault(int(pid), set()).add(path)
    return out


def assert_not_importable_on_nodes(cluster: Cluster, copy: Path) -> None:
    """The package is importable neither from the nodes' cwd, nor PYTHONPATH, nor site-packages: the
    nodes' own environment (cwd and env) does not find it."""
    pythonpath = [p for p in ENV.get("PYTHONPATH", "").split(os.pathsep) if p]
    assert not any(Path(p).resolve().is_relative_to(ROOT / "examples") for p in pythonpath), pythonpath
    assert not Path(cluster.cwd).resolve().is_relative_to(ROOT), cluster.cwd
    probe = subprocess.run([sys.executable, "-c", f"import importlib.util; print(importlib.util.find_spec({TABULAR_PKG!r}))"],
                           cwd=cluster.cwd, env=ENV, capture_output=True, text=True, timeout=60)
    assert (probe.returncode, probe.stdout.strip()) == (0, "None"), probe.stdout + probe.stderr
    assert not Path(copy).resolve().is_relative_to(ROOT)


def assert_shipped(imports: dict[int, set[str]], cluster: Cluster, copy: Path, at_least: int) -> None:
    """Every process in ``imports`` took the package from what Ray unpacked from a runtime environment's
    ``py_modules`` under the cluster's temp dir, none from the copied folder."""
    assert len(imports) >= at_least, imports
    for pid, paths in imports.items():
        for p in paths:
            assert not Path(p).resolve().is_relative_to(copy.resolve()), (pid, p)
            assert Path(p).resolve().is_relative_to(Path(cluster.temp_dir).resolve()) and "py_modules" in p, (pid, p)


def submit_and_follow(args: list[str], cwd: Path, timeout_s: float = JOB_TIMEOUT_S) -> tuple[int, str, str, int]:
    """``python -m gnp_study submit ARGS --follow`` in ``cwd``, waited for at most ``timeout_s`` (then the
    job is stopped, the process group killed and the test fails). Returns (exit status, job id, its stdout
    and stderr, the process id)."""
    out, err = cwd / "submit.out", cwd / "submit.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "gnp_study", "submit", *args, "--follow"], cwd=cwd, env=ENV,
                                stdout=o, stderr=e, start_new_session=True)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        lines = out.read_text().splitlines()
        address = args[args.index("--address") + 1]
        if lines:
            jobs.stop_job(lines[0].strip(), address)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        pytest.fail(f"gnp-study submit --follow did not end within {timeout_s}s:\n{out.read_text()[-3000:]}"
                    f"\n{err.read_text()[-2000:]}")
    text = out.read_text()
    job_id = text.splitlines()[0].strip() if text else ""
    return proc.returncode, job_id, text + err.read_text(), proc.pid


def test_submit_ships_the_users_own_package(cluster, tmp_path):
    """examples/tabular (its own nn.Module and Dataset in a package outside gnp_study/), copied outside
    the repository, submitted with `gnp-study submit --follow`: the job succeeds, and every process of the
    job (driver and trials) imported the package from the job's runtime environment (py_modules)."""
    copy, log = tmp_path / "user" / "tabular", tmp_path / "imports.log"
    study = tabular_copy(copy, log)
    assert_not_importable_on_nodes(cluster, copy)
    out = tmp_path / "out"
    t0 = time.monotonic()
    rc, job_id, text, pid = submit_and_follow([str(study), "--address", cluster.job_address, "--output", str(out),
                                               "--python", sys.executable], cwd=tmp_path)
    took = time.monotonic() - t0
    assert job_id.startswith("gnp-study-study-"), text[-3000:]
    assert rc == 0, text[-4000:] + cluster.logs()
    assert jobs.job_status(job_id, cluster.job_address) == "SUCCEEDED"
    imports = imports_by_pid(log, skip={pid, os.getpid()})  # the submitter imports it from the copy
    assert_shipped(imports, cluster, copy, at_least=2)  # the job's driver and at least one trial worker
    try:
        trials = check_outputs(study, out)
        assert len(trials) == 3 and set(trials["stage"]) == {"standard", "sam", "gnp"}
        assert (out / "results.md").read_text().strip()
    finally:
        forget_package()
    print(f"submit --follow of the shrunk tabular example: {took:.0f} s")


def test_run_against_the_cluster_ships_the_users_own_package(cluster, tmp_path):
    """`gnp-study run greedy --address <head>` from a driver outside the cluster's nodes' folders: the
    driver imports the package from the study's folder, and the trial workers import the copy Ray ships
    (``connect(address, py_modules=ship_dirs(...))``), not the driver's folder."""
    copy, log = tmp_path / "user" / "tabular", tmp_path / "imports.log"
    study = tabular_copy(copy, log)
    assert_not_importable_on_nodes(cluster, copy)
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gnp_study", "run", "greedy", str(study), "--output", str(out),
                             "--address", cluster.gcs_address], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate(timeout=30)
        pytest.fail(f"gnp-study run did not end within {JOB_TIMEOUT_S}s:\n{text[-3000:]}")
    took = time.monotonic() - t0
    assert proc.returncode == 0, text[-4000:] + cluster.logs()
    imports = imports_by_pid(log, skip={os.getpid()})
    driver = imports.pop(proc.pid, set())
    assert driver == {str(copy / TABULAR_PKG / "__init__.py")}, (driver, imports)
    print(f"run greedy --address of the shrunk tabular example: {took:.0f} s, {len(imports)} trial workers")
    assert_shipped(imports, cluster, copy, at_least=1)
    try:
        trials = check_outputs(study, out)
        assert len(trials) == 3 and set(trials["stage"]) == {"standard", "sam", "gnp"}
    finally:
        forget_package()
