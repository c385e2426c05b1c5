"""Upstream compression (issue 13, the URI's `compressors`): the gateway offers the URI's list in
the hello of each pooled connection, compresses what it sends with the compressor the member
accepts, and unwraps the member's compressed replies; clients of the gateway see plain OP_MSG.

The members are the rsharness stand-in (rs_fixtures.py), which negotiates and answers
OP_COMPRESSED as mongod does and counts, per member, the requests that arrived compressed (by
compressor) and the bytes on its client connections. FerretDB 1.24 offers no compression, so
against it the gateway must fall back to plain messages.
"""

from __future__ import annotations

import random
import re
import time
import uuid

import bson
import pytest

from conftest import start_gateway
from rs_fixtures import make_replset  # noqa: F401 - pytest fixture

CODECS = ["zstd", "zlib", "snappy"]
FAST = {"heartbeatFrequencyMS": 500, "serverSelectionTimeoutMS": 5000}
# The gateway's log line for each pooled connection's negotiation (debug level).
NEGOTIATED = re.compile(r'upstream compression negotiated.*compressor="?(\w+)')
CONN_LOG = "info,mongomux_gateway::upstream::conn=debug"

DATA_COMMANDS = ("insert", "find", "getMore", "update", "delete", "aggregate")


@pytest.fixture
def gateways(logdir, monkeypatch):
    """gateways(upstream, uri): a gateway whose log shows each connection's compressor."""
    monkeypatch.setenv("MONGOMUX_TEST_GATEWAY_LOG", CONN_LOG)
    started = []

    def start(upstream, uri):
        gw = start_gateway(upstream, logdir, name=f"mongomux-compress-{uuid.uuid4().hex[:4]}",
                           upstream_uri=uri, credentials_in_env=False)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.proc.stop()


def negotiated(gw) -> set[str]:
    """The compressors the gateway's pooled connections settled on, from its log."""
    return set(NEGOTIATED.findall(gw.proc.log.read_text(errors="replace")))


def record(i: int) -> dict:
    """An order-like document: repeated keys, varied values, as application data is."""
    rnd = random.Random(i)
    return {"_id": i, "customer": f"customer-{rnd.randrange(10_000):05d}", "status": rnd.choice(["new", "paid", "shipped"]),
            "lines": [{"sku": f"SKU-{rnd.randrange(100_000):06d}", "qty": rnd.randrange(1, 9),
                       "price": round(rnd.uniform(1, 500), 2)} for _ in range(5)]}


def big_document(_id: str, size: int) -> dict:
    """About `size` bytes of BSON: records, and 1/16 of random bytes (hashes, ids) that do not
    compress."""
    items, n = [], size // 16
    while n < size:
        items.append(record(len(items)))
        n += len(bson.encode(items[-1])) + 8  # + the array index key
    return {"_id": _id, "items": items, "blob": random.Random(_id).randbytes(size // 16)}


def crud(client, db: str) -> dict:
    """Inserts, a large document, a multi-batch cursor, an update, a delete and an aggregate
    through `client`; returns what was checked, for the failure message."""
    coll = client[db].orders
    coll.drop()
    coll.insert_many([record(i) for i in range(1, 301)])
    big = big_document("big", 3_000_000)
    coll.insert_one(big)
    back = coll.find_one({"_id": "big"})
    assert back == big, "the large document did not come back intact"
    cursor = coll.find({"_id": {"$type": "int"}}, batch_size=40).sort("_id", 1)
    ids = [d["_id"] for d in cursor]
    assert ids == list(range(1, 301)), "the multi-batch cursor lost or repeated documents"
    assert coll.update_one({"_id": 7}, {"$set": {"status": "refunded"}}).modified_count == 1
    assert coll.find_one({"_id": 7})["status"] == "refunded"
    assert coll.delete_one({"_id": 8}).deleted_count == 1
    assert coll.count_documents({}) == 300  # 300 records - 1 deleted + the big one
    coll.drop()
    return {"ids": len(ids)}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", CODECS)
def test_crud_through_a_compressed_upstream(make_replset, gateways, codec):
    rs = make_replset()  # members offer zlib, zstd and snappy
    gw = gateways(rs.backends[0], rs.uri(compressors=codec, **FAST))
    with gw.client() as c:
        crud(c, f"compress_{codec}")
    counts = rs.counts()[rs.members[0]]
    compressed, served = counts["compressed"], counts["served"]
    data_ops = sum(served.get(name, 0) for name in DATA_COMMANDS)
    # Every data command reached the primary compressed with the URI's compressor, nothing
    # with another; the handshake and SASL steps went plain (served but not counted).
    assert set(compressed) == {codec}, counts
    assert served.get("getMore", 0) >= 5, counts
    assert compressed[codec] >= data_ops, counts
    plain_only = served.get("saslStart", 0) + served.get("saslContinue", 0) + served.get("hello", 0)
    assert plain_only > 0 and compressed[codec] <= sum(served.values()) - plain_only, counts
    assert negotiated(gw) == {codec}, negotiated(gw)


@pytest.mark.timeout(90)
def test_the_first_compressor_of_the_uri_that_the_member_accepts_is_used(make_replset, gateways):
    rs = make_replset(n=1, compressors=["snappy"])
    rs.set_compressors(["zlib", "snappy"])  # the control op, before any connection
    gw = gateways(rs.backends[0], rs.uri(compressors="zstd,zlib,snappy", **FAST))
    with gw.client() as c:
        c.compress_order.docs.insert_many([record(i) for i in range(20)])
        assert c.compress_order.docs.count_documents({}) == 20
        c.compress_order.docs.drop()
    assert set(rs.compressed(0)) == {"zlib"}, rs.counts()
    assert negotiated(gw) == {"zlib"}


@pytest.mark.timeout(90)
def test_a_member_offering_no_compression_is_spoken_to_plain(make_replset, gateways):
    rs = make_replset(compressors=[])
    gw = gateways(rs.backends[0], rs.uri(compressors="zstd", **FAST))
    with gw.client() as c:
        crud(c, "compress_none")
    assert rs.compressed(0) == {}, rs.counts()
    assert rs.served(0, "getMore") >= 5
    assert negotiated(gw) == {"none"}


@pytest.mark.timeout(90)
def test_ferretdb_directly_with_compressors_falls_back_to_plain(ferretdb, gateways):
    uri = f"mongodb://{ferretdb.username}:{ferretdb.password}@127.0.0.1:{ferretdb.port}/" \
          "?authSource=admin&compressors=zlib"
    gw = gateways(ferretdb, uri)
    with gw.client() as c:
        crud(c, "compress_ferretdb")
    assert negotiated(gw) == {"none"}


@pytest.mark.timeout(90)
def test_bytes_on_the_wire_for_a_1mb_document(make_replset, gateways):
    """The figure for docs/configuration.md: bytes between gateway and member to write and read
    back one 1 MB document, plain and with each compressor. Printed; only "smaller" is asserted."""
    rs = make_replset(n=1)
    doc = big_document("mb", 1_000_000)
    rows = []
    for codec in ["none", *CODECS]:
        opts = dict(FAST, compressors=codec) if codec != "none" else FAST
        gw = gateways(rs.backends[0], rs.uri(**opts))
        with gw.client() as c:
            coll = c.compress_bench.docs
            coll.delete_many({})
            coll.find_one({})  # pool connections made and authenticated before counting
            rs.reset_counts()
            start = time.monotonic()
            coll.insert_one(doc)
            assert coll.find_one({"_id": "mb"}) == doc
            elapsed = time.monotonic() - start
            wire = rs.wire_bytes(0)
            coll.drop()
        gw.proc.stop()
        rows.append((codec, wire["in"], wire["out"], elapsed))
    plain_in, plain_out = rows[0][1], rows[0][2]
    print("\nbytes gateway<->member for insert + find of one 1 MB document "
          f"(BSON {len(bson.encode(doc)):,} bytes, 1/16 of it random):")
    for codec, sent, received, elapsed in rows:
        print(f"  {codec:>6}: to member {sent:>9,} ({sent / plain_in:5.1%}), "
              f"from member {received:>9,} ({received / plain_out:5.1%}), {elapsed * 1000:6.1f} ms")
    for codec, sent, received, _ in rows[1:]:
        assert sent < plain_in / 2 and received < plain_out / 2, rows
