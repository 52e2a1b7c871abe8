"""The recipes in cluster/: each parses and names what its target requires; the cluster-launcher file
passes Ray's own schema; the SLURM script passes `bash -n` and, run with stand-ins for srun, scontrol,
ray and python, starts a head, workers that join it, the study against it, and stops what it started."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
SBATCH = CLUSTER / "slurm" / "gnp-study.sbatch"


def _docs(name: str) -> list[dict]:
    with open(CLUSTER / name) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---------------------------------------------------------------------------------------------- launcher
def test_cluster_launcher_yaml():
    (cfg,) = _docs("ray-cluster.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in cfg, key
    assert cfg["provider"]["type"]
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "a CPU head"
    gpu_types = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "at least one GPU worker type"
    assert any(v.get("min_workers", 0) >= 1 for v in gpu_types.values()), \
        "a GPU node must be up when the study checks the cluster's GPUs"
    for v in types.values():
        assert "node_config" in v
    setup = " ".join(cfg["setup_commands"])
    assert "pip install" in setup and "gnp-study" in setup
    start = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2


def test_cluster_launcher_yaml_passes_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    (cfg,) = _docs("ray-cluster.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)


# ---------------------------------------------------------------------------------------------- KubeRay
def test_kuberay_rayjob():
    docs = _docs("kuberay-rayjob.yaml")
    (job,) = [d for d in docs if d.get("kind") == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert "gnp_study run greedy" in spec["entrypoint"] and "--output" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    workers = cluster["workerGroupSpecs"]
    gpu_groups = []
    for g in workers:
        for c in g["template"]["spec"]["containers"]:
            if int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1:
                gpu_groups.append(g)
    assert gpu_groups, "a worker group with a GPU limit"
    for g in workers:
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())

    # the shared claim exists, and is mounted at the same path in the head and every worker
    (pvc,) = [d for d in docs if d.get("kind") == "PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    claim = pvc["metadata"]["name"]

    def mount_path(pod_spec):
        vol = next(v["name"] for v in pod_spec["volumes"]
                   if v.get("persistentVolumeClaim", {}).get("claimName") == claim)
        (c,) = pod_spec["containers"]
        return next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == vol)

    head_path = mount_path(head["template"]["spec"])
    assert {mount_path(g["template"]["spec"]) for g in workers} == {head_path}
    assert f"--output {head_path}/" in " ".join(spec["entrypoint"].split())


# ---------------------------------------------------------------------------------------------- SLURM
def test_sbatch_syntax_and_contents():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    sbatch_lines = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert any("--nodes" in ln for ln in sbatch_lines)
    assert any("--gpus" in ln for ln in sbatch_lines)
    assert "ray start --head" in text
    assert "--address" in text
    assert "gnp_study run greedy" in text
    assert "ray stop" not in text.replace("# ", ""), "stop Ray by process id, never `ray stop`"


def _exe(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("study_status", [0, 3])
def test_sbatch_control_flow_with_stand_ins(tmp_path, study_status):
    """Run the script with stand-ins for the cluster commands; check what it started, with which
    addresses, and that everything it started is stopped, also when the study fails."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls.log"
    _exe(bin_ / "scontrol", 'printf "nodeA\\nnodeB\\nnodeC\\n"\n')
    _exe(bin_ / "hostname", 'echo "10.1.2.3 fe80::1"\n')
    # srun: drop its own options, remember the node, exec the command (so $! is the command's pid)
    _exe(bin_ / "srun", 'while [[ "$1" == -* ]]; do if [[ "$1" == -w ]]; then export SRUN_NODE="$2"; shift; fi; '
                        'shift; done\nexec "$@"\n')
    _exe(bin_ / "ray", f'echo "$SRUN_NODE ray $* auth=$RAY_AUTH_MODE token=${{#RAY_AUTH_TOKEN}}" >> {log}\n'
                       'if [[ " $* " == *" --block "* ]]; then\n'
                       f'  trap \'echo "$SRUN_NODE stopped" >> {log}; exit 0\' TERM\n'
                       '  for _ in $(seq 600); do sleep 0.1; done\nfi\n')  # bounded if never stopped
    # python: the node wait returns once as many nodes have started as it asks for (nodes joining)
    _exe(bin_ / "fakepython", 'if [[ "$*" == *secrets* ]]; then echo 0123456789abcdef; exit 0; fi\n'
                              'if [[ "$*" == *wait_for_nodes* ]]; then\n'
                              '  want=1; [[ "$*" == *" 3" ]] && want=3\n'
                              f'  for _ in $(seq 200); do n=$(grep -c " ray start " {log} || true); '
                              '(( n >= want )) && break; sleep 0.05; done\nfi\n'
                              f'echo "python $*" >> {log}\n'
                              f'if [[ "$*" == *"run greedy"* ]]; then exit {study_status}; fi\n')
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "RAY_"))},
           "PATH": f"{bin_}:{os.environ['PATH']}", "PYTHON": str(bin_ / "fakepython"),
           "SLURM_JOB_NODELIST": "node[A-C]", "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "42",
           "SLURM_CPUS_PER_TASK": "16", "STUDY": "search_spaces/x.yaml", "VENV": str(tmp_path / "none")}
    res = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == study_status, res.stderr
    calls = log.read_text().splitlines()
    starts = [c for c in calls if " ray start " in c]
    (head,) = [c for c in starts if "--head" in c]
    assert head.startswith("nodeA ray start --head --node-ip-address=10.1.2.3 --port=6379 --num-cpus=16")
    workers = [c for c in starts if c != head]
    assert sorted(c.split()[0] for c in workers) == ["nodeB", "nodeC"]
    assert all("--address=10.1.2.3:6379" in c for c in workers)
    assert all("auth=token token=16" in c for c in starts), "one token mode and token for every node"
    run = [c for c in calls if "run greedy" in c]
    assert run == [f"python -m gnp_study run greedy search_spaces/x.yaml --output {tmp_path}/reports/42 "
                   "--address 10.1.2.3:6379"]
    waits = [c for c in calls if "wait_for_nodes" in c]
    assert len(waits) == 2 and waits[-1].endswith("10.1.2.3:6379 3"), "waits for all 3 nodes"
    assert calls.index(waits[-1]) < calls.index(run[0])
    assert max(calls.index(c) for c in starts) < calls.index(waits[-1])
    stopped = sorted(c.split()[0] for c in calls if c.endswith(" stopped"))
    assert stopped == ["nodeA", "nodeB", "nodeC"], "every Ray process it started is stopped"
    assert calls.index(run[0]) < min(calls.index(f"{n} stopped") for n in stopped)
