"""Frozen clients (issue 15, part 3): a Lambda execution environment is frozen between
invocations, sometimes for minutes, with its sockets open. Here a real pymongo client runs in a
child process that is stopped with SIGSTOP at the worst moments and resumed with SIGCONT:

- right after sending a request whose reply is larger than the socket buffers: the gateway has
  read the reply and released the upstream connection at once; it cannot write the rest, and
  closes the client after client_write_timeout; on resume the driver's retryable read runs
  again on a new connection and succeeds;
- holding an open cursor: no upstream connection is held while frozen; on resume the cursor
  continues;
- inside a transaction (a pinned upstream connection; on nx-27017, which has transactions): after transaction_idle_timeout the
  gateway aborts it and returns the connection to the pool; on resume the next statement gets
  NoSuchTransaction with TransientTransactionError, and running the transaction again works.

Minutes are scaled down to seconds (the timeouts are set to 2 s); every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import wait_until
from security_fixtures import GatewayFactory, metric
from security_fixtures import gateways  # noqa: F401 - pytest fixture

MIB = 1024 * 1024
DB = "frozen"

CHILD = textwrap.dedent("""
    import json, sys
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError
    c = MongoClient(sys.argv[1], maxPoolSize=1, serverSelectionTimeoutMS=10000)
    db = c[%r]
    def say(**kw):
        print(json.dumps(kw), flush=True)
    def step(name, fn):
        try:
            say(step=name, ok=True, value=fn())
        except PyMongoError as e:
            say(step=name, ok=False, error=type(e).__name__, code=getattr(e, "code", None),
                labels=sorted(getattr(e, "_error_labels", []) or []), text=str(e)[:300])
    db.command("ping")
    say(step="ready", ok=True)
    for line in sys.stdin:
        exec(line)
""" % DB)


class Child:
    """A pymongo client in its own process, driven line by line, stopped and resumed at will."""

    def __init__(self, uri: str):
        self.p = subprocess.Popen([sys.executable, "-c", CHILD, uri], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.next()["step"] == "ready"

    def run(self, code: str) -> None:
        self.p.stdin.write(code + "\n")
        self.p.stdin.flush()

    def next(self, timeout: float = 30) -> dict:
        os.set_blocking(self.p.stdout.fileno(), True)
        deadline = time.monotonic() + timeout
        import select
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.p.stdout], [], [], 0.2)
            if r:
                return json.loads(self.p.stdout.readline())
        raise AssertionError(f"the child said nothing within {timeout}s")

    def stop(self):
        os.kill(self.p.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.p.pid, signal.SIGCONT)

    def close(self):
        self.resume()
        self.p.kill()
        self.p.wait(10)


@pytest.fixture
def gw(gateways):
    return gateways("--client-write-timeout", "2s", "--transaction-idle-timeout", "2s")


def uri(gw) -> str:
    return f"mongodb://127.0.0.1:{gw.port}/?directConnection=true"


def in_use(gw) -> float:
    return metric(gw, "mongomux_upstream_connections_in_use")


def test_frozen_before_reading_a_large_reply(gw):
    with gw.client() as c:
        c[DB].big.drop()
        c[DB].big.insert_many([{"_id": i, "blob": b"z" * (MIB - 100)} for i in range(12)])
    child = Child(uri(gw))
    try:
        child.run("step('find', lambda: len(list(db.big.find({}, batch_size=1000))))")
        time.sleep(0.05)
        child.stop()
        started = time.monotonic()
        # The reply comes from the upstream whole; the connection goes back before it is written.
        wait_until(lambda: in_use(gw) == 0, 10, what="the upstream connection back in the pool")
        held = time.monotonic() - started
        wait_until(lambda: metric(gw, "mongomux_client_connections_cut_total", 'reason="write_timeout"') == 1,
                   10, what="the frozen client closed after client_write_timeout")
        time.sleep(1.0)
        child.resume()
        got = child.next()
        print(f"\nfrozen mid-reply: upstream connection held {held * 1000:.0f} ms after the freeze; "
              f"on resume: {got}")
        assert got == {"step": "find", "ok": True, "value": 12}, got
        child.run("step('after', lambda: db.big.count_documents({}))")
        assert child.next() == {"step": "after", "ok": True, "value": 12}
    finally:
        child.close()
        with gw.client() as c:
            c[DB].big.drop()


def test_frozen_holding_a_cursor(gw):
    with gw.client() as c:
        c[DB].cur.drop()
        c[DB].cur.insert_many([{"_id": i} for i in range(10)])
    child = Child(uri(gw))
    try:
        child.run("cur = db.cur.find({}, batch_size=2).sort('_id', 1); step('first', lambda: next(cur)['_id'])")
        assert child.next() == {"step": "first", "ok": True, "value": 0}
        child.stop()
        wait_until(lambda: in_use(gw) == 0, 5, what="no upstream connection held for the frozen client")
        time.sleep(3.0)
        assert in_use(gw) == 0
        child.resume()
        child.run("step('rest', lambda: [d['_id'] for d in cur])")
        assert child.next() == {"step": "rest", "ok": True, "value": list(range(1, 10))}
    finally:
        child.close()
        with gw.client() as c:
            c[DB].cur.drop()


@pytest.fixture
def nx_gw(logdir, nx):
    f = GatewayFactory(logdir, nx)
    yield f("--client-write-timeout", "2s", "--transaction-idle-timeout", "2s")
    f.stop_all()


def test_frozen_inside_a_transaction(nx_gw):
    """On nx-27017, which has transactions (FerretDB 1.x refuses startTransaction)."""
    gw = nx_gw
    with gw.client() as c:
        c[DB].txn.drop()
        c[DB].create_collection("txn")
    child = Child(uri(gw))
    try:
        child.run("s = c.start_session(); s.start_transaction(); "
                  "step('first', lambda: str(db.txn.insert_one({'_id': 1}, session=s).inserted_id))")
        assert child.next() == {"step": "first", "ok": True, "value": "1"}
        assert metric(gw, "mongomux_upstream_connections_pinned") == 1
        child.stop()
        started = time.monotonic()
        wait_until(lambda: metric(gw, "mongomux_upstream_connections_pinned") == 0, 10,
                   what="the idle transaction aborted and its connection returned")
        held = time.monotonic() - started
        assert metric(gw, "mongomux_transactions_reaped_total") == 1
        assert in_use(gw) == 0
        child.resume()
        child.run("step('second', lambda: str(db.txn.insert_one({'_id': 2}, session=s).inserted_id))")
        second = child.next()
        print(f"\nfrozen in a transaction: pinned connection returned {held:.1f}s after the freeze "
              f"(transaction_idle_timeout 2s); next statement: {second}")
        assert second["ok"] is False and second["code"] == 251, second
        assert "TransientTransactionError" in second["labels"], second
        # What withTransaction does on that label: the whole transaction again.
        child.run("s.abort_transaction(); s.start_transaction(); "
                  "db.txn.insert_one({'_id': 3}, session=s); step('again', lambda: s.commit_transaction())")
        assert child.next()["ok"] is True
        with gw.client() as c:
            ids = sorted(d["_id"] for d in c[DB].txn.find())
        assert ids == [3], f"the aborted transaction's write must not be there: {ids}"
    finally:
        child.close()
        with gw.client() as c:
            c[DB].txn.drop()
