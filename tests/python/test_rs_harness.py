"""The replica-set harness is honest: real drivers treat it as a replica set.

Everything here runs against rsharness directly (no gateway), so that later gateway tests can
trust it as a reference: pymongo discovers the set from one seed, reads by read preference land
where they should (by the harness's own counters), secondaries refuse what real secondaries
refuse, elections are followed (also by the official Rust driver, crates/testkit/examples/
rs_follow.rs), and the faults the control channel offers are what a driver sees.

The pymongo failover time printed by test_pymongo_failover_time is the reference the gateway's
failover tests compare against.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pymongo
import pytest
from bson import Binary, Int64, ObjectId
from pymongo.errors import AutoReconnect, NotPrimaryError, NetworkTimeout, OperationFailure, ServerSelectionTimeoutError

import mongowire
from conftest import ROOT, wait_until
from rs_fixtures import failover_time, make_replset, replset, wait_for_primary  # noqa: F401 (fixtures)

NOT_WRITABLE_PRIMARY = 10107
NOT_PRIMARY_NO_SECONDARY_OK = 13435
INTERRUPTED_AT_SHUTDOWN = 11600
QUERY_SECONDARY_OK = 1 << 2  # OP_QUERY flag bit 2


def _secondaries(rs, *idx):
    return {rs.address(i) for i in idx}


def _raw(rs, i: int) -> mongowire.RawConn:
    """A raw, authenticated wire connection to member i (no driver adds $readPreference)."""
    host, port = rs.address(i)
    conn = mongowire.RawConn(port, host=host)
    assert conn.auth(rs.username, rs.password).get("ok") == 1
    return conn


def test_one_seed_discovers_the_whole_set(replset):
    rs = replset
    c = rs.client(seed=2)  # a secondary as the only seed
    c.admin.command("ping")
    wait_until(lambda: c.primary and len(c.secondaries) == 2, 10, what="full discovery")
    td = c.topology_description
    assert td.topology_type_name == "ReplicaSetWithPrimary"
    assert td.replica_set_name == "rs0"
    assert c.primary == rs.address(0)
    assert c.secondaries == _secondaries(rs, 1, 2)
    # The hello fields a driver relies on, as member 1 gives them.
    with _raw(rs, 1) as raw:
        h = raw.hello(saslSupportedMechs=f"admin.{rs.username}")
    assert h["setName"] == "rs0" and h["me"] == rs.members[1] and h["hosts"] == rs.members
    assert h["secondary"] is True and h["isWritablePrimary"] is False and h["primary"] == rs.members[0]
    assert isinstance(h["topologyVersion"]["processId"], ObjectId)
    assert isinstance(h["topologyVersion"]["counter"], Int64)
    assert "SCRAM-SHA-256" in h["saslSupportedMechs"]
    assert h["$clusterTime"]["signature"]["hash"] == b"\0" * 20
    assert h["operationTime"] == h["$clusterTime"]["clusterTime"]
    assert set(h["lastWrite"]) >= {"opTime", "lastWriteDate"}


def test_writes_and_reads_with_auth(replset):
    rs = replset
    coll = rs.client(seed=1).rs_harness.crud
    coll.drop()
    coll.insert_many([{"_id": i, "v": i} for i in range(5)])
    coll.update_one({"_id": 1}, {"$set": {"v": 10}})
    coll.delete_one({"_id": 4})
    assert [d["v"] for d in coll.find().sort("_id", 1)] == [0, 10, 2, 3]
    assert rs.served(0, "insert") == 1 and rs.served(0, "update") == 1
    # Authentication really is FerretDB's: no credential, no data.
    anon = rs.client(seed=1, credentials=False, serverSelectionTimeoutMS=3000)
    with pytest.raises(OperationFailure):
        anon.rs_harness.crud.find_one()


def test_secondary_reads_land_on_secondaries(replset):
    rs = replset
    c = rs.client(seed=0, readPreference="secondary")
    c.rs_harness.reads.insert_one({"x": 1})  # writes still go to the primary
    wait_until(lambda: len(c.secondaries) == 2, 10, what="both secondaries known")
    rs.reset_counts()
    for _ in range(6):
        assert c.rs_harness.reads.find_one({"x": 1}) is not None
    assert rs.served(0, "find") == 0
    assert rs.served(1, "find") + rs.served(2, "find") == 6


def test_secondary_refuses_writes_and_primary_reads(replset):
    rs = replset
    direct = rs.client(seed=1, direct=True)
    with pytest.raises(NotPrimaryError) as e:
        direct.rs_harness.refuse.insert_one({"x": 1})
    assert e.value.details["code"] == NOT_WRITABLE_PRIMARY
    with _raw(rs, 1) as raw:
        # A retryable write (txnNumber) gets the RetryableWriteError label, as from mongod 4.4+.
        lsid = {"id": Binary(uuid.uuid4().bytes, 4)}
        r = raw.command({"insert": "refuse", "documents": [{"x": 1}], "lsid": lsid, "txnNumber": Int64(1)},
                        db="rs_harness")
        assert r["code"] == NOT_WRITABLE_PRIMARY and r["errorLabels"] == ["RetryableWriteError"], r
        # Without txnNumber: the same code, no label.
        r = raw.command({"insert": "refuse", "documents": [{"x": 1}]}, db="rs_harness")
        assert r["code"] == NOT_WRITABLE_PRIMARY and "errorLabels" not in r
        # No $readPreference on OP_MSG means primary: refused.
        r = raw.command({"find": "refuse"}, db="rs_harness")
        assert r["code"] == NOT_PRIMARY_NO_SECONDARY_OK and r["codeName"] == "NotPrimaryNoSecondaryOk"
        r = raw.command({"find": "refuse", "$readPreference": {"mode": "secondaryPreferred"}}, db="rs_harness")
        assert r["ok"] == 1, r
        # OP_QUERY: the secondaryOk bit decides.
        for flags, ok in ((0, False), (QUERY_SECONDARY_OK, True)):
            raw.sock.sendall(mongowire.op_query("rs_harness.$cmd", {"count": "refuse"}, flags=flags))
            reply = mongowire.recv_message(raw.sock).doc
            assert (reply["ok"] == 1) is ok, reply
    # pymongo on a direct connection sends primaryPreferred, so its reads are allowed.
    assert direct.rs_harness.refuse.find_one() is None
    assert rs.refused(1, "insert") >= 3 and rs.refused(1, "find") == 1


def test_follows_election_and_retries_write(replset):
    rs = replset
    c = rs.client(seed=0, heartbeatFrequencyMS=500)
    coll = c.rs_harness.election
    coll.insert_one({"phase": "before"})
    rs.step_down()
    rs.elect(2)
    coll.insert_one({"phase": "after"})  # retryable: the first attempt may hit the old primary
    wait_for_primary(c, rs.address(2))
    assert rs.served(2, "insert") == 1
    assert coll.count_documents({}) >= 2
    st = rs.status()
    assert st["primary"] == rs.members[2] and st["term"] == 2


def test_primary_crash_then_election(replset):
    rs = replset
    c = rs.client(seed=1, heartbeatFrequencyMS=500, serverSelectionTimeoutMS=5000)
    c.rs_harness.crash.insert_one({"phase": "before"})
    rs.disappear(0)
    rs.elect(1)
    c.rs_harness.crash.insert_one({"phase": "after"})
    wait_for_primary(c, rs.address(1))
    rs.reappear(0)  # back as a secondary
    wait_until(lambda: rs.address(0) in c.secondaries, 10, what="old primary back as a secondary")
    assert rs.served(1, "insert") == 1


def test_pymongo_failover_time(replset, capsys):
    """Reference figures: pymongo straight to the harness, step-down to first successful write
    (immediate election, and an election 0.5 s after the step-down; streaming and polling
    monitors)."""
    rs = replset
    c = rs.client(seed=0)
    immediate = failover_time(rs, c, new_primary=1)
    delayed = failover_time(rs, c, new_primary=2, election_delay=0.5)
    # Polling monitors (no streaming hello), as a gateway that polls would see it.
    polled = rs.client(seed=0, serverMonitoringMode="poll", heartbeatFrequencyMS=500)
    wait_for_primary(polled, rs.address(2))
    poll = failover_time(rs, polled, new_primary=0, election_delay=0.5)
    with capsys.disabled():
        print(f"\npymongo failover (step_down -> first write): streaming, immediate election "
              f"{immediate * 1000:.0f} ms; streaming, election after 500 ms {delayed * 1000:.0f} ms; "
              f"polling every 500 ms, election after 500 ms {poll * 1000:.0f} ms")
    assert immediate < 5 and delayed < 5.5 and poll < 6


def test_streaming_hello_wakes_on_state_change(replset):
    rs = replset
    with _raw(rs, 1) as raw:
        h = raw.hello()
        tv = h["topologyVersion"]
        # Awaitable: waits while nothing changes...
        t0 = time.monotonic()
        h2 = raw.hello(topologyVersion=tv, maxAwaitTimeMS=300)
        assert time.monotonic() - t0 >= 0.25 and h2["topologyVersion"]["counter"] == tv["counter"]
        # ...and with exhaustAllowed streams replies with moreToCome, one per change.
        raw.sock.sendall(mongowire.op_msg({"hello": 1, "topologyVersion": tv, "maxAwaitTimeMS": 5000,
                                           "$db": "admin"}, flags=1 << 16))
        threading.Timer(0.2, rs.step_down).start()
        first = mongowire.recv_message(raw.sock, timeout=3)
        assert first.flags & 2 and first.doc["isWritablePrimary"] is False and "primary" not in first.doc
        assert first.doc["topologyVersion"]["counter"] == tv["counter"] + 1
        t0 = time.monotonic()
        rs.elect(1)
        second = mongowire.recv_message(raw.sock, timeout=3)
        assert time.monotonic() - t0 < 1
        assert second.flags & 2 and second.response_to == first.request_id
        assert second.doc["isWritablePrimary"] is True and second.doc["electionId"] is not None


def test_lag_and_tags_steer_secondary_reads(replset):
    rs = replset
    rs.lag(2, 200)
    rs.set_tags(1, {"dc": "east"})
    rs.set_tags(2, {"dc": "west"})
    stale = rs.client(seed=0, readPreference="secondary", maxStalenessSeconds=90)
    tagged = rs.client(seed=0, readPreference="secondary", readPreferenceTags="dc:west")
    for c in (stale, tagged):
        wait_until(lambda: len(c.secondaries) == 2, 10, what="both secondaries known")
    rs.reset_counts()
    for _ in range(4):
        stale.rs_harness.lag.find_one()
        tagged.rs_harness.lag.find_one()
    assert rs.served(1, "find") == 4  # the fresh one, for the staleness-bounded client
    assert rs.served(2, "find") == 4  # the west one, for the tagged client


def test_hang_disappear_recovering(replset):
    rs = replset
    fast = dict(serverSelectionTimeoutMS=1500, socketTimeoutMS=700, connectTimeoutMS=700)
    c1 = rs.client(seed=1, direct=True, **fast)
    c1.admin.command("ping")
    rs.hang(1)
    with pytest.raises((NetworkTimeout, AutoReconnect, ServerSelectionTimeoutError)):
        c1.admin.command("ping")
    rs.hang(1, on=False)
    wait_until(lambda: _pings(c1), 5, what="member 1 answering again")

    rs.disappear(1)
    with pytest.raises((AutoReconnect, ServerSelectionTimeoutError)):
        rs.client(seed=1, direct=True, **fast).admin.command("ping")
    rs.reappear(1)
    assert rs.client(seed=1, direct=True, **fast).admin.command("ping")["ok"] == 1

    rs.recovering(2)
    with _raw(rs, 2) as raw:
        r = raw.command({"find": "rec", "$readPreference": {"mode": "secondary"}}, db="rs_harness")
        assert r["code"] == INTERRUPTED_AT_SHUTDOWN, r
        h = raw.hello()
        assert h["isWritablePrimary"] is False and h["secondary"] is False and h["setName"] == "rs0"
    # pymongo takes the code as "node is recovering" and marks the member Unknown.
    with pytest.raises((NotPrimaryError, ServerSelectionTimeoutError)) as e:
        rs.client(seed=2, direct=True, **fast).rs_harness.rec.find_one()
    assert "node is recovering" in str(e.value)


def _raw_hello(rs, i: int) -> dict:
    with _raw(rs, i) as raw:
        return raw.hello()


def rs_election_id(rs) -> ObjectId:
    return ObjectId(rs.status()["election_id"])


def _pings(c) -> bool:
    try:
        return c.admin.command("ping")["ok"] == 1
    except pymongo.errors.PyMongoError:
        return False


def test_stale_primary_and_membership_changes(replset):
    rs = replset
    c = rs.client(seed=0, heartbeatFrequencyMS=500)
    c.admin.command("ping")
    rs.step_down()
    rs.elect(1)
    wait_for_primary(c, rs.address(1))
    rs.stale_primary(0)  # claims primary with the previous term's electionId
    hello0 = c.admin.command("ping") and _raw_hello(rs, 0)
    assert hello0["isWritablePrimary"] is True and hello0["electionId"] < rs_election_id(rs)
    time.sleep(0.3)
    # SDAM: a primary with an older (electionId, setVersion) is stale and becomes Unknown.
    assert c.primary == rs.address(1)
    assert c.topology_description.server_descriptions()[rs.address(0)].server_type_name == "Unknown"
    c.rs_harness.stale.insert_one({"x": 1})
    assert rs.served(1, "insert") == 1 and rs.served(0, "insert") == 0

    new = rs.add_member()
    wait_until(lambda: rs.address(new) in c.secondaries, 10, what="added member discovered")
    rs.remove_member(2)
    wait_until(lambda: rs.address(2) not in c.nodes, 10, what="removed member dropped")


def test_separate_backends_show_which_member_served(make_replset):
    rs = make_replset(n=2, separate_backends=True)
    rs.client(seed=0).rs_harness.sep.insert_one({"on": "backend 0"})
    # Member 1 relays to its own FerretDB, which never saw that write.
    sec = rs.client(seed=0, readPreference="secondary")
    assert sec.rs_harness.sep.find_one() is None
    assert rs.client(seed=0).rs_harness.sep.find_one()["on"] == "backend 0"


def test_transactions_across_an_election_with_nx_backend(make_replset, nx):
    """FerretDB 1.24 has no transactions; in front of nx-27017 the harness relays them."""
    rs = make_replset(backend=nx)
    c = rs.client(seed=1)
    coll = c.rs_harness.txn
    coll.delete_many({})
    with c.start_session() as s, s.start_transaction():
        coll.insert_many([{"a": 1}, {"a": 2}], session=s)
    rs.step_down()
    rs.elect(2)
    with c.start_session() as s:
        s.with_transaction(lambda s: coll.insert_one({"a": 3}, session=s))
    assert sorted(d["a"] for d in coll.find()) == [1, 2, 3]
    assert rs.served(0, "commitTransaction") == 1 and rs.served(2, "commitTransaction") == 1


def _rs_follow_binary():
    """scripts/test exports MONGOMUX_RS_FOLLOW; otherwise the example in the cargo target folder."""
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    path = os.environ.get("MONGOMUX_RS_FOLLOW") or target / "debug/examples/rs_follow"
    if not os.access(path, os.X_OK):
        pytest.fail(f"no rs_follow example at {path}: run `cargo build -p mongomux-testkit --example rs_follow`",
                    pytrace=False)
    return str(path)


def test_rust_driver_discovers_and_follows_election(replset):
    rs = replset
    uri = rs.uri(seed=1, serverSelectionTimeoutMS=5000, heartbeatFrequencyMS=500)
    proc = subprocess.Popen([_rs_follow_binary(), uri, "--run-ms", "2500", "--interval-ms", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _readline(proc, 15)
        discovered = json.loads(line)["topology"]
        assert discovered["topology_type"] == "ReplicaSetWithPrimary"
        assert discovered["primary"] == rs.members[0]
        assert discovered["secondaries"] == sorted(rs.members[1:])
        time.sleep(0.3)
        rs.step_down()
        time.sleep(0.2)
        rs.elect(2)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    done = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(done, indent=1))
    assert proc.returncode == 0, err
    assert done["inserted"] > 10
    assert done["topology"]["primary"] == rs.members[2]
    assert done["primaries"][-2:] == [rs.members[0], rs.members[2]]
    assert rs.served(2, "insert") > 0


def _readline(proc, timeout: float) -> str:
    box = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box or not box[0]:
        proc.kill()
        raise AssertionError(f"rs_follow printed nothing within {timeout}s: {proc.stderr.read()}")
    return box[0]
