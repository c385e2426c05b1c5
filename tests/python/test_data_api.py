"""The HTTP Data API (issue 17): every action in JSON and Extended JSON through the gateway to
FerretDB, compared with the same operation through pymongo straight to FerretDB; the refusals
(bad bodies, unknown actions, oversized bodies, wrong content types, unauthorized collections);
API keys (revoked by reload) and AWS IAM through moto's STS (expired, replayed and tampered
headers); every answer checked against the OpenAPI document the gateway serves.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import subprocess
import urllib.error
import urllib.request

import pytest
from bson import ObjectId, json_util

from conftest import free_port, start_gateway, wait_until
from dataapi_openapi import check_response
from iam_fixtures import IAM_USER_TOML, ROLE_ARN, sign, start_moto, sts_counts, sts_delta
from security_fixtures import gateway_bin, make_user, metric, write_config

DB = "dapi"


def api_key(name: str, user: str) -> tuple[str, str]:
    """A key made by `mongomux api-key add`: (the key, its [[api_keys]] entry)."""
    out = subprocess.run([gateway_bin(), "api-key", "add", name, "--user", user], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    lines = out.splitlines()
    key = lines[1].removeprefix("# ")
    entry = "\n".join(lines[2:]) + "\n"
    assert key not in entry
    return key, entry


class Api:
    """A gateway with the Data API on, its users and keys, and an HTTP client for it."""

    def __init__(self, upstream, logdir, tmp_path, moto, max_body=4096):
        self.app = make_user("app", databases=(DB,))
        self.reader = make_user("reader", role="read", databases=(DB,))
        self.app_key, app_entry = api_key("app-fn", "app")
        self.reader_key, reader_entry = api_key("reader-fn", "reader")
        self.cfg = tmp_path / "gw.toml"
        self.moto = moto
        self.entries = [app_entry, reader_entry]
        self.settings = dict(sts_endpoint=moto.endpoint, data_api_max_body_bytes=max_body,
                             data_api_max_find_limit=50)
        self.write(self.entries)
        self.port = free_port()
        self.gw = start_gateway(upstream, logdir, name=f"dapi-{secrets.token_hex(2)}", metrics=True,
                                extra_args=("--config", str(self.cfg), "--data-api-listen",
                                            f"127.0.0.1:{self.port}"))

    def write(self, entries):
        write_config(self.cfg, users=[self.app, self.reader], access=["127.0.0.0/8"], **self.settings)
        with open(self.cfg, "a") as f:
            f.write(IAM_USER_TOML.format(arn=ROLE_ARN))
            f.write("".join(entries))

    def post(self, action: str, body, key: str | None = "app", ctype="application/json", accept=None,
             headers: dict | None = None, prefix: str = "", decode: bool = True) -> tuple[int, dict | str, str]:
        data = body if isinstance(body, bytes) else json_util.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{prefix}/action/{action}", data=data,
                                     method="POST")
        if ctype:
            req.add_header("Content-Type", ctype)
        if accept:
            req.add_header("Accept", accept)
        if key:
            req.add_header("apiKey", {"app": self.app_key, "reader": self.reader_key}.get(key, key))
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw, rtype = r.status, r.read(), r.headers.get("Content-Type")
        except urllib.error.HTTPError as e:
            status, raw, rtype = e.code, e.read(), e.headers.get("Content-Type")
        parsed = json.loads(raw)
        if action in ACTIONS or status >= 400:
            check_response(action if action in ACTIONS else "findOne", status, parsed)
        if rtype == "application/ejson" and decode:
            parsed = json_util.loads(raw)  # canonical Extended JSON, back to BSON types
        return status, parsed, rtype

    def stop(self):
        self.gw.proc.stop()


ACTIONS = ["findOne", "find", "insertOne", "insertMany", "updateOne", "updateMany", "replaceOne",
           "deleteOne", "deleteMany", "aggregate"]


@pytest.fixture(scope="module")
def moto(logdir):
    m = start_moto(logdir)
    yield m
    m.proc.stop()


@pytest.fixture
def api(ferretdb, logdir, tmp_path, moto):
    a = Api(ferretdb, logdir, tmp_path, moto)
    yield a
    a.stop()


def src(coll: str, **fields) -> dict:
    return {"dataSource": "mongodb-atlas", "database": DB, "collection": coll, **fields}


@pytest.mark.parametrize("media", ["application/json", "application/ejson"])
def test_every_action_matches_pymongo(api, ferretdb, media):
    direct = ferretdb.client()[DB]
    post = api.post

    def api_post(action, body):
        return post(action, body, ctype=media, accept=media)
    api = type("A", (), {"post": staticmethod(api_post), "gw": api.gw})
    for c in ("via_api", "via_driver"):
        direct[c].drop()
    docs = [{"_id": i, "n": i, "tag": "even" if i % 2 == 0 else "odd"} for i in range(10)]

    # Writes: the same operations both ways, then the collections must be equal.
    st, out, _ = api.post("insertOne", src("via_api", document=docs[0]))
    assert st == 201 and out["insertedId"] == 0
    direct.via_driver.insert_one(dict(docs[0]))
    st, out, _ = api.post("insertMany", src("via_api", documents=docs[1:]))
    assert st == 201 and out["insertedIds"] == list(range(1, 10))
    direct.via_driver.insert_many([dict(d) for d in docs[1:]])

    st, out, _ = api.post("updateOne", src("via_api", filter={"_id": 1}, update={"$set": {"x": 1}}))
    r = direct.via_driver.update_one({"_id": 1}, {"$set": {"x": 1}})
    assert (st, out) == (200, {"matchedCount": r.matched_count, "modifiedCount": r.modified_count})
    st, out, _ = api.post("updateMany", src("via_api", filter={"tag": "odd"}, update={"$inc": {"n": 100}}))
    r = direct.via_driver.update_many({"tag": "odd"}, {"$inc": {"n": 100}})
    assert (st, out) == (200, {"matchedCount": r.matched_count, "modifiedCount": r.modified_count})
    st, out, _ = api.post("updateOne", src("via_api", filter={"_id": 99}, update={"$set": {"n": 99}}, upsert=True))
    r = direct.via_driver.update_one({"_id": 99}, {"$set": {"n": 99}}, upsert=True)
    assert (st, out) == (200, {"matchedCount": 0, "modifiedCount": 0, "upsertedId": r.upserted_id})
    st, out, _ = api.post("replaceOne", src("via_api", filter={"_id": 2}, replacement={"n": -2}))
    r = direct.via_driver.replace_one({"_id": 2}, {"n": -2})
    assert (st, out) == (200, {"matchedCount": r.matched_count, "modifiedCount": r.modified_count})
    st, out, _ = api.post("deleteOne", src("via_api", filter={"tag": "even"}))
    r = direct.via_driver.delete_one({"tag": "even"})
    assert (st, out) == (200, {"deletedCount": r.deleted_count})

    # Reads, compared with pymongo on the same data.
    st, out, _ = api.post("findOne", src("via_api", filter={"_id": 3}, projection={"n": 1}))
    assert (st, out) == (200, {"document": direct.via_driver.find_one({"_id": 3}, {"n": 1})})
    st, out, _ = api.post("findOne", src("via_api", filter={"_id": 12345}))
    assert (st, out) == (200, {"document": None})
    st, out, _ = api.post("find", src("via_api", filter={"n": {"$gt": 3}}, sort={"n": -1}, skip=1, limit=4))
    want = list(direct.via_driver.find({"n": {"$gt": 3}}).sort("n", -1).skip(1).limit(4))
    assert st == 200 and out["documents"] == want
    pipeline = [{"$group": {"_id": "$tag", "total": {"$sum": "$n"}}}, {"$sort": {"_id": 1}}]
    st, out, _ = api.post("aggregate", src("via_api", pipeline=pipeline))
    assert st == 200 and out["documents"] == list(direct.via_driver.aggregate(pipeline))
    st, out, _ = api.post("deleteMany", src("via_api", filter={"n": {"$gte": 100}}))
    r = direct.via_driver.delete_many({"n": {"$gte": 100}})
    assert (st, out) == (200, {"deletedCount": r.deleted_count})
    assert list(direct.via_api.find().sort("_id", 1)) == list(direct.via_driver.find().sort("_id", 1))
    # Counted by action and status.
    assert metric(api.gw, "mongomux_data_api_requests_total", 'action="insertMany",status="201"') == 1


def test_extended_json_in_and_out(api, ferretdb):
    direct = ferretdb.client()[DB]
    direct.ejson.drop()
    oid = ObjectId()
    when = dt.datetime(2024, 1, 12, 2, 33, 23, 67000, tzinfo=dt.timezone.utc)
    body = (b'{"dataSource": "x", "database": "%s", "collection": "ejson", "document": {"_id": {"$oid": "%s"},'
            b' "big": {"$numberLong": "9007199254740993"}, "d": {"$date": "2024-01-12T02:33:23.067Z"}, "i": 5}}'
            % (DB.encode(), str(oid).encode()))
    st, out, ctype = api.post("insertOne", body, ctype="application/ejson", accept="application/ejson", decode=False)
    assert st == 201 and ctype == "application/ejson" and out == {"insertedId": {"$oid": str(oid)}}
    stored = direct.ejson.find_one({"_id": oid})
    assert stored["big"] == 9007199254740993 and stored["d"].replace(tzinfo=dt.timezone.utc) == when
    # Canonical EJSON keeps every type; plain JSON is readable.
    st, out, _ = api.post("findOne", src("ejson", filter={"_id": {"$oid": str(oid)}}), accept="application/ejson",
                          decode=False)
    assert out["document"]["big"] == {"$numberLong": "9007199254740993"}
    assert out["document"]["i"] == {"$numberInt": "5"}
    assert out["document"]["d"] == {"$date": {"$numberLong": "1705026803067"}}
    st, out, ctype = api.post("findOne", src("ejson", filter={"_id": {"$oid": str(oid)}}))
    assert ctype == "application/json"
    assert out["document"] == {"_id": str(oid), "big": 9007199254740993, "d": "2024-01-12T02:33:23.067Z", "i": 5}
    # The Atlas-style prefix works the same.
    st, out, _ = api.post("findOne", src("ejson", filter={}), prefix="/app/data-abcde/endpoint/data/v1")
    assert st == 200 and out["document"]["_id"] == str(oid)


def test_bad_requests_get_the_right_status_and_message(api):
    cases = [
        (("findOne", b"{not json"), 400, "invalid request body"),
        (("findOne", b'{"dataSource": "x", "database": "dapi", "database": "other", "collection": "c"}'),
         400, "appears twice"),
        (("findOne", src("c", limit=3)), 400, "does not take the field limit"),
        (("find", src("c", limit=51)), 400, "maximum of 50"),
        (("insertOne", src("c")), 400, "document is required"),
        (("updateOne", src("c", filter={}, update={"n": 1})), 400, "update operators"),
        (("findOne", {"dataSource": "x", "collection": "c"}), 400, "database is required"),
        (("dropDatabase", src("c")), 404, "unknown action"),
        (("findOne", src("c"), {"ctype": "text/plain"}), 415, "Content-Type"),
        (("findOne", src("c"), {"ctype": None}), 415, "Content-Type"),
        (("findOne", src("c"), {"accept": "text/html"}), 406, "Accept"),
        (("findOne", src("c", filter={"pad": "x" * 5000})), 413, "larger than 4096"),
        (("findOne", src("c"), {"key": None}), 401, "no credentials"),
        (("findOne", src("c"), {"key": "wrong-key"}), 401, "invalid session"),
        (("findOne", {"dataSource": "x", "database": "other", "collection": "c"}), 403, "outside this user's databases"),
        (("findOne", src("system.users")), 403, "system collections"),
        (("insertOne", src("c", document={"a": 1}), {"key": "reader"}), 403, "read-only"),
        (("aggregate", src("c", pipeline=[{"$out": {"db": "other", "coll": "x"}}])), 403,
         "outside this user's databases"),
    ]
    for args, status, message in cases:
        action, body = args[0], args[1]
        kw = args[2] if len(args) > 2 else {}
        st, out, ctype = api.post(action, body, **kw)
        assert st == status and message in out["error"], (action, kw, st, out)
        assert ctype == "application/json" and "\n" not in out["error"]
    # The database's own refusals keep their code.
    api.post("insertOne", src("dup", document={"_id": 1}))
    st, out, _ = api.post("insertOne", src("dup", document={"_id": 1}))
    assert st == 400 and out["error_code"] == "MongoDBError" and out["code"] == 11000, out
    # Anything but the documented paths is a JSON 404; the document itself is served.
    req = urllib.request.Request(f"http://127.0.0.1:{api.port}/v1/whatever")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 404 and json.loads(e.value.read())["error_code"] == "NotFound"
    with urllib.request.urlopen(f"http://127.0.0.1:{api.port}/openapi.json", timeout=10) as r:
        assert json.loads(r.read())["openapi"].startswith("3.")


def test_an_api_key_removed_by_reload_stops_at_once(api):
    st, _, _ = api.post("findOne", src("k"), key="reader")
    assert st == 200
    api.write(api.entries[:1])  # the reader's key is gone
    api.gw.proc.popen.send_signal(1)  # SIGHUP
    wait_until(lambda: api.post("findOne", src("k"), key="reader")[0] == 401, 10, what="the key revoked")
    assert api.post("findOne", src("k"), key="app")[0] == 200


def iam_header(creds, *, skew=dt.timedelta(0), nonce: bytes | None = None, tamper=None) -> str:
    nonce = nonce or secrets.token_bytes(64)
    final = sign(creds, nonce, skew=skew)
    fields = {"Authorization": final["a"], "X-Amz-Date": final["d"],
              "X-MongoDB-Server-Nonce": base64.b64encode(nonce).decode()}
    if "t" in final:
        fields["X-Amz-Security-Token"] = final["t"]
    if tamper:
        tamper(fields)
    return base64.b64encode(json.dumps(fields).encode()).decode()


def test_iam_through_sts_refuses_expired_replayed_and_tampered(api):
    creds = api.moto.role
    before = sts_counts(api.gw)
    good = iam_header(creds)
    st, out, _ = api.post("insertOne", src("iam", document={"who": "role"}), key=None,
                          headers={"X-MongoMux-AWS-STS": good})
    assert st == 201, out
    # The same header again is a replay: refused without a call to STS.
    st, out, _ = api.post("findOne", src("iam"), key=None, headers={"X-MongoMux-AWS-STS": good})
    assert st == 401 and out["error_code"] == "InvalidSession"
    stale = iam_header(creds, skew=-dt.timedelta(minutes=20))
    assert api.post("findOne", src("iam"), key=None, headers={"X-MongoMux-AWS-STS": stale})[0] == 401

    def flip(fields):
        a = fields["Authorization"]
        fields["Authorization"] = a[:-1] + ("0" if a[-1] != "0" else "1")
    tampered = iam_header(creds, tamper=flip)
    assert api.post("findOne", src("iam"), key=None, headers={"X-MongoMux-AWS-STS": tampered})[0] == 401
    other_nonce = iam_header(creds, tamper=lambda f: f.update({"X-MongoDB-Server-Nonce": base64.b64encode(b"x" * 64).decode()}))
    assert api.post("findOne", src("iam"), key=None, headers={"X-MongoMux-AWS-STS": other_nonce})[0] == 401
    # A principal with no gateway user entry: STS says yes, the gateway no.
    assert api.post("findOne", src("iam"), key=None,
                    headers={"X-MongoMux-AWS-STS": iam_header(api.moto.other_role)})[0] == 401
    # Both credentials at once are refused rather than guessed between.
    st, out, _ = api.post("findOne", src("iam"), headers={"X-MongoMux-AWS-STS": iam_header(creds)})
    assert st == 400 and "not both" in out["error"]
    delta = sts_delta(before, sts_counts(api.gw))
    assert delta["ok"] == 2 and delta["denied"] >= 1 and delta["refused"] >= 2, delta
    log = api.gw.proc.log.read_text()
    assert creds.secret_key not in log and creds.token not in log and good not in log
