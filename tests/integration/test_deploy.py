"""examples/deploy: the SLURM script run for real with stand-in srun/scontrol; the manifest's wiring (#12)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .cluster import A9A_HEAD, LEAST_SQUARES, ROOT, free_port, poll_until

DEPLOY = ROOT / "examples" / "deploy"

#: srun as this test needs it: ``--ntasks=N`` copies of the command, task i with SLURM_PROCID=i.
FAKE_SRUN = """#!/bin/bash
tasks=1
while [[ "$1" == --* ]]; do
  case "$1" in --ntasks=*) tasks="${1#--ntasks=}";; esac
  shift
done
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM  # (srun passes a signal on to its tasks)
for ((i = 0; i < tasks; i++)); do
  SLURM_PROCID=$i SLURM_NTASKS=$tasks "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""

FAKE_SCONTROL = """#!/bin/bash
printf 'node-a\\nnode-b\\nnode-c\\n'
"""


def _tool(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _sbatch(tmp_path: Path, port: int, **more: str) -> subprocess.CompletedProcess[str]:
    """The script run locally with stand-in srun and scontrol: 1 master + 2 workers on 127.0.0.1:``port``."""
    return subprocess.run(
        ["bash", str(DEPLOY / "aiodq.sbatch")],
        env=_job_environment(tmp_path, port, **more),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _job_environment(tmp_path: Path, port: int, **more: str) -> dict[str, str]:
    """What Slurm (and the user) give the script, with the stand-ins first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _tool(bin_dir, "srun", FAKE_SRUN)
    _tool(bin_dir, "scontrol", FAKE_SCONTROL)
    secret = tmp_path / "secret"
    secret.write_text("a secret of more than sixteen bytes\n")
    secret.chmod(0o600)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        SLURM_JOB_NUM_NODES="3",
        SLURM_JOB_NODELIST="node-[a-c]",
        SLURM_JOB_ID="42",
        AIODQ_MASTER_ADDR="127.0.0.1",
        AIODQ_MASTER_PORT=str(port),
        LISTEN="127.0.0.1",
        SECRET=str(secret),
        OUT=str(tmp_path / "out"),
        TRAIN="--epochs 2",
    )
    env.update(more)
    env.pop("AIODQ_SECRET", None)
    return env


def test_the_sbatch_script_trains_with_workers_found_from_the_environment(tmp_path: Path) -> None:
    """The script's srun lines, run locally: 1 master + 2 workers whose address and shard come from env."""
    result = _sbatch(tmp_path, free_port())
    out = tmp_path / "out"
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "result.json").read_text())
    assert summary["workers"] == 2
    assert len(summary["trace"]) == 3
    assert summary["trace"][-1]["samples"] == 32_561  # shards 0/2 and 1/2, from SLURM_PROCID/SLURM_NTASKS
    assert "AUTH_FAILED" not in (out / "aiodq.log").read_text()


def test_the_sbatch_script_gives_the_workers_the_seed_the_model_and_a_data_path_with_a_space(
    tmp_path: Path,
) -> None:
    """A deploy audit: a --seed or one's own --model in TRAIN reached the master only, and every worker was
    refused (INVALID_CONFIG, exit 2); a DATA path with a space was split into two arguments."""
    shared = tmp_path / "shared data"
    shared.mkdir()
    data = shared / "a9a head"
    data.write_bytes(A9A_HEAD.read_bytes())
    (tmp_path / "my_models.py").write_text(LEAST_SQUARES)
    result = _sbatch(
        tmp_path, free_port(), SEED="7", MODEL="my_models:LeastSquares", DATA=str(data),
        TRAIN="--epochs 1 --step 0.05", PYTHONPATH=str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (summary["config"]["seed"], summary["config"]["model"]) == (7, "my_models:LeastSquares")
    assert summary["trace"][-1]["samples"] == 300


def test_a_job_stopped_and_run_again_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """A deploy audit: a requeued job trained from epoch 0.  The master checkpoints into OUT, a job run
    again finds the checkpoint and resumes; SIGTERM to the batch script alone (sbatch --signal=B:TERM)
    is passed on to both steps, and the run as it stood is written."""
    port = free_port()
    np.save(tmp_path / "zeros.npy", np.zeros(123))  # a warm start: the new run's, not the resumed one's
    job = {"TRAIN": "--epochs 25", "RETRY_FOR": "30", "START_FROM": str(tmp_path / "zeros.npy")}
    env = _job_environment(tmp_path, port, **job)
    out, log = tmp_path / "out", tmp_path / "out" / "aiodq.log"
    first = subprocess.Popen(
        ["bash", str(DEPLOY / "aiodq.sbatch")], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        poll_until(
            lambda: (log.exists() and " epoch 2: " in log.read_text()) or first.poll() is not None,
            120,
            "epoch 2",
        )
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    stood = json.loads((out / "result.json").read_text())
    assert stood["failure"] == "stopped by SIGTERM", stood["failure"]
    assert "start_from" in stood["provenance"]  # the new run started from START_FROM
    reached = stood["trace"][-1]["epoch"]
    assert 2 <= reached < 25 and (out / "checkpoint.npz").exists()
    again = _sbatch(tmp_path, port, **job)  # (a review: --start-from with --resume was refused, exit 2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(rf"resumed from {re.escape(str(out / 'checkpoint.npz'))} at epoch \d+", log.read_text())
    done = json.loads((out / "result.json").read_text())
    assert done["failure"] is None and done["trace"][-1]["epoch"] == 25
    assert [record["epoch"] for record in done["trace"]] == list(range(26))  # on from where it stood


def test_the_sbatch_script_fails_when_its_steps_do(tmp_path: Path) -> None:
    """A deployment trial: the script ended with a bare `wait`, status 0, after its master could not listen
    (the port taken) and its workers had retried in vain: Slurm would have said COMPLETED."""
    with socket.socket() as taken:  # listening, never answering: the master cannot bind, the workers time out
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _sbatch(tmp_path, taken.getsockname()[1], RETRY_FOR="1")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "aiodq master: cannot listen on 127.0.0.1:" in result.stderr, result.stderr[-3000:]
    assert (
        "the master step ended with status 1: stopping the workers" in result.stderr
    )  # (not after their retries)
    assert not (tmp_path / "out" / "result.json").exists()


def test_a_failed_worker_step_stops_the_sbatch_scripts_master(tmp_path: Path) -> None:
    """Workers that all fail (here at once: a negative RETRY_FOR is a usage error) stop the master, which
    would otherwise wait out its --join-timeout (900 s), and the job ends with their status, not the
    master's 143 from being stopped (a review)."""
    result = _sbatch(tmp_path, free_port(), RETRY_FOR="-1")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "the worker step ended with status 2: stopping the master" in result.stderr, result.stderr[-3000:]
    assert "aiodq master: stopped by SIGTERM" in result.stderr, result.stderr[-3000:]


def _manifest() -> dict[str, dict[str, Any]]:
    """examples/deploy/kubernetes.yaml's objects by kind and name."""
    with (DEPLOY / "kubernetes.yaml").open() as text:
        return {f"{o['kind']}/{o['metadata']['name']}": o for o in yaml.safe_load_all(text)}


def test_the_kubernetes_manifest_wires_what_aiodq_worker_reads() -> None:
    """Workers: AIODQ_MASTER_ADDR is the master's Service, the port matches, RANK is the completion index,
    the seed is the master's; results and checkpoint on a claim; a worker that cannot train the run (exit
    2) is not started again (a deploy audit: restartPolicy OnFailure restarted it up to backoffLimit)."""
    objects = _manifest()
    (service,) = [name.split("/")[1] for name in objects if name.startswith("Service/")]
    master_job, workers_job = objects["Job/aiodq-master"], objects["Job/aiodq-workers"]
    master_pod, worker_pod = master_job["spec"]["template"]["spec"], workers_job["spec"]["template"]["spec"]
    master_command = shlex.split(
        master_pod["containers"][0]["command"][-1].replace("\\\n", " ").split("exec ")[1]
    )
    worker = worker_pod["containers"][0]
    env = {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in worker["env"]}

    def option(argv: list[str], name: str) -> str:
        return argv[argv.index(name) + 1]

    assert env["AIODQ_MASTER_ADDR"] == service
    assert option(master_command, "--listen") == f"0.0.0.0:{env['AIODQ_MASTER_PORT']}"
    assert objects[f"Service/{service}"]["spec"]["ports"][0]["targetPort"] == int(env["AIODQ_MASTER_PORT"])
    workers = option(master_command, "--workers")
    assert env["AIODQ_WORLD_SIZE"] == workers
    assert workers_job["spec"]["completions"] == workers_job["spec"]["parallelism"] == int(workers)
    assert workers_job["spec"]["completionMode"] == "Indexed"
    assert env["AIODQ_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert option(master_command, "--seed") == option(worker["command"], "--seed")
    assert not master_pod["enableServiceLinks"] and not worker_pod["enableServiceLinks"]
    out = {v["name"]: v for v in master_pod["volumes"]}["out"]
    assert out["persistentVolumeClaim"]["claimName"] in [n.split("/")[1] for n in objects if "Claim/" in n]
    assert option(master_command, "--checkpoint").startswith(option(master_command, "--out") + "/")
    assert worker_pod["restartPolicy"] == "Never"  # (podFailurePolicy needs it)
    assert env["OMP_NUM_THREADS"] == "1" and worker["resources"]["requests"]["cpu"] == "1"  # one core each
    refused = workers_job["spec"]["podFailurePolicy"]["rules"][0]
    assert refused["action"] == "FailJob" and refused["onExitCodes"]["values"] == [2]


def test_the_kubernetes_containers_commands_train_and_a_master_started_again_resumes(tmp_path: Path) -> None:
    """The manifest's commands run as local processes (its paths, address and epochs replaced, the fixture's
    data added to both): the master and 4 workers train; the master's command run again finds the
    checkpoint on its claim and resumes (a finished run: its results again, no worker needed)."""
    objects = _manifest()
    master_pod = objects["Job/aiodq-master"]["spec"]["template"]["spec"]
    worker = objects["Job/aiodq-workers"]["spec"]["template"]["spec"]["containers"][0]
    port, secret, out = free_port(), tmp_path / "secret", tmp_path / "out"
    secret.write_text("a secret of more than sixteen bytes\n")
    secret.chmod(0o600)
    shell, script = master_pod["containers"][0]["command"][:2], master_pod["containers"][0]["command"][2]
    for old, new in (
        ("0.0.0.0:29500", f"127.0.0.1:{port}"), ("/secret/secret", str(secret)), ("/out", str(out)),
        ("--epochs 10", f"--epochs 2 --data {A9A_HEAD}"),
    ):  # fmt: skip
        assert old in script
        script = script.replace(old, new)
    env = {k: v for k, v in os.environ.items() if k != "AIODQ_SECRET"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    worker_argv = [secret.as_posix() if arg == "/secret/secret" else arg for arg in worker["command"]]
    master = subprocess.Popen([*shell, script], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    rendezvous = {"AIODQ_MASTER_ADDR": "127.0.0.1", "AIODQ_MASTER_PORT": str(port), "AIODQ_WORLD_SIZE": "4"}
    workers = [
        subprocess.Popen(
            [*worker_argv, "--data", str(A9A_HEAD)],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
            env=env | rendezvous | {"AIODQ_RANK": str(rank)},
        )
        for rank in range(4)
    ]
    try:
        _, said = master.communicate(timeout=120)
        statuses = [w.communicate(timeout=120) and w.returncode for w in workers]
    finally:
        for process in (master, *workers):
            process.kill()
    assert (master.returncode, statuses) == (0, [0, 0, 0, 0]), said[-3000:]
    trained = json.loads((out / "result.json").read_text())
    assert trained["failure"] is None and trained["trace"][-1]["samples"] == 300
    again = subprocess.run(
        [*shell, script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {out / 'checkpoint.npz'} at epoch 2" in (out / "aiodq.log").read_text()
    assert json.loads((out / "result.json").read_text())["trace"] == trained["trace"]
