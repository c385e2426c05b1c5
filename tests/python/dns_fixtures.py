"""A DNS server on loopback whose SRV and TXT records a test sets and replaces at runtime.

The gateway resolves `mongodb+srv://` names with `--upstream-resolver 127.0.0.1:PORT`; this
server answers it. Records live in a dict behind a lock, so a test may change the SRV record
while a gateway is running (SRV polling) and the next query sees the new answer.

DNS messages are decoded and encoded by dnspython (`dns.message`, `dns.rrset`; already pinned in
requirements.txt, pymongo uses it for its own `mongodb+srv` support), never by hand; the server
is a socketserver loop over UDP and TCP on the same port. Names it holds no record for get
NXDOMAIN; a known name without the asked type gets an empty NOERROR answer (as a real zone).

    def test_x(dns_server):
        dns_server.set_srv("_mongodb._tcp.c.test.local", [("a.test.local", 27017)], ttl=60)
        dns_server.set_txt("c.test.local", ["replicaSet=rs0&authSource=admin"])
        ... --upstream-resolver {dns_server.address} ...
"""

from __future__ import annotations

import socket
import socketserver
import threading
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest


def _key(name: str) -> str:
    return dns.name.from_text(name).to_text().lower()


@dataclass
class DnsServer:
    """The records, the port, and a log of the questions asked."""

    host: str = "127.0.0.1"
    port: int = 0
    _records: dict = field(default_factory=dict)  # (name, type) -> list[RRset]
    _lock: threading.Lock = field(default_factory=threading.Lock)
    queries: list = field(default_factory=list)  # (name, type name), in order

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set_srv(self, name: str, targets: list[tuple[str, int]], ttl: int = 60) -> None:
        """Replaces the SRV records of `name` with one record per (target, port)."""
        texts = [f"0 0 {port} {dns.name.from_text(t).to_text()}" for t, port in targets]
        rrset = dns.rrset.from_text_list(dns.name.from_text(name), ttl, "IN", "SRV", texts)
        with self._lock:
            self._records[(_key(name), dns.rdatatype.SRV)] = [rrset]

    def set_a(self, name: str, ip: str = "127.0.0.1", ttl: int = 60) -> None:
        """Replaces the A record of `name` (SRV targets must resolve through this server when
        the gateway is given it as --upstream-resolver)."""
        rrset = dns.rrset.from_text(dns.name.from_text(name), ttl, "IN", "A", ip)
        with self._lock:
            self._records[(_key(name), dns.rdatatype.A)] = [rrset]

    def set_txt(self, name: str, records: list, ttl: int = 60) -> None:
        """Replaces the TXT records of `name`. Each item is one record: a string, or a list of
        strings (one record of several character-strings, which resolvers concatenate)."""
        rrsets = []
        for record in records:
            strings = [record] if isinstance(record, str) else list(record)
            quoted = " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in strings)
            rrsets.append(dns.rrset.from_text(dns.name.from_text(name), ttl, "IN", "TXT", quoted))
        with self._lock:
            self._records[(_key(name), dns.rdatatype.TXT)] = rrsets

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Forgets the records of `name` (of one type, or all)."""
        with self._lock:
            for key in list(self._records):
                if key[0] == _key(name) and (rtype is None or key[1] == dns.rdatatype.from_text(rtype)):
                    del self._records[key]

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        question = query.question[0]
        name, rtype = question.name.to_text().lower(), question.rdtype
        with self._lock:
            self.queries.append((name, dns.rdatatype.to_text(rtype)))
            known = any(k[0] == name for k in self._records)
            for rrset in self._records.get((name, rtype), []):
                response.answer.append(rrset)
        if not known:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()



class _Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        try:
            sock.sendto(self.server.dns.answer(data), self.client_address)
        except Exception:  # a malformed question gets no answer, as from a real server
            pass


class _Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        conn = self.request
        conn.settimeout(5)
        try:
            while True:
                size = conn.recv(2)
                if len(size) < 2:
                    return
                want = int.from_bytes(size, "big")
                data = b""
                while len(data) < want:
                    chunk = conn.recv(want - len(data))
                    if not chunk:
                        return
                    data += chunk
                out = self.server.dns.answer(data)
                conn.sendall(len(out).to_bytes(2, "big") + out)
        except (OSError, ValueError):
            return


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_dns_server() -> tuple[DnsServer, callable]:
    """Starts a server on a free loopback port (UDP and TCP); returns it and its stop function."""
    for _ in range(20):
        udp = _UdpServer(("127.0.0.1", 0), _Udp)
        port = udp.server_address[1]
        try:
            tcp = _TcpServer(("127.0.0.1", port), _Tcp)
        except OSError:
            udp.server_close()
            continue
        break
    else:
        raise RuntimeError("no free port for the DNS server")
    server = DnsServer(port=port)
    udp.dns = tcp.dns = server
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True) for s in (udp, tcp)]
    for t in threads:
        t.start()

    def stop():
        for s in (udp, tcp):
            s.shutdown()
            s.server_close()

    return server, stop


@pytest.fixture
def dns_server():
    server, stop = start_dns_server()
    try:
        yield server
    finally:
        stop()


def resolve_with(server: DnsServer, name: str, rtype: str) -> list[str]:
    """Asks `server` directly (a check of the fixture itself)."""
    query = dns.message.make_query(name, rtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query.to_wire(), (server.host, server.port))
        data, _ = s.recvfrom(65535)
    response = dns.message.from_wire(data)
    return [rd.to_text() for rrset in response.answer for rd in rrset]
