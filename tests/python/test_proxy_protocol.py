"""PROXY protocol on the client listener (issue 14, item 3), through a real HAProxy (Debian's
package, `mode tcp`, `send-proxy-v2`) started by the tests, and with hand-made headers sent
straight to the gateway.

The gateway trusts headers only from 127.0.0.1/32 (where HAProxy's own connections come from);
clients bind chosen loopback sources (127.0.0.9, 127.0.0.10) to reach HAProxy, so the address in
the header differs from the gateway's socket peer, exactly as behind an NLB.

HAProxy is found as $MONGOMUX_HAPROXY (default /usr/sbin/haproxy; scripts/install-deps installs
Debian's package).
"""

from __future__ import annotations

import shutil
import socket
import struct
from pathlib import Path

import pymongo
import pytest

import procnet
from conftest import Proc, _binary, _running, _spawn, free_port, tail, wait_until
from mongowire import RawConn, op_msg, recv_message, refused_before_reply
from security_fixtures import GatewayFactory, metric

HAPROXY_DEFAULT = Path(shutil.which("haproxy") or "/usr/sbin/haproxy")
DENIED = "mongomux_client_connections_denied_total"
REFUSED = "mongomux_client_connections_proxy_refused_total"
REJECTED = "mongomux_client_connections_rejected_total"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture
def gateways(tmp_path, ferretdb):
    f = GatewayFactory(tmp_path, ferretdb)
    yield f
    f.stop_all()


def start_haproxy(folder: Path, backend_port: int, name: str = "haproxy") -> Proc:
    """HAProxy on a free loopback port, forwarding in TCP mode to the gateway with a PROXY v2
    header in front of every connection."""
    binary = _binary("MONGOMUX_HAPROXY", HAPROXY_DEFAULT)
    port = free_port()
    cfg = folder / f"{name}.cfg"
    cfg.write_text(f"""
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend clients
    bind 127.0.0.1:{port}
    default_backend gateway
backend gateway
    server gw 127.0.0.1:{backend_port} send-proxy-v2
""")
    popen, log = _spawn(name, [binary, "-db", "-f", cfg], folder)
    proc = Proc(name, popen, port, log)
    _running.append(proc)

    def listening():
        # Read from the kernel's table, not by connecting: a test connection would reach the
        # gateway and count as a refused client.
        assert proc.alive(), f"haproxy exited:\n{tail(log)}"
        return any(s.state == "0A" and s.local_port == port for s in procnet.sockets())  # 0A: LISTEN

    wait_until(listening, 10, what="haproxy listening")
    return proc


@pytest.fixture
def haproxy_for(tmp_path):
    started: list[Proc] = []

    def start(gw) -> Proc:
        p = start_haproxy(tmp_path, gw.port, name=f"haproxy-{len(started)}")
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def v2_header(src: str, dst: str = "127.0.0.1", sport: int = 40000, dport: int = 27018,
              command: int = 0x1) -> bytes:
    """A PROXY v2 header made by hand (TCP over IPv4), as a forger would."""
    if command == 0x0:  # LOCAL: no addresses
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x20 | command, 0x11]) + struct.pack("!H", len(body)) + body


def hello_after(port: int, source: str, prefix: bytes, timeout: float = 5.0) -> dict | None:
    """Connect to `port` from `source`, send `prefix` then a hello; the reply, or None when the
    gateway closed without one."""
    with RawConn(port, source=source, timeout=timeout) as c:
        try:
            c.sock.sendall(prefix + op_msg({"hello": 1, "$db": "admin"}))
            msg = recv_message(c.sock, timeout)
        except (BrokenPipeError, ConnectionResetError):
            return None
        return None if msg is None else msg.doc


def log_of(gw) -> str:
    return gw.proc.log.read_text(errors="replace")


REQUIRED = ("--proxy-protocol", "required", "--proxy-protocol-sources", "127.0.0.1/32")


def test_haproxy_client_is_judged_by_its_real_address(gateways, haproxy_for):
    gw = gateways(*REQUIRED, "--access", "127.0.0.9/32")
    hp = haproxy_for(gw)
    # 127.0.0.9 through HAProxy: the gateway's peer is 127.0.0.1, the header says 127.0.0.9.
    with RawConn(hp.port, source="127.0.0.9") as c:
        assert c.hello().get("ok") == 1
        assert c.command({"ping": 1}).get("ok") == 1
    assert metric(gw, DENIED) == 0, "the access list judged HAProxy's address, not the client's"
    # 127.0.0.10 through HAProxy: refused, and the log names 127.0.0.10, not HAProxy.
    assert refused_before_reply(hp.port, "127.0.0.10"), "127.0.0.10 got a reply"
    wait_until(lambda: metric(gw, DENIED) == 1, 5, what="one access-list denial")
    wait_until(lambda: "connection from 127.0.0.10:" in log_of(gw), 5,
               what="the real address in the denial log line")
    line = next(ln for ln in log_of(gw).splitlines() if "connection from 127.0.0.10:" in ln)
    assert "address not in the access list" in line and "(via 127.0.0.1:" in line, line
    assert "connection from 127.0.0.1:" not in log_of(gw), "a refusal was logged under HAProxy's address"
    assert sum(metric(gw, REFUSED, f'reason="{r}"') for r in
               ("untrusted", "missing", "invalid", "timeout")) == 0


def test_forged_header_from_an_unlisted_peer_is_refused(gateways):
    gw = gateways(*REQUIRED, "--access", "127.0.0.9/32")
    # Straight to the gateway from 127.0.0.9 (allowed by the access list, but not a PROXY
    # source), claiming in a hand-made header to be 127.0.0.9 as well.
    assert hello_after(gw.port, "127.0.0.9", v2_header("127.0.0.9")) is None
    # A version 1 header is refused just the same.
    assert hello_after(gw.port, "127.0.0.9", b"PROXY TCP4 127.0.0.9 127.0.0.1 1 2\r\n") is None
    wait_until(lambda: metric(gw, REFUSED, 'reason="untrusted"') == 2, 5,
               what="two untrusted-header refusals")
    wait_until(lambda: "connection from 127.0.0.9:" in log_of(gw), 5, what="the refusal log line")
    assert "not in proxy_protocol_sources" in log_of(gw)


def test_required_mode_refuses_a_listed_source_without_header(gateways):
    gw = gateways(*REQUIRED, "--access", "127.0.0.9/32,127.0.0.1/32")
    assert hello_after(gw.port, "127.0.0.1", b"") is None
    # Garbage after a signature is not a header.
    assert hello_after(gw.port, "127.0.0.1", V2_SIGNATURE + b"\x99\x99\x00\x04abcd") is None
    wait_until(lambda: metric(gw, REFUSED, 'reason="missing"') == 1, 5, what="a missing-header refusal")
    wait_until(lambda: metric(gw, REFUSED, 'reason="invalid"') == 1, 5, what="an invalid-header refusal")
    # LOCAL (a balancer's own health check) keeps the peer's address, which is allowed here.
    doc = hello_after(gw.port, "127.0.0.1", v2_header("0.0.0.0", command=0x0))
    assert doc is not None and doc.get("ok") == 1, doc


def test_optional_mode_admits_listed_sources_with_or_without_header(gateways, haproxy_for):
    gw = gateways("--proxy-protocol", "optional", "--proxy-protocol-sources", "127.0.0.1/32",
                  "--access", "127.0.0.1/32,127.0.0.9/32")
    hp = haproxy_for(gw)
    # A driver straight from a listed source, no header.
    with pymongo.MongoClient(gw.uri(), serverSelectionTimeoutMS=10_000) as client:
        assert client.admin.command("ping")["ok"] == 1
    # A client through HAProxy, judged by its own address.
    with RawConn(hp.port, source="127.0.0.9") as c:
        assert c.command({"ping": 1}).get("ok") == 1
    # Not through HAProxy, 127.0.0.10 is still refused by the access list.
    assert refused_before_reply(gw.port, "127.0.0.10")
    assert metric(gw, DENIED) == 1
    assert sum(metric(gw, REFUSED, f'reason="{r}"') for r in
               ("untrusted", "missing", "invalid", "timeout")) == 0


def test_per_source_limit_counts_the_real_address(gateways, haproxy_for):
    gw = gateways(*REQUIRED, "--access", "127.0.0.9/32,127.0.0.10/32",
                  "--max-connections-per-source", "1")
    hp = haproxy_for(gw)
    with RawConn(hp.port, source="127.0.0.9") as first:
        assert first.hello().get("ok") == 1
        # A second connection from 127.0.0.9 is over its limit of one...
        assert refused_before_reply(hp.port, "127.0.0.9")
        wait_until(lambda: metric(gw, REJECTED) == 1, 5, what="a per-source rejection")
        # ...but 127.0.0.10, through the same HAProxy (same peer address), is not.
        with RawConn(hp.port, source="127.0.0.10") as other:
            assert other.hello().get("ok") == 1
    assert "max-connections-per-source reached; refusing a client from 127.0.0.9:" in log_of(gw)
