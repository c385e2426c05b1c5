"""Hostile and broken clients, over raw sockets, against the gateway.

Each case gets an error reply or a closed connection (never a hang), and then:
the gateway still serves a normal pymongo client with correct answers, and
FerretDB never sees more connections from the gateway than --pool-size,
counted from /proc/net/tcp (see procnet.py), sampled during the whole test.
"""

import random
import socket
import struct
import threading
import time

import bson
import pytest
from pymongo.errors import OperationFailure

import mongowire as w
from procnet import MaxSampler, upstream_connections

REPLY_DEADLINE = 5.0
MALFORMED_CODES = {9, 22}  # FailedToParse, InvalidBSON (docs/dev/gateway-contract.md)
UNSUPPORTED_OP_QUERY = 352
CHECKOUT_TIMEOUT = 262  # ExceededTimeLimit: pool exhausted

HEALTH_DOCS = 200


@pytest.fixture(scope="module")
def seeded(gateway, ferretdb):
    """Small docs for correctness checks, and ~8 MB of big docs for large replies."""
    c = ferretdb.client()
    db = c.bad_input
    db.docs.drop()
    db.docs.insert_many([{"_id": i, "tag": f"doc-{i}"} for i in range(HEALTH_DOCS)])
    db.big.drop()
    pad = "y" * 4096
    db.big.insert_many([{"_id": i, "pad": pad} for i in range(2_000)])
    yield db.name
    c.drop_database(db.name)
    c.close()


@pytest.fixture
def healthy(gateway, ferretdb, clients, seeded):
    """Wraps a test: samples upstream connections throughout, then checks the gateway still works."""
    with MaxSampler(ferretdb.port, gateway.pid) as sampler:
        yield
        assert gateway.proc.alive(), "gateway process died"
        c = clients(gateway, connectTimeoutMS=5000, socketTimeoutMS=10_000)
        assert c.admin.command("ping")["ok"] == 1
        coll = c[seeded].docs
        for i in random.sample(range(HEALTH_DOCS), 20):
            assert coll.find_one({"_id": i}) == {"_id": i, "tag": f"doc-{i}"}
        assert coll.count_documents({}) == HEALTH_DOCS
    assert sampler.max <= gateway.upstream_limit, \
        f"pool size {gateway.pool_size} + monitoring, but FerretDB saw {sampler.describe()}"


def reply_or_close(sock, what: str):
    """The next message, or None if the gateway closed; fails if it does neither in time."""
    try:
        return w.recv_message(sock, REPLY_DEADLINE)
    except TimeoutError:
        pytest.fail(f"{what}: the gateway neither replied nor closed the connection within {REPLY_DEADLINE}s")


def assert_error_doc(msg, request_id: int):
    assert msg.response_to == request_id, f"responseTo {msg.response_to}, expected {request_id}"
    doc = msg.doc
    assert doc.get("ok") == 0 or "$err" in doc, f"expected an error reply, got {doc}"
    return doc


# --- framing the byte stream cannot recover from: the connection must close ----


@pytest.mark.parametrize("nbytes", [1, 8, 15])
def test_truncated_header_then_close(gateway, healthy, nbytes):
    sock = w.connect(gateway.port)
    sock.sendall(w.op_msg({"ping": 1, "$db": "admin"})[:nbytes])
    sock.shutdown(socket.SHUT_WR)
    assert w.wait_closed(sock, REPLY_DEADLINE), "gateway kept a half-closed, truncated connection open"
    sock.close()


def test_truncated_body_then_close(gateway, healthy):
    msg = w.op_msg({"insert": "docs", "documents": [{"x": "z" * 500}], "$db": "bad_input"})
    sock = w.connect(gateway.port)
    sock.sendall(msg[: len(msg) // 2])
    sock.shutdown(socket.SHUT_WR)
    assert w.wait_closed(sock, REPLY_DEADLINE), "gateway kept a half-closed, truncated connection open"
    sock.close()


@pytest.mark.parametrize("length", [48_000_001, 2**31 - 1])
def test_declared_length_over_maximum(gateway, healthy, length):
    rid = w.next_request_id()
    sock = w.connect(gateway.port)
    # Only a few bytes follow: the gateway must decide from the header alone, not wait for 48 MB.
    sock.sendall(w.header(length, rid, 0, w.OP_MSG) + b"\x00" * 64)
    msg = reply_or_close(sock, f"length {length}")
    if msg is not None:
        assert_error_doc(msg, rid)
        assert w.wait_closed(sock, REPLY_DEADLINE), "after an over-long length the stream cannot be trusted: close it"
    sock.close()


@pytest.mark.parametrize("length", [0, 4, 15, -1, -(2**31)])
def test_declared_length_under_header_size(gateway, healthy, length):
    rid = w.next_request_id()
    sock = w.connect(gateway.port)
    sock.sendall(w.header(length, rid, 0, w.OP_MSG) + b"\x00" * 32)
    msg = reply_or_close(sock, f"length {length}")
    if msg is not None:
        assert_error_doc(msg, rid)
        assert w.wait_closed(sock, REPLY_DEADLINE), "after a length < 16 the stream cannot be trusted: close it"
    sock.close()


# --- well-framed but malformed: an error reply, and the connection stays usable ---


def _doc(body: bytes) -> bytes:
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _with_string_length(doc: dict, key: str, fake_len: int) -> bytes:
    raw = bytearray(bson.encode(doc))
    at = raw.index(b"\x02" + key.encode() + b"\x00") + len(key) + 2
    raw[at:at + 4] = struct.pack("<i", fake_len)
    return bytes(raw)


MALFORMED_OP_MSG_BODIES = {
    "doc length overruns message": struct.pack("<I", 0) + b"\x00" + struct.pack("<i", 1000) + b"\x10a\x00\x01\x00\x00\x00\x00",
    "doc length below 5": struct.pack("<I", 0) + b"\x00" + struct.pack("<i", 3) + b"\x00\x00\x00\x00",
    "unknown element type": w.op_msg_body(_doc(b"\x99ping\x00" + struct.pack("<i", 1))),
    "missing terminator": w.op_msg_body(bson.encode({"ping": 1, "$db": "admin"})[:-1] + b"\x01"),
    "string length lies": w.op_msg_body(_with_string_length({"ping": 1, "$db": "admin"}, "$db", 1000)),
    "unknown section kind": w.op_msg_body({"ping": 1, "$db": "admin"}) + b"\x07junk",
    "kind 1 size overruns": w.op_msg_body({"insert": "docs", "$db": "bad_input"})
    + b"\x01" + struct.pack("<i", 5000) + b"documents\x00" + bson.encode({"x": 1}),
    "no sections": struct.pack("<I", 0),
    "unknown required flag bit": w.op_msg_body({"ping": 1, "$db": "admin"}, flags=1 << 3),
}


@pytest.mark.parametrize("case", list(MALFORMED_OP_MSG_BODIES))
def test_malformed_op_msg_gets_error_reply(gateway, healthy, case):
    rid = w.next_request_id()
    sock = w.connect(gateway.port)
    sock.sendall(w.frame(w.OP_MSG, MALFORMED_OP_MSG_BODIES[case], rid))
    msg = reply_or_close(sock, case)
    assert msg is not None, f"{case}: the frame was well-formed, so the gateway should reply, not close"
    assert msg.opcode == w.OP_MSG
    doc = assert_error_doc(msg, rid)
    assert doc.get("code") in MALFORMED_CODES, f"{case}: expected code 9 or 22, got {doc}"
    sock.close()


def test_connection_survives_malformed_bson(gateway, healthy):
    """House style: close only when the byte stream can no longer be trusted."""
    sock = w.connect(gateway.port)
    rid = w.next_request_id()
    sock.sendall(w.frame(w.OP_MSG, MALFORMED_OP_MSG_BODIES["unknown element type"], rid))
    msg = reply_or_close(sock, "malformed BSON")
    assert msg is not None and msg.response_to == rid
    rid = w.next_request_id()
    sock.sendall(w.op_msg({"ping": 1, "$db": "admin"}, request_id=rid))
    msg = reply_or_close(sock, "ping after malformed BSON")
    assert msg is not None, "gateway closed a connection whose framing was still intact"
    assert msg.response_to == rid and msg.doc.get("ok") == 1, msg
    sock.close()


@pytest.mark.parametrize("opcode", [9999, 2001, 2002, w.OP_REPLY])
def test_unknown_or_legacy_opcode(gateway, healthy, opcode):
    rid = w.next_request_id()
    sock = w.connect(gateway.port)
    sock.sendall(w.frame(opcode, b"\x00" * 24, rid))
    msg = reply_or_close(sock, f"opcode {opcode}")
    if msg is not None:
        assert_error_doc(msg, rid)
    sock.close()


def test_op_compressed_without_negotiation(gateway, healthy):
    inner = w.op_msg_body({"ping": 1, "$db": "admin"})
    body = struct.pack("<iiB", w.OP_MSG, len(inner), 1) + inner  # claims snappy; it is not
    rid = w.next_request_id()
    sock = w.connect(gateway.port)
    sock.sendall(w.frame(w.OP_COMPRESSED, body, rid))
    msg = reply_or_close(sock, "OP_COMPRESSED")
    if msg is not None:
        assert_error_doc(msg, rid)
    sock.close()


@pytest.mark.parametrize("compressor", [1, 2, 3, 77])
def test_unsupported_compressor_is_not_supported(gateway, healthy, compressor):
    """snappy, zlib, zstd (never negotiated) and unknown ids: CommandNotSupported (115), not a
    parse error; the connection carries on and a noop-compressed message still works."""
    inner = w.op_msg_body({"ping": 1, "$db": "admin"})
    sock = w.connect(gateway.port)
    rid = w.next_request_id()
    body = struct.pack("<iiB", w.OP_MSG, len(inner), compressor) + inner
    sock.sendall(w.frame(w.OP_COMPRESSED, body, rid))
    doc = assert_error_doc(reply_or_close(sock, "OP_COMPRESSED") or pytest.fail("closed"), rid)
    assert doc["code"] == 115 and doc["codeName"] == "CommandNotSupported", doc
    rid = w.next_request_id()
    body = struct.pack("<iiB", w.OP_MSG, len(inner), 0) + inner
    sock.sendall(w.frame(w.OP_COMPRESSED, body, rid))
    msg = reply_or_close(sock, "noop OP_COMPRESSED")
    assert msg is not None and msg.doc.get("ok") == 1, msg and msg.doc
    sock.close()


# --- OP_QUERY that is not a handshake --------------------------------------------

NON_HANDSHAKE_QUERIES = {
    "find on $cmd": ("bad_input.$cmd", {"find": "docs", "filter": {}}),
    "ping on admin.$cmd": ("admin.$cmd", {"ping": 1}),
    "legacy collection query": ("bad_input.docs", {}),
    "saslStart on admin.$cmd": ("admin.$cmd", {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": b""}),
    "isMaster on a collection": ("bad_input.docs", {"isMaster": 1}),
}


@pytest.mark.parametrize("case", list(NON_HANDSHAKE_QUERIES))
def test_op_query_not_a_handshake(gateway, healthy, case):
    ns, query = NON_HANDSHAKE_QUERIES[case]
    rid = w.next_request_id()
    sock = w.connect(gateway.port)
    sock.sendall(w.op_query(ns, query, request_id=rid))
    msg = reply_or_close(sock, case)
    if msg is not None:
        assert msg.opcode == w.OP_REPLY, f"an OP_QUERY must be answered with OP_REPLY, got opcode {msg.opcode}"
        doc = assert_error_doc(msg, rid)
        if "code" in doc:
            assert doc["code"] == UNSUPPORTED_OP_QUERY, doc
        assert not any(k in doc for k in ("cursor", "firstBatch")), f"{case} was executed: {doc}"
    sock.close()


# --- a client that vanishes while its large reply is on the way -------------------


def _hello(sock):
    rid = w.next_request_id()
    sock.sendall(w.op_msg({"hello": 1, "$db": "admin", "client": {"application": {"name": "bad-input"}}},
                          request_id=rid))
    msg = w.recv_message(sock, REPLY_DEADLINE)
    assert msg is not None and msg.doc.get("ok") == 1, msg


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["reset", "fin", "partial-read"])
def test_disconnect_before_reading_large_reply(gateway, ferretdb, clients, healthy, seeded, how):
    """Clients ask for ~8 MB and vanish; meanwhile another client's answers must stay correct.

    An upstream connection whose reply was not fully read is dirty: handed to
    another client, that client would get the big reply instead of its own.
    """
    stop = threading.Event()
    errors, pool_busy = [], []
    checker = clients(gateway, socketTimeoutMS=30_000)

    def check_loop():
        coll = checker[seeded].docs
        while not stop.is_set():
            i = random.randrange(HEALTH_DOCS)
            try:
                doc = coll.find_one({"_id": i})
            except OperationFailure as e:
                # Abandoned big finds hold their upstream connection until FerretDB has
                # answered them, so a burst of them may exhaust the pool for a while:
                # a checkout timeout then is the documented answer, not a failure here.
                if e.code == CHECKOUT_TIMEOUT:
                    pool_busy.append(i)
                    continue
                errors.append(repr(e))
                return
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
                return
            if doc != {"_id": i, "tag": f"doc-{i}"}:
                errors.append(f"asked for _id {i}, got {str(doc)[:200]}")

    threads = [threading.Thread(target=check_loop, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(3 * gateway.pool_size):
            sock = w.connect(gateway.port)
            _hello(sock)
            sock.sendall(w.op_msg({"find": "big", "filter": {}, "batchSize": 100_000, "$db": seeded}))
            if how == "reset":
                w.abort(sock)
            elif how == "fin":
                sock.close()
            else:
                # The reply has started to arrive. Generous deadline: FerretDB may still be
                # busy with the big finds of the clients that vanished before.
                sock.settimeout(30)
                assert sock.recv(100)
                w.abort(sock)
            time.sleep(0.05)
    finally:
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    # Once things settle, the gateway holds at most pool-size upstream connections.
    assert upstream_connections(ferretdb.port, gateway.pid) <= gateway.upstream_limit
