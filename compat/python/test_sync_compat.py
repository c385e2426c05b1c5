"""pymongo's synchronous client (MongoClient), unchanged, straight against the upstream and
through mongomux: every scenario of compat/scenarios.json, compared (harness.py).

GENERATED from test_async_compat.py by unasync.py: do not edit; edit the async source and run
`compat/python/unasync.py` (compat/run refuses a stale copy). The scenarios are the same, run the
way a synchronous application uses pymongo (pymongo generates its synchronous API from the
asynchronous one the same way).
"""

from __future__ import annotations

import time
import os

import pytest
from pymongo import MongoClient, InsertOne, UpdateOne, DeleteOne, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

import harness as h

DRIVER = "python-sync"


def client(uri: str, **kw) -> tuple[MongoClient, h.Events]:
    ev = h.Events()
    kw.setdefault("serverSelectionTimeoutMS", 10_000)
    return MongoClient(uri, event_listeners=h.listeners(ev), **kw), ev


def fresh(c: MongoClient, scenario: str, target: str):
    name = h.db_name(DRIVER, scenario, target)
    c.drop_database(name)
    return c[name]


def ids(coll) -> list:
    return [d["_id"] for d in coll.find().sort("_id", 1)]


def differential(scenario: str, run) -> dict:
    return h.differential(DRIVER, h.VERSION, scenario, run)


# --- connect -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario,key", [("connect-scram-sha-256", "sha256"), ("connect-scram-sha-1", "sha1")])
def test_connect(scenario, key):
    def run(target):
        uri = h.uris(target)[key]
        o, info = {}, {}
        c, ev = client(uri)
        with c:
            o["ping"] = (c.admin.command("ping"))["ok"]
            coll = (fresh(c, scenario, target)).c
            coll.insert_one({"_id": 1, "who": key})
            o["found"] = coll.find_one({"_id": 1})
            info = {"serverTypes": dict(ev.servers), "awaitedHeartbeats": sum(ev.heartbeats)}
        bad, _ = client(h.with_password(uri, "not-the-password"), serverSelectionTimeoutMS=5000)
        with bad:
            try:
                bad.admin.command("ping")
                o["wrongPassword"] = "accepted"
            except PyMongoError as e:
                o["wrongPassword"] = h.error_shape(e)
        return o, info

    differential(scenario, run)


# --- CRUD --------------------------------------------------------------------------------------


def test_crud():
    def run(target):
        c, _ = client(h.uris(target)["plain"])
        with c:
            coll = (fresh(c, "crud", target)).items
            o = {}
            o["insertOne"] = (coll.insert_one({"_id": 1, "n": 1, "tag": "a"})).inserted_id
            o["insertMany"] = len((coll.insert_many([
                {"_id": 2, "n": 2, "tag": "b"}, {"_id": 3, "n": 3, "tag": "a"},
                {"_id": 4, "n": 4, "tag": "b"}, {"_id": 5, "n": 5, "tag": "a"}])).inserted_ids)
            o["findOne"] = coll.find_one({"_id": 3})
            o["findMissing"] = coll.find_one({"_id": 99})
            u1 = coll.update_one({"_id": 2}, {"$set": {"tag": "c"}})
            o["updateOne"] = [u1.matched_count, u1.modified_count]
            u2 = coll.update_many({"n": {"$gte": 3}}, {"$inc": {"n": 10}})
            o["updateMany"] = [u2.matched_count, u2.modified_count]
            u3 = coll.update_one({"_id": 6}, {"$set": {"n": 6, "tag": "u"}}, upsert=True)
            o["upsert"] = [u3.matched_count, u3.modified_count, u3.upserted_id]
            r = coll.replace_one({"_id": 4}, {"n": 40, "tag": "r"})
            o["replaceOne"] = [r.matched_count, r.modified_count]
            o["findOneAndUpdate"] = coll.find_one_and_update({"_id": 1}, {"$set": {"tag": "z"}},
                                                                   return_document=ReturnDocument.AFTER)
            o["findOneAndDelete"] = coll.find_one_and_delete({"_id": 6})
            o["deleteOne"] = (coll.delete_one({"_id": 5})).deleted_count
            o["deleteMany"] = (coll.delete_many({"tag": "a"})).deleted_count
            o["countDocuments"] = coll.count_documents({})
            o["estimatedDocumentCount"] = coll.estimated_document_count()
            o["distinct"] = sorted(coll.distinct("tag"))
            o["projection"] = coll.find({}, {"_id": 0, "tag": 1}).sort("tag", 1).to_list()
            o["skipLimit"] = coll.find().sort("_id", -1).skip(1).limit(1).to_list()
            o["all"] = coll.find().sort("_id", 1).to_list()
            return o, {}

    differential("crud", run)


# --- bulk writes with a duplicate key mid-batch ---------------------------------------------------


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_bulk(ordered):
    scenario = "bulk-ordered-error" if ordered else "bulk-unordered-error"

    def run(target):
        c, _ = client(h.uris(target)["plain"])
        with c:
            db = fresh(c, scenario, target)
            o = {}
            try:
                r = db.im.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 2}, {"_id": 3}], ordered=ordered)
                o["insertMany"] = {"accepted": len(r.inserted_ids)}
            except BulkWriteError as e:
                o["insertMany"] = h.bulk_shape(e)
            o["insertManyAfter"] = ids(db.im)
            try:
                r = db.bw.bulk_write([
                    InsertOne({"_id": 10}),
                    UpdateOne({"_id": 10}, {"$set": {"x": 1}}),
                    InsertOne({"_id": 10}),
                    DeleteOne({"_id": 10}),
                    InsertOne({"_id": 11}),
                ], ordered=ordered)
                o["bulkWrite"] = {"accepted": [r.inserted_count, r.matched_count, r.modified_count, r.deleted_count]}
            except BulkWriteError as e:
                o["bulkWrite"] = h.bulk_shape(e)
            o["bulkWriteAfter"] = db.bw.find().sort("_id", 1).to_list()
            return o, {}

    differential(scenario, run)


# --- cursors ------------------------------------------------------------------------------------


def seed25(db):
    db.c.insert_many([{"_id": i, "g": i % 3, "v": i} for i in range(25)])
    return db.c


def test_cursor_batches():
    def run(target):
        c, ev = client(h.uris(target)["plain"])
        with c:
            coll = seed25(fresh(c, "cursor-batches", target))
            start = len(ev.succeeded)
            got = [d["_id"] for d in coll.find().sort("_id", 1).batch_size(2)]
            o = {"ids": got}
            nxt, exhausted = [], False
            for e in ev.succeeded[start:]:
                if e.command_name == "find":
                    o["firstBatch"] = len(e.reply["cursor"]["firstBatch"])
                elif e.command_name == "getMore":
                    nxt.append(len(e.reply["cursor"]["nextBatch"]))
                    exhausted = e.reply["cursor"]["id"] == 0
            o.update(getMores=len(nxt), nextBatches=nxt, exhausted=exhausted)
            return o, {}

    differential("cursor-batches", run)


def test_cursor_early_close():
    def run(target):
        c, ev = client(h.uris(target)["plain"])
        with c:
            coll = seed25(fresh(c, "cursor-early-close", target))
            start, start_failed = len(ev.succeeded), len(ev.failed)
            cur = coll.find().sort("_id", 1).batch_size(2)
            read = [(cur.next())["_id"] for _ in range(5)]
            cur.close()
            o = {"read": read, "killCursors": "not sent"}
            o["getMores"] = sum(1 for e in ev.succeeded[start:] if e.command_name == "getMore")
            for e in ev.succeeded[start:]:
                if e.command_name == "killCursors":
                    r = e.reply
                    o["killCursors"] = {k.replace("cursors", "").lower(): (len(r[k]) if k in r else None)
                                        for k in ("cursorsKilled", "cursorsNotFound", "cursorsAlive", "cursorsUnknown")}
            for e in ev.failed[start_failed:]:
                if e.command_name == "killCursors":
                    o["killCursors"] = {"failed": e.failure}
            o["countAfter"] = coll.count_documents({})
            return o, {}

    differential("cursor-early-close", run)


# --- aggregate ----------------------------------------------------------------------------------


def test_aggregate():
    def run(target):
        c, _ = client(h.uris(target)["plain"])
        with c:
            coll = seed25(fresh(c, "aggregate", target))
            # One accumulator per $group: FerretDB 1.24 computes only the first.
            grouped = (coll.aggregate([
                {"$match": {"v": {"$gte": 5}}},
                {"$group": {"_id": "$g", "total": {"$sum": "$v"}}},
                {"$sort": {"_id": 1}},
            ], batchSize=1)).to_list()
            counted = (coll.aggregate([{"$match": {"g": 1}}, {"$count": "n"}])).to_list()
            return {"grouped": grouped, "counted": counted}, {}

    differential("aggregate", run)


# --- indexes and a duplicate key ----------------------------------------------------------------------


def test_index_duplicate_key():
    def run(target):
        c, _ = client(h.uris(target)["plain"])
        with c:
            coll = (fresh(c, "index-duplicate-key", target)).users
            o = {"createIndex": coll.create_index("email", unique=True)}

            def listed():
                out = [{"name": i["name"], "key": dict(i["key"]), "unique": bool(i.get("unique"))}
                       for i in coll.list_indexes()]
                return sorted(out, key=lambda i: i["name"])

            o["indexes"] = listed()
            coll.insert_one({"_id": 1, "email": "a@example.com"})

            def insert(d):
                try:
                    coll.insert_one(d)
                    return "accepted"
                except OperationFailure as e:
                    return {**h.error_shape(e), "isDuplicateKey": isinstance(e, DuplicateKeyError)}

            o["duplicate"] = insert({"_id": 2, "email": "a@example.com"})
            o["duplicateId"] = insert({"_id": 1, "email": "b@example.com"})
            coll.drop_index("email_1")
            o["indexesAfter"] = listed()
            o["afterDrop"] = insert({"_id": 3, "email": "a@example.com"})
            return o, {}

    differential("index-duplicate-key", run)


# --- retryable writes and reads across a connection drop ---------------------------------------------


@pytest.mark.parametrize("kind", ["write", "read"])
def test_retryable_drop(kind):
    """The server the client is connected to is frozen, an operation is sent on the pooled
    connection (surely in flight), then the server is killed and restarted on the same port under
    it: the driver's one retry must land on the restarted server."""
    scenario = f"retryable-{kind}-drop"
    command = "insert" if kind == "write" else "find"

    def run(target):
        u = h.uris(target)
        c, ev = client(h.with_options(u["plain"], "retryWrites=true&retryReads=true"), maxPoolSize=1)
        with c:
            coll = (fresh(c, scenario, target)).r
            coll.insert_one({"_id": 1})
            start, start_failed = len(ev.started), len(ev.failed)
            h.ctl_freeze_sync(u["restart"])
            restarted = h.ctl_restart_later_sync(u["restart"], 700)
            try:
                if kind == "write":
                    coll.insert_one({"_id": 2})
                    result = "ok"
                else:
                    result = ids(coll)
            except PyMongoError as e:
                result = h.error_shape(e)
            log = restarted()
            failed = [type(e.failure).__name__ if isinstance(e.failure, BaseException) else "reply"
                      for e in ev.failed[start_failed:] if e.command_name == command]
            # How many attempts the driver made is recorded, not compared: a driver that finds its
            # pooled connection dead before sending retries the connection, not the command.
            attempts = ev.started_named(start, command)
            return ({"result": result, "after": ids(coll)},
                    {"restart": log, "attempts": attempts, "failedAttempts": failed})

    res = differential(scenario, run)
    # Through the gateway (a mongos to the driver) the operation succeeds, exactly once, whatever
    # the reference does.
    g = res["gateway"]["outcome"]
    want = ["ok", [1, 2]] if kind == "write" else [[1], [1]]
    assert [g["result"], g["after"]] == want, res["gateway"]


# --- sessions and transactions (nx-27017 directly / through the txn gateway) -----------------------


def test_txn_commit():
    def run(target):
        c, _ = client(h.uris(target)["txn"])
        with c:
            db = fresh(c, "txn-commit", target)
            db.a.insert_one({"_id": 0})
            db.b.insert_one({"_id": 0})
            o = {}

            def body(s):
                db.a.insert_one({"_id": 1}, session=s)
                db.b.update_one({"_id": 0}, {"$set": {"moved": 1}}, session=s)
                o["insideCount"] = db.a.count_documents({}, session=s)

            with c.start_session() as s:
                s.with_transaction(body)
            o["a"] = db.a.find().sort("_id", 1).to_list()
            o["b"] = db.b.find().sort("_id", 1).to_list()
            return o, {}

    differential("txn-commit", run)


def test_txn_abort():
    def run(target):
        c, _ = client(h.uris(target)["txn"])
        with c:
            db = fresh(c, "txn-abort", target)
            db.a.insert_one({"_id": 0, "n": 0})
            o = {}
            with c.start_session() as s:
                s.start_transaction()
                db.a.insert_one({"_id": 1}, session=s)
                db.a.update_one({"_id": 0}, {"$set": {"n": 1}}, session=s)
                o["inside"] = db.a.find({}, session=s).sort("_id", 1).to_list()
                s.abort_transaction()
            o["after"] = db.a.find().sort("_id", 1).to_list()
            return o, {}

    differential("txn-abort", run)


# --- compression, Lambda, directConnection, seed list ------------------------------------------------


def write_read(c, scenario, target):
    coll = (fresh(c, scenario, target)).z
    coll.insert_many([{"_id": i, "pad": "x" * 1000} for i in range(50)])
    got = coll.find().sort("_id", 1).batch_size(10).to_list()
    return {"count": len(got), "padOk": all(d["pad"] == "x" * 1000 for d in got)}


def _compressors() -> str:
    """zlib is in the standard library; snappy and zstd need python-snappy / zstandard, without
    which pymongo drops them from the list with a warning: request what this venv supports."""
    names = ["zlib"]
    for mod, name in (("snappy", "snappy"), ("zstandard", "zstd")):
        try:
            __import__(mod)
            names.insert(0, name)
        except ImportError:
            pass
    return ",".join(names)


def test_compression():
    compressors = _compressors()

    def run(target):
        c, _ = client(h.with_options(h.uris(target)["plain"], f"compressors={compressors}"))
        with c:
            return write_read(c, "compression", target), {"requested": compressors}

    differential("compression", run)


def test_lambda_polling(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")

    def run(target):
        c, ev = client(h.uris(target)["plain"], heartbeatFrequencyMS=500)
        with c:
            coll = (fresh(c, "lambda-polling", target)).l
            coll.insert_one({"_id": 1})
            time.sleep(1.6)
            found = coll.find_one({"_id": 1})
            return ({"found": found, "heartbeats": len(ev.heartbeats) > 0, "awaited": sum(ev.heartbeats)},
                    {"heartbeats": len(ev.heartbeats)})

    differential("lambda-polling", run)


def test_direct_connection():
    def run(target):
        c, ev = client(h.with_options(h.uris(target)["plain"], "directConnection=true"))
        with c:
            coll = (fresh(c, "direct-connection", target)).d
            coll.insert_many([{"_id": 1}, {"_id": 2}])
            return {"ids": ids(coll)}, {"serverTypes": dict(ev.servers)}

    differential("direct-connection", run)


def test_seed_list_two_gateways():
    def run(target):
        c, ev = client(h.uris(target)["seed"])
        with c:
            coll = (fresh(c, "seed-list-two-gateways", target)).s
            coll.insert_many([{"_id": i} for i in range(10)])
            got = [d["_id"] for d in coll.find().sort("_id", 1).batch_size(3)]
            n = coll.count_documents({})
            for _ in range(40):
                if "Unknown" not in ev.servers.values():
                    break
                time.sleep(0.05)
            return {"ids": got, "count": n}, {"serverTypes": dict(ev.servers)}

    res = differential("seed-list-two-gateways", run)
    # Beyond the comparison: through the seed list the driver must see both gateways as mongos.
    assert sorted(res["gateway"]["info"]["serverTypes"].values()) == ["Mongos", "Mongos"], res["gateway"]["info"]


# --- IAM ------------------------------------------------------------------------------------------


# Everything the AWS SDKs might read besides the environment's credentials, pointed at nothing.
AWS_ISOLATION = {"AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                 "AWS_CONFIG_FILE": "/nonexistent/compat-aws-config",
                 "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/compat-aws-credentials"}


def test_iam_mongodb_aws(monkeypatch):
    """MONGODB-AWS the way a function on Lambda logs in: the role's temporary credentials in
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, read by pymongo-auth-aws; then the
    same with a wrong secret."""
    from pymongo_auth_aws import auth as aws_auth

    secret = h.env("COMPAT_AWS_SECRET_ACCESS_KEY")
    for k, v in {**AWS_ISOLATION, "AWS_ACCESS_KEY_ID": h.env("COMPAT_AWS_ACCESS_KEY_ID"),
                 "AWS_SESSION_TOKEN": h.env("COMPAT_AWS_SESSION_TOKEN")}.items():
        monkeypatch.setenv(k, v)

    def login(target, key):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key)
        aws_auth.set_cached_credentials(None)
        c, _ = client(h.uris(target)["iam"], serverSelectionTimeoutMS=5000)
        with c:
            try:
                ping = (c.admin.command("ping"))["ok"]
            except PyMongoError as e:
                return {"ping": {"refused": h.error_shape(e)}}
            coll = (fresh(c, "iam-mongodb-aws", target)).c
            coll.insert_one({"_id": 1, "who": "iam"})
            return {"ping": ping, "found": coll.find().to_list()}

    def run(target):
        o = login(target, secret)
        o["wrongSecret"] = (login(target, "wrong-secret-wrong-secret-wrong-secret00"))["ping"]
        return o, {}

    res = differential("iam-mongodb-aws", run)
    # The upstream has no MONGODB-AWS: the gateway side is checked on its own.
    g = res["gateway"]["outcome"]
    assert g["ping"] == 1.0 and g["found"] == [{"_id": 1, "who": "iam"}], g
    assert g["wrongSecret"]["refused"]["code"] == 18, g
