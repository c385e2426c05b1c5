"""The gateway in front of a sharded cluster (issue 13): three mongos personas (rsharness
--mongos, in front of one FerretDB), each counting what it served. Load spreads over the
routers in the latency window; a slow router is left out of it; a router leaving the SRV record,
vanishing or quiescing stops getting requests, and no client sees an error meanwhile.

Every test is bounded: heartbeats are 500 ms (the minimum), waits are wait_until with deadlines,
and writes use unique ids so that "nothing lost, nothing twice" can be checked at the end.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import uuid

import pytest
from pymongo.errors import PyMongoError

from conftest import start_gateway, wait_until
from dns_fixtures import dns_server  # noqa: F401 - pytest fixture
from rs_fixtures import make_mongos  # noqa: F401 - pytest fixture
from security_fixtures import GatewayFactory, logged_in, make_user, metrics_text, transaction_across, write_config

FAST = {"heartbeatFrequencyMS": 500, "serverSelectionTimeoutMS": 5000}
DB = "sharded"


@pytest.fixture
def gw_stop():
    started = []
    yield started
    for gw in started:
        gw.proc.stop()


def gateway_for(sc, ferretdb, logdir, gw_stop, **options):
    uri = sc.uri(seed=list(range(len(sc.members))), **{**FAST, **options})
    gw = start_gateway(ferretdb, logdir, name=f"mongomux-mongos-{uuid.uuid4().hex[:4]}", metrics=True,
                       upstream_uri=uri, credentials_in_env=False)
    gw_stop.append(gw)
    return gw


def routers_in_metrics(gw) -> dict[str, str]:
    """address -> state, from mongomux_upstream_member_state."""
    out = {}
    for line in metrics_text(gw).splitlines():
        m = re.match(r'mongomux_upstream_member_state\{address="([^"]+)",state="([^"]+)"\} 1', line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def member_connections(gw) -> dict[str, int]:
    """address -> pooled connections open, from mongomux_upstream_member_connections."""
    out = {}
    for line in metrics_text(gw).splitlines():
        m = re.match(r'mongomux_upstream_member_connections\{address="([^"]+)"\} (\d+)', line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def wait_for_routers(gw, addresses, timeout=10.0):
    want = {a: "mongos" for a in addresses}
    wait_until(lambda: routers_in_metrics(gw) == want, timeout, what=f"routers {sorted(want)} in the gateway")


def served(sc, i) -> int:
    """Commands router i relayed (finds and inserts; refusals are not counted)."""
    s = sc.counts()[sc.members[i]]["served"]
    return s.get("find", 0) + s.get("insert", 0)


def finds_for(coll, secs: float) -> int:
    """find_one in a loop for `secs` seconds; returns how many ran."""
    n, deadline = 0, time.monotonic() + secs
    while time.monotonic() < deadline:
        coll.find_one({"_id": "none"})
        n += 1
    return n


def shares(sc) -> dict[int, int]:
    return {i: sc.served(i, "find") for i in range(len(sc.members))}


class Load:
    """`workers` clients of the gateway, each inserting documents with unique ids and reading
    each one back, until stopped; records what was acknowledged and every error."""

    def __init__(self, gw, workers: int = 4):
        self.coll_name = f"load_{uuid.uuid4().hex[:6]}"
        self.acked: list[str] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.clients = [gw.client(maxPoolSize=1) for _ in range(workers)]
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(workers)]
        for t in self.threads:
            t.start()

    def _run(self, n: int) -> None:
        coll = self.clients[n][DB][self.coll_name]
        i = 0
        while not self.halt.is_set():
            doc_id = f"{n}-{i}"
            i += 1
            try:
                coll.insert_one({"_id": doc_id})
                with self.lock:
                    self.acked.append(doc_id)
                assert coll.find_one({"_id": doc_id}) == {"_id": doc_id}
            except (PyMongoError, AssertionError) as e:
                with self.lock:
                    self.errors.append(f"{doc_id}: {type(e).__name__}: {e}")

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(20)
        assert not any(t.is_alive() for t in self.threads), "a load worker is stuck"

    def check(self) -> int:
        """Stops the load; asserts no client error, and every acknowledged insert stored once."""
        self.stop()
        coll = self.clients[0][DB][self.coll_name]
        stored = [d["_id"] for d in coll.find({}, {"_id": 1})]
        coll.drop()
        for c in self.clients:
            c.close()
        assert not self.errors, self.errors[:5]
        assert len(stored) == len(set(stored)), "an insert is stored twice"
        missing = set(self.acked) - set(stored)
        assert not missing, f"{len(missing)} acknowledged inserts are missing"
        return len(self.acked)


def grows(sc, i, secs: float = 5.0) -> None:
    before = served(sc, i)
    wait_until(lambda: served(sc, i) > before, secs, what=f"router {i} to serve again")


def settles(sc, i, quiet: float = 0.5, secs: float = 10.0) -> None:
    """Waits until router i served nothing for `quiet` seconds: requests already on it when it
    left finish there (on a loaded machine that can take longer than a fixed pause)."""
    deadline = time.monotonic() + secs
    before = served(sc, i)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = served(sc, i)
        if now == before:
            return
        before = now
    raise AssertionError(f"router {i} kept serving for {secs} s: {sc.counts()}")


def stays(sc, i, secs: float = 1.5) -> None:
    before = served(sc, i)
    time.sleep(secs)
    assert served(sc, i) == before, f"router {i} still serves: {sc.counts()}"


def test_load_spreads_over_three_routers(make_mongos, ferretdb, logdir, gw_stop):
    sc = make_mongos(n=3)
    gw = gateway_for(sc, ferretdb, logdir, gw_stop)
    wait_for_routers(gw, sc.members)
    with gw.client() as c:
        coll = c[DB].spread
        sc.reset_counts()
        for _ in range(300):
            coll.find_one({})
    got = shares(sc)
    print(f"300 finds through the gateway: per router {got}")
    assert sum(got.values()) == 300, got
    assert all(n >= 45 for n in got.values()), got  # each at least 15 %


def test_latency_window_leaves_out_slow_routers(make_mongos, ferretdb, logdir, gw_stop):
    """localThresholdMS 15 (the default): router 2, 250 ms slower from the start, gets nothing;
    router 1, slowed later, leaves the window after a few heartbeats. The gateway's monitors
    stream (awaitable hello), so the later slowdown is seen only through the round-trip task's
    samples, and an awaitable reply must not overwrite them with an older figure. The delay
    jitters (250 ± 150 ms), so those samples and the awaitable replies do not stay in lockstep:
    with a fixed delay each sample lands just after an awaitable reply and hides the overwrite."""
    sc = make_mongos(n=3)
    sc.hello_delay(2, 250, jitter_ms=150)
    gw = gateway_for(sc, ferretdb, logdir, gw_stop, localThresholdMS=15)
    wait_for_routers(gw, sc.members)
    with gw.client() as c:
        coll = c[DB].window
        sc.reset_counts()
        n = finds_for(coll, 2.0)
        got = shares(sc)
        print(f"slow router 2 from the start: {n} finds in 2 s, per router {got}")
        assert got[2] == 0, got
        assert got[0] > n * 0.3 and got[1] > n * 0.3, got
        sc.hello_delay(1, 250, jitter_ms=150)
        time.sleep(3.0)  # 6 heartbeats: at least 3 round-trip samples of router 1
        sc.reset_counts()
        n = finds_for(coll, 5.0)
        got = shares(sc)
        print(f"router 1 slowed down later: {n} finds in 5 s, per router {got}")
        assert got[2] == 0 and got[1] <= n * 0.01, got
        assert got[0] >= n * 0.99, got


def test_mongodb_srv_router_leaves_and_returns(make_mongos, ferretdb, logdir, gw_stop, dns_server):
    """The SRV record lists the three routers; one is taken out of it (its process stays up),
    and after the rescan interval the gateway stops using it, with no client error; put back,
    it is used again."""
    sc = make_mongos(n=3)
    targets = []
    for i, m in enumerate(sc.members):
        name = f"r{i}.mongos.gw.test"
        dns_server.set_a(name, "127.0.0.1")
        targets.append((name, int(m.rsplit(":", 1)[1])))
    srv = "_mongodb._tcp.mongos.gw.test"
    dns_server.set_srv(srv, targets, ttl=1)
    dns_server.set_txt("mongos.gw.test", ["authSource=admin"])
    uri = (f"mongodb+srv://{sc.username}:{sc.password}@mongos.gw.test/"
           f"?tls=false&heartbeatFrequencyMS=500&serverSelectionTimeoutMS=5000")
    gw = start_gateway(ferretdb, logdir, name=f"mongomux-srv-mongos-{uuid.uuid4().hex[:4]}", metrics=True,
                       upstream_uri=uri, credentials_in_env=False,
                       extra_args=("--upstream-resolver", dns_server.address,
                                   "--upstream-srv-rescan-interval", "1s"))
    gw_stop.append(gw)
    names = [f"{t}:{p}" for t, p in targets]
    wait_for_routers(gw, names)
    load = Load(gw)
    try:
        for i in range(3):
            grows(sc, i)
        started = time.monotonic()
        dns_server.set_srv(srv, targets[:2], ttl=1)
        wait_until(lambda: names[2] not in routers_in_metrics(gw), 10, what="router 2 to leave the gateway")
        left = time.monotonic() - started
        settles(sc, 2)  # a request already on router 2 finishes there
        stays(sc, 2)
        grows(sc, 0)
        grows(sc, 1)
        dns_server.set_srv(srv, targets, ttl=1)
        wait_for_routers(gw, names)
        grows(sc, 2)
    finally:
        acked = load.check()
    print(f"router 2 left the gateway {left * 1000:.0f} ms after leaving the SRV record "
          f"(rescan interval 1 s); {acked} inserts acknowledged, 0 client errors")


def test_a_vanished_router_is_routed_around_and_comes_back(make_mongos, ferretdb, logdir, gw_stop):
    sc = make_mongos(n=3)
    gw = gateway_for(sc, ferretdb, logdir, gw_stop)
    wait_for_routers(gw, sc.members)
    load = Load(gw)
    try:
        for i in range(3):
            grows(sc, i)
        sc.disappear(1)
        wait_until(lambda: routers_in_metrics(gw).get(sc.members[1]) == "unknown", 5, what="router 1 Unknown")
        stays(sc, 1)
        grows(sc, 0)
        grows(sc, 2)
        sc.reappear(1)
        wait_for_routers(gw, sc.members)
        grows(sc, 1)
    finally:
        acked = load.check()
    print(f"router 1 vanished and came back: {acked} inserts acknowledged, 0 client errors")


def test_a_quiescing_router_is_left_without_client_errors(make_mongos, ferretdb, logdir, gw_stop):
    sc = make_mongos(n=3)
    gw = gateway_for(sc, ferretdb, logdir, gw_stop)
    wait_for_routers(gw, sc.members)
    load = Load(gw)
    try:
        for i in range(3):
            grows(sc, i)
        sc.quiesce(2)
        wait_until(lambda: routers_in_metrics(gw).get(sc.members[2]) == "unknown", 5, what="router 2 Unknown")
        stays(sc, 2)
        grows(sc, 0)
        grows(sc, 1)
        sc.disappear(2)  # the shutdown that follows quiesce
        time.sleep(1.0)
    finally:
        acked = load.check()
    refused = sc.counts()[sc.members[2]]["refused"]
    print(f"router 2 quiesced then shut down: {acked} inserts acknowledged, 0 client errors; "
          f"router 2 refused {refused} with 91 before the gateway moved away")


def test_a_router_that_refuses_new_connections_is_left_before_the_request_is_sent(
        make_mongos, ferretdb, logdir, gw_stop):
    """A router quiesces before the gateway has a connection to it, and before its monitor's
    pending hello notices: the first request that picks it finds it while setting up a
    connection (hello answers 91). Nothing was sent yet, so even a write the gateway never
    resends (FerretDB cannot deduplicate) moves to another router; the client, which does
    not retry here, sees no error. (The gateway's start-up opens one pooled connection, to
    learn the upstream's wire versions, to whichever router it picks: the quiesced router is
    one it has no connection to.)"""
    sc = make_mongos(n=3)
    gw = gateway_for(sc, ferretdb, logdir, gw_stop)
    wait_for_routers(gw, sc.members)
    wait_until(lambda: sum(member_connections(gw).values()) >= 1, 10.0,
               what="the start-up connection that learns the upstream's wire versions")
    open_now = member_connections(gw)
    q = max(i for i, a in enumerate(sc.members) if open_now.get(a, 0) == 0)
    sc.quiesce(q, wake=False)
    errors = []
    with gw.client(retryWrites=False, retryReads=False) as c:
        coll = c[DB][f"setup_{uuid.uuid4().hex[:6]}"]
        for i in range(40):
            try:
                coll.insert_one({"_id": i})
            except PyMongoError as e:
                errors.append(f"{i}: {e}")
        stored = coll.count_documents({})
        coll.drop()
    assert not errors, errors[:3]
    assert stored == 40
    assert routers_in_metrics(gw).get(sc.members[q]) == "unknown"
    assert sc.counts()[sc.members[q]]["served"].get("insert", 0) == 0


def test_a_transaction_stays_on_one_router_across_gateways(make_mongos, nx, logdir):
    """Three gateways sharing session_key in front of three mongos personas (nx-27017 behind
    them: FerretDB 1.24 has no transactions). Each transaction starts on one gateway, continues
    on the second and ends on the third, as a plain driver's pool behind a round-robin balancer
    sends it: every statement and the commit or abort reach one router, the one its session
    picks on every gateway, and the sessions spread over the routers."""
    sc = make_mongos(n=3, backend=nx)
    user = make_user("shtx-a")
    f = GatewayFactory(logdir, nx)
    conns = []
    try:
        key = secrets.token_hex(32)
        uri = sc.uri(seed=[0, 1, 2], **FAST)
        gws = []
        for _ in range(3):
            cfg = write_config(logdir / f"shtx-{secrets.token_hex(3)}.toml", [user], session_key=key)
            gws.append(f("--config", cfg, upstream_uri=uri, credentials_in_env=False))
        for gw in gws:
            wait_for_routers(gw, sc.members)
        with nx.client() as direct:
            direct.sharded_txn.docs.drop()
            direct.sharded_txn.create_collection("docs")
        conns.extend(logged_in(gw, user) for gw in gws)
        routers_used = set()
        for k in range(12):
            sc.reset_counts()
            end = transaction_across(conns, k, "sharded_txn")
            served = {i: (sc.served(i, "insert"), sc.served(i, end)) for i in range(3)}
            on = [i for i, (inserts, ends) in served.items() if inserts or ends]
            assert len(on) == 1 and served[on[0]] == (2, 1), (k, served)
            routers_used.add(on[0])
        with nx.client() as direct:
            stored = sorted(d["_id"] for d in direct.sharded_txn.docs.find())
            direct.sharded_txn.docs.drop()
        assert stored == sorted(f"{k}-{x}" for k in range(0, 12, 2) for x in "ab")
        print(f"12 transactions across 3 gateways: each on one router; routers used {sorted(routers_used)}")
        assert len(routers_used) >= 2, routers_used
    finally:
        for c in conns:
            c.close()
        f.stop_all()
