"""Authorization from the command table (issue 12, items 3 and 6), through the gateway against a
FerretDB of this module's own.

Item 3: a user scoped to one database tries to reach another through every place a command can
name a namespace (renameCollection's value and `to`, dataSize, mapReduce's out.db, bulkWrite's
nsInfo in the body and as a document sequence, $lookup / $graphLookup / $unionWith / $out /
$merge, also nested in $facet and in sub-pipelines). Each is refused with 13 and the other
database is unchanged; the same command inside the user's own database still passes the gateway.

Item 6: users of every database may not read or write `admin.system.users` (or any system
collection but system.views/system.js), nor `local`/`config`; server-wide commands are refused
to users scoped to some databases; `connectionStatus` names the client, never the upstream
account.

Stages FerretDB does not implement still show that the gateway let the legitimate request
through: the upstream's own error is anything but 13.
"""

from __future__ import annotations

import bson
import pymongo
import pytest
import struct
from pymongo.errors import OperationFailure

import mongowire as w
from conftest import UPSTREAM_USER, start_ferretdb, start_gateway
from mongowire import RawConn
from security_fixtures import UNAUTHORIZED, make_user, write_config

A, B = "authz_a", "authz_b"
CANARY = {"_id": "canary", "secret": "authz-canary-7f3e"}


@pytest.fixture(scope="module")
def authz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("authz")


@pytest.fixture(scope="module")
def authz_ferret(authz_dir):
    up = start_ferretdb(authz_dir)
    yield up
    up.proc.stop()


@pytest.fixture(scope="module")
def users():
    return {
        "scoped": make_user("authz-scoped", databases=(A,)),
        "all": make_user("authz-all"),
        "ro_all": make_user("authz-ro-all", role="read"),
    }


@pytest.fixture(scope="module")
def gw(authz_ferret, authz_dir, users):
    cfg = write_config(authz_dir / "authz.toml", list(users.values()))
    g = start_gateway(authz_ferret, authz_dir, name="mongomux-authz", extra_args=("--config", str(cfg)))
    yield g
    g.proc.stop()


@pytest.fixture
def login(clients):
    def make(gw, user):
        return clients(gw, **user.pymongo_kw(), serverSelectionTimeoutMS=5000)
    return make


def state_of_b(up) -> dict:
    """Every collection of database B with its documents, and the upstream's users."""
    with up.client() as admin:
        b = admin[B]
        colls = {name: sorted(map(str, b[name].find())) for name in b.list_collection_names()}
        users = sorted(u["user"] for u in admin.admin.command("usersInfo").get("users", []))
    return {"collections": colls, "users": users}


@pytest.fixture
def canary(authz_ferret):
    with authz_ferret.client() as admin:
        admin.drop_database(B)
        admin[B].secret.insert_one(dict(CANARY))
        admin.drop_database(A)
        admin[A].docs.insert_many([{"_id": i, "x": i} for i in range(3)])
    before = state_of_b(authz_ferret)
    yield
    assert state_of_b(authz_ferret) == before, "database B or the upstream's users changed"


def to_b(coll="secret"):
    return {"db": B, "coll": coll}


# (name, database the command is sent to, command)
REACH_OUT = [
    ("renameCollection to B", "admin", {"renameCollection": f"{A}.docs", "to": f"{B}.stolen"}),
    ("renameCollection from B", "admin", {"renameCollection": f"{B}.secret", "to": f"{A}.stolen"}),
    ("dataSize of B", A, {"dataSize": f"{B}.secret"}),
    ("mapReduce out.db B", A, {"mapReduce": "docs", "map": bson.Code("function(){emit(1,1)}"),
                               "reduce": bson.Code("function(k,v){return 1}"),
                               "out": {"replace": "stolen", "db": B}}),
    ("bulkWrite nsInfo B", "admin", {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"_id": "x"}}],
                                     "nsInfo": [{"ns": f"{B}.stolen"}]}),
    ("$lookup B", A, {"aggregate": "docs", "cursor": {}, "pipeline": [
        {"$lookup": {"from": to_b(), "pipeline": [], "as": "j"}}]}),
    ("$graphLookup B", A, {"aggregate": "docs", "cursor": {}, "pipeline": [
        {"$graphLookup": {"from": to_b(), "startWith": "$x", "connectFromField": "x",
                          "connectToField": "x", "as": "g"}}]}),
    ("$unionWith B", A, {"aggregate": "docs", "cursor": {}, "pipeline": [{"$unionWith": to_b()}]}),
    ("$out B", A, {"aggregate": "docs", "cursor": {}, "pipeline": [{"$out": to_b("stolen")}]}),
    ("$merge B", A, {"aggregate": "docs", "cursor": {}, "pipeline": [{"$merge": {"into": to_b("stolen")}}]}),
    ("$facet $lookup B", A, {"aggregate": "docs", "cursor": {}, "pipeline": [
        {"$facet": {"f": [{"$lookup": {"from": to_b(), "pipeline": [], "as": "j"}}]}}]}),
    ("$facet $facet $unionWith B", A, {"aggregate": "docs", "cursor": {}, "pipeline": [
        {"$facet": {"f": [{"$facet": {"g": [{"$unionWith": to_b()}]}}]}}]}),
    ("$lookup sub-pipeline $unionWith B", A, {"aggregate": "docs", "cursor": {}, "pipeline": [
        {"$lookup": {"from": "docs", "as": "j", "pipeline": [{"$unionWith": to_b()}]}}]}),
    ("view on a pipeline into B", A, {"create": "v", "viewOn": "docs", "pipeline": [
        {"$lookup": {"from": to_b(), "pipeline": [], "as": "j"}}]}),
    ("explain of a $lookup into B", A, {"explain": {"aggregate": "docs", "cursor": {}, "pipeline": [
        {"$lookup": {"from": to_b(), "pipeline": [], "as": "j"}}]}}),
]


@pytest.mark.parametrize("name,db,cmd", REACH_OUT, ids=[r[0] for r in REACH_OUT])
def test_scoped_user_cannot_reach_another_database(gw, users, login, canary, name, db, cmd):
    c = login(gw, users["scoped"])
    with pytest.raises(OperationFailure) as e:
        c[db].command(cmd)
    assert e.value.code == UNAUTHORIZED, e.value.details
    assert CANARY["secret"] not in str(e.value.details)


# The same commands inside the scoped user's own database.
STAY_INSIDE = [
    ("renameCollection", "admin", {"renameCollection": f"{A}.docs", "to": f"{A}.renamed"}),
    ("dataSize", A, {"dataSize": f"{A}.docs"}),
    ("mapReduce", A, {"mapReduce": "docs", "map": bson.Code("function(){emit(1,1)}"),
                      "reduce": bson.Code("function(k,v){return 1}"), "out": {"replace": "mr", "db": A}}),
    ("bulkWrite", "admin", {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"_id": "x"}}],
                            "nsInfo": [{"ns": f"{A}.docs"}]}),
    ("$lookup", A, {"aggregate": "docs", "cursor": {}, "pipeline": [
        {"$lookup": {"from": {"db": A, "coll": "docs"}, "pipeline": [], "as": "j"}}]}),
    ("$unionWith", A, {"aggregate": "docs", "cursor": {}, "pipeline": [{"$unionWith": "docs"}]}),
    ("$out", A, {"aggregate": "docs", "cursor": {}, "pipeline": [{"$out": "copied"}]}),
    ("$merge", A, {"aggregate": "docs", "cursor": {}, "pipeline": [{"$merge": {"into": {"db": A, "coll": "m"}}}]}),
    ("$facet", A, {"aggregate": "docs", "cursor": {}, "pipeline": [{"$facet": {"f": [{"$unionWith": "docs"}]}}]}),
]


@pytest.mark.parametrize("name,db,cmd", STAY_INSIDE, ids=[r[0] for r in STAY_INSIDE])
def test_scoped_user_same_commands_inside_scope(gw, users, login, canary, name, db, cmd):
    """The gateway lets each through; FerretDB answers it, or refuses a stage it does not
    implement with its own error, never 13."""
    c = login(gw, users["scoped"])
    try:
        reply = c[db].command(cmd)
        assert reply["ok"] == 1
    except OperationFailure as e:
        assert e.code != UNAUTHORIZED, e.details


def test_scoped_user_plain_crud_and_rename_work(gw, users, login, canary, authz_ferret):
    c = login(gw, users["scoped"])
    c[A].fresh.insert_many([{"_id": 1}, {"_id": 2}])
    assert c[A].fresh.count_documents({}) == 2
    c.admin.command("renameCollection", f"{A}.fresh", to=f"{A}.moved")
    assert sorted(d["_id"] for d in c[A].moved.find()) == [1, 2]
    assert c[A].command("dataSize", f"{A}.moved")["ok"] == 1


def _raw_login(gw, user) -> RawConn:
    raw = RawConn(gw.port)
    assert raw.auth(user.name, user.password).get("ok") == 1
    return raw


def _with_sequences(raw: RawConn, body: dict, sequences: dict) -> dict:
    """An OP_MSG with kind-1 document sequences."""
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(body)
    for ident, docs in sequences.items():
        section = ident.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(section)) + section
    rid = w.next_request_id()
    raw.sock.sendall(w.frame(w.OP_MSG, payload, request_id=rid))
    msg = w.recv_message(raw.sock)
    assert msg is not None and msg.response_to == rid
    return msg.doc


def test_document_sequences_are_judged(gw, users, canary, authz_ferret):
    with _raw_login(gw, users["scoped"]) as raw:
        # Legitimate: insert's documents as a sequence, and bulkWrite's nsInfo in scope.
        r = _with_sequences(raw, {"insert": "seq", "$db": A}, {"documents": [{"_id": 1}, {"_id": 2}]})
        assert r.get("ok") == 1 and r.get("n") == 2, r
        # nsInfo sent as a sequence naming B.
        r = _with_sequences(raw, {"bulkWrite": 1, "$db": "admin"},
                            {"ops": [{"insert": 0, "document": {"_id": "x"}}], "nsInfo": [{"ns": f"{B}.stolen"}]})
        assert r.get("code") == UNAUTHORIZED, r
        # A pipeline smuggled as a sequence (the body has none) is refused outright.
        r = _with_sequences(raw, {"aggregate": "docs", "cursor": {}, "$db": A},
                            {"pipeline": [{"$out": to_b("stolen")}]})
        assert r.get("ok") == 0 and r.get("code") in (9, UNAUTHORIZED), r
    with authz_ferret.client() as admin:
        assert admin[A].seq.count_documents({}) == 2


@pytest.mark.parametrize("bad", [
    {"find": 5}, {"find": {"c": 1}}, {"find": ""},
    {"renameCollection": "nodot", "to": f"{A}.x"}, {"renameCollection": f"{A}.docs", "to": {"db": B}},
    {"aggregate": "docs", "cursor": {}, "pipeline": [{"$out": {"db": 7, "coll": "x"}}]},
    {"aggregate": "docs", "cursor": {}, "pipeline": [{"$lookup": {"from": 1, "as": "j"}}]},
], ids=lambda d: next(iter(d)))
def test_odd_types_in_namespace_positions_refused(gw, users, canary, bad):
    with _raw_login(gw, users["scoped"]) as raw:
        r = raw.command(bad, db=A if "renameCollection" not in bad else "admin")
    assert r.get("ok") == 0, r


# ---------------------------------------------------------------------------
# Item 6: system collections, local/config, server-wide commands


SYSTEM = [
    ("find admin.system.users", "admin", {"find": "system.users"}),
    ("aggregate admin.system.users", "admin", {"aggregate": "system.users", "pipeline": [], "cursor": {}}),
    ("insert admin.system.users", "admin", {"insert": "system.users", "documents": [
        {"_id": "admin.evil", "user": "evil", "db": "admin", "roles": [{"role": "root", "db": "admin"}]}]}),
    ("$lookup admin.system.users", A, {"aggregate": "docs", "cursor": {}, "pipeline": [
        {"$lookup": {"from": {"db": "admin", "coll": "system.users"}, "pipeline": [], "as": "j"}}]}),
    ("count admin.system.version", "admin", {"count": "system.version"}),
    ("find local", "local", {"find": "startup_log"}),
    ("find config", "config", {"find": "system.sessions"}),
    ("dropDatabase admin", "admin", {"dropDatabase": 1}),
    ("$currentOp", "admin", {"aggregate": 1, "pipeline": [{"$currentOp": {}}], "cursor": {}}),
]


@pytest.mark.parametrize("name,db,cmd", SYSTEM, ids=[s[0] for s in SYSTEM])
def test_system_collections_refused_to_users_of_every_database(gw, users, login, canary, authz_ferret,
                                                               name, db, cmd):
    c = login(gw, users["all"])
    with pytest.raises(OperationFailure) as e:
        c[db].command(cmd)
    assert e.value.code == UNAUTHORIZED, e.value.details
    # The user of every database still reaches ordinary data anywhere.
    assert c[B].secret.find_one({"_id": "canary"}) == CANARY


@pytest.mark.parametrize("cmd", ["serverStatus", "hostInfo", "getParameter", "listDatabases"])
def test_server_wide_commands_only_for_users_of_every_database(gw, users, login, cmd):
    extra = {"featureCompatibilityVersion": 1} if cmd == "getParameter" else {}
    with pytest.raises(OperationFailure) as e:
        login(gw, users["scoped"]).admin.command(cmd, **extra)
    assert e.value.code == UNAUTHORIZED, e.value.details
    try:
        login(gw, users["ro_all"]).admin.command(cmd, **extra)
    except OperationFailure as e:  # FerretDB may not implement it; the gateway let it through
        assert e.code != UNAUTHORIZED, e.details


def test_connection_status_names_the_client_not_the_upstream(gw, users, login):
    for key in ("scoped", "all"):
        user = users[key]
        reply = login(gw, user).admin.command("connectionStatus")
        info = reply["authInfo"]
        assert info["authenticatedUsers"] == [{"user": user.name, "db": "admin"}], reply
        assert UPSTREAM_USER not in str(reply)
    roles = login(gw, users["scoped"]).admin.command("connectionStatus")["authInfo"]["authenticatedUserRoles"]
    assert roles == [{"role": "readWrite", "db": A}]


def test_drivers_normal_behaviour_still_works(gw, users, login, canary):
    """What pymongo does on its own: handshake, sessions, list databases and collections, bulk
    writes as document sequences, cursors with getMore, views."""
    c = login(gw, users["all"])
    assert A in c.list_database_names()
    s = login(gw, users["scoped"])
    s[A].many.insert_many([{"_id": i} for i in range(250)])
    assert len(list(s[A].many.find().batch_size(10))) == 250
    try:  # FerretDB has no views: the gateway lets the request through, the upstream refuses it
        s[A].create_collection("view", viewOn="many", pipeline=[{"$match": {"_id": {"$lt": 5}}}])
    except OperationFailure as e:
        assert e.code != UNAUTHORIZED, e.details
    assert "many" in s[A].list_collection_names()
    s[A].many.bulk_write([pymongo.InsertOne({"_id": 1000}), pymongo.UpdateOne({"_id": 1}, {"$set": {"y": 1}}),
                          pymongo.DeleteOne({"_id": 2})])
    with s.start_session() as session:
        assert s[A].many.count_documents({}, session=session) == 250
