"""PROXY protocol on the client listener (issue 14, item 3), through a real HAProxy (Debian's
package, `mode tcp`, `send-proxy-v2`) started by the tests, and with hand-made headers sent
straight to the gateway; and on the metrics listener, where a balancer that sends the header on
its traffic sends it on its health checks too (an NLB target group with proxy protocol v2, HAProxy
`check-send-proxy`), so `GET /readyz` must be served behind one.

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


def run_haproxy(folder: Path, name: str, config: str, port: int) -> Proc:
    """HAProxy with `config` (a whole configuration file), once it listens on `port`."""
    binary = _binary("MONGOMUX_HAPROXY", HAPROXY_DEFAULT)
    cfg = folder / f"{name}.cfg"
    cfg.write_text(config)
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


def start_haproxy(folder: Path, backend_port: int, name: str = "haproxy") -> Proc:
    """HAProxy on a free loopback port, forwarding in TCP mode to the gateway with a PROXY v2
    header in front of every connection."""
    port = free_port()
    return run_haproxy(folder, name, f"""
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
""", port)


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


# ---------------------------------------------------------------------------
# The metrics listener behind a balancer that sends PROXY headers on its health checks


def start_haproxy_checking(folder: Path, gw, send_proxy: str) -> tuple[Proc, int]:
    """HAProxy checking `gw` as the template's NLB target group does: `GET /readyz` over HTTP on
    the metrics port, with the PROXY header (`send_proxy`: `send-proxy-v2` as an NLB, or
    `send-proxy`, version 1) that the server line also sends on its traffic. `port` moves the
    check to another port, so HAProxy sends the header there only because of
    `check-send-proxy`. Returns HAProxy and its stats port."""
    port, stats = free_port(), free_port()
    proc = run_haproxy(folder, f"haproxy-check-{gw.port}", f"""
global
    maxconn 50
    stats socket ipv4@127.0.0.1:{stats} level user
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout check 2s
listen gateway
    bind 127.0.0.1:{port}
    option httpchk GET /readyz
    http-check expect status 200
    server gw 127.0.0.1:{gw.port} {send_proxy} check check-send-proxy port {gw.metrics_port} inter 200ms rise 2 fall 2
""", port)
    return proc, stats


def server_state(stats_port: int) -> dict:
    """HAProxy's own view of the server `gw` (`show stat` on its stats socket): status (UP,
    DOWN), check_status (L7OK: the last check got the expected status) and check_code."""
    with socket.create_connection(("127.0.0.1", stats_port), timeout=5) as s:
        s.sendall(b"show stat\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    lines = out.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("svname") == "gw":
            row["check_status"] = row.get("check_status", "").lstrip("* ")
            return row
    raise AssertionError(f"no server gw in HAProxy's stats:\n{out.decode()}")


def http_from(port: int, source: str, prefix: bytes = b"", path: str = "/readyz") -> bytes:
    """A GET from `source`, after `prefix`; b"" when the server closed without an answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(prefix + f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
        out = b""
        try:
            while chunk := s.recv(4096):
                out += chunk
        except ConnectionResetError:  # closed with the request unread
            pass
        return out


def ready(gw) -> bool:
    return http_from(gw.metrics_port, "127.0.0.1").startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
def test_a_health_check_behind_proxy_headers_reports_the_gateway_up(gateways, tmp_path, send_proxy):
    gw = gateways(*REQUIRED, "--access", "127.0.0.9/32")
    wait_until(lambda: ready(gw), 10, what="/readyz 200")
    _, stats = start_haproxy_checking(tmp_path, gw, send_proxy)
    wait_until(lambda: (s := server_state(stats))["status"] == "UP" and s["check_status"] == "L7OK", 10,
               what="HAProxy's check of /readyz passing")
    state = server_state(stats)
    assert state["check_code"] == "200", state
    # Each check was a header from a listed source: nothing refused, nothing logged.
    assert "metrics connection from" not in log_of(gw)


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
def test_without_proxy_protocol_the_same_check_fails(gateways, tmp_path, send_proxy):
    """The control, which shows HAProxy does send the header on its checks: a gateway that does
    not expect it reads it as the request, answers 404, and the balancer takes the gateway out
    (as every NLB check did before the metrics listener read PROXY headers)."""
    gw = gateways()
    wait_until(lambda: ready(gw), 10, what="/readyz 200")
    _, stats = start_haproxy_checking(tmp_path, gw, send_proxy)
    wait_until(lambda: server_state(stats)["status"] == "DOWN", 10, what="HAProxy's check failing")
    state = server_state(stats)
    assert (state["check_status"], state["check_code"]) == ("L7STS", "404"), state


def test_metrics_listener_refuses_a_forged_header_and_serves_plain_requests(gateways):
    gw = gateways(*REQUIRED, "--access", "127.0.0.9/32")
    wait_until(lambda: ready(gw), 10, what="/readyz 200")
    port = gw.metrics_port
    # 127.0.0.9 is not a PROXY source: a header from it, either version, gets no answer.
    assert http_from(port, "127.0.0.9", v2_header("10.1.2.3")) == b""
    assert http_from(port, "127.0.0.9", b"PROXY TCP4 10.1.2.3 127.0.0.1 1 2\r\n") == b""
    wait_until(lambda: "metrics connection from 127.0.0.9:" in log_of(gw), 5, what="the refusal log line")
    line = next(ln for ln in log_of(gw).splitlines() if "metrics connection from 127.0.0.9:" in ln)
    assert "not in proxy_protocol_sources" in line, line
    # Plain requests are served, from an unlisted peer and from a listed one (which in
    # `required` mode may still omit the header here: a scraper sends none).
    assert http_from(port, "127.0.0.9").startswith(b"HTTP/1.1 200 OK\r\n")
    assert http_from(port, "127.0.0.1", path="/livez").endswith(b"\r\n\r\nok\n")
    # A listed source's headers: LOCAL (a check) and PROXY (carrying another address).
    for head in (v2_header("0.0.0.0", command=0x0), v2_header("10.1.2.3"),
                 b"PROXY UNKNOWN\r\n", b"PROXY TCP4 10.1.2.3 127.0.0.1 1 2\r\n"):
        assert http_from(port, "127.0.0.1", head).endswith(b"\r\n\r\nready\n"), head
    # A garbled header from a listed source is refused too.
    assert http_from(port, "127.0.0.1", V2_SIGNATURE + b"\x99\x99\x00\x04abcd") == b""
    # Health checks are not clients: the client listener's refusal counter did not move.
    assert sum(metric(gw, REFUSED, f'reason="{r}"') for r in
               ("untrusted", "missing", "invalid", "timeout")) == 0
