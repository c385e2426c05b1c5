"""A Lambda function (Python) that reaches MongoDB through the mongomux gateway with IAM
authentication (MONGODB-AWS): no password anywhere, not even in Secrets Manager.

The function's execution role is its identity. Lambda hands the role's temporary credentials to
the function in AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN; pymongo (with
pymongo-auth-aws, the `pymongo[aws]` extra) reads them from there, signs an STS
GetCallerIdentity request with them, and the gateway has STS check it and admits the role if
one of its users names the role's ARN.

Environment:

    MONGODB_URI     the gateway's load balancer, no credentials, the database in the path:
                    mongodb://NLB:27018/app?loadBalanced=true&authMechanism=MONGODB-AWS&authSource=$external
                    loadBalanced=true because several gateways stand behind the NLB: the driver
                    then pins each cursor and transaction to the one connection (so the one
                    gateway) that opened it, and opens no monitoring connections of its own.
    APP_COLLECTION  optional, the collection (default "events").

Events (JSON), as the Rust examples take them: {"op":"insert","doc":{...}} inserts one document
and answers its id; {"op":"count"} (optionally with "filter":{...}) answers the number of
documents; {"op":"ping"} checks the connection. Every answer carries what this execution
environment has done so far: clients_created (stays 1), connections_created (connections the
driver opened: 1 for a healthy environment, whatever the number of invocations) and invocations.
Every invocation also prints one CloudWatch Embedded Metric Format line (ColdStart,
ClientReused, ConnectionsOpened, ConnectTime, IamAuthentications; namespace mongomux/lambda), as
the Rust kit does.

Deploy: `pip install -r requirements.txt --target build/` plus this file, zipped; Runtime
python3.12, Handler app.handler; deploy/template.yaml and docs/deploy.md do it. awslambdaric
(the Runtime Interface Client) is not in requirements.txt: Lambda's managed Python runtimes have
it built in; tests/python/test_lambda_functions.py runs this function with it under the Runtime
Interface Emulator (scripts/install-lambda-functions installs both into .venv here).
"""

import json
import os
import threading
import time

from bson import json_util
from pymongo import MongoClient, monitoring, uri_parser

_URI = os.environ.get("MONGODB_URI") or os.environ.get("MONGOMUX_URI")
if not _URI:
    raise RuntimeError("MONGODB_URI is not set (the gateway's connection string)")
_COLLECTION = os.environ.get("APP_COLLECTION") or "events"

_stats = {"clients_created": 0, "connections_created": 0, "invocations": 0}
# Seconds the driver's connections took to become ready (connect, handshake, authentication).
_connect_seconds = [0.0]
_lock = threading.Lock()


class _CountConnections(monitoring.ConnectionPoolListener):
    """Counts the connections the driver opens (CMAP events); the rest are of no interest."""

    def connection_created(self, event):
        with _lock:
            _stats["connections_created"] += 1

    def connection_ready(self, event):
        with _lock:
            _connect_seconds[0] += getattr(event, "duration", 0.0) or 0.0

    def pool_created(self, event): pass
    def pool_ready(self, event): pass
    def pool_cleared(self, event): pass
    def pool_closed(self, event): pass
    def connection_closed(self, event): pass
    def connection_check_out_started(self, event): pass
    def connection_check_out_failed(self, event): pass
    def connection_checked_out(self, event): pass
    def connection_checked_in(self, event): pass


# One client per execution environment, created when Lambda imports this module (before the
# first invocation) and reused by every invocation after it. A client per invocation would pay a
# TCP connection, a handshake and an IAM login (an STS call at the gateway) every time, and leave
# connections behind in the gateway. MongoClient() does no I/O here (connect=False): the first
# operation connects, so an unreachable gateway is that invocation's error rather than a failed
# init that Lambda retries.
#
# Settings tuned for functions, as the Rust kit (crates/lambda) picks them; an option in the
# connection string wins over each.
client = MongoClient(
    _URI,
    connect=False,
    # One invocation at a time needs one connection; every connection is a gateway client and an
    # STS call.
    maxPoolSize=2,
    minPoolSize=0,
    # Fail with a real error well inside the function's timeout instead of being killed by it.
    serverSelectionTimeoutMS=5000,
    connectTimeoutMS=3000,
    # Below the 350 s after which an NLB forgets an idle flow: a thawed environment never reuses
    # a socket the balancer silently dropped.
    maxIdleTimeMS=240_000,
    # The first operation after a thaw may meet a dropped connection; one retry hides it.
    retryWrites=True,
    retryReads=True,
    # The gateway's logs show which function a connection belongs to.
    appname=os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
    event_listeners=[_CountConnections()],
)
_stats["clients_created"] += 1
# What the client will do, never a credential (the URI has none, but only its hosts and its
# authentication mechanism are printed).
_parsed = uri_parser.parse_uri(_URI)
_uri_options = {k.lower(): v for k, v in _parsed["options"].items()}
print(f"mongomux-lambda-python: created client "
      f"(hosts={','.join(f'{h}:{p}' for h, p in _parsed['nodelist'])} "
      f"load_balanced={str(client.options.load_balanced).lower()} "
      f"auth={_uri_options.get('authmechanism', 'none')} "
      f"app_name={os.environ.get('AWS_LAMBDA_FUNCTION_NAME')} max_pool_size={client.options.pool_options.max_pool_size})",
      flush=True)


_IAM = _uri_options.get("authmechanism") == "MONGODB-AWS"


def _emit_metrics(cold: bool, opened: int, connect_seconds: float) -> None:
    """One CloudWatch Embedded Metric Format line, as the Rust kit prints it (docs/lambda.md):
    CloudWatch Logs turns it into metrics of namespace mongomux/lambda, so a user sees that the
    client is reused (ClientReused near 1, ConnectionsOpened near 0)."""
    names = ["ColdStart", "ClientReused", "ConnectionsOpened", "ConnectTime", "IamAuthentications"]
    units = {"ConnectTime": "Milliseconds"}
    doc = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": "mongomux/lambda",
                "Dimensions": [["FunctionName"]],
                "Metrics": [{"Name": n, "Unit": units.get(n, "Count")} for n in names],
            }],
        },
        "FunctionName": os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "unknown"),
        "ColdStart": int(cold),
        "ClientReused": int(not cold),
        "ConnectionsOpened": opened,
        "ConnectTime": connect_seconds * 1000.0,
        "IamAuthentications": opened if _IAM else 0,
    }
    print(json.dumps(doc), flush=True)


def handler(event, context):
    with _lock:
        _stats["invocations"] += 1
        cold = _stats["invocations"] == 1
        before = (_stats["connections_created"], _connect_seconds[0])
    try:
        return _serve(event)
    finally:
        with _lock:
            opened = _stats["connections_created"] - before[0]
            took = _connect_seconds[0] - before[1]
        _emit_metrics(cold, opened, took)


def _serve(event):
    events = client.get_default_database()[_COLLECTION]
    op = event.get("op") if isinstance(event, dict) else None
    if op == "insert":
        # Extended JSON ({"$date": ...}) becomes BSON types, as in the Node.js and Rust examples.
        doc = json_util.loads(json.dumps(event.get("doc") or {}))
        inserted = events.insert_one(doc).inserted_id
        answer = {"op": "insert", "inserted_id": {"$oid": str(inserted)}}
    elif op == "count":
        query = json_util.loads(json.dumps(event.get("filter") or {}))
        answer = {"op": "count", "count": events.count_documents(query)}
    elif op == "ping":
        client.admin.command("ping")
        answer = {"op": "ping"}
    else:
        # Raised: the invocation's error (errorType "ValueError"); the environment and client live on.
        raise ValueError(f"unknown op {op!r} (insert, count or ping)")
    with _lock:
        # topology is "LoadBalanced" when the driver honours loadBalanced=true.
        return {"ok": True, **answer, **_stats, "topology": client.topology_description.topology_type_name}
