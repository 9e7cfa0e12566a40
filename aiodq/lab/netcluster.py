"""Inside a :class:`~aiodq.lab.netlab.NetLab`: throughput, round trips and a real cluster.

:func:`run_cluster` runs an ``aiodq master`` in host 0 and ``aiodq worker``
processes in the other hosts; :func:`measure_throughput` and
:func:`measure_round_trip` measure what the lab's links deliver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..launch.local import resolve_worker_nice
from ..launch.results import load_records
from ..protocol.accounting import ModelRecord
from ..protocol.algorithms import TrainConfig
from .netlab import MASTER_PORT, Link, NetLab, NetLabError, _run

__all__ = ["measure_round_trip", "measure_throughput", "run_cluster"]

logger = logging.getLogger(__name__)


# -- measurements --------------------------------------------------------------------

#: Receiver of measure_throughput: prints its port, then payload bytes and first-to-last-byte seconds.
_RECEIVER = """
import socket, sys, time
server = socket.create_server((sys.argv[1], 0))
server.settimeout(float(sys.argv[2]))
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
connection.settimeout(float(sys.argv[2]))
buffer = bytearray(1 << 18)
total, first, last = 0, None, None
while count := connection.recv_into(buffer):
    last = time.perf_counter()
    first = last if first is None else first
    total += count
print(total, (last - first) if first is not None else 0.0, flush=True)
"""

#: Sender of measure_throughput: sends as fast as TCP lets it for argv[3] seconds.
_SENDER = """
import socket, sys, time
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
block = bytes(1 << 17)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    connection.sendall(block)
connection.close()
"""

#: Echo server of measure_round_trip.
_ECHO = """
import socket, sys
server = socket.create_server((sys.argv[1], 0))
server.settimeout(float(sys.argv[2]))
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
connection.settimeout(float(sys.argv[2]))
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := connection.recv(64):
    connection.sendall(data)
"""

#: Client of measure_round_trip: prints the connect time and the fastest of argv[3] echoes.
_PINGER = """
import socket, sys, time
start = time.perf_counter()
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
connected = time.perf_counter() - start
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
echoes = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    connection.sendall(b"x")
    if connection.recv(64) != b"x":
        raise SystemExit("bad echo")
    echoes.append(time.perf_counter() - start)
print(connected, min(echoes), flush=True)
"""


def _exchange(
    lab: NetLab, server: tuple[int, str], client: tuple[int, str], args: list[str], timeout: float
) -> tuple[str, str]:
    """Run a server script in one host and a client script in another; return both outputs.

    The server gets ``[its address, timeout]`` and must print its port on its
    first line; the client gets ``[server address, port, *args]``.

    Returns:
        ``(server_output, client_output)``, the server's without the port line.
    """
    (server_host, server_script), (client_host, client_script) = server, client
    address = lab.address(server_host)
    argv = lab.exec_args(server_host, [sys.executable, "-c", server_script, address, str(timeout)])
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            if process.stdout is None:  # pragma: no cover - stdout=PIPE always gives one
                raise NetLabError("no pipe from the measurement server")
            ready, _, _ = select.select([process.stdout], [], [], timeout)
            port = process.stdout.readline().strip() if ready else ""
            if not port.isdigit():
                raise NetLabError(f"measurement server in host {server_host} did not start: {port!r}")
            client_argv = [sys.executable, "-c", client_script, address, port, *args]
            client_result = _run(lab.exec_args(client_host, client_argv), timeout=timeout)
            if client_result.returncode != 0:
                raise NetLabError(f"measurement client in host {client_host}: {client_result.stderr.strip()}")
            server_output, server_errors = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise NetLabError(f"measurement server in host {server_host}: {server_errors.strip()}")
        except subprocess.TimeoutExpired as exc:
            raise NetLabError(f"measurement between hosts {client_host} and {server_host} timed out") from exc
        finally:
            if process.poll() is None:
                process.kill()
    return server_output, client_result.stdout


def measure_throughput(lab: NetLab, src: int, dst: int, seconds: float = 1.0) -> float:
    """Send a TCP bulk transfer from host ``src`` to host ``dst`` for ``seconds``; return Mbit/s.

    The figure is TCP payload (goodput) over the receiver's first-to-last byte
    time, so on a shaped link it is about 96% of the rate: the rest is
    TCP/IP and Ethernet headers.

    Args:
        lab: The lab.
        src: Sending host.
        dst: Receiving host.
        seconds: How long the sender sends.

    Returns:
        The measured rate in Mbit/s (10**6 bits per second).

    Raises:
        ValueError: if ``seconds`` is not positive or ``src == dst``.
        NetLabError: if the transfer fails.
    """
    if not seconds > 0 or src == dst:
        raise ValueError("need seconds > 0 and two different hosts")
    lab.address(src)  # raises IndexError for a host outside the lab
    timeout = 30.0 + 2 * seconds
    received, _ = _exchange(lab, (dst, _RECEIVER), (src, _SENDER), [repr(seconds)], timeout)
    total_text, elapsed_text = received.split()
    total, elapsed = int(total_text), float(elapsed_text)
    if total == 0 or elapsed <= 0:
        raise NetLabError(f"no data arrived from host {src} at host {dst}")
    return total * 8 / elapsed / 1e6


def measure_round_trip(lab: NetLab, src: int, dst: int, count: int = 5) -> tuple[float, float]:
    """Time a TCP connect and one-byte echoes from host ``src`` to host ``dst``.

    On an idle lab both are one round trip: at least ``4 * link.delay_ms``
    between two hosts (two links, each delayed both ways).

    Args:
        lab: The lab.
        src: The connecting host.
        dst: The echoing host.
        count: Number of echoes; the fastest is reported.

    Returns:
        ``(connect_seconds, echo_seconds)``: the time ``connect()`` took and
        the fastest echo round trip.

    Raises:
        ValueError: if ``count`` < 1 or ``src == dst``.
        NetLabError: if the exchange fails.
    """
    if count < 1 or src == dst:
        raise ValueError("need count >= 1 and two different hosts")
    lab.address(src)  # raises IndexError for a host outside the lab
    _, timed = _exchange(lab, (dst, _ECHO), (src, _PINGER), [str(count)], 60.0)
    connect_text, echo_text = timed.split()
    return float(connect_text), float(echo_text)


# -- clusters -------------------------------------------------------------------------


def _training_flags(config: TrainConfig) -> list[str]:
    """``aiodq master`` options that reproduce ``config``.

    ``aiodq master`` takes every TrainConfig field declared with :func:`aiodq.config.option` as an
    option (aiodq.cli.options): each value as ``--field-name VALUE``, and a boolean, where it differs
    from the default, as the switch ``--field-name`` or ``--no-field-name``.

    Raises:
        ValueError: if ``config`` differs from the default in a field without an option.
    """
    defaults = TrainConfig()
    flags: list[str] = []
    for field in dataclasses.fields(TrainConfig):
        value, default = getattr(config, field.name), getattr(defaults, field.name)
        name = field.name.replace("_", "-")
        if "help" not in field.metadata or not field.metadata.get("cli", True):
            if value != default:
                raise ValueError(f"aiodq master has no option for {field.name}={value!r}")
            continue
        if isinstance(default, bool):
            if value != default:
                flags.append(f"--{'' if value else 'no-'}{name}")
            continue
        # repr() of a float reads back exactly; step is already resolved from 0 to its default.
        flags += [f"--{name}", repr(value) if isinstance(value, float) else str(value)]
    return flags


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill a process started in its own session, with anything it started, and reap it."""
    if process.poll() is None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        process.wait(timeout=10)


def run_cluster(
    config: TrainConfig,
    *,
    workers: int,
    link: Link,
    data: str | None,
    out: Path,
    record_every: int = 0,
    timeout: float = 1800.0,
    python: str = sys.executable,
    worker_nice: int | None = None,
) -> tuple[dict[str, Any], list[ModelRecord]]:
    """Train with ``aiodq master`` and ``workers`` ``aiodq worker`` processes on a shaped :class:`NetLab`.

    The master runs in host 0 on port 47000, each worker I in host I+1 with
    shard I-1 of M.  They share a fresh random secret (``AIODQ_SECRET``).
    The master writes ``out/result.json`` (and, with ``record_every``,
    ``out/records.npz``); each process's output goes to ``out/master.log``
    and ``out/worker-I.log``.  Times in the results are the master's own.

    Args:
        config: The training run; only fields with an ``aiodq master`` option may differ from the default.
        workers: Number of workers M.
        link: Shaping of every host's link (the master's link carries all M workers' traffic).
        data: Dataset path for master and workers; None for the bundled a9a.
        out: Output folder (created).
        record_every: Keep a model copy every N applied updates (0: none).
        timeout: Seconds for the whole run.
        python: Interpreter that runs ``-m aiodq``.
        worker_nice: The workers' ``--nice``: the lab's hosts share this machine's cores, and
            the master, which every update passes through, should not wait for one behind a
            worker (as :func:`aiodq.run_local` does; 0 to 19; None: its default, 4).  Each
            worker leads a session of its own here, so it lowers its session's autogroup too
            (:func:`aiodq.launch.local.lower_priority`).  ``summary["worker_nice"]`` records it.

    Returns:
        ``(summary, records)``: the master's summary with ``summary["network"]``
        added, and the model records (empty without ``record_every``).

    Raises:
        ValueError: if an argument is out of range or ``config`` cannot be passed on the command line.
        NetLabError: if the lab cannot be built, a process fails or the run times out;
            every process is killed first and the message ends with the failing process's log.
    """
    if workers < 1 or record_every < 0 or not timeout > 0:
        raise ValueError("need workers >= 1, record_every >= 0 and timeout > 0")
    nice = resolve_worker_nice(worker_nice)
    flags = _training_flags(config)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_flags = ["--data", str(Path(data).resolve())] if data is not None else []
    records_path = out / "records.npz"
    env = dict(os.environ, AIODQ_SECRET=secrets.token_hex(32), PYTHONUNBUFFERED="1")
    deadline = time.monotonic() + timeout
    processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(lab: NetLab, name: str, host: int, argv: list[str]) -> None:
        log = out / f"{name}.log"
        with log.open("wb") as stream:
            process = subprocess.Popen(
                lab.exec_args(host, [python, "-m", "aiodq", *argv]),
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        processes.append((name, process, log))

    def failure(name: str, log: Path, what: str) -> NetLabError:
        return NetLabError(f"{name} {what}; last lines of {log}:\n{_tail(log)}")

    with NetLab(workers + 1, link) as lab:
        address = f"{lab.address(0)}:{MASTER_PORT}"
        master = ["master", "--listen", address, "--workers", str(workers), *flags, *data_flags]
        master += ["--out", str(out)]
        if record_every:
            master += ["--record-every", str(record_every), "--records", str(records_path)]
        try:
            start(lab, "master", 0, master)
            _, master_process, master_log = processes[0]
            # Workers retry for 30 s anyway; waiting for the line makes a master failure clear at once.
            while "aiodq master listening on" not in _tail(master_log, 1000):
                if master_process.poll() is not None:
                    raise failure("master", master_log, f"exited with status {master_process.returncode}")
                if time.monotonic() > deadline:
                    raise failure("master", master_log, f"did not listen within {timeout:g} s")
                time.sleep(0.05)
            for index in range(workers):
                worker = ["worker", "--connect", address, "--shard", f"{index}/{workers}", *data_flags]
                worker += ["--seed", str(config.seed), "--retry-for", "30", "--nice", str(nice)]
                start(lab, f"worker-{index}", index + 1, worker)
            while any(process.poll() is None for _, process, _ in processes):
                for name, process, log in processes:
                    if process.returncode not in (None, 0):
                        raise failure(name, log, f"exited with status {process.returncode}")
                if time.monotonic() > deadline:
                    raise failure("the run", master_log, f"did not finish within {timeout:g} s")
                time.sleep(0.1)
            for name, process, log in processes:
                if process.returncode != 0:
                    raise failure(name, log, f"exited with status {process.returncode}")
        finally:
            for _, process, _ in processes:
                _kill(process)
    try:
        summary: dict[str, Any] = json.loads((out / "result.json").read_text(encoding="utf-8"))
        records = load_records(records_path) if record_every else []
    except (OSError, ValueError, RunError) as exc:
        raise NetLabError(f"cannot read the master's results in {out}: {exc}") from exc
    summary["network"] = {
        "rate_mbit": link.rate_mbit,
        "delay_ms": link.delay_ms,
        "hosts": workers + 1,
        "topology": "star via bridge, every link shaped both ways",
    }
    summary["worker_nice"] = nice
    return summary, records
