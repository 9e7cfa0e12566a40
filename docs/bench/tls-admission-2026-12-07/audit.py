"""A security audit's trial (2026-12-07), against `aiodq master` with TLS (the CLI: uvloop).

1,000 TCP connections from 127.0.0.1 that never send a TLS ClientHello, opened one after another;
one second later: how many the master still holds open and how many it has closed, and the master
process's open files and resident memory, before the flood and then.  Options after the script's
name go to `aiodq master` (the audit's: --max-unauthenticated 8 --connection-rate 2).

    python docs/bench/tls-admission-2026-12-07/audit.py --max-unauthenticated 8 --connection-rate 2

Needs trustme (the test extra).  Prints one JSON line.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import trustme

PEERS = 1000


def main() -> None:
    folder = tempfile.mkdtemp()
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(f"{folder}/master.pem")
    cert.private_key_pem.write_to_path(f"{folder}/master.key")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tls = ["--tls-cert", f"{folder}/master.pem", "--tls-key", f"{folder}/master.key"]
    command = [sys.executable, "-m", "aiodq", "master", "--listen", f"127.0.0.1:{port}", "--workers", "2"]
    master = subprocess.Popen(
        [*command, *tls, "--out", f"{folder}/out", *sys.argv[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def files() -> int:
        return len(os.listdir(f"/proc/{master.pid}/fd"))

    def megabytes() -> int:
        with open(f"/proc/{master.pid}/status") as status:
            return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))

    try:
        for _ in range(300):  # until it listens (a probe connection: one of the rate's burst)
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.0)
        before = files(), megabytes()
        peers = [socket.create_connection(("127.0.0.1", port)) for _ in range(PEERS)]
        time.sleep(1.0)
        peak = files(), megabytes()
        held = 0
        for peer in peers:
            peer.setblocking(False)
            try:
                held += peer.recv(1) != b""
            except BlockingIOError:
                held += 1
            except ConnectionResetError:
                pass
            peer.close()
        print(
            json.dumps(
                {
                    "options": sys.argv[1:],
                    "peers": PEERS,
                    "held": held,
                    "closed": PEERS - held,
                    "open_files": [before[0], peak[0]],
                    "rss_mb": [before[1], peak[1]],
                }
            )
        )
    finally:
        master.terminate()
        master.wait(30)


if __name__ == "__main__":
    main()
