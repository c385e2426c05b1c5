"""Network faults between the gateway and its database, injected with Toxiproxy, under load.

The gateway dials FerretDB through a Toxiproxy proxy (toxi_fixtures.py). 200 raw-wire clients
(faults_load.py: 200 client connections, multiplexed onto a pool of 4) insert documents with
unique _ids and read each back while one fault at a time is applied to the replies for a few
seconds and then removed: latency with jitter, a bandwidth cap, connections reset (RST) as a
reply arrives, replies that stop coming on connections that stay open (half-open), slow close,
and replies cut after N bytes. For each fault the test checks:

- the gateway process is alive and its log has no "panicked";
- no reply ever answers another request (responseTo and the document read back both match),
  no client connection is closed instead of answered, and every upstream connection whose
  exchange was interrupted is discarded: mongomux_upstream_discarded_total grows by at least
  the number of timeouts (89) clients were told about, and, with the failed connects, by at
  least the number of broken exchanges (6) too;
- every error is a MongoDB error reply with a code from the gateway's documented set, the
  network ones labelled retryable, and every operation ends within the bound the configured
  timeouts give (OP_BOUND), never a hang;
- after the fault is removed, operations succeed again without a restart, within
  RECOVERY_BOUND; the recovery time is measured and printed;
- afterwards every acknowledged insert is in the collection exactly once.

The figures (operations, errors by code, slowest operation, recovery time) are printed at the
end of the module and written to logdir/faults-summary.txt; docs/reliability.md quotes them.

One more scenario puts the proxy between the gateway and the primary of a replica set
(rs_fixtures.py), with directConnection=true: without it the gateway would discover the members'
own addresses from `hello` and go around the proxy.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter

import pymongo
import pytest

from conftest import start_gateway, tail
from faults_load import CLOSED, HANG, MISMATCH, Load
from rs_fixtures import make_replset  # noqa: F401  (fixture)
from toxi_fixtures import make_proxy, proxied, toxiproxy  # noqa: F401  (fixtures)

CLIENTS = 200
POOL = 4
UPSTREAM_TIMEOUT = 2.0    # --upstream-timeout
CHECKOUT_TIMEOUT = 2.0    # --checkout-timeout
CONNECT_TIMEOUT = 2.0     # connect_timeout, and connectTimeoutMS for the monitor
SELECTION_TIMEOUT = 2.0   # serverSelectionTimeoutMS
# The longest an operation may take: waiting for a slot or a member, then at most two attempts
# (a read may be retried once by the gateway), each connecting and waiting for its reply; plus
# slack for a loaded 2-core machine.
OP_BOUND = CHECKOUT_TIMEOUT + SELECTION_TIMEOUT + 2 * (CONNECT_TIMEOUT + UPSTREAM_TIMEOUT) + 3.0
FAULT_SECONDS = 4.0
RECOVERY_BOUND = 20.0

# What the gateway may answer while its upstream is faulty (docs/configuration.md, "Error
# codes"): HostUnreachable, NetworkTimeout, ExceededTimeLimit (no slot in time),
# FailedToSatisfyReadPreference (no member selectable in time).
ALLOWED_CODES = {6, 89, 133, 262}
NETWORK_CODES = {6, 89}
# errmsg beginnings (crates/gateway upstream/error.rs) of a request that failed on an upstream
# connection once it was open: in an exchange, or (for HostUnreachable) maybe while the
# connection was still being set up, which counts as a failed connect instead.
TIMED_OUT = re.compile(r"upstream did not answer within")
BROKEN = re.compile(r"upstream unavailable: (reading reply|sending request|connection closed by "
                    r"upstream|the upstream sent)")

GATEWAY_ARGS = (
    "--upstream-timeout", f"{UPSTREAM_TIMEOUT}s",
    "--checkout-timeout", f"{CHECKOUT_TIMEOUT}s",
    "--config-toml", f'connect_timeout = "{CONNECT_TIMEOUT}s"',
)
URI_OPTIONS = (f"heartbeatFrequencyMS=500&serverSelectionTimeoutMS={int(SELECTION_TIMEOUT * 1000)}"
               f"&connectTimeoutMS={int(CONNECT_TIMEOUT * 1000)}")

# (name, [(toxic type, attributes), ...]): toxics on the replies (downstream), added in order
# (Toxiproxy chains them in that order).
FAULTS = [
    ("latency", [("latency", {"latency": 300, "jitter": 250})]),
    # 2 KB/s: about ten small replies a second for all four connections together.
    ("bandwidth", [("bandwidth", {"rate": 2})]),
    # Every connection is reset (RST) as soon as a reply starts to arrive.
    ("reset_peer", [("reset_peer", {"timeout": 0})]),
    # Replies stop while connections stay open; removing the toxic closes them.
    ("half_open", [("timeout", {"timeout": 0})]),
    # Replies cut after 3,000 bytes of each connection, and the close that follows comes 3 s
    # late, past the 2 s upstream timeout (alone, slow_close changes nothing here: neither side
    # closes a connection while the load runs).
    ("slow_close", [("limit_data", {"bytes": 3000}), ("slow_close", {"delay": 3000})]),
    # Replies cut after 3,000 bytes of each connection, usually in the middle of a message.
    ("limit_data", [("limit_data", {"bytes": 3000})]),
]

SUMMARY: list[dict] = []


@pytest.fixture(scope="module")
def summary(logdir, request):
    """Prints the figures of every scenario when the module ends."""
    yield SUMMARY
    lines = ["", f"{'fault':<13}{'ops':>6}{'ok':>6}  {'errors by code':<24}{'slowest':>8}{'recovery':>9}"
                 f"{'acked':>7}{'discarded':>10}"]
    for s in SUMMARY:
        errs = ", ".join(f"{c}×{n}" for c, n in sorted(s["errors"].items(), key=str)) or "none"
        rec = "n/a" if s["recovery"] is None else f"{s['recovery']:.2f}s"
        lines.append(f"{s['fault']:<13}{s['ops']:>6}{s['ok']:>6}  {errs:<24}{s['slowest']:>7.2f}s{rec:>9}"
                     f"{s['acked']:>7}{s.get('discarded', 0):>10}")
    text = "\n".join(lines)
    (logdir / "faults-summary.txt").write_text(text + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)


def metric(gw, name: str) -> float:
    """The sum of every sample of metric `name` on the gateway's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and (line[len(name)] in " {"))


@pytest.fixture(scope="module")
def faulty_gateway(ferretdb, toxiproxy, logdir):
    """One gateway for every FerretDB fault (recovery is without restart, across all of them),
    dialing FerretDB through proxy "ferretdb"."""
    proxy = toxiproxy.proxy("ferretdb", ferretdb.port)
    up = proxied(ferretdb, proxy)
    gw = start_gateway(up, logdir, name="mongomux-faults", pool_size=POOL, metrics=True,
                       extra_args=GATEWAY_ARGS,
                       upstream_uri=f"mongodb://127.0.0.1:{proxy.port}/?authSource=admin&{URI_OPTIONS}")
    yield gw, proxy
    proxy.clear()
    code = gw.proc.stop()
    assert code == 0, f"gateway exited with {code}:\n{tail(gw.proc.log)}"
    proxy.delete()


def run_fault(gw, proxy, fault: str, toxics: list, db, coll: str) -> dict:
    """Load, fault for FAULT_SECONDS, removal, recovery; returns the figures after checking
    everything the module docstring lists."""
    db[coll].drop()
    discarded_before = metric(gw, "mongomux_upstream_discarded_total")
    failed_before = metric(gw, "mongomux_upstream_connect_failures_total")
    load = Load(gw.port, db.name, coll, clients=CLIENTS, op_bound=OP_BOUND)
    load.start()
    try:
        load.wait_warm(30)
        time.sleep(1.0)
        t_fault = time.monotonic()
        names = [proxy.add(kind, **attributes) for kind, attributes in toxics]
        time.sleep(FAULT_SECONDS)
        t_removed = time.monotonic()
        for name in names:
            proxy.remove(name)
        recovery = load.wait_recovered(t_removed, timeout=RECOVERY_BOUND)
    finally:
        proxy.clear()
        load.stop()
    ops = load.snapshot()
    # Everything that ended after the fault began: requests in flight then are its first victims.
    window = [o for o in ops if o.end >= t_fault]
    figures = {
        "fault": fault,
        "ops": len(window),
        "ok": sum(o.ok for o in window),
        "errors": Counter(o.code if o.outcome == "error" else o.outcome for o in window if not o.ok),
        "slowest": max((o.seconds for o in window), default=0.0),
        "recovery": recovery,
        "acked": len(load.acked),
        # One message per error code, and the slowest operation per outcome, for the report.
        "samples": {o.code: o.errmsg for o in window if o.outcome == "error"},
        "slowest_by": {k: round(max(o.seconds for o in window if (o.code or o.outcome) == k), 2)
                       for k in {o.code or o.outcome for o in window}},
    }
    SUMMARY.append(figures)
    print(f"{fault}: {figures}")

    assert gw.proc.alive(), f"gateway died:\n{tail(gw.proc.log)}"
    assert "panicked" not in gw.proc.log.read_text(errors="replace"), tail(gw.proc.log, 60)
    bad = [o for o in ops if o.outcome in (HANG, CLOSED, MISMATCH)]
    assert not bad, f"{len(bad)} operations hung, were cut off or answered wrongly: {bad[:5]}"
    for o in ops:
        if o.outcome != "error":
            continue
        assert isinstance(o.code, int) and o.errmsg, o
        assert o.code in ALLOWED_CODES, o
        if o.code in NETWORK_CODES:
            assert "RetryableWriteError" in o.labels, o
        assert "does not answer the request" not in o.errmsg, o
    slow = [o for o in ops if o.seconds > OP_BOUND]
    assert not slow, f"operations beyond {OP_BOUND}s: {slow[:5]}"
    assert recovery is not None, (f"no recovery within {RECOVERY_BOUND}s of removing {fault}: "
                                  f"{Counter(o.code or o.outcome for o in ops if not o.ok)}")

    # Each exchange clients were told failed closed its connection: a timed-out one always was
    # open (the deadline runs only in an exchange); a broken one was open, or failed to open.
    timed_out = sum(1 for o in ops if o.code == 89 and TIMED_OUT.match(o.errmsg))
    broken = sum(1 for o in ops if o.code == 6 and BROKEN.match(o.errmsg))
    discarded = metric(gw, "mongomux_upstream_discarded_total") - discarded_before
    failed_connects = metric(gw, "mongomux_upstream_connect_failures_total") - failed_before
    assert discarded >= timed_out, (discarded, timed_out)
    assert discarded + failed_connects >= timed_out + broken, (discarded, failed_connects, timed_out, broken)
    figures.update(discarded=int(discarded), failed_connects=int(failed_connects))

    # Every acknowledged write is there exactly once, and nothing beyond what was attempted.
    acked = sorted(load.acked)
    found = Counter(d["_id"] for d in db[coll].find({"_id": {"$in": acked}}, {"_id": 1}))
    assert len(found) == len(acked) and set(found.values()) <= {1}, \
        f"{len(acked) - len(found)} acknowledged writes missing"
    assert db[coll].count_documents({}) <= load.attempted
    return figures


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault,toxics", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_between_gateway_and_ferretdb(faulty_gateway, ferretdb, summary, fault, toxics):
    """200 clients write and read through the gateway while `fault` hits the gateway's
    connections to FerretDB for FAULT_SECONDS; see the module docstring for what must hold."""
    gw, proxy = faulty_gateway
    with ferretdb.client() as direct:
        figures = run_fault(gw, proxy, fault, toxics, direct["faults"], fault)
    if fault == "latency":
        # 300 ± 250 ms stays well inside the 2 s upstream timeout: no connection fails; the
        # pool of 4 then serves fewer requests per second than 200 clients send, so some wait
        # out --checkout-timeout and get 262, as they would with a slow database.
        assert set(figures["errors"]) <= {262}, figures


@pytest.mark.timeout(90)
def test_half_open_replica_set_primary(make_replset, make_proxy, ferretdb, logdir, summary):
    """The proxy sits between the gateway and the primary of a three-member replica set
    (directConnection=true, so the gateway keeps using the proxy's address rather than the
    members' own), and the primary's replies stop coming on open connections (half-open).
    The gateway's requests time out after --upstream-timeout (89), its monitor marks the member
    Unknown (133 while none is selectable), and once the replies flow again it recovers."""
    rs = make_replset(n=3)
    proxy = make_proxy("rs-primary", rs.address(0)[1])
    up = proxied(ferretdb, proxy)
    up.username, up.password = rs.username, rs.password
    gw = start_gateway(up, logdir, name="mongomux-rs-faults", pool_size=POOL, metrics=True,
                       extra_args=GATEWAY_ARGS,
                       upstream_uri=(f"mongodb://127.0.0.1:{proxy.port}/?authSource=admin"
                                     f"&directConnection=true&{URI_OPTIONS}"))
    try:
        with ferretdb.client() as direct:
            figures = run_fault(gw, proxy, "rs_half_open", [("timeout", {"timeout": 0})],
                                direct["faults"], "rs_half_open")
        assert figures["errors"].get(89, 0) > 0, figures
    finally:
        assert gw.proc.stop() == 0, tail(gw.proc.log)


def test_proxy_relays_when_no_toxic_is_set(faulty_gateway):
    """The harness itself: through the proxy and the gateway, a plain driver works."""
    gw, _ = faulty_gateway
    with pymongo.MongoClient(gw.uri(), serverSelectionTimeoutMS=5000) as c:
        assert c.admin.command("ping")["ok"] == 1


@pytest.mark.timeout(60)
def test_max_time_ms_longer_than_the_upstream_timeout_extends_the_deadline(faulty_gateway, clients):
    """Replies stop (half-open). A find whose maxTimeMS (4 s) is longer than --upstream-timeout
    (2 s) is given its maxTimeMS plus 2 s before it gets NetworkTimeout: a command allowed to
    run long is not cut short by the gateway, and still never waits for ever. (Plain requests
    time out after 2 s: the load tests above and the gateway's unit tests show that.)"""
    gw, proxy = faulty_gateway
    client = clients(gw, retryReads=False, serverSelectionTimeoutMS=5000)
    coll = client["faults"]["max_time"]
    coll.replace_one({"_id": 1}, {"_id": 1}, upsert=True)  # leaves an idle pooled connection
    toxic = proxy.add("timeout", timeout=0)
    start = time.monotonic()
    try:
        with pytest.raises(pymongo.errors.OperationFailure) as e:
            coll.find({"_id": 1}).max_time_ms(4000).next()
    finally:
        took = time.monotonic() - start
        proxy.remove(toxic)
    assert e.value.code == 89, e.value.details
    assert 4.0 + 2.0 - 0.1 <= took <= 4.0 + 2.0 + 2.5, took
    # The member the monitor marked unknown meanwhile comes back; the gateway serves again.
    deadline = time.monotonic() + 15
    while True:
        try:
            assert coll.find_one({"_id": 1}) == {"_id": 1}
            break
        except pymongo.errors.PyMongoError:
            assert time.monotonic() < deadline, "no recovery within 15 s"
            time.sleep(0.2)
