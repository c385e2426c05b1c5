"""Several gateways of one deployment (issue 14, item 2): a cursor opened through one gateway
continues through another when they share `session_key`, with no state shared between them
(the cursor id a client sees is the upstream id put through a keyed pseudo-random permutation of
its session; see crates/gateway/src/route/cursor_ids.rs). Only the session that opened a cursor
can continue or kill it, on any gateway, and the ids next to one's own name nobody's cursor. Against FerretDB, with raw wire messages, so that each request is
sent to the gateway the test chooses, as a driver's pool behind a round-robin balancer does."""

from __future__ import annotations

import secrets
import uuid

import pytest
from bson import Int64

from mongowire import RawConn, next_request_id, op_msg, recv_message
from security_fixtures import CURSOR_NOT_FOUND, GatewayFactory, logged_in, lsid, make_user, transaction_across, write_config
from security_fixtures import gateways  # noqa: F401 - pytest fixture

N = 1000


@pytest.fixture(scope="module")
def users():
    return {"a": make_user("xgw-a"), "b": make_user("xgw-b"), "scoped": make_user("xgw-s", databases=("xgw",))}


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


def get_more(raw: RawConn, cid, session) -> dict:
    return raw.command({"getMore": Int64(cid), "collection": "docs", "batchSize": 10, "lsid": session}, db="xgw")


def pipelined(raw: RawConn, docs: list[dict], db: str, chunk: int = 256) -> list[dict]:
    """Sends `docs` as commands, `chunk` at a time before reading their replies: thousands of
    requests in a few round trips."""
    replies = []
    for i in range(0, len(docs), chunk):
        rids, out = [], b""
        for d in docs[i:i + chunk]:
            rid = next_request_id()
            rids.append(rid)
            out += op_msg({**d, "$db": db}, request_id=rid)
        raw.sock.sendall(out)
        for rid in rids:
            msg = recv_message(raw.sock, 30)
            assert msg is not None and msg.response_to == rid, (rid, msg)
            replies.append(msg.doc)
    return replies


def test_ids_next_to_ones_own_reach_no_other_users_cursor(gateways, users, seeded):
    """FerretDB numbers cursors one after another. When the id a client saw was the upstream id
    XOR a per-session mask, a client holding id M could send M ^ d in its own session and reach
    upstream id u ^ d: another user's cursor, which a gateway that had never seen it adopted.
    User B (scoped to the database) opens one cursor among six of user A's, then sends getMore
    and killCursors for M ^ d and M + d, d in 1..4096, in its own session, on the gateway that
    opened its cursor and on one that never saw any of these cursors. Every probe is
    CursorNotFound, and A then reads all of its documents."""
    g1, g2, g3 = deployment(gateways, users)
    a, b = users["a"], users["scoped"]
    with logged_in(g1, a) as ra, logged_in(g3, a) as ra3, logged_in(g2, b) as rb, logged_in(g3, b) as rb3:

        def open_a():
            session = lsid()
            r = ra.command({"find": "docs", "sort": {"_id": 1}, "batchSize": 2, "lsid": session}, db="xgw")
            return session, r["cursor"]["id"], [d["_id"] for d in r["cursor"]["firstBatch"]]

        victims = [open_a() for _ in range(3)]
        mine = lsid()
        r = rb.command({"find": "docs", "batchSize": 2, "lsid": mine}, db="xgw")
        m = r["cursor"]["id"]
        victims += [open_a() for _ in range(3)]
        probes = sorted(({m ^ d for d in range(1, 4097)} | {m + d for d in range(1, 4097)}) - {m})
        probes = [p for p in probes if -2**63 <= p < 2**63]
        for raw in (rb, rb3):
            replies = pipelined(raw, [{"getMore": Int64(p), "collection": "docs", "batchSize": 2, "lsid": mine}
                                      for p in probes], "xgw")
            reached = [(p, r) for p, r in zip(probes, replies) if r.get("code") != CURSOR_NOT_FOUND]
            assert not reached, f"{len(reached)} probes named a cursor: {reached[:3]}"
            for i in range(0, len(probes), 512):
                chunk = probes[i:i + 512]
                r = raw.command({"killCursors": "docs", "cursors": [Int64(p) for p in chunk], "lsid": mine},
                                db="xgw")
                assert r.get("ok") == 1 and r.get("cursorsKilled") == [], r
                assert sorted(r.get("cursorsNotFound")) == chunk, "every probe is reported not found"
        # A's cursors lost nothing: each is read to its end, on the opening gateway and on another.
        for k, (session, cid, got) in enumerate(victims):
            conn = ra if k % 2 else ra3
            while cid:
                r = get_more(conn, cid, session)
                assert r.get("ok") == 1, (k, r)
                cid = r["cursor"]["id"]
                got += [d["_id"] for d in r["cursor"]["nextBatch"]]
            assert got == list(range(N)), f"cursor {k} of user A lost documents"
        r = get_more(rb3, m, mine)
        assert r.get("ok") == 1 and len(r["cursor"]["nextBatch"]) == 10, "B's own cursor still works"


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
                transaction_across(conns, k, "xgw_txn")
        finally:
            for c in conns:
                c.close()
        with nx.client() as direct:
            stored = sorted(d["_id"] for d in direct.xgw_txn.docs.find())
            direct.xgw_txn.docs.drop()
        assert stored == sorted(f"{k}-{x}" for k in range(0, 6, 2) for x in "ab")
    finally:
        f.stop_all()
