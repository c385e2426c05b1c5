"""Connections that lose their right to stay (issue 12, partial weaknesses): an established
connection whose access-list entry expires, or is removed by a reload, is closed after its
in-flight operation, and counted in `mongomux_client_connections_revoked_total{reason}`.

Clients that must come from another loopback address bind their socket to it and speak the wire
protocol themselves (mongowire.RawConn). The in-flight test puts Toxiproxy between the gateway
and FerretDB, so that a request is still waiting for its reply when the access list changes.
The removal of users by a reload is covered in test_security.py
(`test_reload_users_and_access_while_connected`).
"""

from __future__ import annotations

import datetime as dt
import secrets
import socket
import struct
import time

import pytest

import mongowire as w
from conftest import wait_until
from mongowire import RawConn, op_msg, recv_message, refused_before_reply
from security_fixtures import GatewayFactory, metric, sighup, write_config
from toxi_fixtures import make_proxy, proxied, toxiproxy  # noqa: F401  (fixtures)

REVOKED = "mongomux_client_connections_revoked_total"
DB = "sec_revoke"


@pytest.fixture
def gateways(logdir, ferretdb):
    f = GatewayFactory(logdir, ferretdb)
    yield f
    f.stop_all()


def config(gateways, **kw):
    return write_config(gateways.logdir / f"revoke-{secrets.token_hex(3)}.toml", **kw)


def revoked(gw, reason: str = "access") -> float:
    return metric(gw, REVOKED, f'reason="{reason}"')


def pings(conn: RawConn) -> bool:
    r = conn.try_command({"ping": 1}, timeout=5)
    return r is not None and r.get("ok") == 1


def test_established_connection_closed_when_its_entry_is_removed_by_reload(gateways):
    cfg = config(gateways, access=["127.0.0.1/32", "127.0.0.2/32"])
    gw = gateways("--config", cfg)
    with RawConn(gw.port) as kept, RawConn(gw.port, source="127.0.0.2") as gone, \
            RawConn(gw.port, source="127.0.0.2") as gone_idle:
        for c in (kept, gone, gone_idle):
            assert pings(c)
        assert revoked(gw) == 0
        write_config(cfg, access=["127.0.0.1/32"])
        sighup(gw)
        assert w.wait_closed(gone.sock, 5), "a connection from the removed address stayed open"
        assert w.wait_closed(gone_idle.sock, 5), "an idle connection from the removed address stayed open"
        assert pings(kept), "a connection from an address still listed was closed"
        wait_until(lambda: revoked(gw) == 2, 5, what="two access revocations counted")
        assert revoked(gw, "user") == 0
        assert refused_before_reply(gw.port, "127.0.0.2"), "the removed address still opens connections"
        # A reload that changes nothing of the list closes nobody.
        write_config(cfg, access=["127.0.0.1/32"], max_clients=500)
        sighup(gw)
        time.sleep(0.5)
        assert pings(kept)
        assert revoked(gw) == 2


def test_established_connection_closed_when_its_entry_expires(gateways):
    expires = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=4)
    stamp = expires.isoformat().replace("+00:00", "Z")
    cfg = config(gateways, access=[
        "127.0.0.1/32",
        {"cidr": "127.0.0.2/32", "expires": stamp, "comment": "temporary"},
        # 127.0.0.3 has a temporary entry and a permanent one: it stays admitted.
        {"cidr": "127.0.0.3/32", "expires": stamp, "comment": "temporary"},
        "127.0.0.3/32",
    ])
    gw = gateways("--config", cfg)
    with RawConn(gw.port) as kept, RawConn(gw.port, source="127.0.0.2") as doomed, \
            RawConn(gw.port, source="127.0.0.3") as covered:
        for c in (kept, doomed, covered):
            assert pings(c)
        remaining = (expires - dt.datetime.now(dt.timezone.utc)).total_seconds()
        assert remaining > 1, "the test machine is too slow for a 4 s expiry"
        # Still served until the expiry...
        assert pings(doomed)
        assert w.wait_closed(doomed.sock, remaining + 5), "a connection outlived its access-list entry"
        closed_at = dt.datetime.now(dt.timezone.utc)
        # ...and closed from then on, without any reload.
        assert closed_at >= expires - dt.timedelta(seconds=0.1), f"closed at {closed_at}, before {expires}"
        assert (closed_at - expires).total_seconds() < 3, f"closed {closed_at - expires} after the expiry"
        assert pings(covered), "an address also admitted by a permanent entry was closed"
        assert pings(kept)
        wait_until(lambda: revoked(gw) == 1, 5, what="one access revocation counted")
        assert refused_before_reply(gw.port, "127.0.0.2")


def test_in_flight_operations_are_not_cut(gateways, ferretdb, make_proxy):
    """A request waiting for its reply when its address is removed gets the whole reply, then
    the connection closes; so does a request whose first bytes had arrived."""
    proxy = make_proxy(f"revoke-{secrets.token_hex(2)}", ferretdb.port)
    cfg = config(gateways, access=["127.0.0.1/32", "127.0.0.2/32"])
    gw = gateways("--config", cfg, upstream=proxied(ferretdb, proxy))
    with RawConn(gw.port) as setup:
        setup.command({"delete": "docs", "deletes": [{"q": {}, "limit": 0}]}, db=DB)
        assert setup.command({"insert": "docs", "documents": [{"_id": i} for i in range(5)]},
                             db=DB).get("ok") == 1
    with RawConn(gw.port, source="127.0.0.2") as busy, RawConn(gw.port, source="127.0.0.2") as partial:
        assert busy.command({"find": "docs"}, db=DB).get("ok") == 1
        proxy.add("latency", latency=2500)  # replies from FerretDB now take 2.5 s
        t0 = time.monotonic()
        rid = busy.send({"find": "docs", "filter": {}, "sort": {"_id": 1}}, db=DB)
        second = op_msg({"find": "docs", "filter": {}, "$db": DB})
        partial.sock.sendall(second[:12])
        time.sleep(0.3)  # the find is upstream now, and the partial message in the gateway
        write_config(cfg, access=["127.0.0.1/32"])
        sighup(gw)
        wait_until(lambda: refused_before_reply(gw.port, "127.0.0.2", timeout=2), 2,
                   what="the reload to take effect")
        assert time.monotonic() - t0 < 2.5, "the reload was not applied while the find was in flight"
        reply = recv_message(busy.sock, 10)
        assert reply is not None, "the in-flight find was cut"
        assert reply.response_to == rid and reply.doc.get("ok") == 1, reply.doc
        assert [d["_id"] for d in reply.doc["cursor"]["firstBatch"]] == list(range(5)), reply.doc
        assert w.wait_closed(busy.sock, 5), "the connection stayed open after its operation"
        partial.sock.sendall(second[12:])
        reply = recv_message(partial.sock, 10)
        assert reply is not None and reply.doc.get("ok") == 1, "a message partly received was cut"
        assert w.wait_closed(partial.sock, 5), "the connection stayed open after its message"
    proxy.clear()
    # At least the two: a probe of refused_before_reply that got in before the reload took
    # effect was revoked too.
    wait_until(lambda: revoked(gw) >= 2, 5, what="two access revocations counted")


def v2_header(src: str, dst: str = "127.0.0.1", sport: int = 40000, dport: int = 27018) -> bytes:
    """A PROXY protocol v2 header (TCP over IPv4), as a load balancer sends it."""
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def test_behind_a_proxy_the_carried_address_is_judged_again(gateways):
    """Behind a balancer the access list judges the address the PROXY header carried, on
    reload as at admission: the balancer's own address stays listed, the client's is removed."""
    cfg = config(gateways, access=["127.0.0.1/32", "10.9.8.7/32", "10.9.8.6/32"])
    gw = gateways("--config", cfg, "--proxy-protocol", "required",
                  "--proxy-protocol-sources", "127.0.0.1/32")
    conns = {}
    try:
        for client in ("10.9.8.7", "10.9.8.6"):
            c = RawConn(gw.port)
            conns[client] = c
            c.sock.sendall(v2_header(client))
            assert pings(c), client
        write_config(cfg, access=["127.0.0.1/32", "10.9.8.6/32"])
        sighup(gw)
        assert w.wait_closed(conns["10.9.8.7"].sock, 5), "judged on the balancer's address, not the client's"
        assert pings(conns["10.9.8.6"]), "a client still listed was closed"
        wait_until(lambda: revoked(gw) == 1, 5, what="one access revocation counted")
    finally:
        for c in conns.values():
            c.close()
