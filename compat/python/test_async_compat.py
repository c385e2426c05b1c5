"""pymongo's asyncio client (AsyncMongoClient), unchanged, straight against the upstream and
through mongomux: every scenario of compat/scenarios.json, compared (harness.py).

Plain pytest, no plugin: each test runs its coroutines with asyncio.run.

The one source of these scenarios: test_sync_compat.py (MongoClient) is generated from this file
by unasync.py, which takes out `async`/`await` (see its docstring for the exact rewrites). Write
scenarios so that the text without those keywords is the synchronous program; after an edit run
`compat/python/unasync.py` (compat/run checks the copy is up to date).
"""

from __future__ import annotations

import asyncio
import os

import pytest
from pymongo import AsyncMongoClient, InsertOne, UpdateOne, DeleteOne, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

import harness as h

DRIVER = "python-async"


def client(uri: str, **kw) -> tuple[AsyncMongoClient, h.Events]:
    ev = h.Events()
    kw.setdefault("serverSelectionTimeoutMS", 10_000)
    return AsyncMongoClient(uri, event_listeners=h.listeners(ev), **kw), ev


async def fresh(c: AsyncMongoClient, scenario: str, target: str):
    name = h.db_name(DRIVER, scenario, target)
    await c.drop_database(name)
    return c[name]


async def ids(coll) -> list:
    return [d["_id"] async for d in coll.find().sort("_id", 1)]


def differential(scenario: str, run) -> dict:
    return h.differential(DRIVER, h.VERSION, scenario, run)


# --- connect -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario,key", [("connect-scram-sha-256", "sha256"), ("connect-scram-sha-1", "sha1")])
def test_connect(scenario, key):
    async def run(target):
        uri = h.uris(target)[key]
        o, info = {}, {}
        c, ev = client(uri)
        async with c:
            o["ping"] = (await c.admin.command("ping"))["ok"]
            coll = (await fresh(c, scenario, target)).c
            await coll.insert_one({"_id": 1, "who": key})
            o["found"] = await coll.find_one({"_id": 1})
            info = {"serverTypes": dict(ev.servers), "awaitedHeartbeats": sum(ev.heartbeats)}
        bad, _ = client(h.with_password(uri, "not-the-password"), serverSelectionTimeoutMS=5000)
        async with bad:
            try:
                await bad.admin.command("ping")
                o["wrongPassword"] = "accepted"
            except PyMongoError as e:
                o["wrongPassword"] = h.error_shape(e)
        return o, info

    differential(scenario, run)


# --- CRUD --------------------------------------------------------------------------------------


def test_crud():
    async def run(target):
        c, _ = client(h.uris(target)["plain"])
        async with c:
            coll = (await fresh(c, "crud", target)).items
            o = {}
            o["insertOne"] = (await coll.insert_one({"_id": 1, "n": 1, "tag": "a"})).inserted_id
            o["insertMany"] = len((await coll.insert_many([
                {"_id": 2, "n": 2, "tag": "b"}, {"_id": 3, "n": 3, "tag": "a"},
                {"_id": 4, "n": 4, "tag": "b"}, {"_id": 5, "n": 5, "tag": "a"}])).inserted_ids)
            o["findOne"] = await coll.find_one({"_id": 3})
            o["findMissing"] = await coll.find_one({"_id": 99})
            u1 = await coll.update_one({"_id": 2}, {"$set": {"tag": "c"}})
            o["updateOne"] = [u1.matched_count, u1.modified_count]
            u2 = await coll.update_many({"n": {"$gte": 3}}, {"$inc": {"n": 10}})
            o["updateMany"] = [u2.matched_count, u2.modified_count]
            u3 = await coll.update_one({"_id": 6}, {"$set": {"n": 6, "tag": "u"}}, upsert=True)
            o["upsert"] = [u3.matched_count, u3.modified_count, u3.upserted_id]
            r = await coll.replace_one({"_id": 4}, {"n": 40, "tag": "r"})
            o["replaceOne"] = [r.matched_count, r.modified_count]
            o["findOneAndUpdate"] = await coll.find_one_and_update({"_id": 1}, {"$set": {"tag": "z"}},
                                                                   return_document=ReturnDocument.AFTER)
            o["findOneAndDelete"] = await coll.find_one_and_delete({"_id": 6})
            o["deleteOne"] = (await coll.delete_one({"_id": 5})).deleted_count
            o["deleteMany"] = (await coll.delete_many({"tag": "a"})).deleted_count
            o["countDocuments"] = await coll.count_documents({})
            o["estimatedDocumentCount"] = await coll.estimated_document_count()
            o["distinct"] = sorted(await coll.distinct("tag"))
            o["projection"] = await coll.find({}, {"_id": 0, "tag": 1}).sort("tag", 1).to_list()
            o["skipLimit"] = await coll.find().sort("_id", -1).skip(1).limit(1).to_list()
            o["all"] = await coll.find().sort("_id", 1).to_list()
            return o, {}

    differential("crud", run)


# --- bulk writes with a duplicate key mid-batch ---------------------------------------------------


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_bulk(ordered):
    scenario = "bulk-ordered-error" if ordered else "bulk-unordered-error"

    async def run(target):
        c, _ = client(h.uris(target)["plain"])
        async with c:
            db = await fresh(c, scenario, target)
            o = {}
            try:
                r = await db.im.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 2}, {"_id": 3}], ordered=ordered)
                o["insertMany"] = {"accepted": len(r.inserted_ids)}
            except BulkWriteError as e:
                o["insertMany"] = h.bulk_shape(e)
            o["insertManyAfter"] = await ids(db.im)
            try:
                r = await db.bw.bulk_write([
                    InsertOne({"_id": 10}),
                    UpdateOne({"_id": 10}, {"$set": {"x": 1}}),
                    InsertOne({"_id": 10}),
                    DeleteOne({"_id": 10}),
                    InsertOne({"_id": 11}),
                ], ordered=ordered)
                o["bulkWrite"] = {"accepted": [r.inserted_count, r.matched_count, r.modified_count, r.deleted_count]}
            except BulkWriteError as e:
                o["bulkWrite"] = h.bulk_shape(e)
            o["bulkWriteAfter"] = await db.bw.find().sort("_id", 1).to_list()
            return o, {}

    differential(scenario, run)


# --- cursors ------------------------------------------------------------------------------------


async def seed25(db):
    await db.c.insert_many([{"_id": i, "g": i % 3, "v": i} for i in range(25)])
    return db.c


def test_cursor_batches():
    async def run(target):
        c, ev = client(h.uris(target)["plain"])
        async with c:
            coll = await seed25(await fresh(c, "cursor-batches", target))
            start = len(ev.succeeded)
            got = [d["_id"] async for d in coll.find().sort("_id", 1).batch_size(2)]
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
    async def run(target):
        c, ev = client(h.uris(target)["plain"])
        async with c:
            coll = await seed25(await fresh(c, "cursor-early-close", target))
            start, start_failed = len(ev.succeeded), len(ev.failed)
            cur = coll.find().sort("_id", 1).batch_size(2)
            read = [(await cur.next())["_id"] for _ in range(5)]
            await cur.close()
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
            o["countAfter"] = await coll.count_documents({})
            return o, {}

    differential("cursor-early-close", run)


# --- aggregate ----------------------------------------------------------------------------------


def test_aggregate():
    async def run(target):
        c, _ = client(h.uris(target)["plain"])
        async with c:
            coll = await seed25(await fresh(c, "aggregate", target))
            # One accumulator per $group: FerretDB 1.24 computes only the first.
            grouped = await (await coll.aggregate([
                {"$match": {"v": {"$gte": 5}}},
                {"$group": {"_id": "$g", "total": {"$sum": "$v"}}},
                {"$sort": {"_id": 1}},
            ], batchSize=1)).to_list()
            counted = await (await coll.aggregate([{"$match": {"g": 1}}, {"$count": "n"}])).to_list()
            return {"grouped": grouped, "counted": counted}, {}

    differential("aggregate", run)


# --- indexes and a duplicate key ----------------------------------------------------------------------


def test_index_duplicate_key():
    async def run(target):
        c, _ = client(h.uris(target)["plain"])
        async with c:
            coll = (await fresh(c, "index-duplicate-key", target)).users
            o = {"createIndex": await coll.create_index("email", unique=True)}

            async def listed():
                out = [{"name": i["name"], "key": dict(i["key"]), "unique": bool(i.get("unique"))}
                       async for i in await coll.list_indexes()]
                return sorted(out, key=lambda i: i["name"])

            o["indexes"] = await listed()
            await coll.insert_one({"_id": 1, "email": "a@example.com"})

            async def insert(d):
                try:
                    await coll.insert_one(d)
                    return "accepted"
                except OperationFailure as e:
                    return {**h.error_shape(e), "isDuplicateKey": isinstance(e, DuplicateKeyError)}

            o["duplicate"] = await insert({"_id": 2, "email": "a@example.com"})
            o["duplicateId"] = await insert({"_id": 1, "email": "b@example.com"})
            await coll.drop_index("email_1")
            o["indexesAfter"] = await listed()
            o["afterDrop"] = await insert({"_id": 3, "email": "a@example.com"})
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

    async def run(target):
        u = h.uris(target)
        c, ev = client(h.with_options(u["plain"], "retryWrites=true&retryReads=true"), maxPoolSize=1)
        async with c:
            coll = (await fresh(c, scenario, target)).r
            await coll.insert_one({"_id": 1})
            start, start_failed = len(ev.started), len(ev.failed)
            await h.ctl_freeze(u["restart"])
            restarted = await h.ctl_restart_later(u["restart"], 700)
            try:
                if kind == "write":
                    await coll.insert_one({"_id": 2})
                    result = "ok"
                else:
                    result = await ids(coll)
            except PyMongoError as e:
                result = h.error_shape(e)
            log = await restarted()
            failed = [type(e.failure).__name__ if isinstance(e.failure, BaseException) else "reply"
                      for e in ev.failed[start_failed:] if e.command_name == command]
            # How many attempts the driver made is recorded, not compared: a driver that finds its
            # pooled connection dead before sending retries the connection, not the command.
            attempts = ev.started_named(start, command)
            return ({"result": result, "after": await ids(coll)},
                    {"restart": log, "attempts": attempts, "failedAttempts": failed})

    res = differential(scenario, run)
    # Through the gateway (a mongos to the driver) the operation succeeds, exactly once, whatever
    # the reference does.
    g = res["gateway"]["outcome"]
    want = ["ok", [1, 2]] if kind == "write" else [[1], [1]]
    assert [g["result"], g["after"]] == want, res["gateway"]


# --- sessions and transactions (nx-27017 directly / through the txn gateway) -----------------------


def test_txn_commit():
    async def run(target):
        c, _ = client(h.uris(target)["txn"])
        async with c:
            db = await fresh(c, "txn-commit", target)
            await db.a.insert_one({"_id": 0})
            await db.b.insert_one({"_id": 0})
            o = {}

            async def body(s):
                await db.a.insert_one({"_id": 1}, session=s)
                await db.b.update_one({"_id": 0}, {"$set": {"moved": 1}}, session=s)
                o["insideCount"] = await db.a.count_documents({}, session=s)

            async with c.start_session() as s:
                await s.with_transaction(body)
            o["a"] = await db.a.find().sort("_id", 1).to_list()
            o["b"] = await db.b.find().sort("_id", 1).to_list()
            return o, {}

    differential("txn-commit", run)


def test_txn_abort():
    async def run(target):
        c, _ = client(h.uris(target)["txn"])
        async with c:
            db = await fresh(c, "txn-abort", target)
            await db.a.insert_one({"_id": 0, "n": 0})
            o = {}
            async with c.start_session() as s:
                await s.start_transaction()
                await db.a.insert_one({"_id": 1}, session=s)
                await db.a.update_one({"_id": 0}, {"$set": {"n": 1}}, session=s)
                o["inside"] = await db.a.find({}, session=s).sort("_id", 1).to_list()
                await s.abort_transaction()
            o["after"] = await db.a.find().sort("_id", 1).to_list()
            return o, {}

    differential("txn-abort", run)


# --- compression, Lambda, directConnection, seed list ------------------------------------------------


async def write_read(c, scenario, target):
    coll = (await fresh(c, scenario, target)).z
    await coll.insert_many([{"_id": i, "pad": "x" * 1000} for i in range(50)])
    got = await coll.find().sort("_id", 1).batch_size(10).to_list()
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

    async def run(target):
        c, _ = client(h.with_options(h.uris(target)["plain"], f"compressors={compressors}"))
        async with c:
            return await write_read(c, "compression", target), {"requested": compressors}

    differential("compression", run)


def test_lambda_polling(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")

    async def run(target):
        c, ev = client(h.uris(target)["plain"], heartbeatFrequencyMS=500)
        async with c:
            coll = (await fresh(c, "lambda-polling", target)).l
            await coll.insert_one({"_id": 1})
            await asyncio.sleep(1.6)
            found = await coll.find_one({"_id": 1})
            return ({"found": found, "heartbeats": len(ev.heartbeats) > 0, "awaited": sum(ev.heartbeats)},
                    {"heartbeats": len(ev.heartbeats)})

    differential("lambda-polling", run)


def test_direct_connection():
    async def run(target):
        c, ev = client(h.with_options(h.uris(target)["plain"], "directConnection=true"))
        async with c:
            coll = (await fresh(c, "direct-connection", target)).d
            await coll.insert_many([{"_id": 1}, {"_id": 2}])
            return {"ids": await ids(coll)}, {"serverTypes": dict(ev.servers)}

    differential("direct-connection", run)


def test_seed_list_two_gateways():
    async def run(target):
        c, ev = client(h.uris(target)["seed"])
        async with c:
            coll = (await fresh(c, "seed-list-two-gateways", target)).s
            await coll.insert_many([{"_id": i} for i in range(10)])
            got = [d["_id"] async for d in coll.find().sort("_id", 1).batch_size(3)]
            n = await coll.count_documents({})
            for _ in range(40):
                if "Unknown" not in ev.servers.values():
                    break
                await asyncio.sleep(0.05)
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

    async def login(target, key):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key)
        aws_auth.set_cached_credentials(None)
        c, _ = client(h.uris(target)["iam"], serverSelectionTimeoutMS=5000)
        async with c:
            try:
                ping = (await c.admin.command("ping"))["ok"]
            except PyMongoError as e:
                return {"ping": {"refused": h.error_shape(e)}}
            coll = (await fresh(c, "iam-mongodb-aws", target)).c
            await coll.insert_one({"_id": 1, "who": "iam"})
            return {"ping": ping, "found": await coll.find().to_list()}

    async def run(target):
        o = await login(target, secret)
        o["wrongSecret"] = (await login(target, "wrong-secret-wrong-secret-wrong-secret00"))["ping"]
        return o, {}

    res = differential("iam-mongodb-aws", run)
    # The upstream has no MONGODB-AWS: the gateway side is checked on its own.
    g = res["gateway"]["outcome"]
    assert g["ping"] == 1.0 and g["found"] == [{"_id": 1, "who": "iam"}], g
    assert g["wrongSecret"]["refused"]["code"] == 18, g
