"""aiodq worker's rendezvous: the options first, then AIODQ_*, then SLURM's variables (#12)."""

from __future__ import annotations

import re

import pytest

from aiodq.cli.options import rendezvous
from aiodq.errors import UsageError

ENV = {"AIODQ_MASTER_ADDR": "master.example", "AIODQ_MASTER_PORT": "29500"}


def test_options_win_over_the_environment() -> None:
    both = {**ENV, "AIODQ_RANK": "1", "AIODQ_WORLD_SIZE": "4"}
    assert rendezvous(("h", 7), (0, 2), both) == (("h", 7), (0, 2))


def test_aiodq_variables() -> None:
    env = {**ENV, "AIODQ_RANK": "3", "AIODQ_WORLD_SIZE": "4", "SLURM_PROCID": "0", "SLURM_NTASKS": "9"}
    assert rendezvous(None, None, env) == (("master.example", 29500), (3, 4))


def test_slurm_variables_when_aiodq_ones_are_absent() -> None:
    env = {**ENV, "SLURM_PROCID": "2", "SLURM_NTASKS": "5"}
    assert rendezvous(None, None, env) == (("master.example", 29500), (2, 5))


def test_ipv6_master_address() -> None:
    env = {"AIODQ_MASTER_ADDR": "::1", "AIODQ_MASTER_PORT": "1", "AIODQ_RANK": "0", "AIODQ_WORLD_SIZE": "1"}
    assert rendezvous(None, None, env) == (("::1", 1), (0, 1))
    assert rendezvous(None, None, {**env, "AIODQ_MASTER_ADDR": "[fd00::2]"}) == (("fd00::2", 1), (0, 1))


@pytest.mark.parametrize(
    ("addr", "port", "words"),
    [
        # Kubernetes sets <SERVICE>_PORT=tcp://IP:PORT for a Service named aiodq-master (service links): it
        # was read as the host "aiodq-master:tcp://10.96.0.12" and retried for --retry-for (a deploy audit).
        (
            "aiodq-master",
            "tcp://10.96.0.12:29500",
            "AIODQ_MASTER_PORT: expected a port number, got 'tcp://10.96.0.12:29500' (Kubernetes sets "
            "AIODQ_MASTER_PORT so for a Service named aiodq-master: set the variable yourself, or "
            "enableServiceLinks: false)",
        ),
        ("m", "99999", "AIODQ_MASTER_PORT: the port must be between 1 and 65535, got '99999'"),
        ("m", "0", "AIODQ_MASTER_PORT: the port must be between 1 and 65535, got '0'"),
        ("m", "²", "AIODQ_MASTER_PORT: expected a port number, got '²'"),  # (a traceback from int())
        ("[]", "80", "AIODQ_MASTER_ADDR: '[]' is no host name or IP address"),
        (
            "m",
            "9" * 5000,
            "AIODQ_MASTER_PORT: the port must be between 1 and 65535, got '99999999999999999999'",
        ),
        (
            "10.0.0.1:29500",
            "29500",
            "AIODQ_MASTER_ADDR: '10.0.0.1:29500' is no host name or IP address (the port goes in "
            "AIODQ_MASTER_PORT)",
        ),
        ("a..b", "80", "AIODQ_MASTER_ADDR: 'a..b' is no host name or IP address"),
    ],
)
def test_a_master_address_variable_that_is_not_one_is_refused(addr: str, port: str, words: str) -> None:
    env = {"AIODQ_MASTER_ADDR": addr, "AIODQ_MASTER_PORT": port, "AIODQ_RANK": "0", "AIODQ_WORLD_SIZE": "1"}
    with pytest.raises(UsageError) as refused:
        rendezvous(None, None, env)
    assert str(refused.value) == words


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "give --connect HOST:PORT, or set AIODQ_MASTER_ADDR and AIODQ_MASTER_PORT"),
        ({"AIODQ_MASTER_ADDR": "m"}, "AIODQ_MASTER_PORT"),
        (
            {"AIODQ_MASTER_ADDR": "m", "AIODQ_MASTER_PORT": "http"},
            "AIODQ_MASTER_PORT: expected a port number",
        ),
        (ENV, "give --shard I/M, or set AIODQ_RANK and AIODQ_WORLD_SIZE"),
        ({**ENV, "AIODQ_RANK": "4", "AIODQ_WORLD_SIZE": "4"}, "AIODQ_RANK/AIODQ_WORLD_SIZE"),
        ({**ENV, "AIODQ_RANK": "0"}, "give --shard"),  # half a pair is no pair
        ({**ENV, "SLURM_PROCID": "-1", "SLURM_NTASKS": "2"}, "SLURM_PROCID/SLURM_NTASKS"),
    ],
)
def test_what_is_missing_or_malformed_is_named(env: dict[str, str], words: str) -> None:
    with pytest.raises(UsageError, match=re.escape(words)):
        rendezvous(None, None, env)


def test_an_address_says_what_is_wrong_with_it() -> None:
    """HOST:PORT, IPv6 in brackets; a port beyond 65535 is named as such (a newcomer got only 'expected
    HOST:PORT' for 127.0.0.1:99999)."""
    import argparse  # noqa: PLC0415

    from aiodq.cli.options import parse_address  # noqa: PLC0415

    assert parse_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:0") == ("::1", 0)
    with pytest.raises(
        argparse.ArgumentTypeError, match=r"^'127.0.0.1:99999': the port must be between 0 and 65535$"
    ):
        parse_address("127.0.0.1:99999")
    for text in ("127.0.0.1", ":7000", "host:port"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"^expected HOST:PORT"):
            parse_address(text)
    # A host with a colon is an IPv6 address in brackets, nothing else (a deploy audit: the host
    # "aiodq-master:tcp://10.96.0.12" was taken and retried).
    # Nor is a host empty, spaced or a bracketed name (a review: "[]:0" would listen on every interface).
    for text in ("::1:7000", "a:b:7000", "[a:b]:7000", "[1.2.3.4:5]:7000", "[::1:7000", "::1]:7000",
                 "[]:80", "[localhost]:80", "[1.2.3.4]:80"):  # fmt: skip
        with pytest.raises(
            argparse.ArgumentTypeError, match=r"an IPv6 address goes in brackets, \[::1\]:7000"
        ):
            parse_address(text)
    for text in ("host name:80", " host:80", "host\t:80"):  # (a review: these were told about brackets)
        with pytest.raises(argparse.ArgumentTypeError, match=r"a host has no spaces$"):
            parse_address(text)
    assert parse_address("[fe80::1%eth0]:7") == ("fe80::1%eth0", 7)
    for port in ("²", "٣٠٠٠", "+80", " 80"):  # str.isdigit holds for the first two (a review)
        with pytest.raises(argparse.ArgumentTypeError, match=r"^expected HOST:PORT"):
            parse_address(f"127.0.0.1:{port}")
    with pytest.raises(argparse.ArgumentTypeError, match=r"the port must be between 0 and 65535$"):
        parse_address("127.0.0.1:" + "9" * 5000)  # (int() of so many digits raises ValueError)
    # Names the resolver cannot take (a review: 'a..b' passed, then getaddrinfo's IDNA codec raised).
    for host in ("a..b", ".", "a" * 64, "x" * 254, ".a"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"is no host name$"):
            parse_address(f"{host}:7000")
    # (a review: the resolver's codec ends 'example.com\u3002' in a dot, as 'example.com.', and takes it)
    for host in (
        "node_1",
        "aiodq-master",
        "example.com.",
        "example.com\u3002",
        "Über.de",
        "a" * 63,
        "0.0.0.0",
    ):
        assert parse_address(f"{host}:7000") == (host, 7000)
    assert parse_address("localhost:000000") == ("localhost", 0)  # leading zeros: still a port (a review)
    assert (
        parse_address("[fe80::1%eth0]:7") == ("fe80::1%eth0", 7) and parse_address("[::1%2]:7")[0] == "::1%2"
    )
    for zone in ("a..b", "x" * 70, "", "a b"):  # (a review: '%a..b' failed in the IDNA codec, or was dropped)
        with pytest.raises(argparse.ArgumentTypeError, match=r"^expected HOST:PORT"):
            parse_address(f"[::1%{zone}]:7")
    from aiodq.cli.options import connect_address  # noqa: PLC0415

    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)  # --listen: any free port
    with pytest.raises(argparse.ArgumentTypeError, match=r"the port must be between 1 and 65535$"):
        connect_address("127.0.0.1:0")  # --connect: no master listens there


@pytest.mark.parametrize(("option", "shard"), [("--shard", "-1/2"), ("--shard", "-0/1"), ("--shar", "-3/-2")])
def test_a_shard_that_starts_with_a_minus_gets_the_shards_message(
    option: str, shard: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse took ``-1/2`` for an option and said ``expected one argument``."""
    from aiodq.cli import main  # noqa: PLC0415 - the cli extra

    with pytest.raises(SystemExit) as exited:
        main(["worker", "--connect", "127.0.0.1:9", option, shard])
    assert exited.value.code == 2
    assert f"argument --shard: expected I/M with 0 <= I < M, got '{shard}'" in capsys.readouterr().err


def test_a_ray_address_with_an_impossible_port_is_refused_at_once() -> None:
    """A Ray user's audit: --ray-address 127.0.0.1:99999 waited out the whole --timeout."""
    import argparse  # noqa: PLC0415

    from aiodq.cli.options import ray_address  # noqa: PLC0415

    for text in ("auto", "127.0.0.1:6379", "ray://head:10001", "head:006379", "head"):
        assert ray_address(text) == text
    for text in ("", " ", "h:0", "h:99999", "h:1065535", "h:" + "9" * 5000):
        with pytest.raises(argparse.ArgumentTypeError, match=r"^expected auto, HOST:PORT or ray://HOST:PORT"):
            ray_address(text)


@pytest.mark.parametrize(
    ("value", "uvloop"),
    [("", True), ("0", True), ("false", True), (" Off ", True), ("1", False), ("yes", False)],
)
def test_aiodq_no_uvloop_is_a_switch(monkeypatch: pytest.MonkeyPatch, value: str, uvloop: bool) -> None:
    """AIODQ_NO_UVLOOP=0 keeps uvloop, as such switches do (a review: any non-empty value turned it off)."""
    pytest.importorskip("uvloop", reason="uvloop is not installed here")
    from aiodq.launch.local import use_uvloop  # noqa: PLC0415

    monkeypatch.setenv("AIODQ_NO_UVLOOP", value)
    assert (use_uvloop() is not None) is uvloop
