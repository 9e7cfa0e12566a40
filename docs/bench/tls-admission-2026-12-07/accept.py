"""How fast an in-process Master takes a flood of plain TCP connections (max_unauthenticated 8).

2,000 connections opened from a thread, one after another; seconds from the first until
``master.accepted`` reaches 2,000 (almost all of them refused at accept).  Five runs, the median.

    python docs/bench/tls-admission-2026-12-07/accept.py
"""

import asyncio
import socket
import statistics
import time

import numpy as np

from aiodq.config import MasterConfig
from aiodq.net.master import Master
from aiodq.protocol.algorithms import TrainConfig

CONNECTIONS = 2000


async def once() -> float:
    limited = MasterConfig(max_unauthenticated=8)
    async with Master(TrainConfig(epochs=1), np.zeros(123), workers=1, master_config=limited) as master:
        host, port = master.address
        loop = asyncio.get_running_loop()

        def flood() -> list[socket.socket]:
            return [socket.create_connection((host, port)) for _ in range(CONNECTIONS)]

        began = time.perf_counter()
        peers = await loop.run_in_executor(None, flood)
        while master.accepted < CONNECTIONS:
            await asyncio.sleep(0.001)
        seconds = time.perf_counter() - began
        for peer in peers:
            peer.close()
        master.stop_training()
    return seconds


async def main() -> None:
    runs = [await once() for _ in range(5)]
    print(f"{CONNECTIONS} connections accepted: median {statistics.median(runs):.3f} s", [round(t, 3) for t in runs])


if __name__ == "__main__":
    asyncio.run(main())
