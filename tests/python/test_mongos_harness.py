"""The mongos persona is honest: pymongo, connected straight to the routers, sees a sharded
cluster, and each fault the control channel offers is what a driver sees from a real mongos.

Like test_rs_harness.py for replica sets, this runs against rsharness directly (no gateway),
so that test_sharded.py can trust the persona as a reference.
"""

from __future__ import annotations

import threading
import time
import uuid

from bson import Binary, Int64, ObjectId
from pymongo.errors import OperationFailure

import mongowire
from conftest import wait_until
from rs_fixtures import make_mongos  # noqa: F401 (fixture)

SHUTDOWN_IN_PROGRESS = 91
FAST = {"heartbeatFrequencyMS": 500, "serverSelectionTimeoutMS": 5000}


def _raw(sc, i: int) -> mongowire.RawConn:
    host, port = sc.address(i)
    conn = mongowire.RawConn(port, host=host)
    assert conn.auth(sc.username, sc.password).get("ok") == 1
    return conn


def test_pymongo_sees_a_sharded_cluster_of_three_routers(make_mongos):
    sc = make_mongos(n=3)
    # A latency window wide enough that RTT noise on a loaded machine never leaves a router out.
    c = sc.client(seed=[0, 1, 2], localThresholdMS=10_000, **FAST)
    coll = c.mongos_harness[f"docs_{uuid.uuid4().hex[:6]}"]
    coll.insert_one({"_id": 1})
    assert coll.find_one({"_id": 1}) == {"_id": 1}
    wait_until(lambda: len(c.topology_description.known_servers) == 3, 10, what="3 routers known")
    td = c.topology_description
    assert td.topology_type_name == "Sharded"
    assert sorted(s.server_type_name for s in td.server_descriptions().values()) == ["Mongos"] * 3
    assert set(td.server_descriptions()) == {sc.address(i) for i in range(3)}
    # pymongo spreads operations over every router it knows within its latency window.
    sc.reset_counts()
    for _ in range(60):
        coll.find_one({"_id": 1})
    assert all(sc.served(i, "find") > 0 for i in range(3)), sc.counts()
    coll.drop()
    # The hello a router gives: mongos's fields, and none of a replica-set member's.
    with _raw(sc, 1) as raw:
        h = raw.hello(saslSupportedMechs=f"admin.{sc.username}")
    assert h["msg"] == "isdbgrid" and h["isWritablePrimary"] is True and h["ok"] == 1
    assert not {"setName", "hosts", "me", "primary", "secondary", "electionId", "setVersion",
                "lastWrite", "isreplicaset"} & set(h), h
    assert isinstance(h["topologyVersion"]["processId"], ObjectId)
    assert isinstance(h["topologyVersion"]["counter"], Int64)
    assert h["maxWireVersion"] == 21 and "SCRAM-SHA-256" in h["saslSupportedMechs"]
    assert h["operationTime"] == h["$clusterTime"]["clusterTime"]


def test_awaitable_hello_waits_and_quiesce_wakes_it(make_mongos):
    sc = make_mongos(n=2)
    with _raw(sc, 0) as raw:
        tv = raw.hello()["topologyVersion"]
        t0 = time.monotonic()
        h = raw.hello(topologyVersion=tv, maxAwaitTimeMS=300)
        assert time.monotonic() - t0 >= 0.25 and h["topologyVersion"] == tv
        # Quiesce bumps the router's topologyVersion: a waiting awaitable hello answers at once,
        # with ShutdownInProgress, and commands are refused with 91 too.
        threading.Timer(0.2, sc.quiesce, args=(0,)).start()
        t0 = time.monotonic()
        h = raw.hello(topologyVersion=tv, maxAwaitTimeMS=5000)
        assert time.monotonic() - t0 < 2
        assert h["ok"] == 0 and h["code"] == SHUTDOWN_IN_PROGRESS, h
        assert h["topologyVersion"]["counter"] == tv["counter"] + 1
        r = raw.command({"find": "x", "filter": {}}, db="mongos_harness")
        assert r["ok"] == 0 and r["code"] == SHUTDOWN_IN_PROGRESS and "errorLabels" not in r, r
        r = raw.command({"insert": "x", "documents": [{}], "lsid": {"id": Binary.from_uuid(uuid.uuid4())},
                         "txnNumber": Int64(1)}, db="mongos_harness")
        assert r["code"] == SHUTDOWN_IN_PROGRESS and r["errorLabels"] == ["RetryableWriteError"], r
    # The other router was not disturbed.
    with _raw(sc, 1) as raw:
        assert raw.hello()["topologyVersion"]["counter"] == 0


def test_pymongo_moves_off_a_quiescing_slow_or_vanished_router(make_mongos):
    sc = make_mongos(n=3)
    c = sc.client(seed=[0, 1, 2], localThresholdMS=15, **FAST)
    coll = c.mongos_harness[f"faults_{uuid.uuid4().hex[:6]}"]
    coll.insert_one({"_id": 0})
    wait_until(lambda: len(c.topology_description.known_servers) == 3, 10, what="3 routers known")

    def server(i):
        return c.topology_description.server_descriptions()[sc.address(i)]

    # A slow router: pymongo's own RTT measurement (streaming: its RTT monitor) sees the delay.
    sc.hello_delay(2, 200)
    wait_until(lambda: (server(2).round_trip_time or 0) > 0.02, 10, what="router 2's RTT to grow")
    # Quiesce: pymongo marks router 1 Unknown (its streaming hello answers 91 at once).
    sc.quiesce(1)
    wait_until(lambda: server(1).server_type_name == "Unknown", 5, what="router 1 Unknown")
    sc.reset_counts()
    for i in range(1, 31):
        coll.insert_one({"_id": i})
    assert sc.served(0, "insert") == 30, sc.counts()
    # Gone: the router is Unknown, and back again after reappear.
    sc.disappear(0)
    sc.quiesce(1, on=False)
    wait_until(lambda: server(0).server_type_name == "Unknown", 5, what="router 0 Unknown")
    wait_until(lambda: server(1).server_type_name == "Mongos", 5, what="router 1 back")
    assert coll.count_documents({}) == 31
    sc.reappear(0)
    wait_until(lambda: server(0).server_type_name == "Mongos", 5, what="router 0 back")
    coll.drop()


def test_a_vanishing_router_lets_a_relayed_command_finish(make_mongos):
    """disappear cuts idle connections at once but lets a command in flight answer first, so a
    write never reaches FerretDB without its reply reaching the client."""
    sc = make_mongos(n=1)
    with _raw(sc, 0) as busy, _raw(sc, 0) as idle:
        # Keep the insert in flight: the router reads it, then hangs until the timer below.
        sc.hang(0)
        rid = busy.send({"insert": "vanish", "documents": [{"_id": 1}]}, db="mongos_harness")
        time.sleep(0.2)
        threading.Timer(0.3, sc.hang, args=(0,), kwargs={"on": False}).start()
        sc.disappear(0)
        reply = mongowire.recv_message(busy.sock, timeout=5)
        assert reply is not None and reply.response_to == rid and reply.doc["ok"] == 1, reply
        assert mongowire.wait_closed(busy.sock, 5)
        assert mongowire.wait_closed(idle.sock, 5)
    sc.reappear(0)
    with _raw(sc, 0) as raw:
        assert raw.command({"count": "vanish"}, db="mongos_harness")["n"] == 1
        raw.command({"drop": "vanish"}, db="mongos_harness")
