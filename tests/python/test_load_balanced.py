"""Load-balanced mode (issue 14, item 1), as the drivers' load-balancer specification has it: a
stable `serviceId` per gateway process, the 354 mismatch rules a mongos applies, and a closed
connection's cursors killed and its transaction aborted. Against FerretDB (nx-27017 for
transactions), with pymongo and raw wire messages."""

from __future__ import annotations

import time
import uuid

import pytest
from bson import Int64

from conftest import start_gateway
from mongowire import RawConn
from security_fixtures import CURSOR_NOT_FOUND, lsid, upstream_cursor_alive

MISMATCH = 354




def lb_hello(raw: RawConn, lb: bool = True) -> dict:
    return raw.command({"hello": 1, "loadBalanced": lb} if lb else {"hello": 1})


@pytest.fixture
def started():
    gws = []
    yield gws
    for gw in gws:
        gw.proc.stop()


def gateway_with(upstream, logdir, started, *args):
    gw = start_gateway(upstream, logdir, name=f"mongomux-lb-{uuid.uuid4().hex[:4]}", extra_args=args)
    started.append(gw)
    return gw




def test_service_id_is_one_per_process_and_only_for_load_balanced_clients(ferretdb, logdir, started):
    gw = gateway_with(ferretdb, logdir, started)
    with RawConn(gw.port) as a, RawConn(gw.port) as b, RawConn(gw.port) as plain:
        ida, idb = lb_hello(a)["serviceId"], lb_hello(b)["serviceId"]
        assert ida == idb
        assert "serviceId" not in lb_hello(plain, lb=False)
    again = gateway_with(ferretdb, logdir, started)
    with RawConn(again.port) as c:
        assert lb_hello(c)["serviceId"] != ida, "another process, another serviceId"
    # pymongo in load-balanced mode: CRUD and a multi-batch cursor.
    with gw.client(loadBalanced=True) as client:
        coll = client.lb_basic.docs
        coll.drop()
        coll.insert_many([{"_id": i} for i in range(1000)])
        assert [d["_id"] for d in coll.find(batch_size=10).sort("_id", 1)] == list(range(1000))
        coll.drop()


@pytest.mark.parametrize("mode", ["off", "required"])
def test_mismatched_clients_get_354(ferretdb, logdir, started, mode):
    gw = gateway_with(ferretdb, logdir, started, "--load-balanced", mode)
    refused_lb = mode == "off"
    with RawConn(gw.port) as raw:
        r = lb_hello(raw, lb=refused_lb)
        assert r.get("ok") == 0 and r.get("code") == MISMATCH, r
        assert "load_balanced" in r["errmsg"] and "loadBalanced=true" in r["errmsg"], r
    with RawConn(gw.port) as raw:
        r = lb_hello(raw, lb=not refused_lb)
        assert r.get("ok") == 1, r
        # A later hello must agree with the first.
        r = lb_hello(raw, lb=refused_lb)
        assert r.get("code") == MISMATCH, r
    with gw.client(loadBalanced=not refused_lb, serverSelectionTimeoutMS=3000) as client:
        assert client.admin.command("ping")["ok"] == 1


def test_default_mode_allows_both(ferretdb, logdir, started):
    gw = gateway_with(ferretdb, logdir, started)
    for lb in (True, False):
        with RawConn(gw.port) as raw:
            first = lb_hello(raw, lb=lb)
            assert first.get("ok") == 1, first
            assert lb_hello(raw, lb=not lb).get("code") == MISMATCH


@pytest.mark.parametrize("load_balanced", [True, False], ids=["load-balanced", "plain"])
def test_closing_a_load_balanced_connection_kills_the_cursors_it_opened(ferretdb, logdir, started,
                                                                        load_balanced):
    """A and B use one session; A opens a cursor and closes. Load-balanced, the cursor dies
    with A's connection; plain (a mongos's cursors outlive connections), it lives on with the
    session, and B can continue it."""
    gw = gateway_with(ferretdb, logdir, started)
    session = lsid()
    with ferretdb.client() as direct:
        direct.lb_close.docs.drop()
        direct.lb_close.docs.insert_many([{"_id": i} for i in range(20)])
    with RawConn(gw.port) as b:
        lb_hello(b, lb=load_balanced)
        assert b.command({"find": "docs", "limit": 1, "lsid": session}, db="lb_close")["ok"] == 1
        with RawConn(gw.port) as a:
            lb_hello(a, lb=load_balanced)
            r = a.command({"find": "docs", "batchSize": 2, "lsid": session}, db="lb_close")
            cid = r["cursor"]["id"]
            assert cid and upstream_cursor_alive(ferretdb, "lb_close", "docs", cid)
        deadline = time.monotonic() + 5
        if load_balanced:
            while upstream_cursor_alive(ferretdb, "lb_close", "docs", cid):
                assert time.monotonic() < deadline, "the closed connection's cursor is still open"
                time.sleep(0.05)
            r = b.command({"getMore": Int64(cid), "collection": "docs", "lsid": session}, db="lb_close")
            assert r.get("code") == CURSOR_NOT_FOUND, r
        else:
            time.sleep(0.3)
            r = b.command({"getMore": Int64(cid), "collection": "docs", "batchSize": 2, "lsid": session},
                          db="lb_close")
            assert r.get("ok") == 1 and len(r["cursor"]["nextBatch"]) == 2, r
            b.command({"killCursors": "docs", "cursors": [Int64(cid)], "lsid": session}, db="lb_close")


def run_transaction_insert(raw: RawConn, session: dict, _id: int) -> None:
    r = raw.command({"insert": "docs", "documents": [{"_id": _id}], "lsid": session,
                     "txnNumber": Int64(1), "startTransaction": True, "autocommit": False}, db="lb_txn")
    assert r.get("ok") == 1, r


def commit(raw: RawConn, session: dict) -> dict:
    return raw.command({"commitTransaction": 1, "lsid": session, "txnNumber": Int64(1), "autocommit": False},
                       db="admin")


def test_closing_a_load_balanced_connection_aborts_its_transaction(nx, logdir, started):
    """A starts a transaction in a session B also uses. The control: while A is open, B can
    commit it. The test: once A closed, its transaction is gone (nx-27017 answers a commit of
    an unknown transaction with an error of its own rather than 251) and nothing was written."""
    gw = gateway_with(nx, logdir, started)
    with nx.client() as direct:
        direct.lb_txn.docs.drop()
        direct.lb_txn.create_collection("docs")
    control = lsid()
    with RawConn(gw.port) as a, RawConn(gw.port) as b:
        lb_hello(a), lb_hello(b)
        run_transaction_insert(a, control, 0)
        assert commit(b, control).get("ok") == 1
    session = lsid()
    with RawConn(gw.port) as b:
        lb_hello(b)
        assert b.command({"find": "docs", "limit": 1, "lsid": session}, db="lb_txn")["ok"] == 1
        with RawConn(gw.port) as a:
            lb_hello(a)
            run_transaction_insert(a, session, 1)
        time.sleep(0.5)
        r = commit(b, session)
        assert r.get("ok") == 0, r
    with nx.client() as direct:
        assert [d["_id"] for d in direct.lb_txn.docs.find()] == [0]
