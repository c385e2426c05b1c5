"""OP_COMPRESSED for a member, as mongod does it (MongoDB wire protocol reference, "OP_COMPRESSED"):
`int32 originalOpcode, int32 uncompressedSize, uint8 compressorId, compressed message`, the
wrapped message being everything after the original header. No I/O.

Codecs: zlib from the standard library, zstd from `zstandard`, snappy from `python-snappy`
(tests/python/requirements.txt); a codec whose module is missing is simply not offered.
A frame that does not unwrap (unknown or disabled compressor, a size out of bounds or not as
declared, a payload the codec refuses) raises `wire.ProtocolError`: the member drops the
connection, as mongod does.
"""

from __future__ import annotations

import struct
import zlib

from . import wire

ENVELOPE = struct.Struct("<iiB")  # originalOpcode, uncompressedSize, compressorId

IDS = {"snappy": 1, "zlib": 2, "zstd": 3}
NAMES = {v: k for k, v in IDS.items()}


def _codecs() -> dict:
    """name -> (compress, decompress(data, size)) for each codec whose module is importable."""
    out = {"zlib": (lambda b: zlib.compress(b, 6), _zlib_decompress)}
    try:
        import zstandard

        out["zstd"] = (lambda b: zstandard.ZstdCompressor().compress(b),
                       lambda b, n: zstandard.ZstdDecompressor().decompress(b, max_output_size=n))
    except ImportError:
        pass
    try:
        import snappy

        out["snappy"] = (snappy.compress, lambda b, n: snappy.decompress(b))
    except ImportError:
        pass
    return out


def _zlib_decompress(data: bytes, size: int) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, size + 1)  # at most one byte beyond the declaration: enough to refuse
    if not d.eof:
        raise ValueError("zlib stream does not end where declared")
    return out


CODECS = _codecs()
# What a member offers unless told otherwise: every codec it can run.
DEFAULT = [n for n in ("zlib", "zstd", "snappy") if n in CODECS]


def unwrap(head: bytes, rest: bytes, enabled: list[str]) -> tuple[str, bytes, bytes]:
    """An OP_COMPRESSED frame -> (compressor name, original header, original rest)."""
    _, request_id, response_to, _ = wire.check_header(head)
    if len(rest) < ENVELOPE.size:
        raise wire.ProtocolError("OP_COMPRESSED shorter than its envelope")
    opcode, size, cid = ENVELOPE.unpack_from(rest)
    name = NAMES.get(cid)
    if name is None or name not in enabled or name not in CODECS:
        raise wire.ProtocolError(f"compressor id {cid} not enabled on this member")
    if not 0 <= size <= wire.MAX_MESSAGE_SIZE - wire.HEADER.size or opcode == wire.OP_COMPRESSED:
        raise wire.ProtocolError(f"OP_COMPRESSED declares {size} bytes of opcode {opcode}")
    try:
        body = CODECS[name][1](rest[ENVELOPE.size:], size)
    except Exception as e:  # every codec's own error type means the same: corrupt payload
        raise wire.ProtocolError(f"{name} payload does not decompress: {e!r}") from e
    if len(body) != size:
        raise wire.ProtocolError(f"{name} payload holds {len(body)} bytes, not the declared {size}")
    return name, wire.HEADER.pack(wire.HEADER.size + size, request_id, response_to, opcode), body


def wrap(frame: bytes, name: str) -> bytes:
    """A whole message wrapped in OP_COMPRESSED with compressor `name`."""
    _, request_id, response_to, opcode = wire.HEADER.unpack_from(frame)
    body = frame[wire.HEADER.size:]
    payload = ENVELOPE.pack(opcode, len(body), IDS[name]) + CODECS[name][0](body)
    return wire.HEADER.pack(wire.HEADER.size + len(payload), request_id, response_to,
                            wire.OP_COMPRESSED) + payload
