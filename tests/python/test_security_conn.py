"""Connection state, session identity and per-client bounds (issue 12, items 1, 4, 5 and 7).

Every attack runs through a gateway against real FerretDB (with authentication on, so a
forwarded `logout` really logs an upstream connection out), followed by the legitimate use of
the same command. Gateways are started per test, with small bounds, so one test's cursors and
sessions never count against another's.
"""

from __future__ import annotations

import concurrent.futures as cf
import secrets
import time
import uuid

import struct

import bson
import pytest
from bson import Int64
from bson.binary import Binary

from conftest import free_port, start_gateway, wait_until
from mongowire import RawConn, next_request_id, op_msg, recv_message
from security_fixtures import (CURSOR_NOT_FOUND, UNAUTHORIZED, GatewayFactory, lsid, make_user, metric, sighup,
                               upstream_cursor_alive, write_config)

TOO_MANY_SESSIONS = 261
TOO_MANY_CURSORS = 96  # OperationFailed: see docs/configuration.md, "Error codes"
COMMAND_NOT_SUPPORTED = 115
MECHANISM_UNAVAILABLE = 334


@pytest.fixture(scope="module")
def users():
    return {"a": make_user("conn-a"), "b": make_user("conn-b")}


@pytest.fixture
def gateways(logdir, ferretdb):
    f = GatewayFactory(logdir, ferretdb)
    yield f
    f.stop_all()




def seed(raw: RawConn, db: str, coll: str, n: int = 10) -> None:
    raw.command({"delete": coll, "deletes": [{"q": {}, "limit": 0}]}, db=db)
    r = raw.command({"insert": coll, "documents": [{"_id": i} for i in range(n)]}, db=db)
    assert r.get("ok") == 1, r


def open_cursor(raw: RawConn, db: str, coll: str, **extra) -> dict:
    return raw.command({"find": coll, "batchSize": 1, "sort": {"_id": 1}, **extra}, db=db)


def everyone_still_works(gw, n: int = 12, user=None) -> None:
    """Many clients at once, so every pooled upstream connection serves one of them."""

    def one(i):
        with RawConn(gw.port) as raw:
            if user:
                assert raw.auth(user.name, user.password)["ok"] == 1
            r = raw.command({"find": "state", "filter": {}, "batchSize": 100}, db="sec_conn")
            assert r.get("ok") == 1, r
            return r

    with cf.ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))




# ---------------------------------------------------------------------------
# Item 1: connection-state commands never reach the upstream


STATE_COMMANDS = [
    {"logout": 1},
    {"authenticate": 1, "mechanism": "MONGODB-X509", "user": "x"},
    {"getnonce": 1},
    {"copydbgetnonce": 1},
    {"copydbsaslstart": 1, "mechanism": "SCRAM-SHA-256", "payload": Binary(b"x")},
    {"getLastError": 1},
    {"getPrevError": 1},
    {"resetError": 1},
    # The server's lowercase aliases, and its test command that sets the last error.
    {"getlasterror": 1},
    {"getpreverror": 1},
    {"reseterror": 1},
    {"forceerror": 1},
    # Any case variant of a command the gateway never forwards is refused too, whatever an
    # upstream would make of it.
    {"LOGOUT": 1},
    {"GetLastError": 1},
    {"SASLSTART": 1, "mechanism": "SCRAM-SHA-256", "payload": Binary(b"n,,n=x,r=y")},
]


def test_anonymous_logout_does_not_log_out_pooled_connections(gateways):
    """The exploit: an unauthenticated `logout` reached pooled upstream connections, and
    every client then got error 13 until the gateway restarted."""
    gw = gateways(pool_size=3)
    with RawConn(gw.port) as raw:
        seed(raw, "sec_conn", "state", 3)
    # More attempts than the pool has connections, each on a fresh client connection too.
    for _ in range(8):
        with RawConn(gw.port) as raw:
            assert raw.command({"logout": 1}).get("ok") == 1  # what a mongos answers
    everyone_still_works(gw)
    # The other commands that act on the upstream connection itself are refused outright.
    for _ in range(4):
        with RawConn(gw.port) as raw:
            for cmd in STATE_COMMANDS[1:]:
                r = raw.command(cmd)
                assert r.get("ok") == 0 and r.get("code") == COMMAND_NOT_SUPPORTED, (cmd, r)
            r = raw.command({"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": Binary(b"n,,n=x,r=y")})
            assert r.get("ok") == 0 and r.get("code") == COMMAND_NOT_SUPPORTED, r
    everyone_still_works(gw)


def test_authenticated_logout_logs_out_only_the_client(gateways, users):
    a, b = users["a"], users["b"]
    cfg = write_config(gateways.logdir / f"conn-{secrets.token_hex(3)}.toml", [a, b])
    gw = gateways("--config", cfg, pool_size=2)
    with RawConn(gw.port) as raw:
        assert raw.auth(a.name, a.password)["ok"] == 1
        seed(raw, "sec_conn", "state", 6)
        cid = Int64(open_cursor(raw, "sec_conn", "state")["cursor"]["id"])
        assert cid
        for _ in range(4):
            assert raw.command({"logout": 1}).get("ok") == 1
        # This client is logged out at the edge, as a mongos does it...
        r = raw.command({"find": "state"}, db="sec_conn")
        assert r.get("code") == UNAUTHORIZED, r
        # ...refused alike whatever it tries on the upstream connection itself...
        for cmd in STATE_COMMANDS[1:]:
            r = raw.command(cmd)
            assert r.get("ok") == 0, (cmd, r)
            assert r.get("code") in (COMMAND_NOT_SUPPORTED, MECHANISM_UNAVAILABLE), (cmd, r)
        # ...and a new login on the same connection, as someone else, starts from nothing:
        # the first identity's cursor was released.
        assert raw.auth(b.name, b.password)["ok"] == 1
        r = raw.command({"getMore": cid, "collection": "state"}, db="sec_conn")
        assert r.get("code") == CURSOR_NOT_FOUND, r
        assert raw.command({"find": "state"}, db="sec_conn").get("ok") == 1
    wait_until(lambda: metric(gw, "mongomux_open_cursors") == 0, 10, what="cursor released")
    everyone_still_works(gw, user=a)
    everyone_still_works(gw, user=b)


# ---------------------------------------------------------------------------
# Item 4 (second half): a session is recorded only once the upstream answered


def test_a_session_whose_request_got_no_answer_is_not_recorded(gateways):
    """With one session allowed per connection, a request in a session that never reached the
    upstream (nothing listens there) must not use up that one session."""
    dead = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    gw = start_gateway(gateways.upstream, gateways.logdir, name=f"mongomux-dead-{secrets.token_hex(2)}",
                       upstream_uri=dead, extra_args=("--max-sessions-per-client", "1",
                                                      "--checkout-timeout", "500ms"))
    gateways.started.append(gw)
    with RawConn(gw.port) as raw:
        for _ in range(3):
            r = raw.command({"find": "x", "lsid": lsid()}, db="sec_conn")
            assert r.get("ok") == 0 and r.get("code") != TOO_MANY_SESSIONS, r


# ---------------------------------------------------------------------------
# Item 4: duplicate keys that matter for security or routing are refused


def raw_doc(pairs: list[tuple[str, object]]) -> bytes:
    """A BSON document that may repeat a key (a dict cannot)."""
    body = b"".join(bson.encode({k: v})[4:-1] for k, v in pairs)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def raw_command(raw: RawConn, pairs: list[tuple[str, object]]) -> dict:
    rid = next_request_id()
    raw.sock.sendall(op_msg(raw_doc(pairs), request_id=rid))
    msg = recv_message(raw.sock, 10.0)
    assert msg is not None and msg.response_to == rid
    return msg.doc


def test_duplicate_session_and_routing_keys_are_refused(gateways, users):
    """B sends A's session id as a second `lsid` (and, in turn, every other key that matters
    twice): each is refused with an error naming the key, A's cursor stays A's, and the same
    commands with each key once work."""
    a, b = users["a"], users["b"]
    cfg = write_config(gateways.logdir / f"conn-{secrets.token_hex(3)}.toml", [a, b],
                       session_key=secrets.token_hex(32))
    gw = gateways("--config", cfg)
    victim = uuid.uuid4()
    with RawConn(gw.port) as ra, RawConn(gw.port) as rb:
        assert ra.auth(a.name, a.password)["ok"] == 1
        assert rb.auth(b.name, b.password)["ok"] == 1
        seed(ra, "sec_conn", "dups", 6)
        cid = Int64(open_cursor(ra, "sec_conn", "dups", lsid=lsid(victim))["cursor"]["id"])
        own = lsid()
        attacks = {
            "lsid": [("getMore", cid), ("collection", "dups"), ("lsid", own), ("lsid", lsid(victim)),
                     ("$db", "sec_conn")],
            "getMore": [("getMore", Int64(1)), ("collection", "dups"), ("getMore", cid), ("$db", "sec_conn")],
            "$db": [("find", "dups"), ("$db", "sec_conn"), ("$db", "admin")],
            "txnNumber": [("find", "dups"), ("lsid", own), ("txnNumber", Int64(1)),
                          ("txnNumber", Int64(2)), ("$db", "sec_conn")],
            "$readPreference": [("find", "dups"), ("$readPreference", {"mode": "primary"}),
                                ("$readPreference", {"mode": "secondary"}), ("$db", "sec_conn")],
            "cursors": [("killCursors", "dups"), ("cursors", [Int64(1)]), ("cursors", [cid]),
                        ("$db", "sec_conn")],
        }
        for key, pairs in attacks.items():
            r = raw_command(rb, pairs)
            assert r.get("ok") == 0 and "nextBatch" not in str(r), (key, r)
            assert key in r.get("errmsg", ""), (key, r)
        # A's cursor is untouched, in A's session; the same commands with each key once work.
        r = ra.command({"getMore": cid, "collection": "dups", "batchSize": 1, "lsid": lsid(victim)},
                       db="sec_conn")
        assert r.get("ok") == 1 and r["cursor"]["nextBatch"] == [{"_id": 1}], r
        r = raw_command(rb, [("find", "dups"), ("lsid", own), ("$readPreference", {"mode": "primary"}),
                             ("$db", "sec_conn")])
        assert r.get("ok") == 1, r
        ra.command({"killCursors": "dups", "cursors": [cid], "lsid": lsid(victim)}, db="sec_conn")


# ---------------------------------------------------------------------------
# Item 5: session ownership cannot be guessed


def test_a_known_session_uuid_gives_no_access_to_its_cursors(gateways, users):
    a, b = users["a"], users["b"]
    cfg = write_config(gateways.logdir / f"conn-{secrets.token_hex(3)}.toml", [a, b],
                       session_key=secrets.token_hex(32))
    gw = gateways("--config", cfg)
    victim = uuid.uuid4()
    with RawConn(gw.port) as ra, RawConn(gw.port) as rb:
        assert ra.auth(a.name, a.password)["ok"] == 1
        assert rb.auth(b.name, b.password)["ok"] == 1
        seed(ra, "sec_conn", "owned", 6)
        cid = Int64(open_cursor(ra, "sec_conn", "owned", lsid=lsid(victim))["cursor"]["id"])
        assert cid
        # B knows A's raw session UUID and the cursor id.
        for extra in ({"lsid": lsid(victim)}, {}):
            r = rb.command({"getMore": cid, "collection": "owned", **extra}, db="sec_conn")
            assert r.get("code") == CURSOR_NOT_FOUND, (extra, r)
        r = rb.command({"killCursors": "owned", "cursors": [cid], "lsid": lsid(victim)}, db="sec_conn")
        assert cid not in r.get("cursorsKilled", []), r
        rb.command({"endSessions": [lsid(victim)]})
        # A session id the gateway cannot namespace would be one key for everyone: refused.
        for odd in ({"id": "shared"}, {"id": Binary(b"short", 4)}, {"id": 7}):
            r = ra.command({"find": "owned", "lsid": odd}, db="sec_conn")
            assert r.get("ok") == 0, (odd, r)
        # A's cursor is untouched, in A's session.
        r = ra.command({"getMore": cid, "collection": "owned", "batchSize": 1, "lsid": lsid(victim)},
                       db="sec_conn")
        assert r.get("ok") == 1 and r["cursor"]["nextBatch"] == [{"_id": 1}], r
        ra.command({"killCursors": "owned", "cursors": [cid], "lsid": lsid(victim)}, db="sec_conn")


def test_session_key_is_checked_and_never_logged(gateways, ferretdb, logdir):
    key = secrets.token_hex(32)
    gw = gateways("--session-key", key)
    with RawConn(gw.port) as raw:
        assert raw.command({"find": "state", "lsid": lsid()}, db="sec_conn").get("ok") == 1
    gw.proc.stop()
    assert key not in gw.proc.log.read_text()
    name = f"mongomux-badkey-{secrets.token_hex(2)}"
    with pytest.raises(AssertionError):
        start_gateway(ferretdb, logdir, name=name, extra_args=("--session-key", "abcd" * 2), startup_timeout=10)
    text = (logdir / f"{name}.log").read_text()
    assert "session_key must be at least 16 bytes" in text, text
    assert "abcdabcd" not in text


# ---------------------------------------------------------------------------
# Item 7: per-client and per-user bounds on cursors and sessions


def test_a_refused_cursor_is_killed_upstream(gateways, ferretdb):
    """FerretDB numbers cursors one after another: the refused cursor is the one between the
    first and the next one opened, and FerretDB itself must no longer know it."""
    gw = gateways("--max-cursors-per-client", "1")
    with RawConn(gw.port) as raw:
        seed(raw, "sec_conn", "killed", 5)
        first = open_cursor(raw, "sec_conn", "killed")["cursor"]["id"]
        assert open_cursor(raw, "sec_conn", "killed").get("code") == TOO_MANY_CURSORS
        raw.command({"killCursors": "killed", "cursors": [Int64(first)]}, db="sec_conn")
        last = open_cursor(raw, "sec_conn", "killed")["cursor"]["id"]
        assert last == first + 2, (first, last)
        assert upstream_cursor_alive(ferretdb, "sec_conn", "killed", last), "control: a live cursor"
        assert not upstream_cursor_alive(ferretdb, "sec_conn", "killed", first + 1)
        # The same for a cursor opened by a find sent with moreToCome (flag 2).
        raw.sock.sendall(op_msg({"find": "killed", "batchSize": 1, "$db": "sec_conn"}, flags=2))
        raw.command({"killCursors": "killed", "cursors": [Int64(last)]}, db="sec_conn")
        after = open_cursor(raw, "sec_conn", "killed")["cursor"]["id"]
        assert after == last + 2, (last, after)
        assert not upstream_cursor_alive(ferretdb, "sec_conn", "killed", last + 1)


def test_cursors_past_the_client_bound_are_refused_and_killed(gateways, users):
    a = users["a"]
    cfg = write_config(gateways.logdir / f"conn-{secrets.token_hex(3)}.toml", [a],
                       max_cursors_per_client=4, max_cursors_per_user=6)
    gw = gateways("--config", cfg, pool_size=2)
    with RawConn(gw.port) as r1, RawConn(gw.port) as r2:
        for r in (r1, r2):
            assert r.auth(a.name, a.password)["ok"] == 1
        seed(r1, "sec_conn", "many", 5)
        opened = []
        for i in range(12):
            reply = open_cursor(r1, "sec_conn", "many")
            if i < 4:
                assert reply.get("ok") == 1, reply
                opened.append(Int64(reply["cursor"]["id"]))
            else:
                assert reply.get("code") == TOO_MANY_CURSORS, reply
                assert "max_cursors_per_client" in reply["errmsg"], reply
            assert metric(gw, "mongomux_open_cursors") <= 4
        # The user's bound spans its connections: 2 more on the second, then refused.
        for i in range(4):
            reply = open_cursor(r2, "sec_conn", "many", lsid=lsid())
            if i < 2:
                assert reply.get("ok") == 1, reply
            else:
                assert reply.get("code") == TOO_MANY_CURSORS and "max_cursors_per_user" in reply["errmsg"], reply
        assert metric(gw, "mongomux_open_cursors") == 6
        # Legitimate use: the open cursors still work, and closing one makes room.
        r = r1.command({"getMore": opened[0], "collection": "many", "batchSize": 10}, db="sec_conn")
        assert r.get("ok") == 1 and r["cursor"]["id"] == 0, r  # exhausted: closed
        assert open_cursor(r1, "sec_conn", "many").get("ok") == 1
        # A small result needs no cursor and is never refused.
        assert r1.command({"find": "many", "batchSize": 100}, db="sec_conn").get("ok") == 1
        # Live reload: a higher bound admits more at once.
        write_config(cfg, [a], max_cursors_per_client=5, max_cursors_per_user=8)
        sighup(gw)
        wait_until(lambda: open_cursor(r1, "sec_conn", "many").get("ok") == 1, 10, what="raised bound")
    wait_until(lambda: metric(gw, "mongomux_open_cursors") == 0, 10, what="cursors released on leave")


def test_sessions_past_the_client_bound_are_refused(gateways):
    gw = gateways("--max-sessions-per-client", "3", "--max-cursors-per-client", "50")
    with RawConn(gw.port) as raw:
        seed(raw, "sec_conn", "sess", 4)
        mine = [lsid() for _ in range(3)]
        for s in mine:
            assert open_cursor(raw, "sec_conn", "sess", lsid=s).get("ok") == 1
        r = open_cursor(raw, "sec_conn", "sess", lsid=lsid())
        assert r.get("code") == TOO_MANY_SESSIONS and "max_sessions_per_client" in r["errmsg"], r
        # The sessions it has keep working.
        for s in mine:
            assert raw.command({"find": "sess", "lsid": s, "batchSize": 10}, db="sec_conn").get("ok") == 1
        assert metric(gw, "mongomux_open_cursors") == 3
    # Every cursor of every session it used is released when it leaves.
    wait_until(lambda: metric(gw, "mongomux_open_cursors") == 0, 10, what="session cursors released")


def test_sessions_past_the_user_bound_are_refused(gateways, users):
    """The user's bound spans its connections; another user is not affected; a session ends
    (and makes room) when the last connection that used it closes."""
    a, b = users["a"], users["b"]
    cfg = write_config(gateways.logdir / f"conn-{secrets.token_hex(3)}.toml", [a, b],
                       max_sessions_per_client=10, max_sessions_per_user=4)
    gw = gateways("--config", cfg)

    def find(raw, s):
        return raw.command({"find": "usess", "lsid": s, "batchSize": 100}, db="sec_conn")

    def refused_by_user_bound(r):
        return r.get("code") == TOO_MANY_SESSIONS and "max_sessions_per_user" in r.get("errmsg", "")

    with RawConn(gw.port) as r1, RawConn(gw.port) as r2, RawConn(gw.port) as other:
        for raw, u in ((r1, a), (r2, a), (other, b)):
            assert raw.auth(u.name, u.password)["ok"] == 1
        seed(r1, "sec_conn", "usess", 3)
        on_r1 = [lsid() for _ in range(3)]
        for s in on_r1:
            assert find(r1, s).get("ok") == 1
        on_r2 = lsid()
        assert find(r2, on_r2).get("ok") == 1, "the user's fourth session"
        r = find(r2, lsid())
        assert refused_by_user_bound(r), r
        r = find(r1, lsid())
        assert refused_by_user_bound(r), r
        # Sessions the user already holds keep working, on any of its connections.
        for s in on_r1:
            assert find(r2, s).get("ok") == 1
        assert find(r1, on_r2).get("ok") == 1
        # Another user is not affected: it has its whole bound of its own while the first
        # user is at its bound, and no more.
        for _ in range(4):
            assert find(other, lsid()).get("ok") == 1
        assert refused_by_user_bound(find(other, lsid()))
        # r1's sessions are all still used by r2 too: closing r1 ends none of them.
        r1.close()
        time.sleep(0.5)
        assert refused_by_user_bound(find(r2, lsid()))
        # Once r2 closes as well, every session of the user has ended: a new connection gets
        # the whole bound again.
        r2.close()
        with RawConn(gw.port) as r3:
            assert r3.auth(a.name, a.password)["ok"] == 1
            fresh = [lsid() for _ in range(4)]
            wait_until(lambda: find(r3, fresh[0]).get("ok") == 1, 5, what="the user's ended sessions to make room")
            for s in fresh[1:]:
                assert find(r3, s).get("ok") == 1
            assert refused_by_user_bound(find(r3, lsid()))


def test_unacknowledged_find_leaves_no_cursor(gateways):
    """A find sent with moreToCome opens a cursor whose id the client never learns: the gateway
    kills it instead of leaving it open upstream, uncounted."""
    gw = gateways("--max-cursors-per-client", "2")
    with RawConn(gw.port) as raw:
        seed(raw, "sec_conn", "silent", 5)
        for _ in range(6):
            raw.sock.sendall(op_msg({"find": "silent", "batchSize": 1, "$db": "sec_conn"}, flags=2))
        assert raw.command({"ping": 1}).get("ok") == 1
        assert metric(gw, "mongomux_open_cursors") == 0
        assert open_cursor(raw, "sec_conn", "silent").get("ok") == 1
