#!/usr/bin/env bash
# The Data API with curl: insert a document, read it back, list some, update, count by deleting.
# MONGOMUX_DATA_API_URL is the gateway's Data API (e.g. http://127.0.0.1:8080) and
# MONGOMUX_DATA_API_KEY a key from `mongomux api-key add`.
set -euo pipefail
api() {
    curl -sS -X POST "$MONGOMUX_DATA_API_URL/action/$1" \
        -H "apiKey: $MONGOMUX_DATA_API_KEY" \
        -H "Content-Type: application/json" -H "Accept: ${ACCEPT:-application/json}" \
        -d "$2" -w '  [HTTP %{http_code}]\n'
}
src='"dataSource": "mongodb-atlas", "database": "shop", "collection": "orders"'
api insertOne "{$src, \"document\": {\"sku\": \"A-1\", \"qty\": 2, \"at\": {\"\$date\": \"2026-12-03T10:00:00Z\"}}}"
api insertMany "{$src, \"documents\": [{\"sku\": \"B-2\", \"qty\": 1}, {\"sku\": \"C-3\", \"qty\": 5}]}"
api findOne "{$src, \"filter\": {\"sku\": \"A-1\"}, \"projection\": {\"_id\": 0}}"
ACCEPT=application/ejson api find "{$src, \"filter\": {\"qty\": {\"\$gte\": 2}}, \"sort\": {\"qty\": -1}, \"projection\": {\"_id\": 0}}"
api updateOne "{$src, \"filter\": {\"sku\": \"B-2\"}, \"update\": {\"\$inc\": {\"qty\": 10}}}"
api aggregate "{$src, \"pipeline\": [{\"\$group\": {\"_id\": null, \"total\": {\"\$sum\": \"\$qty\"}}}]}"
api deleteMany "{$src, \"filter\": {}}"
api findOne '{"dataSource": "mongodb-atlas", "database": "payroll", "collection": "salaries"}'
