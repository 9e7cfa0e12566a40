"""The network lab: namespaces made and removed, links shaped for real, a cluster trained across them."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
from pathlib import Path

import pytest

from aiodq.lab import netcluster
from aiodq.lab.netcluster import measure_round_trip, measure_throughput, run_cluster
from aiodq.lab.netlab import Link, NetLab, NetLabError, delay_unavailable, namespaces_unavailable
from aiodq.protocol.algorithms import TrainConfig

REASON = namespaces_unavailable()
if REASON is not None:
    pytest.skip(f"network namespaces unavailable: {REASON}", allow_module_level=True)


def listed_namespaces() -> set[str]:
    output = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in output.splitlines() if line.strip()}


def root_links() -> set[str]:
    output = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip() for line in output.splitlines()}


def ours() -> set[str]:
    """Namespaces made by labs of this process (default prefix dqPID-N)."""
    return {name for name in listed_namespaces() if name.startswith(f"dq{os.getpid()}-")}


def test_link_validates_and_describes_itself() -> None:
    """A Link needs a positive rate and a non-negative delay, and says what it is."""
    assert Link(100).describe() == "100 Mbit/s, 0 ms"
    assert Link(1000, delay_ms=2.5).describe() == "1000 Mbit/s, 2.5 ms"
    for rate, delay in [(0, 0), (-1, 0), (math.inf, 0), (100, -1), (100, math.nan)]:
        with pytest.raises(ValueError):
            Link(rate, delay)


def test_lab_is_built_and_fully_removed() -> None:
    """Every namespace exists with its address inside the block, and none is left after it."""
    links_before = root_links()
    with NetLab(3, Link(100)) as lab:
        names = set(lab.namespaces)
        assert len(names) == 4
        assert names <= listed_namespaces()
        for index in range(3):
            shown = subprocess.run(
                lab.exec_args(index, ["ip", "-o", "addr", "show", "dev", "eth0"]),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert f"inet {lab.address(index)}/24" in shown
        qdiscs = subprocess.run(
            ["tc", "-n", lab.switch_namespace, "qdisc", "show"], capture_output=True, text=True, check=True
        ).stdout
        assert qdiscs.count("tbf") == 3, qdiscs
    assert not names & listed_namespaces()
    assert root_links() == links_before, "nothing is created in the root namespace"
    lab.close()  # idempotent


def test_lab_is_removed_when_the_block_raises() -> None:
    """An exception inside the with-block still removes every namespace."""
    with pytest.raises(RuntimeError, match="boom"), NetLab(2, Link(100)) as lab:
        names = set(lab.namespaces)
        raise RuntimeError("boom")
    assert not names & listed_namespaces()


def test_failed_build_removes_what_it_made_and_names_the_command() -> None:
    """A clash halfway through raises NetLabError with the command; only the lab's own namespaces go."""
    prefix = f"dqclash{os.getpid()}"
    subprocess.run(["ip", "netns", "add", f"{prefix}-h1"], check=True)
    try:
        with pytest.raises(NetLabError, match=f"ip netns add {prefix}-h1"):
            NetLab(3, Link(100), prefix=prefix)
        assert {f"{prefix}-sw", f"{prefix}-h0", f"{prefix}-h2"}.isdisjoint(listed_namespaces())
        assert f"{prefix}-h1" in listed_namespaces(), "a namespace it did not make is left alone"
    finally:
        subprocess.run(["ip", "netns", "delete", f"{prefix}-h1"], check=True)


def test_links_are_shaped_to_their_rate() -> None:
    """A 100 Mbit/s link carries 70-110 Mbit/s of TCP; a 1 Gbit/s one clearly more."""
    with NetLab(2, Link(100)) as lab:
        slow = measure_throughput(lab, 1, 0, seconds=1.0)
    with NetLab(2, Link(1000)) as lab:
        fast = measure_throughput(lab, 1, 0, seconds=1.0)
    print(f"\nTCP goodput host 1 -> host 0: Link(100) {slow:.1f} Mbit/s, Link(1000) {fast:.1f} Mbit/s")
    assert 70 <= slow <= 110
    assert fast > 2 * slow


@pytest.mark.skipif(delay_unavailable() is not None, reason=f"link delays: {delay_unavailable()}")
def test_link_delay_shows_in_the_round_trip() -> None:
    """With delay_ms on every link, both ways, a host-to-host round trip takes at least 4 * delay_ms."""
    delay_ms = 20.0
    with NetLab(2, Link(100, delay_ms=delay_ms)) as lab:
        connect, echo = measure_round_trip(lab, 1, 0)
    print(f"\nLink(100, delay_ms=20): connect {connect * 1000:.1f} ms, echo round trip {echo * 1000:.1f} ms")
    assert connect >= 0.95 * 4 * delay_ms / 1000
    assert echo >= 0.95 * 4 * delay_ms / 1000


def test_run_cluster_trains_across_the_lab(tmp_path: Path) -> None:
    """run_cluster: a master and 2 workers in their own namespaces train a9a; summary and records return."""
    summary, records = run_cluster(
        TrainConfig(algorithm="asylpg", epochs=2),
        workers=2,
        link=Link(100),
        data=None,
        out=tmp_path,
        record_every=50,
        timeout=120,
    )
    trace = summary["trace"]
    print(f"\nrun_cluster on Link(100): wall time {summary['wall_time']:.2f} s, {len(records)} records")
    assert len(trace) == 3
    losses = [record["loss"] for record in trace]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert records
    sizes = [record.bytes_total for record in records]
    assert sizes == sorted(sizes)
    assert summary["network"]["rate_mbit"] == 100
    assert summary["network"]["hosts"] == 3
    assert (tmp_path / "master.log").exists() and (tmp_path / "worker-1.log").exists()
    assert not ours()


def test_run_cluster_reports_a_failing_process(tmp_path: Path) -> None:
    """A master that cannot start: NetLabError with its log's tail, and the lab is gone."""
    with pytest.raises(NetLabError, match="no such file"):
        run_cluster(TrainConfig(epochs=1), workers=1, link=Link(100), data="/nonexistent/a9a", out=tmp_path)
    assert not ours()


def test_run_cluster_refuses_a_config_it_cannot_pass_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config field without an aiodq master option must be at its default.

    Every TrainConfig field has an option today (test_adaptive checks they all pass), so the
    field here is one added without one, as a later TrainConfig could.
    """

    @dataclasses.dataclass(frozen=True)
    class Extended(TrainConfig):
        extra: int = 0  # declared without aiodq.config.option: no command-line option

    monkeypatch.setattr(netcluster, "TrainConfig", Extended)
    assert "--extra" not in " ".join(netcluster._training_flags(Extended(bits=4)))
    with pytest.raises(ValueError, match="aiodq master has no option for extra=1"):
        run_cluster(Extended(extra=1), workers=1, link=Link(100), data=None, out=tmp_path)
