"""Frames a replica-set member reads and writes: OP_MSG, and OP_QUERY/OP_REPLY for legacy hellos.

Layouts follow the MongoDB wire protocol reference ("OP_MSG", "Legacy opcodes"): a 16-byte
header (messageLength, requestID, responseTo, opCode, all little-endian int32), then the
opcode's body. Parsing here is pure (bytes in, values out) so the member's I/O code stays
small; a malformed frame raises `ProtocolError` and the member drops that connection, as a
server must when it can no longer trust the byte stream.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

import bson
from bson.codec_options import CodecOptions, DatetimeConversion

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

HEADER = struct.Struct("<iiii")
# What a member advertises as maxMessageSizeBytes; anything longer is refused before reading.
MAX_MESSAGE_SIZE = 48_000_000

CHECKSUM_PRESENT = 1 << 0
MORE_TO_COME = 1 << 1
EXHAUST_ALLOWED = 1 << 16

# OP_QUERY flag bit 2: the legacy way of saying "a secondary may answer this".
QUERY_SECONDARY_OK = 1 << 2

# Bodies are decoded and re-encoded when relayed: keep every value as it came (Int64 stays
# Int64, UUIDs stay Binary, dates outside Python's datetime range stay DatetimeMS).
CODEC = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)

_ids = itertools.count(1)


def next_id() -> int:
    """Request ids of frames a member originates (replies, relayed requests)."""
    return next(_ids) & 0x7FFFFFFF


class ProtocolError(Exception):
    """The peer sent bytes that are not a frame we can parse."""


@dataclass
class Message:
    request_id: int
    response_to: int
    opcode: int
    # OP_MSG: flag bits, the body (section kind 0) and kind-1 sections kept as raw bytes.
    flags: int = 0
    body: dict = field(default_factory=dict)
    sequences: bytes = b""
    # OP_QUERY: the namespace and whether the secondaryOk bit was set.
    namespace: str = ""

    @property
    def command(self) -> str:
        return next(iter(self.body), "")


def check_header(head: bytes) -> tuple[int, int, int, int]:
    length, request_id, response_to, opcode = HEADER.unpack(head)
    if length < HEADER.size or length > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"message length {length} out of bounds")
    return length, request_id, response_to, opcode


def _cstring(buf: bytes, at: int) -> tuple[str, int]:
    end = buf.index(b"\0", at)
    return buf[at:end].decode(), end + 1


def parse(head: bytes, rest: bytes) -> Message:
    _, request_id, response_to, opcode = check_header(head)
    try:
        if opcode == OP_MSG:
            return _parse_msg(request_id, response_to, rest)
        if opcode == OP_QUERY:
            return _parse_query(request_id, response_to, rest)
    except (ValueError, IndexError, struct.error, bson.errors.BSONError) as e:
        raise ProtocolError(f"malformed opcode {opcode}: {e}") from e
    raise ProtocolError(f"opcode {opcode} not supported by the harness")


def _parse_msg(request_id: int, response_to: int, rest: bytes) -> Message:
    (flags,) = struct.unpack_from("<I", rest, 0)
    end = len(rest) - (4 if flags & CHECKSUM_PRESENT else 0)
    at, body, seqs = 4, None, bytearray()
    while at < end:
        kind = rest[at]
        (size,) = struct.unpack_from("<i", rest, at + 1)
        if kind == 0:
            body = bson.decode(rest[at + 1:at + 1 + size], CODEC)
        elif kind == 1:
            seqs += rest[at:at + 1 + size]
        else:
            raise ValueError(f"section kind {kind}")
        at += 1 + size
    if body is None:
        raise ValueError("no body section")
    return Message(request_id, response_to, OP_MSG, flags=flags, body=body, sequences=bytes(seqs))


def _parse_query(request_id: int, response_to: int, rest: bytes) -> Message:
    (flags,) = struct.unpack_from("<i", rest, 0)
    namespace, at = _cstring(rest, 4)
    at += 8  # numberToSkip, numberToReturn
    (size,) = struct.unpack_from("<i", rest, at)
    query = bson.decode(rest[at:at + size], CODEC)
    # Drivers may wrap a command as {$query: cmd, $readPreference: ...}.
    if "$query" in query:
        inner = dict(query["$query"])
        if "$readPreference" in query:
            inner["$readPreference"] = query["$readPreference"]
        query = inner
    return Message(request_id, response_to, OP_QUERY, flags=flags, body=query, namespace=namespace)


def op_msg(body: dict, response_to: int = 0, flags: int = 0, sequences: bytes = b"",
           request_id: int | None = None) -> bytes:
    payload = struct.pack("<I", flags) + b"\0" + bson.encode(body) + sequences
    rid = next_id() if request_id is None else request_id
    return HEADER.pack(HEADER.size + len(payload), rid, response_to, OP_MSG) + payload


def op_reply(doc: dict, response_to: int) -> bytes:
    # responseFlags 0 (AwaitCapable is irrelevant to a command reply), cursorID 0, startingFrom 0.
    payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(doc)
    return HEADER.pack(HEADER.size + len(payload), next_id(), response_to, OP_REPLY) + payload


def reply_body(head: bytes, rest: bytes) -> tuple[int, dict]:
    """The flags and body of an OP_MSG reply read from a backend."""
    _, _, _, opcode = check_header(head)
    if opcode != OP_MSG:
        raise ProtocolError(f"backend replied with opcode {opcode}")
    msg = _parse_msg(0, 0, rest)
    return msg.flags, msg.body
