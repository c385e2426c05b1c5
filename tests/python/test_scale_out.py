"""Three gateways behind HAProxy round-robin (issue 14): what a driver sees with a plain URI and
with `loadBalanced=true`, and when one gateway is drained mid-run. Each gateway has a pool of 4; they share `session_key`, the only thing
the gateways of one deployment share. The figures printed are the issue's: cursors that return
all of their documents, transactions that end as asked.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pymongo
import pytest
from pymongo.errors import ConnectionFailure, PyMongoError

import procnet
from conftest import Proc, _binary, _running, _spawn, free_port, start_gateway, tail, wait_until
from rs_fixtures import make_replset, replset  # noqa: F401 - pytest fixtures
from security_fixtures import metric

HAPROXY_DEFAULT = Path(shutil.which("haproxy") or "/usr/sbin/haproxy")
DOCS = 1000
CURSORS = 20


def start_balancer(folder: Path, ports: list[int], maxconn: int = 1000, idle: str = "60s") -> Proc:
    """HAProxy round-robin over `ports`, TCP mode, no PROXY header. Like an NLB with a health
    check, it stops sending new connections to a gateway whose port stopped answering, and a
    connection it could not open goes to another gateway (redispatch). `maxconn` client
    connections at most (HAProxy needs two descriptors each); `idle` closes a quiet one."""
    binary = _binary("MONGOMUX_HAPROXY", HAPROXY_DEFAULT)
    port = free_port()
    name = f"haproxy-rr-{secrets.token_hex(2)}"
    servers = "\n".join(f"    server gw{i} 127.0.0.1:{p} check inter 300ms fall 1 rise 2"
                         for i, p in enumerate(ports))
    cfg = folder / f"{name}.cfg"
    cfg.write_text(f"""
global
    maxconn {maxconn}
defaults
    mode tcp
    timeout connect 5s
    timeout client {idle}
    timeout server {idle}
    retries 3
    option redispatch
frontend clients
    bind 127.0.0.1:{port}
    default_backend gateways
backend gateways
    balance roundrobin
{servers}
""")
    popen, log = _spawn(name, [binary, "-db", "-f", cfg], folder)
    proc = Proc(name, popen, port, log)
    _running.append(proc)

    def listening():
        assert proc.alive(), f"haproxy exited:\n{tail(log)}"
        return any(s.state == "0A" and s.local_port == port for s in procnet.sockets())

    wait_until(listening, 10, what="haproxy listening")
    return proc


@pytest.fixture
def deployment(logdir):
    """deployment(upstream) -> HAProxy in front of three gateways sharing a session_key (the
    returned Proc's `gateways`, each with its metrics endpoint)."""
    started: list[Proc] = []

    def make(upstream, upstream_uri: str | None = None, shared_key: bool = True) -> Proc:
        key = secrets.token_hex(32)
        gws = [start_gateway(upstream, logdir, name=f"mongomux-so-{i}-{secrets.token_hex(2)}", pool_size=4,
                             extra_args=("--session-key", key if shared_key else secrets.token_hex(32)),
                             upstream_uri=upstream_uri,
                             credentials_in_env=upstream_uri is None, metrics=True) for i in range(3)]
        started.extend(g.proc for g in gws)
        lb = start_balancer(logdir, [g.port for g in gws])
        lb.gateways = gws  # for the tests that read each gateway's metrics
        started.append(lb)
        return lb

    yield make
    for p in reversed(started):
        p.stop()


@pytest.mark.parametrize("load_balanced", [False, True], ids=["plain", "loadBalanced"])
def test_cursors_through_three_gateways_in_front_of_a_replica_set(ferretdb, replset, deployment, load_balanced):
    """The same in front of the replica-set harness (3 members sharing one FerretDB): each
    gateway discovers the set and reads from the primary; cursors continue through any gateway."""
    rs = replset
    lb = deployment(ferretdb, upstream_uri=rs.uri(seed=[0, 1, 2], heartbeatFrequencyMS=500))
    coll_name = f"rs_{uuid.uuid4().hex[:6]}"
    with rs.client(seed=[0, 1, 2]) as direct:
        direct.scale_out[coll_name].insert_many([{"_id": i} for i in range(DOCS)])
    uri = f"mongodb://127.0.0.1:{lb.port}/" + ("?loadBalanced=true" if load_balanced else "")
    complete, errors = run_cursors(uri, coll_name)
    print(f"replica set, {'loadBalanced=true' if load_balanced else 'plain URI'}: {complete}/{CURSORS} cursors "
          f"complete; {len(errors)} errors")
    with rs.client(seed=[0, 1, 2]) as direct:
        direct.scale_out[coll_name].drop()
    assert not errors, errors[:3]
    assert complete == CURSORS
    assert rs.served(0, "getMore") > 0 and rs.served(1, "getMore") == rs.served(2, "getMore") == 0


def run_cursors(uri: str, coll_name: str) -> tuple[int, list[str]]:
    """CURSORS threads each read the whole collection in batches of 10 through one client. Each
    thread pauses after a batch, as an application works on it: meanwhile the others take its
    pooled connection, so its next getMore goes out on whichever one is free, through any
    gateway (back to back, a thread gets its own connection back, and nothing crosses)."""
    complete, errors = [0], []
    lock = threading.Lock()
    with pymongo.MongoClient(uri, maxPoolSize=50, serverSelectionTimeoutMS=10_000) as client:
        coll = client.scale_out[coll_name]

        def read(cursor):
            for i, doc in enumerate(cursor):
                if i % 10 == 9:
                    time.sleep(0.002)
                yield doc

        def one():
            try:
                n = sum(1 for _ in read(coll.find({}, batch_size=10)))
                with lock:
                    complete[0] += n == DOCS
            except PyMongoError as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=one) for _ in range(CURSORS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    return complete[0], errors


@pytest.mark.parametrize("load_balanced", [False, True], ids=["plain", "loadBalanced"])
def test_cursors_through_three_gateways(ferretdb, deployment, load_balanced):
    lb = deployment(ferretdb)
    coll_name = f"docs_{uuid.uuid4().hex[:6]}"
    with ferretdb.client() as direct:
        direct.scale_out[coll_name].insert_many([{"_id": i} for i in range(DOCS)])
    uri = f"mongodb://127.0.0.1:{lb.port}/" + ("?loadBalanced=true" if load_balanced else "")
    complete, errors = run_cursors(uri, coll_name)
    print(f"{'loadBalanced=true' if load_balanced else 'plain URI'}: {complete}/{CURSORS} cursors returned all "
          f"{DOCS} documents through 3 gateways behind HAProxy round-robin; {len(errors)} errors")
    with ferretdb.client() as direct:
        direct.scale_out[coll_name].drop()
    assert not errors, errors[:3]
    assert complete == CURSORS
    # The requests did cross gateways: getMores on at least two, and cursors one gateway opened
    # continued by another.
    get_mores = [metric(g, "mongomux_operations_total", 'command="getMore"') for g in lb.gateways]
    adopted = [metric(g, "mongomux_cursors_adopted_total") for g in lb.gateways]
    print(f"getMores per gateway {get_mores}; cursors adopted per gateway {adopted}")
    if not load_balanced:
        assert sum(n > 0 for n in get_mores) >= 2, get_mores
        assert sum(n > 0 for n in adopted) >= 2, adopted
    else:
        assert sum(adopted) == 0, "a load-balanced driver keeps each cursor on one connection"


def test_without_a_shared_key_plain_cursors_break(ferretdb, deployment):
    """How it was before issue 14, as gateways that do not share `session_key` still are: the
    same 20 cursors through three gateways, with a plain URI, fail with CursorNotFound once a
    getMore lands on a gateway that did not open the cursor (never with wrong data); with
    `loadBalanced=true` the driver pins each cursor to one gateway and all complete. Reported
    for the record, and proof that the plain-URI test above does move cursors between gateways."""
    lb = deployment(ferretdb, shared_key=False)
    coll_name = f"docs_{uuid.uuid4().hex[:6]}"
    with ferretdb.client() as direct:
        direct.scale_out[coll_name].insert_many([{"_id": i} for i in range(DOCS)])
    results = {}
    for form, suffix in (("plain URI", ""), ("loadBalanced=true", "?loadBalanced=true")):
        complete, errors = run_cursors(f"mongodb://127.0.0.1:{lb.port}/{suffix}", coll_name)
        results[form] = (complete, errors)
        print(f"without a shared key, {form}: {complete}/{CURSORS} cursors returned all {DOCS} documents; "
              f"{len(errors)} errors {errors[:1]}")
    with ferretdb.client() as direct:
        direct.scale_out[coll_name].drop()
    complete, errors = results["plain URI"]
    assert errors and complete + len(errors) == CURSORS, results["plain URI"]
    assert all("CursorNotFound" in e or "not found" in e for e in errors), errors[:3]
    assert results["loadBalanced=true"] == (CURSORS, [])


NODE_SCRIPT = Path(__file__).with_name("scale_out_node.cjs")


def node(*args) -> dict:
    """Runs scale_out_node.cjs (the Node.js driver) and returns its JSON line."""
    if not (NODE_SCRIPT.parent.parent.parent / "examples/lambda-node/node_modules/mongodb").is_dir():
        pytest.fail("the Node.js driver is not installed: run scripts/install-deps")
    out = subprocess.run(["node", str(NODE_SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, f"node printed nothing useful (exit {out.returncode}):\n{out.stdout}\n{out.stderr}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("load_balanced", [False, True], ids=["plain", "loadBalanced"])
def test_node_driver_through_three_gateways(ferretdb, nx, deployment, load_balanced):
    """The same with the Node.js driver: 20 concurrent cursors over FerretDB, 20 transactions
    (one after another, as nx-27017 needs) over nx-27017."""
    suffix = "?loadBalanced=true" if load_balanced else ""
    form = "loadBalanced=true" if load_balanced else "plain URI"
    lb = deployment(ferretdb)
    coll_name = f"node_{uuid.uuid4().hex[:6]}"
    with ferretdb.client() as direct:
        direct.scale_out[coll_name].insert_many([{"_id": i} for i in range(DOCS)])
    r = node("cursors", f"mongodb://127.0.0.1:{lb.port}/{suffix}", "scale_out", coll_name, CURSORS, DOCS)
    with ferretdb.client() as direct:
        direct.scale_out[coll_name].drop()
    print(f"Node.js, {form}: {r.get('complete')}/{CURSORS} cursors complete; errors {r.get('errors', [])[:2]}")
    assert r.get("complete") == CURSORS and not r.get("errors"), r

    lbx = deployment(nx)
    with nx.client() as direct:
        direct.scale_out_txn.node.drop()
        direct.scale_out_txn.create_collection("node")
    r = node("transactions", f"mongodb://127.0.0.1:{lbx.port}/{suffix}", "scale_out_txn", "node", 20)
    with nx.client() as direct:
        stored = sorted(d["_id"] for d in direct.scale_out_txn.node.find())
        direct.scale_out_txn.node.drop()
    print(f"Node.js, {form}: {r.get('done')}/20 transactions ended as asked; errors {r.get('errors', [])[:2]}")
    assert r.get("done") == 20 and not r.get("errors"), r
    assert stored == sorted(f"{k}-{x}" for k in range(0, 20, 2) for x in "ab")


@pytest.mark.parametrize("load_balanced", [False, True], ids=["plain", "loadBalanced"])
def test_node_driver_cursors_in_front_of_a_replica_set(ferretdb, replset, deployment, load_balanced):
    rs = replset
    lb = deployment(ferretdb, upstream_uri=rs.uri(seed=[0, 1, 2], heartbeatFrequencyMS=500))
    coll_name = f"node_rs_{uuid.uuid4().hex[:6]}"
    with rs.client(seed=[0, 1, 2]) as direct:
        direct.scale_out[coll_name].insert_many([{"_id": i} for i in range(DOCS)])
    suffix = "?loadBalanced=true" if load_balanced else ""
    r = node("cursors", f"mongodb://127.0.0.1:{lb.port}/{suffix}", "scale_out", coll_name, CURSORS, DOCS)
    with rs.client(seed=[0, 1, 2]) as direct:
        direct.scale_out[coll_name].drop()
    print(f"Node.js, replica set, {'loadBalanced=true' if load_balanced else 'plain URI'}: "
          f"{r.get('complete')}/{CURSORS} cursors complete; errors {r.get('errors', [])[:2]}")
    assert r.get("complete") == CURSORS and not r.get("errors"), r


def run_transactions(uri: str, n: int) -> tuple[list[int], list[str]]:
    """n transactions of two inserts, one after another (nx-27017 cannot run two at once: it
    keeps them as SQLite savepoints of one connection, and fails concurrent ones even when
    connected to directly); even ones commit, odd ones abort. The client's pool is warmed with
    several connections first, so statements go out through different gateways."""
    done, errors = [], []
    lock = threading.Lock()
    with pymongo.MongoClient(uri, maxPoolSize=50, serverSelectionTimeoutMS=10_000) as client:
        coll = client.scale_out_txn.docs

        def one(k: int):
            try:
                with client.start_session() as s:
                    s.start_transaction()
                    coll.insert_one({"_id": f"{k}-a"}, session=s)
                    coll.insert_one({"_id": f"{k}-b"}, session=s)
                    if k % 2 == 0:
                        s.commit_transaction()
                    else:
                        s.abort_transaction()
                with lock:
                    done.append(k)
            except PyMongoError as e:
                with lock:
                    errors.append(f"{k}: {type(e).__name__}: {e}")

        warm = [threading.Thread(target=lambda: client.admin.command("ping")) for _ in range(6)]
        for t in warm:
            t.start()
        for t in warm:
            t.join(30)
        for k in range(n):
            one(k)
    return done, errors


@pytest.mark.parametrize("load_balanced", [False, True], ids=["plain", "loadBalanced"])
def test_transactions_through_three_gateways(nx, deployment, load_balanced):
    lb = deployment(nx)
    with nx.client() as direct:
        direct.scale_out_txn.docs.drop()
        direct.scale_out_txn.create_collection("docs")
    uri = f"mongodb://127.0.0.1:{lb.port}/" + ("?loadBalanced=true" if load_balanced else "")
    done, errors = run_transactions(uri, 20)
    with nx.client() as direct:
        stored = sorted(d["_id"] for d in direct.scale_out_txn.docs.find())
        direct.scale_out_txn.docs.drop()
    print(f"{'loadBalanced=true' if load_balanced else 'plain URI'}: {len(done)}/20 transactions ended as asked "
          f"through 3 gateways; {len(errors)} errors")
    assert not errors, errors[:3]
    assert stored == sorted(f"{k}-{x}" for k in range(0, 20, 2) for x in "ab")


# The codes the drivers' retryable reads and writes specifications retry, and CursorNotFound is
# not one of them: a cursor that got it lost its place, and the application must re-run the query.
RETRYABLE_CODES = {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}


def retryable(e: PyMongoError) -> bool:
    """A network error or server-selection timeout, or an error the specifications retry (by
    code, or by a RetryableWriteError / ResetPool label)."""
    labels = getattr(e, "_error_labels", set()) or set()
    return (isinstance(e, ConnectionFailure) or bool(labels & {"RetryableWriteError", "ResetPool"})
            or getattr(e, "code", None) in RETRYABLE_CODES)


def describe(e: PyMongoError) -> tuple:
    """(retryable, type, code, message, labels), for the figures and the assertions."""
    labels = sorted(getattr(e, "_error_labels", set()) or ())
    return retryable(e), type(e).__name__, getattr(e, "code", None), str(e)[:200], labels


@pytest.mark.parametrize("load_balanced", [False, True], ids=["plain", "loadBalanced"])
def test_a_gateway_drained_mid_run_loses_nothing(ferretdb, logdir, load_balanced):
    """Through HAProxy round-robin over three gateways sharing a key, twelve pymongo clients
    insert (retryable writes, unique ids) and read, while six threads of one more client read
    cursors of 1,000 documents 10 at a time over its pooled connections, so through every
    gateway; one gateway gets SIGTERM in the middle. Every acknowledged insert is then in
    FerretDB exactly once, every cursor returned all of its documents or failed with a
    retryable error (never CursorNotFound: a drained gateway must not end the sessions and
    cursors the driver goes on with through the others), and every other error was retryable.
    The drained gateway has a 10 s drain deadline: FerretDB 1.x ends a cursor with the upstream
    connection that opened it, so the gateway keeps such connections open until then."""
    key = secrets.token_hex(32)
    gws = [start_gateway(ferretdb, logdir, name=f"mongomux-dr-{i}-{secrets.token_hex(2)}", pool_size=4,
                         extra_args=("--session-key", key), metrics=True, drain_timeout="10s" if i == 0 else "2s")
           for i in range(3)]
    lb = start_balancer(logdir, [g.port for g in gws])
    uri = f"mongodb://127.0.0.1:{lb.port}/" + ("?loadBalanced=true" if load_balanced else "")
    coll_name, docs_name = f"drain_{uuid.uuid4().hex[:6]}", f"drain_docs_{uuid.uuid4().hex[:6]}"
    with ferretdb.client() as direct:
        direct.scale_out[docs_name].insert_many([{"_id": i} for i in range(DOCS)])
    acked, errors, cursor_errors, short = [], [], [], []
    complete = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int):
        with pymongo.MongoClient(uri, maxPoolSize=4, serverSelectionTimeoutMS=10_000) as c:
            coll = c.scale_out[coll_name]
            i = 0
            while not stop.is_set():
                doc_id = f"{n}-{i}"
                try:
                    coll.insert_one({"_id": doc_id})
                    with lock:
                        acked.append(doc_id)
                    coll.find_one({"_id": doc_id})
                except PyMongoError as e:
                    with lock:
                        errors.append(describe(e))
                i += 1

    def reader(coll):
        while not stop.is_set():
            got = 0
            try:
                for _ in coll.find({}, batch_size=10):
                    got += 1
                    if got % 100 == 0:
                        time.sleep(0.02)  # a reader that works on its batches: cursors span the drain
                with lock:
                    complete[0] += got == DOCS
                    if got != DOCS:
                        short.append(got)
            except PyMongoError as e:
                with lock:
                    cursor_errors.append((got, *describe(e)))

    readers = pymongo.MongoClient(uri, maxPoolSize=12, serverSelectionTimeoutMS=10_000)
    try:
        threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(12)]
        threads += [threading.Thread(target=reader, args=(readers.scale_out[docs_name],), daemon=True)
                    for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        gws[0].proc.popen.send_signal(signal.SIGTERM)  # drain, then exit; its metrics stay up meanwhile
        time.sleep(3.0)
        try:  # still up if it lingers for cursors others continue (FerretDB 1.x), else exited
            handed_off = metric(gws[0], "mongomux_cursors_handed_off_total")
        except OSError:
            handed_off = None
        stop.set()
        for t in threads:
            t.join(60)
        adopted = [metric(g, "mongomux_cursors_adopted_total") for g in gws[1:]]
        assert gws[0].proc.popen.wait(30) == 0, tail(gws[0].proc.log)
        with ferretdb.client() as direct:
            stored = [d["_id"] for d in direct.scale_out[coll_name].find({}, {"_id": 1})]
            direct.scale_out[coll_name].drop()
            direct.scale_out[docs_name].drop()
        form = "loadBalanced=true" if load_balanced else "plain URI"
        print(f"drain mid-run, {form}: {len(acked)} acknowledged inserts, {len(errors)} client errors {errors[:3]}; "
              f"{complete[0]} cursors complete, {len(cursor_errors)} failed {cursor_errors[:3]}; the drained gateway "
              f"handed off {handed_off} cursors, the others adopted {adopted}")
        assert len(stored) == len(set(stored)), "an insert is stored twice"
        missing = set(acked) - set(stored)
        assert not missing, f"{len(missing)} acknowledged inserts are missing"
        assert not short, f"cursors ended early, without an error: {short[:5]}"
        assert complete[0] > 0
        not_retryable = [e for e in errors if not e[0]]
        assert not not_retryable, not_retryable[:3]
        bad_cursors = [e for e in cursor_errors if not e[1]]
        assert not bad_cursors, f"cursors failed with errors that are not retryable: {bad_cursors[:3]}"
    finally:
        readers.close()
        lb.stop()
        for g in gws:
            g.proc.stop()


@pytest.mark.parametrize("load_balanced", [False, True], ids=["plain", "loadBalanced"])
def test_sessions_through_three_gateways(ferretdb, deployment, load_balanced):
    """20 concurrent explicit, causally consistent sessions, each writing, reading its writes
    and updating them many times over a pool spread across the gateways."""
    lb = deployment(ferretdb)
    coll_name = f"sess_{uuid.uuid4().hex[:6]}"
    uri = f"mongodb://127.0.0.1:{lb.port}/" + ("?loadBalanced=true" if load_balanced else "")
    errors: list[str] = []
    with pymongo.MongoClient(uri, maxPoolSize=50, serverSelectionTimeoutMS=10_000) as client:
        coll = client.scale_out[coll_name]

        def one(k: int):
            try:
                with client.start_session(causal_consistency=True) as s:
                    for j in range(10):
                        coll.insert_one({"_id": f"{k}-{j}", "n": 0}, session=s)
                        assert coll.find_one({"_id": f"{k}-{j}"}, session=s) == {"_id": f"{k}-{j}", "n": 0}
                        coll.update_one({"_id": f"{k}-{j}"}, {"$inc": {"n": 1}}, session=s)
            except (PyMongoError, AssertionError) as e:
                errors.append(f"{k}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=one, args=(k,)) for k in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        total = coll.count_documents({"n": 1})
        coll.drop()
    print(f"sessions, {'loadBalanced=true' if load_balanced else 'plain URI'}: {total}/200 documents written, "
          f"read back and updated in 20 sessions; {len(errors)} errors")
    assert not errors, errors[:3]
    assert total == 200
