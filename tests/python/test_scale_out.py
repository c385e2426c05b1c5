"""Three gateways behind HAProxy round-robin (issue 14): what a driver sees with a plain URI and
with `loadBalanced=true`, and when one gateway is drained mid-run. Each gateway has a pool of 4; they share `session_key`, the only thing
the gateways of one deployment share. The figures printed are the issue's: cursors that return
all of their documents, transactions that end as asked.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
import uuid
from pathlib import Path

import pymongo
import pytest
from pymongo.errors import PyMongoError

import procnet
from conftest import Proc, _binary, _running, _spawn, free_port, start_gateway, tail, wait_until

HAPROXY_DEFAULT = Path(shutil.which("haproxy") or "/usr/sbin/haproxy")
DOCS = 1000
CURSORS = 20


def start_balancer(folder: Path, ports: list[int]) -> Proc:
    """HAProxy round-robin over `ports`, TCP mode, no PROXY header. Like an NLB with a health
    check, it stops sending new connections to a gateway whose port stopped answering, and a
    connection it could not open goes to another gateway (redispatch)."""
    binary = _binary("MONGOMUX_HAPROXY", HAPROXY_DEFAULT)
    port = free_port()
    name = f"haproxy-rr-{secrets.token_hex(2)}"
    servers = "\n".join(f"    server gw{i} 127.0.0.1:{p} check inter 300ms fall 1 rise 2"
                         for i, p in enumerate(ports))
    cfg = folder / f"{name}.cfg"
    cfg.write_text(f"""
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
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
    """deployment(upstream) -> HAProxy in front of three gateways sharing a session_key."""
    started: list[Proc] = []

    def make(upstream) -> Proc:
        key = secrets.token_hex(32)
        gws = [start_gateway(upstream, logdir, name=f"mongomux-so-{i}-{secrets.token_hex(2)}", pool_size=4,
                             extra_args=("--session-key", key)) for i in range(3)]
        started.extend(g.proc for g in gws)
        lb = start_balancer(logdir, [g.port for g in gws])
        started.append(lb)
        return lb

    yield make
    for p in reversed(started):
        p.stop()


def run_cursors(uri: str, coll_name: str) -> tuple[int, list[str]]:
    """CURSORS threads each read the whole collection in batches of 10 through one client."""
    complete, errors = [0], []
    lock = threading.Lock()
    with pymongo.MongoClient(uri, maxPoolSize=50, serverSelectionTimeoutMS=10_000) as client:
        coll = client.scale_out[coll_name]

        def one():
            try:
                n = sum(1 for _ in coll.find({}, batch_size=10))
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


def test_a_gateway_drained_mid_run_loses_nothing(ferretdb, logdir):
    """Twelve pymongo clients insert (retryable writes, unique ids) and read through HAProxy
    round-robin over three gateways; one gateway gets SIGTERM in the middle. Every acknowledged
    insert is then in FerretDB exactly once, and every error a client saw was retryable."""
    key = secrets.token_hex(32)
    gws = [start_gateway(ferretdb, logdir, name=f"mongomux-dr-{i}-{secrets.token_hex(2)}", pool_size=4,
                         extra_args=("--session-key", key)) for i in range(3)]
    lb = start_balancer(logdir, [g.port for g in gws])
    coll_name = f"drain_{uuid.uuid4().hex[:6]}"
    acked, errors = [], []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(n: int):
        with pymongo.MongoClient(f"mongodb://127.0.0.1:{lb.port}/", maxPoolSize=4,
                                 serverSelectionTimeoutMS=10_000) as c:
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
                    labels = getattr(e, "_error_labels", set()) or set()
                    with lock:
                        errors.append((type(e).__name__, str(e)[:200], sorted(labels)))
                i += 1

    try:
        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(12)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        gws[0].proc.stop()  # SIGTERM: drain, then exit
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(60)
        with ferretdb.client() as direct:
            stored = [d["_id"] for d in direct.scale_out[coll_name].find({}, {"_id": 1})]
            direct.scale_out[coll_name].drop()
        print(f"drain mid-run: {len(acked)} acknowledged inserts, {len(errors)} client errors "
              f"{errors[:3]}")
        assert len(stored) == len(set(stored)), "an insert is stored twice"
        missing = set(acked) - set(stored)
        assert not missing, f"{len(missing)} acknowledged inserts are missing"
        not_retryable = [e for e in errors if not (set(e[2]) & {"RetryableWriteError", "ResetPool"})
                         and e[0] not in ("AutoReconnect", "NetworkTimeout", "ServerSelectionTimeoutError")]
        assert not not_retryable, not_retryable[:3]
    finally:
        lb.stop()
        for g in gws[1:]:
            g.proc.stop()
