"""The tests' one raw-wire MongoDB client, for what no driver does.

Two layers:
- Frames: build OP_MSG / OP_QUERY (and arbitrary raw frames), read one reply
  (OP_MSG or OP_REPLY) with a deadline and a size bound, and tell "reply" from
  "connection closed". Layouts follow the MongoDB wire protocol docs (header:
  four little-endian int32 messageLength, requestID, responseTo, opCode).
- RawConn: one connection bound to a chosen source address, sending commands
  and logging in with SCRAM (ScramClient). iam_fixtures.AwsConn builds its
  MONGODB-AWS steps on it.

Why a hand-written SCRAM client: pymongo cannot bind its sockets to a source
address, and the gateway's access list, per-source limits and failed-auth
delays are all keyed by source address; tests that need 127.0.0.2 or 127.0.0.3
as the client's address speak the protocol themselves. It follows RFC 5802 /
RFC 7677 and the MongoDB auth spec (SCRAM-SHA-1 hashes the password as
md5("user:mongo:password") first; SCRAM-SHA-256 uses the password as is, here
ASCII only, so SASLprep is the identity). Like the Rust kit
(crates/testkit), it finishes with the extra empty saslContinue FerretDB waits
for, and is independent of the gateway's own SCRAM code.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import itertools
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field

import bson
from bson.binary import Binary

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

HEADER = struct.Struct("<iiii")
MAX_MESSAGE_SIZE = 48_000_000

AUTHENTICATION_FAILED = 18

_request_ids = itertools.count(1000)


def next_request_id() -> int:
    return next(_request_ids)


def header(length: int, request_id: int, response_to: int, opcode: int) -> bytes:
    return HEADER.pack(length, request_id, response_to, opcode)


def frame(opcode: int, body: bytes, request_id: int | None = None, response_to: int = 0) -> bytes:
    """A well-formed frame: header with the correct length followed by body."""
    rid = next_request_id() if request_id is None else request_id
    return header(HEADER.size + len(body), rid, response_to, opcode) + body


def op_msg_body(doc: dict | bytes, flags: int = 0) -> bytes:
    """flagBits, then one kind-0 section holding `doc` (a dict, or raw bytes used as is)."""
    raw = doc if isinstance(doc, (bytes, bytearray)) else bson.encode(doc)
    return struct.pack("<I", flags) + b"\x00" + bytes(raw)


def op_msg(doc: dict | bytes, flags: int = 0, request_id: int | None = None) -> bytes:
    return frame(OP_MSG, op_msg_body(doc, flags), request_id)


def op_query(
    full_collection_name: str,
    query: dict,
    number_to_return: int = -1,
    flags: int = 0,
    request_id: int | None = None,
) -> bytes:
    body = (
        struct.pack("<i", flags)
        + full_collection_name.encode() + b"\x00"
        + struct.pack("<ii", 0, number_to_return)
        + bson.encode(query)
    )
    return frame(OP_QUERY, body, request_id)


@dataclass
class Message:
    opcode: int
    request_id: int
    response_to: int
    flags: int = 0
    docs: list = field(default_factory=list)
    cursor_id: int = 0  # OP_REPLY only

    @property
    def doc(self) -> dict:
        assert self.docs, f"message has no document: {self!r}"
        return self.docs[0]


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes | None:
    """n bytes, or None if the peer closed (EOF / reset) first. Raises TimeoutError at the deadline."""
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete message after {len(buf)} of {n} bytes")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except socket.timeout as e:
            raise TimeoutError(f"no complete message after {len(buf)} of {n} bytes") from e
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def parse(head: bytes, body: bytes) -> Message:
    _, request_id, response_to, opcode = HEADER.unpack(head)
    if opcode == OP_MSG:
        (flags,) = struct.unpack_from("<I", body, 0)
        end = len(body) - (4 if flags & 1 else 0)
        pos, docs = 4, []
        while pos < end:
            kind = body[pos]
            pos += 1
            if kind == 0:
                (size,) = struct.unpack_from("<i", body, pos)
                docs.append(bson.decode(body[pos:pos + size]))
                pos += size
            elif kind == 1:
                (size,) = struct.unpack_from("<i", body, pos)
                section = body[pos + 4:pos + size]
                ident_end = section.index(b"\x00")
                docs.extend(bson.decode_all(section[ident_end + 1:]))
                pos += size
            else:
                raise ValueError(f"unknown OP_MSG section kind {kind}")
        return Message(opcode, request_id, response_to, flags, docs)
    if opcode == OP_REPLY:
        flags, cursor_id, _starting_from, n = struct.unpack_from("<iqii", body, 0)
        docs = bson.decode_all(body[20:])
        assert len(docs) == n, f"OP_REPLY numberReturned={n} but {len(docs)} documents"
        return Message(opcode, request_id, response_to, flags, docs, cursor_id)
    return Message(opcode, request_id, response_to, 0, [])


def recv_message(sock: socket.socket, timeout: float = 10.0) -> Message | None:
    """The next message, or None when the peer closed the connection first."""
    deadline = time.monotonic() + timeout
    head = _recv_exact(sock, HEADER.size, deadline)
    if head is None:
        return None
    length = HEADER.unpack(head)[0]
    assert HEADER.size <= length <= MAX_MESSAGE_SIZE, f"peer sent a bad length {length}"
    body = _recv_exact(sock, length - HEADER.size, deadline)
    if body is None:
        return None
    return parse(head, body)


def wait_closed(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Read and discard until the peer closes; True if it did within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def abort(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0): the harshest client disappearance."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---------------------------------------------------------------------------
# SCRAM and RawConn


def _h(mechanism: str):
    return hashlib.sha256 if mechanism == "SCRAM-SHA-256" else hashlib.sha1


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


@functools.lru_cache(maxsize=64)
def salted_password(hash_name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    """PBKDF2 of the password, cached as the MongoDB auth spec has drivers cache it: it depends
    on nothing else, and thousands of logins of one user (test_storm.py) would otherwise spend
    minutes of CPU recomputing it."""
    return hashlib.pbkdf2_hmac(hash_name, password, salt, iterations)


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
        salted = salted_password(h().name, self.password, salt, iterations)
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
    """The server closed the connection instead of answering."""


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
        rid = next_request_id()
        self.sock.sendall(op_msg(doc, request_id=rid))
        return rid

    def command(self, doc: dict, db: str = "admin", timeout: float = 10.0) -> dict:
        """Send one command and return the reply document; ClosedError if the peer closed."""
        try:
            rid = self.send(doc, db)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClosedError(f"send failed: {e}") from e
        msg = recv_message(self.sock, timeout)
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
    """Connect from `source`, send a hello, and report whether the server closed the connection
    without any reply (True) or answered (False). A connect() that is refused or reset counts as
    closed."""
    try:
        conn = RawConn(port, source=source, host=host, timeout=timeout)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    with conn:
        try:
            conn.sock.sendall(op_msg({"hello": 1, "$db": "admin"}))
        except (BrokenPipeError, ConnectionResetError):
            return True
        try:
            msg = recv_message(conn.sock, timeout)
        except TimeoutError:
            raise AssertionError(f"gateway neither answered nor closed a connection from {source} within {timeout}s")
        return msg is None
