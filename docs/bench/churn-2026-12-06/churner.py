"""Join and leave at once, over and over: a worker whose data have the wrong width ends each session at CONFIG.

usage: python churner.py HOST PORT SECONDS (the shared secret in the file "secret"); stops on SIGTERM.
"""

import asyncio
import signal
import sys
import time

import numpy as np

import aiodq
from aiodq.config import ConnectionConfig

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
secret = open("secret", "rb").read().strip()


async def main() -> None:
    end = time.monotonic() + seconds
    sessions = refused = 0
    features, labels = np.ones((4, 3)), np.array([1.0, -1.0, 1.0, -1.0])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while time.monotonic() < end and not stop.is_set():
        try:
            await aiodq.run_worker(host, port, features, labels, connection_config=ConnectionConfig(secret=secret))
            sessions += 1
        except OSError:
            refused += 1
    print(f"churner: {sessions} run_worker returns, {refused} OSErrors")


asyncio.run(main())
