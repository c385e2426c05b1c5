"""Several gateways of one deployment (issue 14, item 2): a cursor opened through one gateway
continues through another when they share `session_key`, with no state shared between them
(the cursor id a client sees is masked by a keyed MAC of its session; see
crates/gateway/src/route/cursor_ids.rs). Only the session that opened a cursor can continue or
kill it, on any gateway. Against FerretDB, with raw wire messages, so that each request is
sent to the gateway the test chooses, as a driver's pool behind a round-robin balancer does."""

from __future__ import annotations

import secrets
import uuid

import pytest
from bson import Int64

from mongowire import RawConn
from security_fixtures import CURSOR_NOT_FOUND, GatewayFactory, lsid, make_user, write_config
from security_fixtures import gateways  # noqa: F401 - pytest fixture

N = 1000


@pytest.fixture(scope="module")
def users():
    return {"a": make_user("xgw-a"), "b": make_user("xgw-b")}


@pytest.fixture(scope="module")
def seeded(ferretdb):
    with ferretdb.client() as c:
        c.xgw.docs.drop()
        c.xgw.docs.insert_many([{"_id": i} for i in range(N)])
    yield
    with ferretdb.client() as c:
        c.xgw.docs.drop()




def deployment(gateways, users, n: int = 3, shared_key: bool = True):
    key = secrets.token_hex(32)
    gws = []
    for i in range(n):
        extra = {"session_key": key if shared_key else secrets.token_hex(32)}
        cfg = write_config(gateways.logdir / f"xgw-{secrets.token_hex(3)}.toml", list(users.values()), **extra)
        gws.append(gateways("--config", cfg))
    return gws


def logged_in(gw, user) -> RawConn:
    raw = RawConn(gw.port)
    assert raw.auth(user.name, user.password)["ok"] == 1
    return raw


def get_more(raw: RawConn, cid, session) -> dict:
    return raw.command({"getMore": Int64(cid), "collection": "docs", "batchSize": 10, "lsid": session}, db="xgw")


def test_a_cursor_continues_through_every_gateway_in_turn(gateways, users, seeded):
    gws = deployment(gateways, users)
    a = users["a"]
    conns = [logged_in(gw, a) for gw in gws]
    try:
        session = lsid()
        r = conns[0].command({"find": "docs", "sort": {"_id": 1}, "batchSize": 10, "lsid": session}, db="xgw")
        cid, got = r["cursor"]["id"], [d["_id"] for d in r["cursor"]["firstBatch"]]
        turn = 1
        while cid:
            r = get_more(conns[turn % len(conns)], cid, session)
            assert r.get("ok") == 1, (turn, r)
            assert r["cursor"]["id"] in (cid, 0), "the id a client sees stays the same on every gateway"
            cid = r["cursor"]["id"]
            got += [d["_id"] for d in r["cursor"]["nextBatch"]]
            turn += 1
        assert got == list(range(N))
    finally:
        for c in conns:
            c.close()


def test_only_the_opening_session_continues_or_kills_it_elsewhere(gateways, users, seeded):
    g1, g2 = deployment(gateways, users, n=2)
    a, b = users["a"], users["b"]
    victim = uuid.uuid4()
    with logged_in(g1, a) as ra, logged_in(g2, a) as ra2, logged_in(g2, b) as rb:
        r = ra.command({"find": "docs", "batchSize": 2, "lsid": lsid(victim)}, db="xgw")
        cid = r["cursor"]["id"]
        # Another identity with the victim's session UUID, and the same identity in another
        # session: neither names the cursor on the other gateway.
        for raw, session in ((rb, lsid(victim)), (ra2, lsid())):
            r = get_more(raw, cid, session)
            assert r.get("code") == CURSOR_NOT_FOUND, r
            r = raw.command({"killCursors": "docs", "cursors": [Int64(cid)], "lsid": session}, db="xgw")
            assert r.get("cursorsNotFound") == [cid] and r.get("cursorsKilled") == [], r
        # The owner continues on the other gateway, then kills it there.
        r = get_more(ra2, cid, lsid(victim))
        assert r.get("ok") == 1 and len(r["cursor"]["nextBatch"]) == 10, r
        r = ra2.command({"killCursors": "docs", "cursors": [Int64(cid)], "lsid": lsid(victim)}, db="xgw")
        assert r.get("cursorsKilled") == [cid], r
        r = get_more(ra, cid, lsid(victim))
        assert r.get("code") == CURSOR_NOT_FOUND, r


def test_without_a_shared_key_another_gateway_says_cursor_not_found(gateways, users, seeded):
    g1, g2 = deployment(gateways, users, n=2, shared_key=False)
    a = users["a"]
    session = lsid()
    with logged_in(g1, a) as r1, logged_in(g2, a) as r2:
        r = r1.command({"find": "docs", "batchSize": 2, "lsid": session}, db="xgw")
        cid = r["cursor"]["id"]
        r = get_more(r2, cid, session)
        assert r.get("code") == CURSOR_NOT_FOUND, r
        r = get_more(r1, cid, session)
        assert r.get("ok") == 1, r


def test_a_transaction_runs_across_gateways(logdir, nx, users):
    """Each transaction starts on one gateway, continues on the second and ends on the third,
    in sessions of their own; the first gateway's pool is small (4, so 2 pinned at most), so
    a gateway holding on to transactions that ended elsewhere would soon refuse new ones."""
    f = GatewayFactory(logdir, nx)
    try:
        key = secrets.token_hex(32)
        gws = []
        for _ in range(3):
            cfg = write_config(logdir / f"xgw-nx-{secrets.token_hex(3)}.toml", list(users.values()), session_key=key)
            gws.append(f("--config", cfg, "--checkout-timeout", "2s", pool_size=4))
        with nx.client() as direct:
            direct.xgw_txn.docs.drop()
            direct.xgw_txn.create_collection("docs")
        a = users["a"]
        conns = [logged_in(gw, a) for gw in gws]
        try:
            for k in range(6):
                session = lsid()
                txn = {"lsid": session, "txnNumber": Int64(1), "autocommit": False}
                r = conns[0].command({"insert": "docs", "documents": [{"_id": f"{k}-a"}], "startTransaction": True,
                                      **txn}, db="xgw_txn")
                assert r.get("ok") == 1, (k, r)
                r = conns[1].command({"insert": "docs", "documents": [{"_id": f"{k}-b"}], **txn}, db="xgw_txn")
                assert r.get("ok") == 1, (k, r)
                end = "commitTransaction" if k % 2 == 0 else "abortTransaction"
                r = conns[2].command({end: 1, **txn}, db="admin")
                assert r.get("ok") == 1, (k, end, r)
        finally:
            for c in conns:
                c.close()
        with nx.client() as direct:
            stored = sorted(d["_id"] for d in direct.xgw_txn.docs.find())
            direct.xgw_txn.docs.drop()
        assert stored == sorted(f"{k}-{x}" for k in range(0, 6, 2) for x in "ab")
    finally:
        f.stop_all()
