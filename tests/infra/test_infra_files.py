"""infra/ without Docker, Kubernetes or Slurm: the files parse, and everything they name exists here
(modules, `labse` commands, presets, settings the code reads, the lock the images install)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CODE = [p for d in ("storage", "flows", "labse_core", "beam_jobs") for p in (ROOT / d).rglob("*.py")]


def _env_read_by_code(name: str) -> bool:
    """A setting is real if our code or the library that owns it reads it."""
    owned = ("PREFECT_", "MLFLOW_", "AWS_", "NCCL_", "OMP_", "HF_", "TRANSFORMERS_", "POSTGRES_", "MINIO_")
    return name.startswith(owned) or any(name in p.read_text() for p in CODE)


def _labse_commands() -> set[str]:
    import typer.main

    from flows.cli import app

    group = typer.main.get_command(app)
    return set(group.commands)


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _check_torchrun(args: list[str]) -> None:
    from labse_core.finetune.config import PRESETS

    assert "-m" in args
    module = args[args.index("-m") + 1]
    assert _module_exists(module), module
    assert any(a.startswith("--rdzv_backend=c10d") for a in args)
    assert any(a.startswith("--rdzv_endpoint=") for a in args)
    assert any(a.startswith("--nnodes=") for a in args) and any(a.startswith("--nproc_per_node=") for a in args)
    preset = args[args.index("--preset") + 1]
    assert preset in PRESETS or preset.startswith("$"), preset


def test_compose_parses_and_points_at_real_entry_points():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"prefect-server", "prefect-db", "prefect-worker", "mlflow", "mlflow-db", "minio"} <= set(services)
    for name in ("prefect-server", "prefect-db", "mlflow", "mlflow-db", "minio"):
        assert "healthcheck" in services[name], name
    for svc in services.values():  # every dependency exists, and waits for health where it has one
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services
            assert cond["condition"] != "service_healthy" or "healthcheck" in services[dep]
    commands = _labse_commands()
    worker = services["prefect-worker"]
    assert worker["command"][0] in commands  # the image's entry point is `labse`
    for svc in services.values():
        for key in (svc.get("environment") or {}):
            assert _env_read_by_code(key), key
    # every ${VAR} the compose file uses is in .env.example, and no secret is written into the file
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    used = set(re.findall(r"\$\{(\w+)\}", (INFRA / "docker-compose.yml").read_text()))
    assert used <= set(example), used - set(example)
    assert not re.search(r"PASSWORD:\s*[^$\s]", (INFRA / "docker-compose.yml").read_text())
    # the client settings in .env.example are the ones labse reads
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "LABSE_LAKE_URL", "AWS_ENDPOINT_URL"):
        assert key in example and _env_read_by_code(key)
    from storage.remote import LAKE_URL_ENV

    assert LAKE_URL_ENV == "LABSE_LAKE_URL"


def test_dockerfiles_install_from_the_lock_and_name_real_paths():
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (INFRA / "docker" / name).read_text()
        assert "COPY constraints.txt" in text and "-c constraints.txt" in text, name
        for src in re.findall(r"^COPY (\S+) \S+$", text, flags=re.M):
            assert (ROOT / src).exists(), (name, src)
        extras = re.findall(r"-e '\.\[([\w,-]+)\]'", text)
        import tomllib

        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        assert extras and all(e in declared for e in extras[0].split(",")), (name, extras)
    cuda = (INFRA / "docker" / "Dockerfile.cuda").read_text()
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", cuda, flags=re.M).group(1))
    assert _module_exists(cmd[cmd.index("-m") + 1])


def test_kubernetes_job_runs_multi_node_torchrun():
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "finetune-job.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Service", "Job"}
    job = kinds["Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == kinds["Service"]["metadata"]["name"] and kinds["Service"]["spec"]["clusterIP"] == "None"
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["LABSE_NNODES"]) == spec["completions"]
    assert int(env["GPUS_PER_NODE"]) == container["resources"]["limits"]["nvidia.com/gpu"]
    assert container["command"] == ["torchrun"]
    args = container["args"]
    _check_torchrun(args)
    endpoint = next(a for a in args if a.startswith("--rdzv_endpoint=")).split("=", 1)[1]
    assert endpoint.startswith(f"{job['metadata']['name']}-0.{kinds['Service']['metadata']['name']}:")
    for key in env:
        assert _env_read_by_code(key) or key in ("LABSE_NNODES", "GPUS_PER_NODE"), key
    # secrets come from a Secret, never a literal value
    assert all("valueFrom" in e for e in container["env"] if "SECRET" in e["name"] or "KEY" in e["name"])


def test_slurm_script_is_valid_bash_and_launches_torchrun():
    script = INFRA / "slurm" / "finetune.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert re.search(r"^#SBATCH --nodes=\d+", text, flags=re.M)
    launch = text[text.index("srun"):].replace("\\\n", " ")
    args = shlex.split(launch.split("\n")[0])
    assert "torch.distributed.run" in args
    _check_torchrun(args)


@pytest.mark.parametrize("command", ["serve", "lake", "server", "prepare", "vocab", "shard"])
def test_commands_named_in_infra_exist(command):
    assert command in _labse_commands()


def test_kubernetes_torchrun_command_launches_two_nodes_here(tmp_path):
    """The Job's torchrun command, as a pod would run it (``$(VAR)`` from the pod's env), on two local
    "nodes" with one process each: c10d rendezvous at pod 0's address, then the trainer module starts
    in every rank (``--help``: it parses the preset and ``--set`` and stops before reading data)."""
    import os
    import socket
    import sys

    docs = {d["kind"]: d for d in yaml.safe_load_all((INFRA / "k8s" / "finetune-job.yaml").read_text())}
    container = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {e["name"]: e.get("value", "") for e in container["env"]} | {"LABSE_NNODES": "2", "GPUS_PER_NODE": "1"}
    procs = []
    for rank in (0, 1):
        pod_env = env | {"JOB_COMPLETION_INDEX": str(rank)}
        args = [re.sub(r"\$\((\w+)\)", lambda m, e=pod_env: e[m.group(1)], a) for a in container["args"]]
        args = [f"--rdzv_endpoint=127.0.0.1:{port}" if a.startswith("--rdzv_endpoint=") else a for a in args]
        out = tmp_path / f"rank{rank}.log"
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *args, "--help"],
            env=os.environ | {"OMP_NUM_THREADS": "1", "LABSE_HOME": str(tmp_path / "home")},
            stdout=out.open("w"), stderr=subprocess.STDOUT, cwd=ROOT), out))
    for proc, out in procs:
        assert proc.wait(timeout=240) == 0, out.read_text()[-2000:]
        assert "--set" in out.read_text() and "--preset" in out.read_text()
