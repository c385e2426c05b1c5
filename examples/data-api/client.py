"""The Data API from Python with only the standard library: one POST per action.

MONGOMUX_DATA_API_URL is the gateway's Data API, MONGOMUX_DATA_API_KEY a key from
`mongomux api-key add`. Extended JSON in the body ({"$date": ...}) keeps BSON types.
"""

import json
import os
import urllib.error
import urllib.request

BASE = os.environ["MONGOMUX_DATA_API_URL"]
KEY = os.environ["MONGOMUX_DATA_API_KEY"]
SOURCE = {"dataSource": "mongodb-atlas", "database": "shop", "collection": "customers"}


def action(name: str, **fields) -> dict:
    req = urllib.request.Request(
        f"{BASE}/action/{name}", method="POST", data=json.dumps({**SOURCE, **fields}).encode(),
        headers={"apiKey": KEY, "Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{name}: HTTP {e.code}: {json.load(e)}") from None


print(action("insertOne", document={"name": "Ada", "since": {"$date": "2026-01-02T00:00:00Z"}}))
print(action("updateOne", filter={"name": "Ada"}, update={"$set": {"tier": "gold"}}))
print(action("findOne", filter={"name": "Ada"}, projection={"_id": 0}))
print(action("deleteMany", filter={}))
try:
    action("insertOne", document={"$bad": 1})
except RuntimeError as e:
    print(e)
