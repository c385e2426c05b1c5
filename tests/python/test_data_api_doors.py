"""The Data API's listener is admitted like the wire protocol's (issue 17, item 3): the IP access
list, the PROXY protocol (headers trusted only from listed sources, the carried address judged
by the access list), the client limit; and it has TLS settings of its own (HTTPS with the
throwaway PKI, plain HTTP refused on it). An established keep-alive connection whose address a
reload removes from the access list is closed, as a wire client's is (issue 12).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import urllib.request

from conftest import free_port, start_gateway, wait_until
from security_fixtures import make_pki, make_user, metric, write_config
from test_data_api import api_key

BODY = json.dumps({"dataSource": "x", "database": "doors", "collection": "c", "filter": {}}).encode()


def gateway(ferretdb, logdir, tmp_path, name, **settings):
    app = make_user("app", databases=("doors",))
    key, entry = api_key("fn", "app")
    access = settings.pop("access", ["127.0.0.0/8"])
    sources = settings.pop("proxy_protocol_sources", None)
    cfg = write_config(tmp_path / f"{name}.toml", users=[app], access=access, **settings)
    text = cfg.read_text()
    if sources:  # an array, which write_config does not write: it goes before the tables
        text = f"proxy_protocol_sources = [\"{sources}\"]\n" + text
    cfg.write_text(text + entry)
    port = free_port()
    gw = start_gateway(ferretdb, logdir, name=name, metrics=True,
                       extra_args=("--config", str(cfg), "--data-api-listen", f"127.0.0.1:{port}"))
    return gw, port, key


def raw_request(port: int, key: str, source: str = "127.0.0.1", prefix: bytes = b"") -> bytes:
    """One POST /action/findOne over a socket from `source`, after `prefix` (a PROXY header)."""
    head = (f"POST /action/findOne HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"apiKey: {key}\r\nContent-Length: {len(BODY)}\r\nConnection: close\r\n\r\n").encode()
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(prefix + head + BODY)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def test_access_list_and_proxy_headers_apply_to_the_data_api(ferretdb, logdir, tmp_path):
    gw, port, key = gateway(ferretdb, logdir, tmp_path, "dapi-doors", access=["127.0.0.1/32", "10.1.2.0/24"],
                            proxy_protocol="optional", proxy_protocol_sources="127.0.0.1/32")
    assert raw_request(port, key).startswith(b"HTTP/1.1 200 ")
    # 127.0.0.2 is not in the access list: closed before a byte is read.
    before = metric(gw, "mongomux_client_connections_denied_total")
    assert raw_request(port, key, source="127.0.0.2") == b""
    # A listed load balancer may name the client; the named client is judged.
    ok = raw_request(port, key, prefix=b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 80\r\n")
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:200]
    assert raw_request(port, key, prefix=b"PROXY TCP4 10.9.9.9 127.0.0.1 5555 80\r\n") == b""
    assert metric(gw, "mongomux_client_connections_denied_total") == before + 2
    gw.proc.stop()


def test_https_with_its_own_certificate(ferretdb, logdir, tmp_path):
    pki = make_pki(tmp_path / "pki")
    gw, port, key = gateway(ferretdb, logdir, tmp_path, "dapi-tls", data_api_tls_cert_file=pki.server_cert,
                            data_api_tls_key_file=pki.server_key)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    req = urllib.request.Request(f"https://127.0.0.1:{port}/action/findOne", data=BODY, method="POST",
                                 headers={"Content-Type": "application/json", "apiKey": key})
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        assert r.status == 200 and json.loads(r.read()) == {"document": None}
    # Plain HTTP on the HTTPS port gets no answer; the wire listener is untouched (no TLS there).
    assert not raw_request(port, key).startswith(b"HTTP/1.1 200")
    with gw.client() as c:
        assert c.admin.command("ping")["ok"] == 1
    gw.proc.stop()


def test_a_trickled_body_times_out(ferretdb, logdir, tmp_path):
    gw, port, key = gateway(ferretdb, logdir, tmp_path, "dapi-slow", message_timeout="1s")
    head = (f"POST /action/findOne HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"apiKey: {key}\r\nContent-Length: {len(BODY)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + BODY[:10])  # and never the rest
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b'"error_code":"RequestTimeout"' in reply
    gw.proc.stop()


def keep_alive_request(s: socket.socket, key: str) -> bytes:
    """One POST /action/findOne on an open keep-alive connection; the whole response."""
    head = (f"POST /action/findOne HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"apiKey: {key}\r\nContent-Length: {len(BODY)}\r\n\r\n").encode()
    s.sendall(head + BODY)
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = s.recv(65536)
        assert chunk, f"closed mid-response: {out!r}"
        out += chunk
    headers, _, body = out.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in headers.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return headers + b"\r\n\r\n" + body


def test_a_keep_alive_connection_is_closed_when_its_address_is_removed(ferretdb, logdir, tmp_path):
    """Like a wire client, an established Data API connection whose address a reload removes
    from the access list is closed (after the request in progress) and counted."""
    gw, port, key = gateway(ferretdb, logdir, tmp_path, "dapi-revoke", access=["127.0.0.1/32", "127.0.0.2/32"],
                            handshake_timeout="30s")
    revoked = "mongomux_client_connections_revoked_total"
    with socket.socket() as gone, socket.socket() as kept:
        for s, source in ((gone, "127.0.0.2"), (kept, "127.0.0.1")):
            s.settimeout(10)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            assert keep_alive_request(s, key).startswith(b"HTTP/1.1 200 ")
        cfg = tmp_path / "dapi-revoke.toml"
        cfg.write_text(cfg.read_text().replace('cidr = "127.0.0.2/32"', 'cidr = "127.0.0.1/32"'))
        os.kill(gw.pid, signal.SIGHUP)
        gone.settimeout(5)
        assert gone.recv(65536) == b"", "the removed address's keep-alive connection stayed open"
        assert keep_alive_request(kept, key).startswith(b"HTTP/1.1 200 ")
    wait_until(lambda: metric(gw, revoked, 'reason="access"') == 1, 5, what="one access revocation counted")
    gw.proc.stop()
