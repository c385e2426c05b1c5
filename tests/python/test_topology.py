"""The gateway in front of a replica set (issue 13): discovery, read preference, cursors,
failover, all members down. The set is the rsharness stand-in in front of FerretDB
(rs_fixtures.py); clients talk to the gateway as to a mongos, and the harness counts what each
member served.
"""

from __future__ import annotations

import re
import threading
import time
import uuid

import pymongo
import pytest
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.read_preferences import Nearest, Primary, PrimaryPreferred, Secondary, SecondaryPreferred

from conftest import start_gateway
from procnet import ESTABLISHED, socket_inodes, sockets
from dns_fixtures import dns_server  # noqa: F401 - pytest fixture
from rs_fixtures import failover_time  # noqa: F401 - fixtures below
from rs_fixtures import make_replset, replset  # noqa: F401 - pytest fixtures
from security_fixtures import metrics_text

FAST = {"heartbeatFrequencyMS": 500, "serverSelectionTimeoutMS": 5000}


def gateway_for(rs, ferretdb, logdir, seed=0, name="mongomux-rs", pool_size=10, extra_args=(), **options):
    opts = {**FAST, **options}
    gw = start_gateway(ferretdb, logdir, name=f"{name}-{uuid.uuid4().hex[:4]}", metrics=True,
                       upstream_uri=rs.uri(seed=seed, **opts), credentials_in_env=False,
                       pool_size=pool_size, extra_args=extra_args)
    return gw


def members_in_metrics(gw) -> dict[str, str]:
    """address -> state, from mongomux_upstream_member_state."""
    out = {}
    for line in metrics_text(gw).splitlines():
        m = re.match(r'mongomux_upstream_member_state\{address="([^"]+)",state="([^"]+)"\} 1', line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def expected_states(rs) -> dict[str, str]:
    status = rs.status()
    return {m: ("primary" if i == status.get("primary") else "secondary") for i, m in enumerate(rs.members)}


@pytest.fixture
def gw_stop():
    started = []
    yield started
    for gw in started:
        gw.proc.stop()


@pytest.mark.parametrize("seed", [1, [0, 1, 2]], ids=["one-secondary-seed", "full-seed-list"])
def test_discovery_and_writes_go_to_the_primary(replset, ferretdb, logdir, gw_stop, seed):
    rs = replset
    gw = gateway_for(rs, ferretdb, logdir, seed=seed)
    gw_stop.append(gw)
    with gw.client() as c:
        c.rs_topo.docs.insert_one({"_id": 1})
        assert c.rs_topo.docs.find_one({"_id": 1}) == {"_id": 1}
        c.rs_topo.docs.drop()
    states = wait_until(lambda: len(members_in_metrics(gw)) == 3 and members_in_metrics(gw), what="3 members")
    assert states == {rs.members[0]: "primary", rs.members[1]: "secondary", rs.members[2]: "secondary"}, states
    assert rs.served(0, "insert") >= 1 and rs.served(1, "insert") == rs.served(2, "insert") == 0


def test_members_added_and_removed_and_a_stale_primary_ignored(replset, ferretdb, logdir, gw_stop):
    rs = replset
    gw = gateway_for(rs, ferretdb, logdir)
    gw_stop.append(gw)
    wait_until(lambda: len(members_in_metrics(gw)) == 3, what="3 members")
    new = rs.add_member()
    wait_until(lambda: rs.members[new] in members_in_metrics(gw), what="the added member")
    rs.remove_member(new)
    wait_until(lambda: rs.members[new] not in members_in_metrics(gw), what="the removed member to go")
    # Member 2 claims to be primary with an older electionId: writes still go to member 0.
    rs.stale_primary(2)
    time.sleep(1.5)
    rs.reset_counts()
    with gw.client() as c:
        for i in range(10):
            c.rs_topo.stale.insert_one({"i": i})
        c.rs_topo.stale.drop()
    assert rs.served(0, "insert") == 10 and rs.served(2, "insert") == 0, rs.counts()


def test_read_preference_modes_and_tags_reach_the_right_member(make_replset, ferretdb, logdir, gw_stop):
    rs = make_replset(n=3, separate_backends=True)
    rs.set_tags(1, {"dc": "east"})
    rs.set_tags(2, {"dc": "west"})
    gw = gateway_for(rs, ferretdb, logdir)
    gw_stop.append(gw)
    wait_until(lambda: len(members_in_metrics(gw)) == 3, what="3 members")
    with gw.client() as c:
        def reads(pref, n=12) -> dict[int, int]:
            rs.reset_counts()
            coll = c.get_database("rs_rp", read_preference=pref).docs
            for _ in range(n):
                coll.find_one({})
            return {i: rs.served(i, "find") for i in range(3)}

        assert reads(Primary()) == {0: 12, 1: 0, 2: 0}
        assert reads(PrimaryPreferred()) == {0: 12, 1: 0, 2: 0}
        got = reads(Secondary())
        assert got[0] == 0 and got[1] + got[2] == 12, got
        got = reads(SecondaryPreferred())
        assert got[0] == 0 and got[1] + got[2] == 12, got
        got = reads(Nearest())
        assert sum(got.values()) == 12, got
        assert reads(Secondary(tag_sets=[{"dc": "west"}])) == {0: 0, 1: 0, 2: 12}
        assert reads(Secondary(tag_sets=[{"dc": "north"}, {"dc": "east"}])) == {0: 0, 1: 12, 2: 0}
        # maxStalenessSeconds excludes a lagging secondary.
        rs.lag(2, 300)
        time.sleep(1.5)
        assert reads(Secondary(max_staleness=90)) == {0: 0, 1: 12, 2: 0}
        # No member matches: a mongos's error, after the selection timeout.
        with pytest.raises(OperationFailure) as e:
            c.get_database("rs_rp", read_preference=Secondary(tag_sets=[{"dc": "mars"}])).docs.find_one({})
        assert e.value.code == 133, e.value.details


def test_a_cursor_opened_on_a_secondary_continues_there(make_replset, ferretdb, logdir, gw_stop):
    rs = make_replset(n=3, separate_backends=True)
    for b in rs.backends:
        with b.client() as admin:
            admin.rs_cur.docs.insert_many([{"_id": i} for i in range(50)])
    gw = gateway_for(rs, ferretdb, logdir)
    gw_stop.append(gw)
    wait_until(lambda: len(members_in_metrics(gw)) == 3, what="3 members")
    with gw.client() as c:
        rs.reset_counts()
        docs = list(c.get_database("rs_cur", read_preference=Secondary()).docs.find({}, batch_size=5))
        assert len(docs) == 50
    counts = {i: (rs.served(i, "find"), rs.served(i, "getMore")) for i in range(3)}
    opened = [i for i in range(3) if counts[i][0] == 1]
    assert len(opened) == 1 and opened[0] != 0, counts
    # 50 documents in batches of 5: at least 9 getMores, every one on the member that opened it.
    assert counts[opened[0]][1] >= 9, counts
    assert sum(g for _, g in counts.values()) == counts[opened[0]][1], counts


def test_all_members_down_then_back(replset, ferretdb, logdir, gw_stop):
    rs = replset
    gw = gateway_for(rs, ferretdb, logdir, serverSelectionTimeoutMS=1500)
    gw_stop.append(gw)
    with gw.client() as c:
        c.rs_down.docs.insert_one({"before": True})
        for i in range(3):
            rs.disappear(i)
        # A retryable write: the gateway finds the primary gone, waits the selection timeout for
        # another, and answers as a mongos would, naming each member and why it is down; the
        # driver's one retry waits again and gets the same.
        started = time.monotonic()
        with pytest.raises(OperationFailure) as e:
            c.rs_down.docs.insert_one({"during": True})
        took = time.monotonic() - started
        assert e.value.code == 133 and "no upstream member available" in e.value.details["errmsg"], e.value.details
        assert all(m in e.value.details["errmsg"] for m in rs.members), e.value.details
        assert 1.4 < took < 10, took
        for i in range(3):
            rs.reappear(i)
        rs.elect(0)
        back = time.monotonic()
        wait_until(lambda: _insert_ok(c), timeout=15, what="writes after the members came back")
        print(f"all members down: error 133 after {took:.2f} s (serverSelectionTimeoutMS 1500, the driver's "
              f"one retry included); first write {time.monotonic() - back:.2f} s after they came back")
        c.rs_down.docs.drop()


def _insert_ok(c) -> bool:
    try:
        c.rs_down.docs.insert_one({"after": True})
        return True
    except PyMongoError:
        return False


def failover_under_load(rs, client_for, new_primary: int, workers: int = 50) -> dict:
    """`workers` clients (from `client_for()`, one connection each) insert documents with unique
    `uid`s (retryable writes) and read each back, while the primary steps down and
    `new_primary` is elected 0.5 s later. The `_id`s are generated, so a write applied twice
    would be stored twice. Returns the step-down-to-first-write time (a probe client from
    `client_for()`), the acknowledged uids, the client errors and the stored uids."""
    coll_name = f"load_{uuid.uuid4().hex[:6]}"
    acked: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(n: int):
        with client_for() as c:
            coll = c.rs_failover[coll_name]
            i = 0
            while not stop.is_set():
                uid = f"{n}-{i}"
                try:
                    coll.insert_one({"uid": uid})
                    with lock:
                        acked.append(uid)
                    coll.find_one({"uid": uid})
                except PyMongoError as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                i += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(workers)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    with client_for() as probe:
        took = failover_time(rs, probe, new_primary=new_primary, election_delay=0.5)
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(30)
    with pymongo.MongoClient(rs.uri(seed=[0, 1, 2], **FAST)) as direct:
        stored = [d["uid"] for d in direct.rs_failover[coll_name].find({}, {"uid": 1})]
        direct.rs_failover[coll_name].drop()
    return {"took": took, "acked": acked, "errors": errors, "stored": stored}


def test_failover_under_load_loses_nothing(replset, ferretdb, logdir, gw_stop):
    """50 clients insert (retryable writes, unique ids) and read while the primary steps down and
    another member is elected, first through the gateway, then straight to the set (the same
    load, pymongo's own discovery). Every acknowledged insert is then present exactly once, no
    client sees an error through the gateway, and the two step-down-to-first-write times are
    printed side by side."""
    rs = replset
    gw = gateway_for(rs, ferretdb, logdir, serverSelectionTimeoutMS=15000)
    gw_stop.append(gw)
    wait_until(lambda: len(members_in_metrics(gw)) == 3, what="3 members")
    through = failover_under_load(rs, lambda: gw.client(maxPoolSize=1), new_primary=1)
    direct = failover_under_load(
        rs, lambda: pymongo.MongoClient(rs.uri(seed=[0, 1, 2], **FAST), maxPoolSize=1), new_primary=2)
    for name, run in (("gateway", through), ("direct", direct)):
        print(f"failover ({name}): step-down to first write {run['took'] * 1000:.0f} ms "
              f"(election 500 ms after step-down); {len(run['acked'])} acknowledged inserts, "
              f"{len(run['stored'])} stored, {len(run['errors'])} client errors {run['errors'][:3]}")
        stored = run["stored"]
        assert len(stored) == len(set(stored)), f"{name}: an insert was applied twice"
        missing = set(run["acked"]) - set(stored)
        assert not missing, f"{name}: {len(missing)} acknowledged inserts are missing"
        assert len(run["acked"]) > 100, name
    # The gateway waits for the new primary (serverSelectionTimeoutMS) and labels what it
    # refuses as retryable, so the drivers' single retry covers the election.
    assert not through["errors"], through["errors"][:5]


def test_mongodb_srv_discovers_the_set(replset, ferretdb, logdir, gw_stop, dns_server):
    """mongodb+srv: the SRV record names the members (by names only the test's DNS server
    knows), the TXT record the set and authSource; TLS is switched off in the URI."""
    rs = replset
    targets = []
    for i, m in enumerate(rs.members):
        name = f"m{i}.rs.gw.test"
        dns_server.set_a(name, "127.0.0.1")
        targets.append((name, int(m.rsplit(":", 1)[1])))
    dns_server.set_srv("_mongodb._tcp.rs.gw.test", targets)
    dns_server.set_txt("rs.gw.test", [f"replicaSet={rs.set_name}&authSource=admin"])
    uri = (f"mongodb+srv://{rs.username}:{rs.password}@rs.gw.test/"
           f"?tls=false&heartbeatFrequencyMS=500&serverSelectionTimeoutMS=5000")
    gw = start_gateway(ferretdb, logdir, name=f"mongomux-srv-{uuid.uuid4().hex[:4]}", metrics=True,
                       upstream_uri=uri, credentials_in_env=False,
                       extra_args=("--upstream-resolver", dns_server.address))
    gw_stop.append(gw)
    with gw.client() as c:
        c.rs_srv.docs.insert_one({"_id": 1})
        assert c.rs_srv.docs.find_one() == {"_id": 1}
        c.rs_srv.docs.drop()
    # The primary's host list (127.0.0.1:port) is the set's membership from then on.
    states = wait_until(lambda: len(members_in_metrics(gw)) == 3 and members_in_metrics(gw), what="3 members")
    assert sorted(states.values()) == ["primary", "secondary", "secondary"], states
    assert ("_mongodb._tcp.rs.gw.test.", "SRV") in dns_server.queries
    assert ("rs.gw.test.", "TXT") in dns_server.queries


def test_a_transaction_stays_on_one_member(make_replset, nx, logdir, gw_stop):
    """In front of nx-27017 (FerretDB 1.24 has no transactions): every statement of a
    transaction, and its commit, reach the member it started on; after an election the next
    transaction runs on the new primary."""
    rs = make_replset(backend=nx)
    gw = start_gateway(nx, logdir, name=f"mongomux-rs-txn-{uuid.uuid4().hex[:4]}", metrics=True,
                       upstream_uri=rs.uri(seed=2, **FAST), credentials_in_env=False)
    gw_stop.append(gw)
    wait_until(lambda: len(members_in_metrics(gw)) == 3, what="3 members")
    with gw.client() as c:
        coll = c.rs_txn.docs
        coll.delete_many({})
        rs.reset_counts()
        with c.start_session() as s, s.start_transaction():
            for i in range(5):
                coll.insert_one({"a": i}, session=s)
            assert coll.count_documents({}, session=s) == 5
        assert rs.served(0, "insert") == 5 and rs.served(0, "commitTransaction") == 1, rs.counts()
        assert all(rs.served(i, "insert") == 0 for i in (1, 2)), rs.counts()
        rs.step_down()
        rs.elect(1)
        wait_until(lambda: members_in_metrics(gw).get(rs.members[1]) == "primary", what="the new primary")
        with c.start_session() as s:
            s.with_transaction(lambda s: coll.insert_one({"a": 99}, session=s))
        assert rs.served(1, "commitTransaction") == 1, rs.counts()
        assert coll.count_documents({}) == 6


@pytest.mark.timeout(180)
def test_pool_bounds_per_member_and_in_total(replset, ferretdb, logdir, gw_stop):
    """pool_size bounds each member, max_upstream_connections all of them together, counted
    from outside (/proc/net/tcp) while 40 clients write to the primary and read from the
    secondaries; monitoring connections (opened before the load, never pooled) are subtracted."""
    rs = replset
    per_member, total = 4, 6
    gw = gateway_for(rs, ferretdb, logdir, pool_size=per_member,
                     extra_args=("--max-upstream-connections", total,
                                 # The bounds are measured, not the wait: a loaded machine may
                                 # queue 40 clients behind 6 connections for over 5 s.
                                 "--checkout-timeout", "60s"))
    gw_stop.append(gw)
    ports = [rs.address(i)[1] for i in range(3)]
    wait_until(lambda: len(members_in_metrics(gw)) == 3, what="3 members")
    time.sleep(1.0)  # every monitor (and RTT) connection is open

    def connections() -> list[int]:
        # One snapshot for all members: per-port reads at different moments would count a
        # connection closed on one member and its replacement opened on another both.
        owned = socket_inodes(gw.pid)
        mine = [s.remote_port for s in sockets() if s.inode in owned and s.state == ESTABLISHED]
        return [mine.count(p) for p in ports]

    # The harness streams hello, so each member has two monitoring connections (see
    # docs/configuration.md "Connections per member"); what is beyond them is pooled, as the
    # gateway's own gauge confirms before the load.
    before = connections()
    pooled = int(float(re.search(r"^mongomux_upstream_connections (\S+)$", metrics_text(gw), re.M).group(1)))
    baseline = [2, 2, 2]
    assert sum(before) - sum(baseline) == pooled and all(n >= 2 for n in before), (before, pooled)
    peaks = [0, 0, 0]
    peak_total = 0
    stop = threading.Event()
    errors: list[str] = []

    def sample():
        nonlocal peak_total
        while not stop.is_set():
            now = [n - b for n, b in zip(connections(), baseline)]
            for i, n in enumerate(now):
                peaks[i] = max(peaks[i], n)
            peak_total = max(peak_total, sum(now))
            time.sleep(0.01)

    def work(k: int):
        pref = "primary" if k % 2 == 0 else "secondary"
        try:
            with gw.client(readPreference=pref, maxPoolSize=1) as c:
                coll = c.rs_pool_bounds.docs
                for j in range(15):
                    if pref == "primary":
                        coll.insert_one({"_id": f"{k}-{j}"})
                    else:
                        list(coll.find({"_id": f"{k}-{j}"}))
        except PyMongoError as e:
            errors.append(f"{k}: {e}")

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(40)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    stop.set()
    sampler.join()
    print(f"connections per member before the load {before} ({pooled} pooled); pooled peaks per member {peaks}, "
          f"all members {peak_total} (pool_size {per_member}, max_upstream_connections {total})")
    assert not errors, errors[:5]
    with gw.client() as c:
        assert c.rs_pool_bounds.docs.count_documents({}) == 20 * 15
        c.rs_pool_bounds.docs.drop()
    assert all(p <= per_member for p in peaks), peaks
    assert peak_total <= total, peak_total
    assert peaks[0] >= 1 and peaks[1] + peaks[2] >= 1, peaks
    assert rs.served(1, "find") + rs.served(2, "find") >= 20 * 15


def test_cluster_time_gossip_lets_a_causal_session_read_its_write_on_a_lagging_clock(replset, ferretdb, logdir,
                                                                                    gw_stop):
    """The primary's cluster clock runs 100 s ahead of the secondaries'. A causally consistent
    session writes on the primary, then reads on a secondary with afterClusterTime = that
    write's operationTime: the secondary serves it only if the request's $clusterTime
    (gossiped from the primary's reply, through the gateway) advanced its clock first."""
    rs = replset
    rs.clock_offset(0, 100)
    # The control: a client that only ever talked to a secondary cannot ask it for that time.
    with rs.client(seed=1, direct=True) as direct:
        from bson import Timestamp
        ahead = Timestamp(int(time.time()) + 90, 1)
        with pytest.raises(OperationFailure) as refused:
            direct.rs_causal.command("find", "docs", readConcern={"afterClusterTime": ahead},
                                     read_preference=Secondary())
        assert refused.value.code == 72, refused.value.details
    gw = gateway_for(rs, ferretdb, logdir)
    gw_stop.append(gw)
    with gw.client() as c:
        with c.start_session(causal_consistency=True) as s:
            c.rs_causal.get_collection("docs", read_preference=Primary()).insert_one({"_id": 1}, session=s)
            wrote_at = s.operation_time
            assert wrote_at.time >= time.time() + 90, wrote_at
            got = c.rs_causal.get_collection("docs", read_preference=Secondary()).find_one({"_id": 1}, session=s)
        assert got == {"_id": 1}
        c.rs_causal.docs.drop()
    assert rs.served(1, "afterClusterTime") + rs.served(2, "afterClusterTime") == 1


def test_a_step_down_inside_a_transaction_is_retried_whole(make_replset, nx, logdir, gw_stop):
    """The primary steps down while a transaction is open on it: the next statement fails with
    the TransientTransactionError label (as a mongos passes a shard's step-down on), so the
    driver's with_transaction runs the whole transaction again on the new primary, and only
    the second attempt's writes are stored."""
    rs = make_replset(backend=nx)
    gw = start_gateway(nx, logdir, name=f"mongomux-rs-txn-{uuid.uuid4().hex[:4]}", metrics=True,
                       upstream_uri=rs.uri(seed=2, **FAST), credentials_in_env=False)
    gw_stop.append(gw)
    wait_until(lambda: len(members_in_metrics(gw)) == 3, what="3 members")
    attempts = []
    with gw.client() as c:
        coll = c.rs_txn_step.docs
        coll.drop()
        c.rs_txn_step.create_collection("docs")

        def body(s):
            attempts.append(len(attempts) + 1)
            coll.insert_one({"attempt": attempts[-1], "n": 1}, session=s)
            if len(attempts) == 1:
                rs.step_down()
                rs.elect(1)
                wait_until(lambda: members_in_metrics(gw).get(rs.members[1]) == "primary", what="the new primary")
            coll.insert_one({"attempt": attempts[-1], "n": 2}, session=s)

        with c.start_session() as s:
            s.with_transaction(body)
        stored = sorted((d["attempt"], d["n"]) for d in coll.find({}, {"_id": 0}))
    print(f"step-down inside a transaction: {len(attempts)} attempts, stored {stored}")
    assert len(attempts) == 2, attempts
    assert stored == [(2, 1), (2, 2)], stored
    assert rs.served(1, "commitTransaction") == 1, rs.counts()
