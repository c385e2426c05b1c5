"""The Lambda kit's Data API client (crates/lambda/src/data_api.rs) through its example function
(examples/lambda-data-api) under the AWS Lambda Runtime Interface Emulator: a gateway with the
Data API on, in front of FerretDB, checking IAM through moto's STS.

One emulator is one warm execution environment: the function creates its client once, every
invocation reuses it (`reused`), and each Data API request carries a freshly signed STS header
that the gateway checks with STS (`mongomux_sts_requests_total{result="ok"}` grows by 2 per
invocation: the insertOne and the findOne). No secret key or session token may appear in the
function's log (the emulator's) or the gateway's. A second environment with a wrong secret key
is refused with 401 InvalidSession, and says so. With MONGOMUX_DATA_API_KEY the function sends
the key instead and STS is not called at all. The keep-alive connections are checked with
`ss`: the 20 requests of all invocations go over at most five (one when the machine is
quiet).

Binaries: MONGOMUX_LAMBDA_DATA_API_BIN (default target/debug/lambda-data-api; scripts/test
exports it), plus those of lambda_fixtures and conftest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest
from bson import ObjectId, json_util

from conftest import ROOT, _binary, free_port, start_gateway, wait_until
from iam_fixtures import IAM_USER_TOML, ROLE_ARN, start_moto, sts_calls, sts_counts, sts_delta
from lambda_fixtures import InvokeError, start_emulator
from security_fixtures import gateway_bin, make_user, write_config

INVOCATIONS = 10


def data_api_bin() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    return _binary("MONGOMUX_LAMBDA_DATA_API_BIN", target / "debug" / "lambda-data-api")


@pytest.fixture(scope="module")
def moto(logdir):
    m = start_moto(logdir)
    yield m
    m.proc.stop()


@dataclasses.dataclass
class DataApiGateway:
    gw: object
    url: str
    database: str
    api_key: str = dataclasses.field(repr=False)


def api_key(name: str, user: str) -> tuple[str, str]:
    """A key made by `mongomux api-key add`: (the key, its [[api_keys]] entry)."""
    out = subprocess.run([gateway_bin(), "api-key", "add", name, "--user", user], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    lines = out.splitlines()
    return lines[1].removeprefix("# "), "\n".join(lines[2:]) + "\n"


@pytest.fixture
def gateway(ferretdb, logdir, tmp_path, moto):
    """A gateway with the Data API on a free port; users: the role's ARN (IAM), and `fn-app`
    (readWrite on this test's database) with an API key."""
    database = f"lambda_dapi_{secrets.token_hex(3)}"
    app = make_user("fn-app", databases=(database,))
    key, key_entry = api_key("fn-app-key", "fn-app")
    cfg = tmp_path / "gw.toml"
    write_config(cfg, users=[app], access=["127.0.0.0/8"], sts_endpoint=moto.endpoint)
    with open(cfg, "a") as f:
        f.write(IAM_USER_TOML.format(arn=ROLE_ARN) + key_entry)
    port = free_port()
    gw = start_gateway(ferretdb, logdir, name=f"lambda-dapi-{secrets.token_hex(2)}", metrics=True,
                       extra_args=("--config", str(cfg), "--data-api-listen", f"127.0.0.1:{port}"))

    def listening():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False
    wait_until(listening, 10, what="the Data API listener")
    yield DataApiGateway(gw, f"http://127.0.0.1:{port}", database, key)
    gw.proc.stop()


def client_ports(url: str) -> set[int]:
    """Local ports of the established connections to the Data API listener (client side)."""
    port = url.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return {int(line.split()[-2].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def test_function_puts_and_reads_back_through_the_data_api(gateway, ferretdb, moto, logdir):
    gw, url, database = gateway.gw, gateway.url, gateway.database
    creds = moto.role
    env = {"MONGOMUX_DATA_API_URL": url, "MONGOMUX_DATA_API_DATABASE": database, **creds.env()}
    em = start_emulator(data_api_bin(), logdir, env, function_name="lambda-data-api")
    values = [f"v{i}" if i % 2 else {"n": i, "tags": ["a", "b"], "big": 2**40 + i}
              for i in range(INVOCATIONS)]
    answers, reused, connections = [], [], []
    sts_start = sts_counts(gw)
    try:
        for i, value in enumerate(values):
            before = sts_counts(gw)
            started = dt.datetime.now(dt.timezone.utc)
            answer = em.invoke({"action": "put", "value": value})
            delta = sts_delta(before, sts_counts(gw))
            assert delta["ok"] == 2, (i, delta)
            reused.append(answer["reused"])
            assert answer["reused"] is (i > 0), (i, answer)
            # Canonical Extended JSON: the id is an ObjectId, the date a date, numbers typed.
            found = json_util.loads(json.dumps(answer["found"]))
            inserted = json_util.loads(json.dumps({"id": answer["insertedId"]}))["id"]
            assert isinstance(inserted, ObjectId) and found["_id"] == inserted, answer
            assert found["value"] == value, answer
            at = found["at"].replace(tzinfo=dt.timezone.utc)
            assert started - dt.timedelta(seconds=5) <= at <= dt.datetime.now(dt.timezone.utc), answer
            if isinstance(value, dict):
                assert answer["found"]["value"]["big"] == {"$numberLong": str(2**40 + i)}
            answers.append((inserted, value))
            connections.append(client_ports(url))
        # Keep-alive: connections carry the requests of later invocations. On a loaded machine
        # the client's pool was seen to open a second one, or to replace the first after the
        # first invocation, but never one per request (20 requests here).
        used = set().union(*connections)
        assert 1 <= len(used) <= 5, connections
        # The documents are in the database, as the function wrote them.
        stored = {d["_id"]: d for d in ferretdb.client()[database]["events"].find()}
        assert len(stored) == INVOCATIONS
        for oid, value in answers:
            assert stored[oid]["value"] == value
        em_log = em.log_text()
        total = sts_delta(sts_start, sts_counts(gw))
        print(f"\n{INVOCATIONS} invocations: STS ok +{total['ok']:.0f}, denied +{total['denied']:.0f},"
              f" refused +{total['refused']:.0f}; reused {reused}; client ports {connections[0]} throughout")
    finally:
        em.stop()
    gw_log = gw.proc.log.read_text(errors="replace")
    for secret in creds.secrets():
        assert secret not in em_log, "a credential in the function's log"
        assert secret not in gw_log, "a credential in the gateway's log"

    # Another execution environment whose secret key is wrong: STS refuses the signature, the
    # gateway answers 401 InvalidSession, and the function's error says so (and nothing secret).
    wrong = dataclasses.replace(creds, secret_key=creds.secret_key[:-4] + "AAAA")
    env = {**env, **wrong.env()}
    bad = start_emulator(data_api_bin(), logdir, env, function_name="lambda-data-api-wrong-key")
    try:
        before = sts_counts(gw)
        with pytest.raises(InvokeError) as err:
            bad.invoke({"action": "put", "value": "refused"})
        message = str(err.value).splitlines()[0]
        assert "401" in message and "InvalidSession" in message and "DataApi" in message, message
        delta = sts_delta(before, sts_counts(gw))
        assert delta["ok"] == 0 and delta["denied"] == 1, delta
        print(f"wrong secret key: {message!r}; STS {delta}")
        bad_log = bad.log_text()
    finally:
        bad.stop()
    for secret in wrong.secrets() + creds.secrets():
        assert secret not in bad_log and secret not in message
    assert ferretdb.client()[database]["events"].count_documents({"value": "refused"}) == 0


def test_function_with_an_api_key_calls_no_sts(gateway, ferretdb, moto, logdir):
    """MONGOMUX_DATA_API_KEY set: the key is sent instead of a signature (no STS call), even with
    the role's credentials in the environment; the key appears in no log."""
    gw = gateway.gw
    env = {"MONGOMUX_DATA_API_URL": gateway.url, "MONGOMUX_DATA_API_DATABASE": gateway.database,
           "MONGOMUX_DATA_API_KEY": gateway.api_key, **moto.role.env()}
    em = start_emulator(data_api_bin(), logdir, env, function_name="lambda-data-api-key")
    try:
        before = sts_counts(gw)
        for i in range(3):
            answer = em.invoke({"action": "put", "value": i})
            assert answer["reused"] is (i > 0) and answer["found"]["value"] == {"$numberInt": str(i)}
        assert sts_calls(sts_delta(before, sts_counts(gw))) == 0
        em_log = em.log_text()
    finally:
        em.stop()
    assert ferretdb.client()[gateway.database]["events"].count_documents({"value": {"$in": [0, 1, 2]}}) == 3
    for log in (em_log, gw.proc.log.read_text(errors="replace")):
        assert gateway.api_key not in log
