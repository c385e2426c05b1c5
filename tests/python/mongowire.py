"""Hand-built MongoDB wire messages for tests that must send what no driver sends.

Only what the tests need: build OP_MSG / OP_QUERY (and arbitrary raw frames),
read one reply (OP_MSG or OP_REPLY) with a deadline, and tell "reply" from
"connection closed". Layouts follow the MongoDB wire protocol docs
(header: four little-endian int32 messageLength, requestID, responseTo, opCode).
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from dataclasses import dataclass, field

import bson

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

HEADER = struct.Struct("<iiii")
MAX_MESSAGE_SIZE = 48_000_000

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
