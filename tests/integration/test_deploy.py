"""examples/deploy: the SLURM script run for real with stand-in srun/scontrol; the manifest's wiring (#12)."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

from .cluster import ROOT, free_port

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
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
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
    return subprocess.run(
        ["bash", str(DEPLOY / "aiodq.sbatch")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


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


def test_the_kubernetes_manifest_wires_what_aiodq_worker_reads() -> None:
    """Workers: AIODQ_MASTER_ADDR is the master's Service, the port matches, RANK is the completion index."""
    text = (DEPLOY / "kubernetes.yaml").read_text()
    service = re.search(r"kind: Service\nmetadata:\n  name: (\S+)", text)
    assert service is not None
    assert f"- {{name: AIODQ_MASTER_ADDR, value: {service.group(1)}}}" in text
    listen_port = re.search(r'"--listen", "0\.0\.0\.0:(\d+)"', text)
    assert listen_port is not None
    assert f'- {{name: AIODQ_MASTER_PORT, value: "{listen_port.group(1)}"}}' in text
    workers = re.search(r'"--workers", "(\d+)"', text)
    assert workers is not None
    assert f'- {{name: AIODQ_WORLD_SIZE, value: "{workers.group(1)}"}}' in text
    assert f"completions: {workers.group(1)}" in text
    assert "fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']" in text
    assert "completionMode: Indexed" in text
