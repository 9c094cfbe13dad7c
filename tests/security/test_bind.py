"""By default rbm-serve listens on loopback only, the gRPC port and the metrics port alike."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import server.main
from server.main import ServerConfig
from tests.harness.cli import TrainedModel
from tests.harness.server import start_server


def _listening(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port``, from /proc (Linux)."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order.
                words = [raw[i : i + 4][::-1] for i in range(0, width, 4)]
                found.add(str(ipaddress.ip_address(b"".join(words))))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    # gRPC binds IPv4 addresses on a dual-stack socket: 127.0.0.1 shows as ::ffff:127.0.0.1.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _outward_address() -> str | None:
    """This host's address on its default route, if it has one (UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never answered, never routed anyway
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


def _port(target: str) -> int:
    return int(target.rsplit(":", 1)[1])


def test_the_default_host_is_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBMREC_HOST", raising=False)
    assert ServerConfig().host == "127.0.0.1"
    parser = server.main._parser()
    assert parser.parse_args([]).host == "127.0.0.1"
    assert "use 0.0.0.0 to listen on all interfaces" in " ".join(parser.format_help().split())


def test_by_default_nothing_listens_beyond_loopback(
    trained: TrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RBMREC_HOST", raising=False)  # start_server passes os.environ on
    with start_server(trained.registry, "--cache", "memory", "--metrics-port", "0") as running:
        ports = {"gRPC": _port(running.target), "metrics": urlsplit(running.metrics_url).port}
        for name, port in ports.items():
            assert port is not None
            bound = _listening(port)
            assert bound, f"no listening socket found for the {name} port"
            assert all(_is_loopback(a) for a in bound), (name, bound)
            outward = _outward_address()
            if outward is not None:
                with pytest.raises(OSError), socket.create_connection((outward, port), 2):
                    pass


def test_the_listener_check_sees_a_wildcard_bind(trained: TrainedModel) -> None:
    # The control for the test above: --host 0.0.0.0 must show up as non-loopback.
    with start_server(trained.registry, "--cache", "memory", "--host", "0.0.0.0") as running:
        bound = _listening(_port(running.target))
        assert bound and not all(_is_loopback(a) for a in bound), bound
