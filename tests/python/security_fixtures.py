"""Helpers for the security tests (issue 3): gateway users, config files, a SCRAM client
over raw sockets bound to a chosen source address, a throwaway PKI, and metrics.

Why a hand-written SCRAM client: pymongo cannot bind its sockets to a source address, and
the access list, the per-source limits and the failed-auth delays are all keyed by source
address. Tests that need 127.0.0.2 or 127.0.0.3 as the client's address therefore speak the
wire protocol themselves (mongowire.py) and authenticate with this client, which follows
RFC 5802 / RFC 7677 and the MongoDB auth spec (SCRAM-SHA-1 hashes the password as
md5("user:mongo:password") first; SCRAM-SHA-256 uses the password as is, here ASCII only,
so SASLprep is the identity).

Nothing here is a secret worth keeping: every password and key is generated per run for
servers that listen on loopback only and live in pytest's temporary folder.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bson.binary import Binary

import mongowire as w
from conftest import ROOT, Gateway, _binary, start_gateway

UNAUTHORIZED = 13
AUTHENTICATION_FAILED = 18
CURSOR_NOT_FOUND = 43


def gateway_bin() -> Path:
    return _binary("MONGOMUX_BIN", ROOT / "target/debug/mongomux")


def serve_help() -> str:
    out = subprocess.run([gateway_bin(), "serve", "--help"], capture_output=True, text=True, timeout=20)
    return out.stdout + out.stderr


def gateway_supports(*flags: str) -> bool:
    """Whether `mongomux serve --help` lists every one of `flags` (features still landing)."""
    text = serve_help()
    return all(f in text for f in flags)


# ---------------------------------------------------------------------------
# Users and config files


@dataclass
class GwUser:
    name: str
    password: str = field(repr=False)
    role: str = "readWrite"
    databases: tuple = ()
    db: str = "admin"
    toml: str = field(default="", repr=False)

    def stored_secrets(self) -> list[str]:
        """The base64 salt, stored_key and server_key values of every mechanism in the entry."""
        return re.findall(r'^(?:salt|stored_key|server_key)\s*=\s*"([^"]+)"', self.toml, re.M)

    def pymongo_kw(self, mechanism: str | None = None, password: str | None = None) -> dict:
        kw = {"username": self.name, "password": self.password if password is None else password,
              "authSource": self.db}
        if mechanism:
            kw["authMechanism"] = mechanism
        return kw


def make_user(name: str, role: str = "readWrite", databases: tuple = (), db: str = "admin",
              password: str | None = None) -> GwUser:
    """A user entry made by `mongomux user add`, the way an operator makes one."""
    password = password or "pw-" + secrets.token_urlsafe(12)
    cmd = [gateway_bin(), "user", "add", name, "--db", db, "--role", role]
    for d in databases:
        cmd += ["--database", d]
    out = subprocess.run(cmd, input=password + "\n", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"mongomux user add failed: {out.stderr}"
    assert "[[users]]" in out.stdout, out.stdout
    assert password not in out.stdout, "user add printed the password"
    return GwUser(name, password, role, tuple(databases), db, out.stdout)


def write_config(path: Path, users: list[GwUser] = (), access: list = None, **settings) -> Path:
    """A TOML config: scalar `settings` first, then `[[access]]` entries (strings, or dicts with
    cidr/expires/comment), then the users' `[[users]]` blocks as `user add` printed them."""
    lines = []
    for k, v in settings.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v}")
        else:
            lines.append(f'{k} = "{v}"')
    for entry in access or []:
        if isinstance(entry, str):
            entry = {"cidr": entry}
        lines.append("[[access]]")
        for k, v in entry.items():
            lines.append(f'{k} = "{v}"')
    text = "\n".join(lines) + "\n" + "\n".join(u.toml for u in users)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reload never sees half a file
    return path


def rfc3339(delta: dt.timedelta) -> str:
    return (dt.datetime.now(dt.timezone.utc) + delta).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------
# SCRAM over raw sockets


def _h(mechanism: str):
    return hashlib.sha256 if mechanism == "SCRAM-SHA-256" else hashlib.sha1


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


class ScramClient:
    """The client side of one SCRAM conversation (RFC 5802), as MongoDB drivers run it."""

    def __init__(self, mechanism: str, user: str, password: str):
        assert mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1"), mechanism
        self.mechanism = mechanism
        self.user = user
        if mechanism == "SCRAM-SHA-1":
            password = hashlib.md5(f"{user}:mongo:{password}".encode()).hexdigest()
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(24)).decode()
        name = user.replace("=", "=3D").replace(",", "=2C")
        self.first_bare = f"n={name},r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        fields = dict(kv.split("=", 1) for kv in text.split(","))
        assert fields["r"].startswith(self.nonce), "server nonce does not extend ours"
        salt, iterations = base64.b64decode(fields["s"]), int(fields["i"])
        h = _h(self.mechanism)
        salted = hashlib.pbkdf2_hmac(h().name, self.password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", h).digest()
        stored_key = h(client_key).digest()
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, h).digest()
        proof = base64.b64encode(_xor(client_key, signature)).decode()
        server_key = hmac.new(salted, b"Server Key", h).digest()
        self.server_signature = hmac.new(server_key, auth_message, h).digest()
        return f"{without_proof},p={proof}".encode()

    def verify(self, server_final: bytes) -> None:
        fields = dict(kv.split("=", 1) for kv in server_final.decode().split(","))
        assert "e" not in fields, f"server error: {fields['e']}"
        assert base64.b64decode(fields["v"]) == self.server_signature, "bad server signature"


class ClosedError(ConnectionError):
    """The gateway closed the connection instead of answering."""


class RawConn:
    """One wire-protocol connection from a chosen loopback source address."""

    def __init__(self, port: int, source: str = "127.0.0.1", host: str = "127.0.0.1", timeout: float = 10.0,
                 sock: socket.socket | None = None):
        self.port = port
        self.source = source
        if sock is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.bind((source, 0))
            sock.connect((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, doc: dict, db: str = "admin") -> int:
        doc = dict(doc)
        doc.setdefault("$db", db)
        rid = w.next_request_id()
        self.sock.sendall(w.op_msg(doc, request_id=rid))
        return rid

    def command(self, doc: dict, db: str = "admin", timeout: float = 10.0) -> dict:
        """Send one command and return the reply document; ClosedError if the peer closed."""
        try:
            rid = self.send(doc, db)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClosedError(f"send failed: {e}") from e
        msg = w.recv_message(self.sock, timeout)
        if msg is None:
            raise ClosedError("connection closed without a reply")
        assert msg.response_to == rid, f"reply to {msg.response_to}, expected {rid}"
        return msg.doc

    def try_command(self, doc: dict, db: str = "admin", timeout: float = 10.0) -> dict | None:
        """command(), but None when the connection was closed (or reset) instead."""
        try:
            return self.command(doc, db, timeout)
        except (ClosedError, OSError):
            return None

    def hello(self, **extra) -> dict:
        return self.command({"hello": 1, **extra})

    def auth(self, user: str, password: str, mechanism: str = "SCRAM-SHA-256", db: str = "admin",
             speculative: bool = False, timeout: float = 30.0) -> dict:
        """Run a whole SCRAM conversation; returns the last reply (ok: 1 on success, otherwise
        the error reply). With `speculative`, the first step rides in a hello."""
        scram = ScramClient(mechanism, user, password)
        start = {"saslStart": 1, "mechanism": mechanism, "payload": Binary(scram.first()),
                 "options": {"skipEmptyExchange": True}}
        if speculative:
            reply = self.command({"hello": 1, "saslSupportedMechs": f"{db}.{user}",
                                  "speculativeAuthenticate": {**start, "db": db}}, timeout=timeout)
            if reply.get("ok") != 1:
                return reply
            step = reply.get("speculativeAuthenticate")
            if step is None:
                return {"ok": 0, "code": AUTHENTICATION_FAILED, "errmsg": "no speculativeAuthenticate in hello",
                        "hello": reply}
        else:
            step = self.command(start, db=db, timeout=timeout)
            if step.get("ok") != 1:
                return step
        reply = self.command({"saslContinue": 1, "conversationId": step["conversationId"],
                              "payload": Binary(scram.final(bytes(step["payload"])))}, db=db, timeout=timeout)
        if reply.get("ok") != 1:
            return reply
        scram.verify(bytes(reply["payload"]))
        if not reply.get("done"):
            reply = self.command({"saslContinue": 1, "conversationId": step["conversationId"],
                                  "payload": Binary(b"")}, db=db, timeout=timeout)
            assert reply.get("ok") != 1 or reply.get("done"), reply
        return reply


def refused_before_reply(port: int, source: str, host: str = "127.0.0.1", timeout: float = 5.0) -> bool:
    """Connect from `source`, send a hello, and report whether the gateway closed the connection
    without any reply (True) or answered (False). A connect() that is refused or reset counts as
    closed."""
    try:
        conn = RawConn(port, source=source, host=host, timeout=timeout)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    with conn:
        try:
            conn.sock.sendall(w.op_msg({"hello": 1, "$db": "admin"}))
        except (BrokenPipeError, ConnectionResetError):
            return True
        try:
            msg = w.recv_message(conn.sock, timeout)
        except TimeoutError:
            raise AssertionError(f"gateway neither answered nor closed a connection from {source} within {timeout}s")
        return msg is None


# ---------------------------------------------------------------------------
# Metrics


def metrics_text(gw: Gateway) -> str:
    assert gw.metrics_port, "gateway started without --metrics-listen"
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(gw: Gateway, name: str, labels: str | None = None) -> float:
    """Value of `name` (with exactly `labels`, e.g. 'command="saslStart"'), 0 when absent."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in metrics_text(gw).splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    return 0.0


# ---------------------------------------------------------------------------
# A throwaway PKI (cryptography)


@dataclass
class Pki:
    dir: Path
    ca: Path            # CA certificate PEM (tlsCAFile)
    server_cert: Path   # 127.0.0.1 / ::1 / localhost, signed by ca
    server_key: Path    # PKCS#8 PEM
    client_pem: Path    # client certificate + key in one PEM (tlsCertificateKeyFile), signed by ca
    other_ca: Path      # an unrelated CA: trusts nothing here

    def key_body_lines(self) -> list[str]:
        """The base64 lines of the server's private key PEM (what must never be logged)."""
        return [ln for ln in self.server_key.read_text().splitlines() if ln and not ln.startswith("-----")]


def make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mongomux tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def new_key():
        return ec.generate_private_key(ec.SECP256R1())

    def ca_cert(cn):
        key = new_key()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=True, crl_sign=True,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        return cert, key

    def leaf(cn, ca, ca_key, server: bool):
        key = new_key()
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                                          encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    def pem(cert):
        return cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca, ca_key = ca_cert("mongomux test CA")
    other, _ = ca_cert("unrelated CA")
    server, server_key = leaf("localhost", ca, ca_key, server=True)
    client, client_key = leaf("mongomux test client", ca, ca_key, server=False)
    paths = Pki(folder, folder / "ca.pem", folder / "server.pem", folder / "server.key",
                folder / "client.pem", folder / "other-ca.pem")
    paths.ca.write_bytes(pem(ca))
    paths.other_ca.write_bytes(pem(other))
    paths.server_cert.write_bytes(pem(server) + pem(ca))
    paths.server_key.write_bytes(key_pem(server_key))
    paths.server_key.chmod(0o600)
    paths.client_pem.write_bytes(pem(client) + key_pem(client_key))
    return paths


# ---------------------------------------------------------------------------
# Gateways a test starts for itself


class GatewayFactory:
    """Starts gateways for one test and stops every one of them at teardown."""

    def __init__(self, logdir: Path, default_upstream):
        self.logdir = logdir
        self.upstream = default_upstream
        self.started: list[Gateway] = []
        self.seq = 0

    def __call__(self, *extra_args, upstream=None, name: str | None = None, metrics: bool = True,
                 **kw) -> Gateway:
        self.seq += 1
        name = name or f"mongomux-sec-{os.getpid()}-{self.seq}-{secrets.token_hex(2)}"
        gw = start_gateway(upstream or self.upstream, self.logdir, name=name,
                           extra_args=tuple(str(a) for a in extra_args), metrics=metrics, **kw)
        self.started.append(gw)
        return gw

    def stop_all(self):
        for gw in self.started:
            try:
                gw.proc.stop()
            except AssertionError:
                pass


def sighup(gw: Gateway) -> None:
    os.kill(gw.pid, signal.SIGHUP)


def timed(fn, *a, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    v = fn(*a, **kw)
    return time.perf_counter() - t, v
