"""``aiodq demo``: an in-memory master and worker exchange a handshake, a snapshot phase and one MODEL."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..codec.events import (
    ConfigMessage,
    Event,
    Gradient,
    Hello,
    ModelMessage,
    Snapshot,
    SnapshotGradient,
    Welcome,
)
from ..codec.lowp import quantize_gradient, quantize_model
from ..codec.messages import encode_message
from ..codec.qsgd import quantize_qsgd
from ..codec.sparse import quantize_sparse
from ..codec.vectors import RawVector
from ..protocol.connection import MasterConnection, WorkerConnection

__all__ = ["demo"]


def _pump(
    sender: MasterConnection | WorkerConnection, receiver: MasterConnection | WorkerConnection
) -> list[Event]:
    receiver.receive_data(sender.data_to_send(), 0.0)
    events = []
    while (event := receiver.next_event()) is not None:
        events.append(event)
    return events


def demo(dim: int, bits: int, mu: float, seed: int) -> dict[str, object]:
    """Handshake and snapshot phase between an in-memory master and worker, then message sizes.

    The MODEL is sent through the master's connection; the GRADIENT variants
    are only encoded, to compare their sizes.
    """
    rng = np.random.default_rng(seed)
    samples = 256
    features = rng.standard_normal((samples, dim)) / np.sqrt(dim)
    labels = np.where(features @ rng.standard_normal(dim) > 0, 1.0, -1.0)

    def gradient(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        margins = labels * (features @ x)
        result: npt.NDArray[np.float64] = -(features.T @ (labels / (1.0 + np.exp(margins)))) / samples
        return result

    master, worker = MasterConnection(), WorkerConnection()
    worker.send(Hello(name="demo-worker"), 0.0)
    _pump(worker, master)
    master.send(Welcome(version=1, worker_id=0), 0.0)
    master.send(ConfigMessage(dim=dim, algorithm="asylpg", params={"bits": bits, "mu": mu}), 0.0)
    _pump(master, worker)
    snapshot = np.zeros(dim)
    master.send(Snapshot(epoch=0, vector=RawVector(snapshot)), 0.0)
    _pump(master, worker)
    worker.send(
        SnapshotGradient(
            epoch=0,
            samples=samples,
            loss=samples * np.log(2.0),
            correct=0,
            vector=RawVector(gradient(snapshot) * samples),
        ),
        0.0,
    )
    _pump(worker, master)
    x = snapshot - 0.5 * gradient(snapshot)
    payload = quantize_model(x, snapshot, mu, rng)
    master.send(ModelMessage(epoch=0, version=1, vector=payload.vector, relative=payload.relative), 0.0)
    rows: list[dict[str, object]] = [
        {"message": f"MODEL ({type(payload.vector).__name__}, mu={mu})", "bytes": len(master.data_to_send())}
    ]
    alpha = gradient(x) - gradient(snapshot)
    for name, vector in [
        (f"GRADIENT dense b={bits}", quantize_gradient(alpha, bits, rng)),
        (f"GRADIENT sparse phi=d/20 b={bits}", quantize_sparse(alpha, dim / 20, bits, rng)),
        ("GRADIENT QSGD s=16", quantize_qsgd(alpha, 16, rng)),
        ("GRADIENT float32", RawVector(alpha.astype(np.float32))),
    ]:
        error = float(np.linalg.norm(vector.to_dense() - alpha)) / max(float(np.linalg.norm(alpha)), 1e-300)
        size = len(encode_message(Gradient(epoch=0, version=1, vector=vector)))
        rows.append({"message": name, "bytes": size, "relative_error": round(error, 4)})
    return {"dim": dim, "float32_bytes": 4 * dim, "messages": rows}
