"""The Data API's OpenAPI document (crates/gateway/src/dataapi/openapi.json) is valid
OpenAPI 3.0.3, documents every action, and its schemas accept the bodies the gateway
must send and refuse the ones it must not. Needs no server."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from dataapi_openapi import check_request, check_response, load_spec

# action -> success status
ACTIONS = {
    "findOne": 200, "find": 200, "insertOne": 201, "insertMany": 201, "updateOne": 200,
    "updateMany": 200, "replaceOne": 200, "deleteOne": 200, "deleteMany": 200, "aggregate": 200,
}
ERROR_STATUSES = [400, 401, 403, 404, 406, 413, 415, 500, 503]
MEDIA = {"application/json", "application/ejson"}
NS = {"dataSource": "mongodb-atlas", "database": "shop", "collection": "orders"}


def _deref(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = spec["components"][node["$ref"].split("/")[2]][node["$ref"].split("/")[3]]
    return node


def test_document_is_valid_openapi_303() -> None:
    spec = load_spec()
    assert spec["openapi"] == "3.0.3"
    validate(spec)


def test_servers_and_paths() -> None:
    spec = load_spec()
    assert [s["url"] for s in spec["servers"]] == ["http://127.0.0.1:8080"]
    assert "/app/{appId}/endpoint/data/v1" in spec["servers"][0]["description"]
    assert "/app/{appId}/endpoint/data/v1" in spec["info"]["description"]
    assert set(spec["paths"]) == {f"/action/{a}" for a in ACTIONS} | {"/openapi.json"}
    assert spec["paths"]["/openapi.json"]["get"]["security"] == []


def test_security_schemes() -> None:
    schemes = load_spec()["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "apiKey"}
    assert schemes["AwsIam"] == {**schemes["AwsIam"], "type": "apiKey", "in": "header",
                                 "name": "X-MongoMux-AWS-STS"}


@pytest.mark.parametrize("action", ACTIONS)
def test_action_documented(action: str) -> None:
    spec = load_spec()
    item = spec["paths"][f"/action/{action}"]
    assert set(item) == {"post"}
    op = item["post"]
    assert op["operationId"] == action
    assert op["security"] == [{"ApiKey": []}, {"AwsIam": []}]
    body = op["requestBody"]
    assert body["required"] is True and set(body["content"]) == MEDIA
    assert all("schema" in m for m in body["content"].values())
    ok = op["responses"][str(ACTIONS[action])]
    assert set(ok["content"]) == MEDIA and all("schema" in m for m in ok["content"].values())
    assert [s for s in op["responses"] if s.startswith("2")] == [str(ACTIONS[action])]
    for status in ERROR_STATUSES:
        err = _deref(spec, op["responses"][str(status)])
        assert set(err["content"]) == MEDIA
        assert all(m["schema"] == {"$ref": "#/components/schemas/Error"} for m in err["content"].values())


GOOD = [
    ("findOne", {"document": {"_id": "64b7f0c2a1b2c3d4e5f60718", "n": 1}}),
    ("findOne", {"document": None}),
    ("find", {"documents": []}),
    ("find", {"documents": [{"_id": {"$oid": "64b7f0c2a1b2c3d4e5f60718"}}]}),
    ("aggregate", {"documents": [{"_id": "x", "total": 3}]}),
    ("insertOne", {"insertedId": "64b7f0c2a1b2c3d4e5f60718"}),
    ("insertOne", {"insertedId": {"$oid": "64b7f0c2a1b2c3d4e5f60718"}}),
    ("insertMany", {"insertedIds": ["a", 2, {"$oid": "64b7f0c2a1b2c3d4e5f60718"}]}),
    ("updateOne", {"matchedCount": 1, "modifiedCount": 1}),
    ("updateMany", {"matchedCount": 0, "modifiedCount": 0, "upsertedId": "64b7f0c2a1b2c3d4e5f60718"}),
    ("replaceOne", {"matchedCount": 1, "modifiedCount": 0}),
    ("deleteOne", {"deletedCount": 1}),
    ("deleteMany", {"deletedCount": 0}),
]
BAD = [
    ("findOne", {}),
    ("findOne", {"document": []}),
    ("find", {"documents": [1]}),
    ("find", {"document": []}),
    ("aggregate", {"documents": None}),
    ("insertOne", {}),
    ("insertMany", {"insertedIds": "a"}),
    ("updateOne", {"matchedCount": 1}),
    ("updateMany", {"matchedCount": "1", "modifiedCount": 0}),
    ("replaceOne", {"matchedCount": True, "modifiedCount": 0}),
    ("deleteOne", {"deletedCount": 1.5}),
    ("deleteMany", {"deletedCount": 1, "extra": 1}),
]


@pytest.mark.parametrize(("action", "body"), GOOD)
def test_good_success_bodies(action: str, body: dict[str, Any]) -> None:
    check_response(action, ACTIONS[action], body)


@pytest.mark.parametrize(("action", "body"), BAD)
def test_bad_success_bodies(action: str, body: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="does not match"):
        check_response(action, ACTIONS[action], body)


@pytest.mark.parametrize("status", ERROR_STATUSES)
def test_error_body(status: int) -> None:
    check_response("find", status, {"error": "no", "error_code": "BadRequest"})
    check_response("insertOne", status, {"error": "dup", "error_code": "MongoDBError", "code": 11000})
    for bad in ({"error": "no"}, {"error_code": "BadRequest"},
                {"error": "no", "error_code": "Teapot"},
                {"error": "no", "error_code": "MongoDBError", "code": "11000"},
                {"error": None, "error_code": "NotFound"}):
        with pytest.raises(AssertionError):
            check_response("find", status, bad)


def test_undocumented_status() -> None:
    with pytest.raises(AssertionError, match="not documented"):
        check_response("find", 201, {"documents": []})
    with pytest.raises(AssertionError, match="no POST"):
        check_response("count", 200, {})


def test_request_bodies() -> None:
    check_request("find", {**NS, "filter": {"n": {"$gt": 1}}, "sort": {"n": -1}, "limit": 10, "skip": 0})
    check_request("findOne", NS)
    check_request("insertMany", {**NS, "documents": [{"a": 1}]})
    check_request("updateOne", {**NS, "filter": {}, "update": {"$set": {"a": 1}}, "upsert": True})
    check_request("replaceOne", {**NS, "filter": {}, "replacement": {"a": 1}})
    check_request("aggregate", {**NS, "pipeline": [{"$match": {}}]})
    for action, body in [
        ("find", {"database": "shop", "collection": "orders"}),  # no dataSource
        ("find", {**NS, "limit": 0}),
        ("find", {**NS, "skip": -1}),
        ("find", {**NS, "filter": {}, "hint": {}}),  # unknown field
        ("insertOne", NS),
        ("insertMany", {**NS, "documents": []}),
        ("updateMany", {**NS, "filter": {}}),
        ("replaceOne", {**NS, "filter": {}, "update": {}}),
        ("deleteOne", {**NS, "filter": []}),
        ("aggregate", {**NS, "pipeline": {}}),
    ]:
        with pytest.raises(AssertionError):
            check_request(action, body)
