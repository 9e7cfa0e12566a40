"""Embed aiodq in your own asyncio application.

The application below hosts a master on 127.0.0.1 (any free port), starts its
workers as coroutines in the same event loop, and keeps doing its own work (a
heartbeat ticker) while it follows training progress from the master's
coordinator: the epoch trace, the model version and the bytes on the wire.

Run it with ``python examples/custom_app.py``.  The same code works with the
workers in other processes or on other hosts (``aiodq worker --connect``).
"""

from __future__ import annotations

import asyncio

import numpy as np

from aiodq import Master, TrainConfig, load_bundled_a9a, run_worker, shard


async def other_work(stop: asyncio.Event, ticks: list[float]) -> None:
    """The application's own job: here, a ticker that keeps running during training."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        ticks.append(loop.time())
        await asyncio.sleep(0.05)


async def main(workers: int = 3, epochs: int = 4) -> dict[str, object]:
    dataset = load_bundled_a9a()
    config = TrainConfig(algorithm="asylpg", epochs=epochs, bits=4, mu=0.5)
    stop, ticks = asyncio.Event(), []
    ticker = asyncio.create_task(other_work(stop, ticks))
    x0 = np.zeros(dataset.features_count)
    async with Master(config, x0, workers=workers, samples=dataset.samples) as master:
        host, port = master.address
        print(f"master listening on {host}:{port}")
        worker_tasks = []
        for index in range(workers):
            part = dataset.rows(shard(dataset.samples, workers, index))
            task = asyncio.create_task(run_worker(host, port, part.features, part.labels, name=f"w{index}"))
            worker_tasks.append(task)
        done = asyncio.create_task(master.wait(timeout=300))
        seen = 0
        while not done.done():
            await asyncio.sleep(0.1)
            coordinator = master.coordinator
            assert coordinator is not None
            for record in coordinator.trace[seen:]:
                print(
                    f"epoch {record.epoch}: loss {record.loss:.5f}, {8 * record.bytes_total / 1e6:.2f} Mbit"
                )
            seen = len(coordinator.trace)
        result = done.result()
        results = await asyncio.gather(*worker_tasks)
        assert all(worker.ok for worker in results), results  # (training ended; the verdict is the master's)
        if not result.ok:  # the master's verdict: the run diverged, or did not train
            raise SystemExit(f"the run failed: {result.failure}")
    stop.set()
    await ticker
    summary = result.to_json()
    print(
        f"done: {summary['version']} updates, final loss {result.final_loss:.5f}, a model of "
        f"{result.model.shape[0]} parameters; the application ticked {len(ticks)} times meanwhile"
    )
    return {"summary": summary, "ticks": len(ticks)}


if __name__ == "__main__":
    asyncio.run(main())
