"""Security at the edge (issue 3): who may connect, from where, and to what.

Every test here runs through the gateway to a FerretDB of this module's own, with
authentication on (and a second, TLS listener for the upstream-TLS test), or to
nx-27017 where transactions are needed. The module's own FerretDB keeps the rest of
the suite safe from the destructive commands tried here (`shutdown` must be refused,
but if it ever got through it would only take this module's server down).

Addresses: the gateway listens on 127.0.0.1 only. Clients that must come from another
source address (127.0.0.2, 127.0.0.3) bind their socket to it and speak the wire
protocol themselves (mongowire.RawConn, with a SCRAM client), because pymongo
cannot choose its source address.

Tests of flags that arrived late in issue 3 (per-source connection limit, TLS) check
`mongomux serve --help` first and fail with a clear message if the binary lacks them;
they are never skipped.

Figures for the issue's closing note are printed (run with -s to see them).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import os
import socket
import statistics
import struct
import subprocess
import time

import pymongo
import pytest
from bson import Int64
from bson.binary import Binary
from pymongo.errors import OperationFailure, PyMongoError

import mongowire as w
from conftest import free_port, start_ferretdb, start_gateway, wait_until
from mongowire import AUTHENTICATION_FAILED, RawConn, ScramClient, refused_before_reply
from dns_fixtures import dns_server  # noqa: F401 - pytest fixture
from security_fixtures import (CURSOR_NOT_FOUND, UNAUTHORIZED, GatewayFactory, gateway_bin, gateway_supports, make_pki,
                               make_user, metric, metrics_text, rfc3339, sighup, timed, write_config)

MECHANISMS = ["SCRAM-SHA-256", "SCRAM-SHA-1"]


def require_flags(*flags: str) -> None:
    """Fail (never skip) when the gateway binary does not have these flags yet."""
    if not gateway_supports(*flags):
        pytest.fail(f"gateway binary lacks {' '.join(flags)} (`mongomux serve --help`): "
                    f"that part of issue 3 has not landed in this build", pytrace=False)


def code_of(excinfo) -> int | None:
    return getattr(excinfo.value, "code", None)


# ---------------------------------------------------------------------------
# Module fixtures


@pytest.fixture(scope="module")
def sec_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="module")
def pki(sec_dir):
    return make_pki(sec_dir / "pki")


@pytest.fixture(scope="module")
def sec_ferret(sec_dir, pki):
    """FerretDB with auth, plain on .port and TLS (our test CA) on .tls_port."""
    tls_port = free_port()
    up = start_ferretdb(sec_dir, extra_args=(
        f"--listen-tls=127.0.0.1:{tls_port}",
        f"--listen-tls-cert-file={pki.server_cert}",
        f"--listen-tls-key-file={pki.server_key}",
    ))
    up.tls_port = tls_port
    yield up
    up.proc.stop()


@pytest.fixture(scope="module")
def users():
    return {
        "rw": make_user("rw-user"),
        "rw2": make_user("rw-other"),
        "ro": make_user("ro-user", role="read"),
        "scoped": make_user("scoped-user", databases=("sec_a",)),
    }


@pytest.fixture(scope="module")
def secure_gw(sec_ferret, sec_dir, users):
    """A gateway with gateway users (so client auth is required), default access list."""
    cfg = write_config(sec_dir / "secure.toml", list(users.values()))
    gw = start_gateway(sec_ferret, sec_dir, name="mongomux-secure", extra_args=("--config", str(cfg)),
                       metrics=True)
    yield gw
    gw.proc.stop()


@pytest.fixture(scope="module")
def nx_secure_gw(nx, sec_dir, users):
    """Gateway users in front of nx-27017 (transactions; the upstream itself has no auth)."""
    cfg = write_config(sec_dir / "secure-nx.toml", list(users.values()))
    gw = start_gateway(nx, sec_dir, name="mongomux-secure-nx", extra_args=("--config", str(cfg)))
    yield gw
    gw.proc.stop()


@pytest.fixture
def gateways(sec_dir, sec_ferret):
    f = GatewayFactory(sec_dir, sec_ferret)
    yield f
    f.stop_all()


@pytest.fixture
def login(clients):
    """login(gw, user, mechanism=None, password=None, **kw) -> a pymongo client, closed at teardown."""

    def make(gw, user, mechanism=None, password=None, **kw):
        kw.setdefault("serverSelectionTimeoutMS", 5000)
        return clients(gw, **{**user.pymongo_kw(mechanism, password), **kw})

    return make


def admin_client(up) -> pymongo.MongoClient:
    return up.client()


# ---------------------------------------------------------------------------
# 1. Client authentication


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_right_password(secure_gw, users, login, mechanism):
    c = login(secure_gw, users["rw"], mechanism)
    coll = c.sec_auth[f"right_{mechanism[-3:]}"]
    coll.drop()
    coll.insert_one({"_id": 1, "mech": mechanism})
    assert coll.find_one({"_id": 1})["mech"] == mechanism


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_wrong_password_and_unknown_user_fail_alike(secure_gw, users, login, mechanism):
    with pytest.raises(OperationFailure) as wrong:
        login(secure_gw, users["rw"], mechanism, password="not-the-password").admin.command("ping")
    assert code_of(wrong) == AUTHENTICATION_FAILED, wrong.value.details
    with pytest.raises(OperationFailure) as unknown:
        login(secure_gw, type(users["rw"])("no-such-user", "whatever"), mechanism).admin.command("ping")
    assert code_of(unknown) == AUTHENTICATION_FAILED, unknown.value.details
    # Nothing in the reply may tell an unknown user from a wrong password.
    assert wrong.value.details.get("errmsg") == unknown.value.details.get("errmsg") == "Authentication failed."
    assert wrong.value.details.get("codeName") == unknown.value.details.get("codeName")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_unknown_user_gets_a_full_conversation(secure_gw, users, mechanism):
    """Raw SCRAM: the first server message for an unknown user looks like a real one, and
    the hello's saslSupportedMechs does not reveal whether the user exists."""
    with RawConn(secure_gw.port) as known, RawConn(secure_gw.port) as ghost:
        mechs_known = known.hello(saslSupportedMechs="admin.rw-user").get("saslSupportedMechs")
        mechs_ghost = ghost.hello(saslSupportedMechs="admin.ghost-user").get("saslSupportedMechs")
        assert sorted(mechs_known or []) == sorted(MECHANISMS), mechs_known
        assert sorted(mechs_ghost or []) == sorted(mechs_known), "saslSupportedMechs reveals unknown users"

        replies = []
        for conn, name in ((known, "rw-user"), (ghost, "ghost-user")):
            s = ScramClient(mechanism, name, "x")
            r = conn.command({"saslStart": 1, "mechanism": mechanism, "payload": Binary(s.first()),
                              "options": {"skipEmptyExchange": True}})
            assert r["ok"] == 1 and r["done"] is False, r
            fields = dict(kv.split("=", 1) for kv in bytes(r["payload"]).decode().split(","))
            assert set(fields) == {"r", "s", "i"}, fields
            final = conn.command({"saslContinue": 1, "conversationId": r["conversationId"],
                                  "payload": Binary(s.final(bytes(r["payload"])))})
            replies.append((final.get("code"), final.get("errmsg")))
        assert replies[0] == replies[1] == (AUTHENTICATION_FAILED, "Authentication failed."), replies


def test_speculative_auth_pymongo(gateways, users, login):
    """pymongo authenticates speculatively (first SCRAM step inside the hello): the login makes
    no saslStart, only saslContinue. Counted at the gateway's metrics endpoint, on a gateway of
    this test's own so that no other client's login is counted."""
    cfg = write_config(gateways.logdir / "spec.toml", [users["rw"]])
    gw = gateways("--config", cfg)
    start = metric(gw, "mongomux_operations_total", 'command="saslStart"')
    cont = metric(gw, "mongomux_operations_total", 'command="saslContinue"')

    # Control: a login without speculation is one saslStart, so the counter does count.
    with RawConn(gw.port) as raw:
        assert raw.auth(users["rw"].name, users["rw"].password)["ok"] == 1
    assert metric(gw, "mongomux_operations_total", 'command="saslStart"') == start + 1
    start = metric(gw, "mongomux_operations_total", 'command="saslStart"')
    cont = metric(gw, "mongomux_operations_total", 'command="saslContinue"')

    for mechanism in (None, "SCRAM-SHA-256"):  # default mechanism (negotiated) and explicit
        c = login(gw, users["rw"], mechanism)
        c.admin.command("ping")
        c.sec_auth.spec.find_one()
        c.close()
    starts = metric(gw, "mongomux_operations_total", 'command="saslStart"') - start
    conts = metric(gw, "mongomux_operations_total", 'command="saslContinue"') - cont
    print(f"\nspeculative logins: saslStart +{starts:g}, saslContinue +{conts:g}")
    assert starts == 0, "pymongo should have authenticated speculatively (no saslStart)"
    assert conts >= 2, "each speculative login still ends with saslContinue"


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_speculative_auth_raw(secure_gw, users, mechanism):
    u = users["rw"]
    with RawConn(secure_gw.port) as raw:
        reply = raw.auth(u.name, u.password, mechanism, speculative=True)
        assert reply["ok"] == 1 and reply["done"], reply
        assert raw.command({"find": "spec"}, db="sec_auth")["ok"] == 1
    with RawConn(secure_gw.port) as raw:
        reply = raw.auth(u.name, "wrong", mechanism, speculative=True)
        assert reply.get("code") == AUTHENTICATION_FAILED, reply
        # A failed speculative login leaves the connection unauthenticated.
        assert raw.command({"find": "spec"}, db="sec_auth").get("code") == UNAUTHORIZED


def test_unauthenticated_client_gets_only_handshake_auth_and_ping(secure_gw, clients):
    c = clients(secure_gw, serverSelectionTimeoutMS=5000)
    assert c.admin.command("ping")["ok"] == 1
    assert c.admin.command("buildInfo")["ok"] == 1
    assert c.admin.command("hello")["ok"] == 1
    for call in (lambda: c.sec_auth.command("find", "x"),
                 lambda: c.sec_auth.x.insert_one({"a": 1}),
                 lambda: c.list_database_names(),
                 lambda: c.sec_auth.list_collection_names(),
                 lambda: c.admin.command("serverStatus"),
                 lambda: c.sec_auth.command("dbStats")):
        with pytest.raises(OperationFailure) as e:
            call()
        assert code_of(e) == UNAUTHORIZED, e.value.details


def _op_compressed_noop(doc: dict) -> bytes:
    """An OP_MSG wrapped in OP_COMPRESSED with the noop compressor (id 0)."""
    body = w.op_msg_body(doc)
    return w.frame(w.OP_COMPRESSED, struct.pack("<iiB", w.OP_MSG, len(body), 0) + body)


def test_compressed_envelope_does_not_bypass_checks(secure_gw, users):
    with RawConn(secure_gw.port) as raw:
        raw.sock.sendall(_op_compressed_noop({"find": "x", "$db": "sec_auth"}))
        msg = w.recv_message(raw.sock, 5)
        assert msg is not None and msg.doc.get("code") == UNAUTHORIZED, msg and msg.doc
        assert raw.auth(users["rw"].name, users["rw"].password)["ok"] == 1
        raw.sock.sendall(_op_compressed_noop({"createUser": "evil", "pwd": "x", "roles": ["root"], "$db": "admin"}))
        msg = w.recv_message(raw.sock, 5)
        assert msg is not None and msg.doc.get("code") == UNAUTHORIZED, msg and msg.doc


# ---------------------------------------------------------------------------
# 2. Authorization


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_read_only_user_write_refused(secure_gw, sec_ferret, users, login, mechanism):
    with admin_client(sec_ferret) as admin:
        admin.sec_ro.docs.drop()
        admin.sec_ro.docs.insert_many([{"_id": i} for i in range(3)])
    c = login(secure_gw, users["ro"], mechanism)
    coll = c.sec_ro.docs
    assert [d["_id"] for d in coll.find().sort("_id", 1)] == [0, 1, 2]
    assert coll.count_documents({}) == 3
    writes = {
        "insert": lambda: coll.insert_one({"_id": 9}),
        "update": lambda: coll.update_one({"_id": 0}, {"$set": {"x": 1}}),
        "delete": lambda: coll.delete_one({"_id": 0}),
        "findAndModify": lambda: coll.find_one_and_delete({"_id": 1}),
        "createIndexes": lambda: coll.create_index("x"),
        "drop": lambda: coll.drop(),
        "create": lambda: c.sec_ro.create_collection("new_one"),
        "aggregate $out": lambda: list(coll.aggregate([{"$match": {}}, {"$out": "copied"}])),
        "aggregate $merge": lambda: list(coll.aggregate([{"$merge": {"into": "merged"}}])),
        "dropDatabase": lambda: c.drop_database("sec_ro"),
    }
    wrong = {}
    for name, call in writes.items():
        try:
            call()
            wrong[name] = "succeeded"
        except OperationFailure as e:
            if e.code != UNAUTHORIZED:
                wrong[name] = f"code {e.code}: {e.details.get('errmsg')}"
    assert not wrong, f"read-only user's writes not refused with 13: {wrong}"
    with admin_client(sec_ferret) as admin:
        assert sorted(d["_id"] for d in admin.sec_ro.docs.find()) == [0, 1, 2]
        assert "copied" not in admin.sec_ro.list_collection_names()


def test_database_scoped_user_refused_elsewhere(secure_gw, sec_ferret, users, login):
    with admin_client(sec_ferret) as admin:
        for name in ("sec_a", "sec_b"):
            admin.drop_database(name)
        admin.sec_b.secret.insert_one({"_id": "b-only"})
    c = login(secure_gw, users["scoped"])
    c.sec_a.docs.insert_one({"_id": 1})
    assert c.sec_a.docs.find_one({"_id": 1}) == {"_id": 1}

    refused = {
        "find on b": lambda: c.sec_b.secret.find_one(),
        "insert on b": lambda: c.sec_b.secret.insert_one({"_id": 2}),
        "listCollections on b": lambda: c.sec_b.list_collection_names(),
        "drop database b": lambda: c.drop_database("sec_b"),
        "listDatabases": lambda: c.list_database_names(),
        "admin command": lambda: c.admin.command("listCollections"),
    }
    wrong = {}
    for name, call in refused.items():
        try:
            call()
            wrong[name] = "succeeded"
        except OperationFailure as e:
            if e.code != UNAUTHORIZED:
                wrong[name] = f"code {e.code}: {e.details.get('errmsg')}"
    assert not wrong, f"user scoped to sec_a reached other databases: {wrong}"


@pytest.mark.parametrize("stage", [
    {"$out": {"db": "sec_b", "coll": "stolen"}},
    {"$merge": {"into": {"db": "sec_b", "coll": "stolen"}}},
])
def test_database_scoped_user_cannot_write_elsewhere_through_a_pipeline(secure_gw, sec_ferret, users, login,
                                                                       stage):
    """A careful reviewer's case: `$out`/`$merge` name their target database inside the
    pipeline, so checking `$db` alone lets a user scoped to sec_a write into sec_b."""
    c = login(secure_gw, users["scoped"])
    c.sec_a.src.drop()
    c.sec_a.src.insert_one({"_id": "from-a"})
    with pytest.raises(OperationFailure) as e:
        list(c.sec_a.src.aggregate([{"$match": {}}, stage]))
    with admin_client(sec_ferret) as admin:
        landed = admin.sec_b.stolen.find_one({"_id": "from-a"})
    assert landed is None, "the scoped user wrote into sec_b"
    assert code_of(e) == UNAUTHORIZED, e.value.details


FORBIDDEN = [
    # (class, command document)
    ("user management", {"createUser": "evil", "pwd": "evil-pass", "roles": ["root"]}),
    ("user management", {"dropUser": "mongomux"}),
    ("user management", {"usersInfo": 1}),
    ("role management", {"createRole": "r", "privileges": [], "roles": []}),
    ("deployment", {"fsync": 1}),
    ("deployment", {"setParameter": 1, "logLevel": 5}),
    ("diagnostics", {"getLog": "global"}),
    ("diagnostics", {"getCmdLineOpts": 1}),
    ("operations", {"currentOp": 1}),
    ("operations", {"killOp": 1, "op": 1}),
    ("sessions", {"killAllSessions": []}),
    ("replication", {"replSetGetStatus": 1}),
    ("replication", {"replSetStepDown": 60}),
    ("sharding", {"addShard": "127.0.0.1:1"}),
    ("sharding", {"enableSharding": "sec_x"}),
    ("unknown", {"notARealCommandXyz": 1}),
    ("unknown", {"CreateUser": "evil", "pwd": "x", "roles": []}),  # case variant
    ("deployment", {"shutdown": 1, "force": True}),  # last: if it ever got through, only this module's server dies
]


@pytest.mark.parametrize("klass,cmd", FORBIDDEN, ids=[f"{k}-{next(iter(c))}" for k, c in FORBIDDEN])
def test_forbidden_command_refused_for_everyone(secure_gw, sec_ferret, users, login, klass, cmd):
    c = login(secure_gw, users["rw"])  # the most powerful gateway user
    with pytest.raises(OperationFailure) as e:
        c.admin.command(cmd)
    assert code_of(e) == UNAUTHORIZED, e.value.details
    assert sec_ferret.proc.alive(), "the upstream died"
    assert c.admin.command("ping")["ok"] == 1
    if "createUser" in cmd or "CreateUser" in cmd:
        with admin_client(sec_ferret) as admin:
            users_now = [u["user"] for u in admin.admin.command("usersInfo").get("users", [])]
        assert "evil" not in users_now


def test_list_commands_allowed_after_login_only(secure_gw, users, login):
    """listCommands (mongosh's db.listCommands()) was refused with 13 as an unreviewed command
    (found by the compat/ driver matrix). It returns only command names and help text, which a
    real server gives every user: a read-only user gets it, an unauthenticated client does not."""
    c = login(secure_gw, users["ro"])
    reply = c.admin.command("listCommands")
    assert reply["ok"] == 1 and "find" in reply["commands"], sorted(reply)
    with RawConn(secure_gw.port) as raw:
        r = raw.command({"listCommands": 1}, db="admin")
    assert r.get("code") == UNAUTHORIZED, r


# ---------------------------------------------------------------------------
# 3. Isolation between identities


def _open_cursor(client, session, db="sec_cur", coll="docs"):
    client[db][coll].drop()
    client[db][coll].insert_many([{"_id": i} for i in range(10)])
    reply = client[db].command("find", coll, batchSize=2, sort={"_id": 1}, session=session)
    cid = reply["cursor"]["id"]
    assert cid, "cursor should be open"
    return Int64(cid)


def test_cursor_hijack_across_identities(secure_gw, users, login):
    a = login(secure_gw, users["rw"])
    b = login(secure_gw, users["rw2"])
    with a.start_session() as s:
        cid = _open_cursor(a, s)
        lsid = s.session_id
        # B through its own driver sessions.
        with pytest.raises(OperationFailure) as e:
            b.sec_cur.command({"getMore": cid, "collection": "docs"})
        assert code_of(e) == CURSOR_NOT_FOUND, e.value.details
        # B on a raw connection, guessing the id and sending A's lsid verbatim.
        with RawConn(secure_gw.port) as raw:
            assert raw.auth(users["rw2"].name, users["rw2"].password)["ok"] == 1
            for extra in ({}, {"lsid": lsid}):
                r = raw.command({"getMore": cid, "collection": "docs", **extra}, db="sec_cur")
                assert r.get("code") == CURSOR_NOT_FOUND, (extra, r)
            r = raw.command({"killCursors": "docs", "cursors": [cid], "lsid": lsid}, db="sec_cur")
            assert cid not in r.get("cursorsKilled", []), r
            # Ending A's session by its id must not touch A's session either.
            raw.command({"endSessions": [lsid]})
        # A's cursor is intact: the next batch comes back.
        more = a.sec_cur.command({"getMore": cid, "collection": "docs", "batchSize": 3}, session=s)
        assert [d["_id"] for d in more["cursor"]["nextBatch"]] == [2, 3, 4]
        a.sec_cur.command({"killCursors": "docs", "cursors": [cid]}, session=s)


def test_reauthentication_as_another_identity_on_one_connection(secure_gw, users):
    """A connection authenticated as A opens a cursor (no lsid: a raw client need not send
    one), then authenticates as B on the same socket. Either the second login is refused,
    or B cannot continue A's cursor."""
    a, b = users["rw"], users["rw2"]
    with RawConn(secure_gw.port) as raw:
        assert raw.auth(a.name, a.password)["ok"] == 1
        raw.command({"delete": "reauth", "deletes": [{"q": {}, "limit": 0}]}, db="sec_cur")
        raw.command({"insert": "reauth", "documents": [{"_id": i} for i in range(6)]}, db="sec_cur")
        first = raw.command({"find": "reauth", "batchSize": 2}, db="sec_cur")
        cid = Int64(first["cursor"]["id"])
        assert cid, first
        second = raw.auth(b.name, b.password)
        more = raw.command({"getMore": cid, "collection": "reauth"}, db="sec_cur")
        print(f"\nsecond login on the same connection: ok={second.get('ok')} {second.get('codeName', '')}; "
              f"getMore then: ok={more.get('ok')} {more.get('codeName', '')}")
        if second.get("ok") == 1:
            assert more.get("code") == CURSOR_NOT_FOUND, \
                f"B continued A's cursor after re-authenticating on A's connection: {more}"


def test_user_of_another_auth_database(gateways, login):
    app_user = make_user("app-user", db="appdb")
    cfg = write_config(gateways.logdir / "authdb.toml", [app_user])
    gw = gateways("--config", cfg)
    assert login(gw, app_user).admin.command("ping")["ok"] == 1
    assert login(gw, app_user).sec_authdb.docs.count_documents({}) == 0
    with pytest.raises(OperationFailure) as e:
        login(gw, app_user, authSource="admin").admin.command("ping")
    assert code_of(e) == AUTHENTICATION_FAILED


def test_lsid_reuse_across_identities_transaction(nx_secure_gw, users, login):
    """B sends A's lsid and txnNumber while A's transaction is open: B must neither commit
    nor abort A's transaction. (Straight to nx-27017 both hijacks work: a server trusts the
    lsid it is sent. nx-27017 has no read isolation, uncommitted writes are visible to
    everyone, so reading inside another's transaction cannot be tested here; FerretDB has
    no transactions.)"""
    a = login(nx_secure_gw, users["rw"])
    b = login(nx_secure_gw, users["rw2"])
    db = a.sec_txn_hijack
    db.items.drop()
    db.items.insert_one({"_id": "base"})
    outcome = {}
    with RawConn(nx_secure_gw.port) as raw:
        assert raw.auth(users["rw2"].name, users["rw2"].password)["ok"] == 1

        def hijack(session, command):
            in_txn = {"lsid": session.session_id, "txnNumber": Int64(session._server_session.transaction_id),
                      "autocommit": False}
            reply = raw.command({command: 1, **in_txn})
            outcome[command] = f"{reply.get('ok')}/{reply.get('codeName', '')}"

        # B commits A's transaction, then A aborts it: A's write must be gone.
        with a.start_session() as s:
            s.start_transaction()
            db.items.insert_one({"_id": "a-aborted"}, session=s)
            hijack(s, "commitTransaction")
            s.abort_transaction()
        # B aborts A's transaction, then A commits it: A's write must be there.
        with a.start_session() as s:
            s.start_transaction()
            db.items.insert_one({"_id": "a-committed"}, session=s)
            hijack(s, "abortTransaction")
            s.commit_transaction()
    print(f"\nB's replies when using A's lsid: {outcome}")
    ids = sorted(d["_id"] for d in b.sec_txn_hijack.items.find())
    assert ids == ["a-committed", "base"], ids
    db.items.drop()


# ---------------------------------------------------------------------------
# 4. IP access list


def test_denied_source_address_closed_before_any_reply(gateways):
    gw = gateways("--access", "127.0.0.1/32")
    assert refused_before_reply(gw.port, "127.0.0.2"), "127.0.0.2 got a reply"
    assert not refused_before_reply(gw.port, "127.0.0.1"), "127.0.0.1 was refused"
    wait_until(lambda: "127.0.0.2" in gw.proc.log.read_text(errors="replace"), 5,
               what="the denied address in the log")
    assert "mongomux_client_connections_denied_total" in metrics_text(gw), \
        "no mongomux_client_connections_denied_total at the metrics endpoint"
    assert metric(gw, "mongomux_client_connections_denied_total") >= 1


def test_default_access_is_loopback(gateways):
    gw = gateways()
    assert not refused_before_reply(gw.port, "127.0.0.2"), "loopback (127.0.0.0/8) is the default"


def test_expired_access_entry_admits_no_one(gateways):
    cfg = write_config(gateways.logdir / "expiry.toml", access=[
        {"cidr": "127.0.0.1/32", "expires": rfc3339(-dt.timedelta(minutes=5)), "comment": "expired"},
        {"cidr": "127.0.0.2/32", "expires": rfc3339(dt.timedelta(hours=1)), "comment": "temporary"},
    ])
    gw = gateways("--config", cfg)
    assert refused_before_reply(gw.port, "127.0.0.1"), "an expired entry still admitted 127.0.0.1"
    assert not refused_before_reply(gw.port, "127.0.0.2"), "an entry expiring in an hour did not admit"
    assert refused_before_reply(gw.port, "127.0.0.3"), "an address outside the list was admitted"


def test_access_entry_expires_while_running(gateways):
    """Temporary entries (like Atlas's) stop admitting at their expiry, without a restart."""
    expires = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=4)
    cfg = write_config(gateways.logdir / "expiring.toml", access=[
        "127.0.0.1/32",
        {"cidr": "127.0.0.2/32", "expires": expires.isoformat().replace("+00:00", "Z"), "comment": "4 s"},
    ])
    gw = gateways("--config", cfg)
    assert not refused_before_reply(gw.port, "127.0.0.2"), "admitted before its expiry"
    remaining = (expires - dt.datetime.now(dt.timezone.utc)).total_seconds()
    time.sleep(max(0.0, remaining) + 0.5)
    wait_until(lambda: refused_before_reply(gw.port, "127.0.0.2"), 5, interval=0.5,
               what="the expired entry to stop admitting 127.0.0.2")


def test_any_address_needs_explicit_flag(gateways, sec_ferret):
    cmd = [gateway_bin(), "serve", "--listen", "127.0.0.1:0", "--upstream", sec_ferret.gateway_upstream_uri(),
           "--access", "0.0.0.0/0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert out.returncode != 0, "0.0.0.0/0 accepted without --allow-any-address"
    assert "allow-any-address" in (out.stdout + out.stderr), out.stderr
    gw = gateways("--access", "0.0.0.0/0", "--allow-any-address")

    def warned():
        return any("WARN" in ln and any(k in ln.lower() for k in ("0.0.0.0/0", "any address", "every address"))
                   for ln in gw.proc.log.read_text(errors="replace").splitlines())

    wait_until(warned, 5, what="a start-up warning about the access list admitting every address")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_access_entries(gateways):
    if not _ipv6_loopback():
        pytest.fail("no IPv6 loopback on this machine", pytrace=False)
    gw = gateways("--access", "::1/128", listen="[::1]:0", metrics=False)
    assert not refused_before_reply(gw.port, "::1", host="::1")
    gw = gateways("--access", "127.0.0.1/32", listen="[::1]:0", metrics=False)
    assert refused_before_reply(gw.port, "::1", host="::1")


# ---------------------------------------------------------------------------
# 6. Abuse limits


def test_handshake_timeout_closes_silent_socket(gateways):
    gw = gateways("--handshake-timeout", "1s")
    # Timed from the connect: on a loaded machine the hello below may take longer than the
    # timeout itself.
    t0 = time.monotonic()
    silent = w.connect(gw.port)
    talking = w.connect(gw.port)
    talking.sendall(w.op_msg({"hello": 1, "$db": "admin"}))
    assert w.recv_message(talking, 5) is not None
    assert w.wait_closed(silent, 8), "a silent socket was not closed"
    took = time.monotonic() - t0
    assert 0.9 <= took <= 6, f"closed {took:.2f}s after connecting, with --handshake-timeout 1s"
    # A client that completed its handshake is not subject to it.
    talking.sendall(w.op_msg({"ping": 1, "$db": "admin"}))
    msg = w.recv_message(talking, 5)
    assert msg is not None and msg.doc["ok"] == 1
    silent.close()
    talking.close()


def test_handshake_timeout_covers_a_partial_first_message(gateways):
    """A careful reviewer's case: a client that sends a few bytes of its first message and then
    nothing holds a socket just as a silent one does; it is closed at the handshake timeout too."""
    gw = gateways("--handshake-timeout", "1s")
    sock = w.connect(gw.port)
    sock.sendall(w.op_msg({"hello": 1, "$db": "admin"})[:6])
    t0 = time.monotonic()
    closed = w.wait_closed(sock, 8)
    sock.close()
    assert closed, "a client that sent 6 bytes and stalled was still connected 8 s later (--handshake-timeout 1s)"
    assert time.monotonic() - t0 <= 4


def test_connections_per_source_limit(gateways):
    # Lands with the second half of issue 3.
    require_flags("--max-connections-per-source")
    gw = gateways("--max-connections-per-source", "3", "--access", "127.0.0.0/8")
    held = [RawConn(gw.port, source="127.0.0.1") for _ in range(3)]
    try:
        for c in held:
            assert c.hello()["ok"] == 1
        assert refused_before_reply(gw.port, "127.0.0.1"), "the 4th connection from 127.0.0.1 was served"
        # Another source is not affected.
        assert not refused_before_reply(gw.port, "127.0.0.2")
        # Freeing a slot admits a new connection.
        held.pop().close()
        wait_until(lambda: not refused_before_reply(gw.port, "127.0.0.1"), 5, interval=0.2,
                   what="a slot freed by a closed connection")
        for c in held:
            assert c.command({"ping": 1})["ok"] == 1, "held connections must stay usable"
    finally:
        for c in held:
            c.close()


@pytest.mark.timeout(150)
def test_failed_auth_rate_limit_per_source(gateways, users):
    """Wrong passwords from 127.0.0.1 slow 127.0.0.1 only. Prints the attempt rates."""
    u = users["rw"]
    cfg = write_config(gateways.logdir / "ratelimit.toml", [u])
    # The guessing connection stays unauthenticated for longer than the default handshake
    # deadline (which now lasts until authentication completes); this test is about the delays.
    gw = gateways("--config", cfg, "--access", "127.0.0.0/8", "--handshake-timeout", "120s")

    def attempt(conn, password):
        took, reply = timed(conn.auth, u.name, password)
        return took, reply

    with RawConn(gw.port, source="127.0.0.1") as guesser:
        before = []
        for _ in range(5):
            took, reply = attempt(guesser, "guess")
            assert reply.get("code") == AUTHENTICATION_FAILED, reply
            before.append(took)
        after = []
        for _ in range(5):
            took, reply = attempt(guesser, "guess")
            assert reply.get("code") == AUTHENTICATION_FAILED, reply
            after.append(took)

        # While 127.0.0.1 waits out its next delay, 127.0.0.3 is served at once.
        pending = cf.ThreadPoolExecutor(1).submit(attempt, guesser, "guess")
        time.sleep(0.3)
        with RawConn(gw.port, source="127.0.0.3") as other:
            other_wrong, r1 = attempt(other, "typo")
            other_right, r2 = attempt(other, u.password)
        delayed, r3 = pending.result(timeout=30)
        assert r1.get("code") == AUTHENTICATION_FAILED and r2.get("ok") == 1 and \
            r3.get("code") == AUTHENTICATION_FAILED, (r1, r2, r3)

        # The limited source's right password is still served (slowly); a success resets it.
        right_late, r4 = attempt(guesser, u.password)
        assert r4.get("ok") == 1, r4
        reset, r5 = attempt(guesser, "guess")
        assert r5.get("code") == AUTHENTICATION_FAILED

    rate_before = len(before) / sum(before)
    rate_after = len(after) / sum(after)
    print("\n--- failed-auth rate limit (one source, one connection, SCRAM-SHA-256) ---")
    print("attempts 1-5 (s):  " + " ".join(f"{t:.3f}" for t in before))
    print("attempts 6-10 (s): " + " ".join(f"{t:.3f}" for t in after))
    print(f"attempt 11 (s): {delayed:.3f}; meanwhile 127.0.0.3 wrong {other_wrong:.3f}, right {other_right:.3f}")
    print(f"right password from the limited source: {right_late:.3f}; next attempt after the reset: {reset:.3f}")
    print(f"rate before the limit: {rate_before:.1f} attempts/s; attempts 6-10: {rate_after:.2f} attempts/s; "
          f"at the 5 s cap: {1 / 5:.2f} attempts/s per connection")

    assert max(before) < 0.5, f"the first 5 failures should not be delayed: {before}"
    assert after[0] >= 0.09, f"the 6th failure should wait ~100 ms: {after}"
    assert after[-1] >= 1.5 and after[-1] > after[0] * 4, f"delays should double: {after}"
    assert delayed >= 2.5, f"the 11th attempt should wait ~3.2 s: {delayed:.3f}"
    assert other_wrong < 0.5 and other_right < 0.5, \
        f"127.0.0.3 was slowed by 127.0.0.1's failures: {other_wrong:.3f}, {other_right:.3f}"
    assert reset < 0.5, f"a success should reset the source's failures: {reset:.3f}"


def test_failed_auth_throttle_not_reset_by_another_accounts_success(gateways, users):
    """Issue 12: guesses at one account from a source stay throttled when the guesser logs in to
    an account of their own from the same source; the victim's own login still works."""
    victim, own = users["rw"], users["rw2"]
    cfg = write_config(gateways.logdir / "throttle-keys.toml", [victim, own])
    gw = gateways("--config", cfg, "--handshake-timeout", "120s")
    with RawConn(gw.port) as guesser:
        for _ in range(7):
            assert guesser.auth(victim.name, "guess").get("code") == AUTHENTICATION_FAILED
        with RawConn(gw.port) as mine:
            assert mine.auth(own.name, own.password).get("ok") == 1
        took, reply = timed(guesser.auth, victim.name, "guess")
        assert reply.get("code") == AUTHENTICATION_FAILED, reply
        assert took >= 0.35, f"the attacker's own login reset the throttle on the victim: {took:.3f}s"
        # The attacker's own account is not slowed by the guesses at the victim.
        with RawConn(gw.port) as mine:
            own_took, r = timed(mine.auth, own.name, own.password)
            assert r.get("ok") == 1 and own_took < 0.5, (own_took, r)
    with RawConn(gw.port) as owner:
        assert owner.auth(victim.name, victim.password).get("ok") == 1


@pytest.mark.timeout(90)
def test_failed_auth_rate_limit_holds_for_parallel_connections(gateways, users):
    """A careful reviewer's case: a guesser that is already being slowed opens N connections
    and tries one password on each at once. If every attempt only sleeps its own delay, the
    source gets N attempts per delay instead of one, and the limit is worth 1/N. Asserted:
    once the delay is 400 ms, 8 parallel attempts take at least 8 x 200 ms (half of what
    queued delays would give). Prints the rate."""
    u = users["rw"]
    cfg = write_config(gateways.logdir / "ratelimit-par.toml", [u])
    gw = gateways("--config", cfg)
    with RawConn(gw.port) as g:
        for _ in range(7):  # 5 forgiven, then 100 ms, 200 ms: the next delay is 400 ms
            assert g.auth(u.name, "guess").get("code") == AUTHENTICATION_FAILED
    n = 8
    conns = [RawConn(gw.port) for _ in range(n)]
    try:
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(n) as pool:
            replies = list(pool.map(lambda c: c.auth(u.name, "guess", timeout=60), conns))
        wall = time.perf_counter() - t0
    finally:
        for c in conns:
            c.close()
    assert all(r.get("code") == AUTHENTICATION_FAILED for r in replies), replies
    print(f"\n{n} parallel wrong passwords from one limited source (delay 400 ms): {wall:.2f}s "
          f"= {n / wall:.1f} attempts/s (one connection at that point: {1 / 0.4:.1f} attempts/s)")
    assert wall >= n * 0.2, (f"{n} parallel attempts from a limited source took {wall:.2f}s: the per-source "
                             f"delay is served per connection, so parallel connections multiply the rate")


# ---------------------------------------------------------------------------
# 5. TLS


def _tls_args(pki, mode="required", client_ca=False):
    args = ["--tls-mode", mode, "--tls-cert-file", pki.server_cert, "--tls-key-file", pki.server_key]
    if client_ca:
        args += ["--tls-client-ca-file", pki.ca]
    return args


def test_tls_required_refuses_plaintext(gateways, users, login, pki):
    require_flags("--tls-mode", "--tls-cert-file", "--tls-key-file")
    cfg = write_config(gateways.logdir / "tls.toml", [users["rw"]])
    gw = gateways("--config", cfg, *_tls_args(pki, "required"))
    c = login(gw, users["rw"], tls=True, tlsCAFile=str(pki.ca))
    c.sec_tls.docs.drop()
    c.sec_tls.docs.insert_one({"_id": "over-tls"})
    assert c.sec_tls.docs.find_one()["_id"] == "over-tls"

    # A plaintext client gets no reply: the connection is closed.
    assert refused_before_reply(gw.port, "127.0.0.1"), "a plaintext hello was answered in required mode"
    with pytest.raises(PyMongoError):
        login(gw, users["rw"], serverSelectionTimeoutMS=1500).admin.command("ping")
    # A TLS client that does not trust the gateway's CA fails too.
    with pytest.raises(PyMongoError):
        login(gw, users["rw"], tls=True, tlsCAFile=str(pki.other_ca), serverSelectionTimeoutMS=1500) \
            .admin.command("ping")


def test_tls_allowed_serves_both(gateways, users, login, pki):
    require_flags("--tls-mode")
    cfg = write_config(gateways.logdir / "tls-allowed.toml", [users["rw"]])
    gw = gateways("--config", cfg, *_tls_args(pki, "allowed"))
    assert login(gw, users["rw"], tls=True, tlsCAFile=str(pki.ca)).admin.command("ping")["ok"] == 1
    assert login(gw, users["rw"]).sec_tls.docs.count_documents({}) >= 0


def test_tls_client_certificate(gateways, users, login, pki):
    require_flags("--tls-mode", "--tls-client-ca-file")
    cfg = write_config(gateways.logdir / "tls-mtls.toml", [users["rw"]])
    gw = gateways("--config", cfg, *_tls_args(pki, "required", client_ca=True))
    ok = login(gw, users["rw"], tls=True, tlsCAFile=str(pki.ca), tlsCertificateKeyFile=str(pki.client_pem))
    assert ok.admin.command("ping")["ok"] == 1
    with pytest.raises(PyMongoError):
        login(gw, users["rw"], tls=True, tlsCAFile=str(pki.ca), serverSelectionTimeoutMS=1500) \
            .admin.command("ping")


def test_tls_handshake_timeout(gateways, pki):
    """In required mode a client that connects and never starts TLS is closed at the
    handshake timeout, like a silent plaintext one."""
    gw = gateways(*_tls_args(pki, "required"), "--handshake-timeout", "1s")
    sock = w.connect(gw.port)
    t0 = time.monotonic()
    closed = w.wait_closed(sock, 8)
    sock.close()
    assert closed and time.monotonic() - t0 <= 4, "silent socket not closed at the handshake timeout under TLS"


def test_upstream_over_tls_with_custom_ca(gateways, sec_ferret, users, login, pki):
    """FerretDB's TLS listener, certificate signed by the test CA: the gateway trusts it only
    through tlsCAFile in the upstream URI."""
    cfg = write_config(gateways.logdir / "up-tls.toml", [users["rw"]])
    base = f"mongodb://127.0.0.1:{sec_ferret.tls_port}/?authSource=admin&tls=true"
    gw = gateways("--config", cfg, upstream_uri=f"{base}&tlsCAFile={pki.ca}")
    c = login(gw, users["rw"])
    c.sec_uptls.docs.drop()
    c.sec_uptls.docs.insert_one({"_id": "via-tls-upstream"})
    with admin_client(sec_ferret) as admin:
        assert admin.sec_uptls.docs.find_one()["_id"] == "via-tls-upstream"

    # The same CA given by flag instead of in the URI.
    if gateway_supports("--upstream-tls-ca-file"):
        by_flag = gateways("--config", cfg, "--upstream-tls-ca-file", pki.ca, upstream_uri=base)
        assert login(by_flag, users["rw"]).sec_uptls.docs.count_documents({}) == 1

    # With a CA that did not sign FerretDB's certificate (or the system roots), no upstream
    # connection is made.
    # The member stays Unknown (its monitor cannot complete TLS), so after the server
    # selection timeout the client gets the error a mongos gives, naming the TLS failure.
    for uri in (f"{base}&tlsCAFile={pki.other_ca}", base):
        bad = gateways("--config", cfg, "--checkout-timeout", "2s",
                       upstream_uri=f"{uri}&serverSelectionTimeoutMS=1000")
        with pytest.raises(OperationFailure) as e:
            login(bad, users["rw"]).sec_uptls.docs.find_one()
        assert code_of(e) == 133, (uri, e.value.details)
        assert "TLS" in e.value.details["errmsg"], e.value.details


def test_upstream_tls_host_names_are_checked_unless_allowed(gateways, sec_ferret, users, login, pki, dns_server):
    """FerretDB's certificate names localhost and 127.0.0.1. Reached as `other.test` (which the
    test's DNS server maps to 127.0.0.1, through --upstream-resolver), the name check fails;
    with tlsAllowInvalidHostnames=true the chain is still verified and the name check skipped."""
    dns_server.set_a("other.test", "127.0.0.1")
    cfg = write_config(gateways.logdir / "up-tls-name.toml", [users["rw"]])
    base = (f"mongodb://other.test:{sec_ferret.tls_port}/?authSource=admin&tls=true"
            f"&tlsCAFile={pki.ca}&serverSelectionTimeoutMS=1000")
    strict = gateways("--config", cfg, "--upstream-resolver", dns_server.address, upstream_uri=base)
    with pytest.raises(OperationFailure) as e:
        login(strict, users["rw"]).sec_uptls.docs.find_one()
    assert code_of(e) == 133 and "TLS" in e.value.details["errmsg"], e.value.details
    lax = gateways("--config", cfg, "--upstream-resolver", dns_server.address,
                   upstream_uri=f"{base}&tlsAllowInvalidHostnames=true")
    login(lax, users["rw"]).sec_uptls.docs.find_one()
    # A CA that did not sign the certificate is still refused.
    other_ca = base.replace(str(pki.ca), str(pki.other_ca))
    bad = gateways("--config", cfg, "--upstream-resolver", dns_server.address,
                   upstream_uri=f"{other_ca}&tlsAllowInvalidHostnames=true")
    with pytest.raises(OperationFailure) as e:
        login(bad, users["rw"]).sec_uptls.docs.find_one()
    assert code_of(e) == 133, e.value.details


# ---------------------------------------------------------------------------
# 7. Reload


@pytest.mark.timeout(90)
def test_reload_users_and_access_while_connected(gateways, users, login):
    d = gateways.logdir
    keep, gone, demoted, newbie = (make_user("keep"), make_user("gone"), make_user("demoted"), make_user("newbie"))
    cfg = d / "reload.toml"
    write_config(cfg, [keep, gone, demoted], access=["127.0.0.1/32", "127.0.0.2/32"])
    gw = gateways("--config", cfg)

    keep_raw = RawConn(gw.port)
    gone_raw = RawConn(gw.port)
    demoted_raw = RawConn(gw.port)
    from_2 = RawConn(gw.port, source="127.0.0.2")
    conns = [keep_raw, gone_raw, demoted_raw, from_2]
    try:
        for conn, u in ((keep_raw, keep), (gone_raw, gone), (demoted_raw, demoted), (from_2, keep)):
            assert conn.auth(u.name, u.password)["ok"] == 1, u.name
        keep_py = login(gw, keep)
        gone_py = login(gw, gone, serverSelectionTimeoutMS=2000)
        keep_py.sec_reload.docs.drop()
        keep_py.sec_reload.docs.insert_one({"_id": "before"})
        assert gone_py.sec_reload.docs.count_documents({}) == 1
        assert demoted_raw.command({"insert": "docs", "documents": [{"_id": "demoted-1"}]},
                                   db="sec_reload")["ok"] == 1
        with pytest.raises(OperationFailure):
            login(gw, newbie).admin.command("ping")
        assert refused_before_reply(gw.port, "127.0.0.3")

        # Reload: gone removed, demoted made read-only, newbie added; 127.0.0.2 replaced by 127.0.0.3.
        demoted_ro = type(demoted)(demoted.name, demoted.password, "read", (), "admin",
                                   make_user(demoted.name, role="read", password=demoted.password).toml)
        write_config(cfg, [keep, demoted_ro, newbie], access=["127.0.0.1/32", "127.0.0.3/32"])
        sighup(gw)

        def newbie_can_log_in():
            with RawConn(gw.port) as r:
                return r.auth(newbie.name, newbie.password).get("ok") == 1

        wait_until(newbie_can_log_in, 10, interval=0.2, what="the added user to log in after SIGHUP")
        assert gw.proc.alive()

        # Established connections of a kept user carry on, on the same sockets.
        assert keep_raw.command({"find": "docs"}, db="sec_reload")["ok"] == 1
        keep_py.sec_reload.docs.insert_one({"_id": "after"})
        # The removed user's connections are closed, without waiting for its next message.
        assert w.wait_closed(gone_raw.sock, 5), "the removed user's established connection stayed open"
        assert gone_raw.try_command({"find": "docs"}, db="sec_reload") is None
        with pytest.raises(PyMongoError):
            gone_py.sec_reload.docs.count_documents({})
        with pytest.raises(OperationFailure) as e:
            login(gw, gone).admin.command("ping")
        assert code_of(e) == AUTHENTICATION_FAILED
        # The changed-role user: the old connection is closed, a new login is read-only.
        assert w.wait_closed(demoted_raw.sock, 5), "the demoted user's established connection stayed open"
        assert demoted_raw.try_command({"insert": "docs", "documents": [{"_id": "demoted-2"}]},
                                       db="sec_reload") is None
        demoted_py = login(gw, demoted)
        assert demoted_py.sec_reload.docs.count_documents({}) >= 1
        with pytest.raises(OperationFailure) as e:
            demoted_py.sec_reload.docs.insert_one({"_id": "demoted-3"})
        assert code_of(e) == UNAUTHORIZED
        # Access list: 127.0.0.2 can no longer open connections, 127.0.0.3 can, and the
        # established connection from 127.0.0.2 (a kept user's) is closed.
        assert refused_before_reply(gw.port, "127.0.0.2"), "removed address still admitted"
        assert not refused_before_reply(gw.port, "127.0.0.3"), "added address not admitted"
        assert w.wait_closed(from_2.sock, 5), "an established connection from the removed address stayed open"
        assert from_2.try_command({"ping": 1}) is None
        # Both kinds of closing are counted: the two raw connections and gone_py's
        # authenticated pool connections (its monitors never logged in), and 127.0.0.2's.
        revoked = "mongomux_client_connections_revoked_total"
        wait_until(lambda: metric(gw, revoked, 'reason="user"') >= 3, 5, what="user revocations counted")
        assert metric(gw, revoked, 'reason="access"') == 1

        # A broken file on reload changes nothing and does not stop the gateway.
        cfg.write_text("this is [not toml\n")
        sighup(gw)
        time.sleep(1)
        assert gw.proc.alive(), "a bad config on SIGHUP killed the gateway"
        assert keep_raw.command({"find": "docs"}, db="sec_reload")["ok"] == 1
        with RawConn(gw.port) as r:
            assert r.auth(newbie.name, newbie.password).get("ok") == 1
        docs = sorted(x["_id"] for x in keep_py.sec_reload.docs.find())
        assert "demoted-2" not in docs and "demoted-3" not in docs, docs
    finally:
        for c in conns:
            c.close()


# ---------------------------------------------------------------------------
# 8. Secrets


def test_help_never_shows_secrets():
    secret = "help-secret-Zq9"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONGOMUX_")}
    env["MONGOMUX_UPSTREAM_PASSWORD"] = secret
    env["MONGOMUX_UPSTREAM"] = f"mongodb://u:{secret}@127.0.0.1:1/"
    for args in (["serve", "--help"], ["--help"], ["serve", "-h"]):
        out = subprocess.run([gateway_bin(), *args], capture_output=True, text=True, timeout=20, env=env)
        assert secret not in out.stdout + out.stderr, f"`mongomux {' '.join(args)}` shows a secret"


@pytest.mark.timeout(90)
def test_secrets_never_logged(gateways, sec_ferret, pki, login):
    """Debug logging, a full session with failing and succeeding logins: no secret in the log."""
    alice, bob = make_user("alice-logs"), make_user("bob-logs", role="read")
    wrong_passwords = ["wrong-Pa55-" + alice.password[-6:], "bob-typo-XyZ123"]
    cfg = write_config(gateways.logdir / "secrets.toml", [alice, bob])
    up = sec_ferret
    tls_ok = gateway_supports("--tls-mode", "--tls-cert-file", "--tls-key-file")
    extra = ["--config", cfg, "--log-level", "debug"]
    if tls_ok:
        extra += _tls_args(pki, "allowed")
    # The upstream credentials go in the URI, the harder case: the URI must never be logged whole.
    gw = gateways(*extra, upstream_uri=f"mongodb://{up.username}:{up.password}@127.0.0.1:{up.port}/?authSource=admin",
                  credentials_in_env=False)

    for mech in MECHANISMS:
        with pytest.raises(OperationFailure):
            login(gw, alice, mech, password=wrong_passwords[0]).admin.command("ping")
        with pytest.raises(OperationFailure):
            login(gw, bob, mech, password=wrong_passwords[1]).admin.command("ping")
        c = login(gw, alice, mech)
        c.sec_logs.docs.drop()
        c.sec_logs.docs.insert_many([{"_id": i} for i in range(5)])
        assert len(list(c.sec_logs.docs.find(batch_size=2))) == 5
        with pytest.raises(OperationFailure):
            login(gw, bob, mech).sec_logs.docs.insert_one({"_id": 99})
    with RawConn(gw.port) as raw:
        assert raw.auth(alice.name, alice.password, speculative=True)["ok"] == 1
        raw.command({"createUser": "x", "pwd": alice.password, "roles": []})
    if tls_ok:
        assert login(gw, alice, tls=True, tlsCAFile=str(pki.ca)).admin.command("ping")["ok"] == 1
    sighup(gw)
    time.sleep(0.5)
    gw.proc.stop()
    log = gw.proc.log.read_text(errors="replace")
    assert "DEBUG" in log, "the gateway did not log at debug level; the test proves nothing"

    secrets_ = {"upstream password": up.password}
    for u in (alice, bob):
        secrets_[f"{u.name} password"] = u.password
        for i, v in enumerate(u.stored_secrets()):
            secrets_[f"{u.name} stored value #{i}"] = v
    for i, p in enumerate(wrong_passwords):
        secrets_[f"wrong password #{i}"] = p
    if tls_ok:
        for i, line in enumerate(pki.key_body_lines()):
            secrets_[f"TLS key line {i}"] = line
    found = [what for what, value in secrets_.items() if value in log]
    assert not found, f"secrets in the gateway log ({gw.proc.log}): {found}"
    if not tls_ok:
        pytest.fail("secrets checked without TLS: the gateway lacks --tls-mode, so the TLS key was not "
                    "exercised", pytrace=False)


def test_user_controlled_strings_cannot_forge_log_lines(gateways, users, login):
    """Debug logging; a user name, an application name, a database and a collection name, each
    carrying CR/LF and a fake log line: every one reaches the log escaped, never as a line of
    its own."""
    alice = users["rw"]
    cfg = write_config(gateways.logdir / "escape.toml", [alice])
    gw = gateways("--config", cfg, "--log-level", "debug")
    forged = "\r\n2026-01-01T00:00:00Z  INFO FORGED"
    with RawConn(gw.port) as raw:
        raw.command({"hello": 1, "client": {"application": {"name": "app" + forged},
                                            "driver": {"name": "d" + forged, "version": "1"},
                                            "os": {"type": "t" + forged}}})
        r = raw.auth("nobody" + forged, "whatever")
        assert r.get("ok") == 0
    with RawConn(gw.port) as raw:
        assert raw.auth(alice.name, alice.password)["ok"] == 1
        raw.command({"find": "c" + forged, "filter": {}}, db="sec_logs")
        raw.command({"find": "c", "filter": {}}, db="db" + forged)
        raw.command({"nosuchcommand" + forged: 1}, db="sec_logs")
    time.sleep(0.3)
    gw.proc.stop()
    log = gw.proc.log.read_text(errors="replace")
    assert "DEBUG" in log, "the gateway did not log at debug level; the test proves nothing"
    lines = [line for line in log.splitlines() if "FORGED" in line]
    assert lines, "the strings did not reach the log at all; the test proves nothing"
    assert not [line for line in lines if line.lstrip().startswith("2026-01-01")], lines
    assert all("\\r\\n" in line or "\\\\r\\\\n" in line for line in lines), lines


def test_upstream_auth_failure_reveals_no_secret(gateways, sec_ferret, users, login):
    """The gateway's own upstream credentials are wrong: the client gets an error, and
    neither that error nor the log carries the (wrong) upstream password."""
    up = sec_ferret
    bad_password = "Wr0ng-upstream-" + up.password[:6][::-1] + "-x"
    cfg = write_config(gateways.logdir / "bad-upstream.toml", [users["rw"]])
    gw = gateways("--config", cfg, "--checkout-timeout", "2s", "--log-level", "debug",
                  upstream_uri=f"mongodb://{up.username}:{bad_password}@127.0.0.1:{up.port}/?authSource=admin",
                  credentials_in_env=False)
    with pytest.raises(OperationFailure) as e:
        login(gw, users["rw"]).sec_logs.docs.find_one()
    print(f"\nclient error with wrong upstream credentials: {e.value.code} {e.value.details.get('errmsg')!r}")
    assert bad_password not in str(e.value.details)
    gw.proc.stop()
    log = gw.proc.log.read_text(errors="replace")
    assert bad_password not in log, "the upstream password is in the log"
    assert up.password not in log


# ---------------------------------------------------------------------------
# Figures


def test_figure_connect_and_authenticate_latency(secure_gw, sec_ferret, users):
    """Full connect + SCRAM-SHA-256 + ping with pymongo, through the gateway vs. straight to
    FerretDB (one run, medians). Printed for the closing note; asserted only loosely."""
    u = users["rw"]

    def once(uri):
        t = time.perf_counter()
        with pymongo.MongoClient(uri, directConnection=True, serverSelectionTimeoutMS=5000) as c:
            c.admin.command("ping")
        return time.perf_counter() - t

    gw_uri = f"mongodb://{u.name}:{u.password}@127.0.0.1:{secure_gw.port}/?authSource=admin&authMechanism=SCRAM-SHA-256"
    up = sec_ferret
    direct_uri = f"mongodb://{up.username}:{up.password}@127.0.0.1:{up.port}/?authSource=admin&authMechanism=SCRAM-SHA-256"
    for uri in (gw_uri, direct_uri):  # warm up (gateway pool, FerretDB)
        once(uri)
    samples = {"gateway": [], "direct": []}
    for _ in range(15):
        samples["gateway"].append(once(gw_uri))
        samples["direct"].append(once(direct_uri))
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    print(f"\nconnect+auth(SCRAM-SHA-256)+ping, median of 15: gateway {med['gateway']:.1f} ms, "
          f"FerretDB direct {med['direct']:.1f} ms, added {med['gateway'] - med['direct']:+.1f} ms "
          f"(gateway users: 15000 iterations; FerretDB's own user: its default)")
    assert med["gateway"] < 2000
