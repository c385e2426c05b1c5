"""Helpers for the security tests (issue 3): gateway users, config files, a throwaway PKI,
and metrics. The raw client those tests use to connect from a chosen source address and log in
with SCRAM (RawConn, ScramClient) lives in mongowire.py, the one raw-wire client.

Nothing here is a secret worth keeping: every password and key is generated per run for
servers that listen on loopback only and live in pytest's temporary folder.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bson import Int64
from bson.binary import Binary, UuidRepresentation
from pymongo.errors import OperationFailure

from conftest import ROOT, Gateway, _binary, start_gateway
from mongowire import RawConn

UNAUTHORIZED = 13
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


@pytest.fixture
def gateways(logdir, ferretdb):
    """A GatewayFactory in front of the session's FerretDB, for one test (import it where used)."""
    f = GatewayFactory(logdir, ferretdb)
    yield f
    f.stop_all()


def sighup(gw: Gateway) -> None:
    os.kill(gw.pid, signal.SIGHUP)


def timed(fn, *a, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    v = fn(*a, **kw)
    return time.perf_counter() - t, v


def logged_in(gw, user) -> RawConn:
    """A raw wire connection to `gw`, logged in as `user`."""
    raw = RawConn(gw.port)
    assert raw.auth(user.name, user.password)["ok"] == 1
    return raw


def transaction_across(conns: list, k: int, db: str) -> str:
    """Transaction `k`, in a session of its own, as a plain driver's pool behind a round-robin
    balancer sends it: started on conns[0] (inserts `k-a`), continued on conns[1] (`k-b`),
    committed (even k) or aborted (odd k) on conns[2]. Returns the ending command's name."""
    txn = {"lsid": lsid(), "txnNumber": Int64(1), "autocommit": False}
    r = conns[0].command({"insert": "docs", "documents": [{"_id": f"{k}-a"}], "startTransaction": True, **txn},
                         db=db)
    assert r.get("ok") == 1, (k, r)
    r = conns[1].command({"insert": "docs", "documents": [{"_id": f"{k}-b"}], **txn}, db=db)
    assert r.get("ok") == 1, (k, r)
    end = "commitTransaction" if k % 2 == 0 else "abortTransaction"
    r = conns[2].command({end: 1, **txn}, db="admin")
    assert r.get("ok") == 1, (k, end, r)
    return end


def lsid(u: uuid.UUID | None = None) -> dict:
    """A logical session id as drivers send it: {id: UUID (binary subtype 4)}."""
    return {"id": Binary.from_uuid(u or uuid.uuid4(), UuidRepresentation.STANDARD)}


def upstream_cursor_alive(upstream, db: str, coll: str, cid: int) -> bool:
    """Asks the upstream itself, bypassing the gateway, whether cursor `cid` is still open."""
    try:
        upstream.client()[db].command({"getMore": Int64(cid), "collection": coll, "batchSize": 1})
        return True
    except OperationFailure as e:
        assert e.code == CURSOR_NOT_FOUND, e.details
        return False
