"""MONGODB-AWS from the gateway to its upstream: the gateway's own IAM credentials are the only
credential it has (Fargate task role), with moto as STS and IAM (signature checking on).

The chain:

    pymongo ──▶ gateway A ──MONGODB-AWS──▶ gateway B ──SCRAM──▶ FerretDB
                    │                          │
        container credentials            STS (recorder ──▶ moto)
        endpoint (rotating)

Gateway A has `--upstream mongodb://B/?authMechanism=MONGODB-AWS&authSource=$external` and takes
its credentials from AWS_CONTAINER_CREDENTIALS_FULL_URI, as an ECS/Fargate task does: a small HTTP
server on loopback serves the ECS JSON and rotates it (a new AssumeRole at moto every few seconds,
advertised with a short Expiration). Gateway B has an IAM user for the role, verifies every
upstream login of A against moto (signatures checked) through a recorder that notes which access
key signed each login and when.

The observable for "no login is ever signed with an expired credential": the endpoint records
every key it served with the Expiration it advertised; the recorder records the key and
X-Amz-Date of every GetCallerIdentity gateway B sent; no record may come at or after its key's
Expiration. Gateway A's pool is small with a one-second idle timeout, so a client that pauses
between operations makes A open new upstream connections (new logins) across the rotations.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import http.server
import json
import os
import re
import threading
import time
import urllib.parse

import pymongo
import pytest
from pymongo.errors import PyMongoError

from conftest import Upstream, start_gateway
from iam_fixtures import ROLE_ARN, AwsCreds, _boto_client, aws_environment, start_iam_gateway, start_moto

DB = "upstreamiam"
# The credentials endpoint advertises this lifetime and hands out new keys this often; the
# gateway refreshes at half the lifetime (short credentials), so it switches keys every ~5 s.
LIFETIME = 10.0
ROTATE_AFTER = 3.0
CREDENTIAL = re.compile(r"Credential=([A-Za-z0-9]+)/")


# ---------------------------------------------------------------------------
# Test servers


class _Server:
    """A threaded HTTP server on loopback around a handler class."""

    def __init__(self, handler):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class CredentialsEndpoint(_Server):
    """The ECS container-credentials endpoint: GET returns {AccessKeyId, SecretAccessKey, Token,
    Expiration, RoleArn}. New keys (AssumeRole of the gateway user's role at moto) after
    `rotate_after` seconds; `expired=True` advertises every key as already expired.
    `.served` maps each key id to (its Expiration as epoch seconds, its secrets)."""

    def __init__(self, moto, rotate_after: float = ROTATE_AFTER, lifetime: float = LIFETIME, expired: bool = False):
        self.moto, self.rotate_after, self.lifetime, self.expired = moto, rotate_after, lifetime, expired
        self.served: dict[str, tuple[float, AwsCreds]] = {}
        self.requests = 0
        self._current: tuple[float, dict] | None = None
        self._lock = threading.Lock()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps(endpoint.document()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        super().__init__(Handler)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/credentials/task-role"

    def document(self) -> dict:
        with self._lock:
            self.requests += 1
            now = time.time()
            if self._current is None or now - self._current[0] >= self.rotate_after:
                c = _boto_client("sts", self.moto, self.moto.user_key).assume_role(
                    RoleArn=ROLE_ARN, RoleSessionName=f"task-{len(self.served)}")["Credentials"]
                expires = now - 60 if self.expired else now + self.lifetime
                # Whole seconds: the advertised Expiration is what counts.
                expires = float(int(expires))
                doc = {
                    "AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
                    "Token": c["SessionToken"], "RoleArn": ROLE_ARN,
                    "Expiration": dt.datetime.fromtimestamp(expires, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                self.served[c["AccessKeyId"]] = (expires, AwsCreds(c["AccessKeyId"], c["SecretAccessKey"],
                                                                   c["SessionToken"]))
                self._current = (now, doc)
            return self._current[1]

    def secrets(self) -> list[str]:
        return [s for _, creds in self.served.values() for s in creds.secrets()]


class StsRecorder(_Server):
    """Relays gateway B's GetCallerIdentity calls to moto, noting for each the access key that
    signed it, its X-Amz-Date (epoch seconds), when it arrived, and moto's status."""

    def __init__(self, moto):
        self.moto = moto
        self.calls: list[dict] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                arrived = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn = http.client.HTTPConnection("127.0.0.1", recorder.moto.port, timeout=15)
                try:
                    conn.request("POST", self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    status, out = r.status, r.read()
                finally:
                    conn.close()
                m = CREDENTIAL.search(self.headers.get("Authorization", ""))
                date = dt.datetime.strptime(self.headers.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ")
                recorder.calls.append({
                    "key": m.group(1) if m else None, "arrived": arrived, "status": status,
                    "signed": date.replace(tzinfo=dt.timezone.utc).timestamp(),
                })
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(out)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(out)
                self.close_connection = True

            def log_message(self, *a):
                pass

        super().__init__(Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def moto(logdir):
    m = start_moto(logdir)
    yield m
    m.proc.stop()


@pytest.fixture
def recorder(moto):
    with StsRecorder(moto) as r:
        yield r


@pytest.fixture
def gateway_b(ferretdb, logdir, recorder):
    """A gateway with an IAM user for the role, verifying through the recorder. One per test:
    its failed-login throttle must not carry over."""
    gw = start_iam_gateway(ferretdb, logdir, recorder.endpoint, arns=(ROLE_ARN,))
    yield gw
    gw.proc.stop()


def upstream_uri(b, creds: AwsCreds | None = None) -> str:
    q = urllib.parse.quote
    userinfo = f"{q(creds.access_key, safe='')}:{q(creds.secret_key, safe='')}@" if creds else ""
    props = f"&authMechanismProperties=AWS_SESSION_TOKEN:{q(creds.token, safe='')}" if creds and creds.token else ""
    return f"mongodb://{userinfo}127.0.0.1:{b.port}/?authMechanism=MONGODB-AWS&authSource=$external{props}"


@contextlib.contextmanager
def gateway_a(b, logdir, name: str, creds: AwsCreds | None = None, container_uri: str | None = None):
    """Gateway A in front of B: MONGODB-AWS upstream, keys from the URI (`creds`) or from the
    container-credentials endpoint; nothing else AWS in its environment. Pool of 2, idle
    connections closed after 1 s."""
    with aws_environment(None):
        if container_uri:
            os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = container_uri
        gw = start_gateway(Upstream(b.proc), logdir, name=name, pool_size=2,
                           upstream_uri=upstream_uri(b, creds), credentials_in_env=False,
                           extra_args=("--idle-timeout", "1s"))
    try:
        yield gw
    finally:
        gw.proc.stop()


def client_of(gw) -> pymongo.MongoClient:
    return pymongo.MongoClient(gw.uri(), maxPoolSize=1, serverSelectionTimeoutMS=10_000,
                               retryReads=False, retryWrites=False)


def assert_log_has_none_of(gw, secrets: list[str]) -> None:
    text = gw.proc.log.read_text(errors="replace")
    assert not any(s in text for s in secrets if s), f"{gw.proc.name}'s log names a secret key or token"


# ---------------------------------------------------------------------------
# Tests


@pytest.mark.timeout(120)
def test_task_role_credentials_rotate_and_are_never_used_expired(gateway_b, recorder, moto, logdir):
    with CredentialsEndpoint(moto) as endpoint, \
            gateway_a(gateway_b, logdir, "mongomux-a-rotating", container_uri=endpoint.uri) as a:
        client = client_of(a)
        try:
            coll = client[DB].rotation
            coll.drop()
            n = 0
            deadline = time.monotonic() + 5 * LIFETIME / 2 + 3 * ROTATE_AFTER
            while time.monotonic() < deadline:
                n += 1
                coll.insert_one({"_id": n})
                assert coll.find_one({"_id": n}) == {"_id": n}
                time.sleep(1.3)  # longer than A's idle timeout: the next op logs in again
            assert coll.count_documents({}) == n
        finally:
            client.close()
        served = dict(endpoint.served)
        a_secrets = endpoint.secrets()
    assert_log_has_none_of(a, a_secrets)

    logins = [c for c in recorder.calls if c["key"] in served]
    assert all(c["status"] == 200 for c in logins), [c["status"] for c in logins]
    used = {c["key"] for c in logins}
    print(f"\n{n} operations, {len(logins)} upstream logins, {len(served)} keys served, "
          f"{len(used)} used, {endpoint.requests} credential fetches")
    assert len(logins) >= n // 2, "A did not open new upstream connections after its idle timeout"
    assert len(used) >= 3, f"A did not follow the rotation: {len(used)} keys used of {len(served)} served"
    assert endpoint.requests < len(logins), "A fetched credentials for every login instead of caching them"
    late = [(c["key"], c["arrived"] - served[c["key"]][0]) for c in logins
            if c["arrived"] >= served[c["key"]][0] or c["signed"] >= served[c["key"]][0]]
    assert not late, f"logins signed with a credential at or after its Expiration: {late}"


@pytest.mark.timeout(60)
def test_expired_container_credentials_are_refused_not_used(gateway_b, recorder, moto, logdir):
    with CredentialsEndpoint(moto, expired=True) as endpoint, \
            gateway_a(gateway_b, logdir, "mongomux-a-expired", container_uri=endpoint.uri) as a:
        client = client_of(a)
        try:
            with pytest.raises(PyMongoError) as exc:
                client[DB].expired.find_one()
        finally:
            client.close()
        served = dict(endpoint.served)
        a_secrets = endpoint.secrets()
    message = str(exc.value)
    assert "AWS credentials" in message and "expired" in message, message
    assert not any(s in message for s in a_secrets)
    assert endpoint.requests >= 2, "A did not force a refresh before giving up"
    assert not [c for c in recorder.calls if c["key"] in served], "an expired credential signed a login"
    assert_log_has_none_of(a, a_secrets)


@pytest.mark.timeout(60)
def test_static_keys_in_the_uri(gateway_b, recorder, moto, logdir):
    with gateway_a(gateway_b, logdir, "mongomux-a-static", creds=moto.role) as a:
        client = client_of(a)
        try:
            client[DB].static.insert_one({"x": 1})
            assert client[DB].static.find_one({"x": 1})["x"] == 1
            client[DB].static.drop()
        finally:
            client.close()
    assert any(c["key"] == moto.role.access_key and c["status"] == 200 for c in recorder.calls)
    assert_log_has_none_of(a, moto.role.secrets())


@pytest.mark.timeout(60)
def test_wrong_key_is_refused_with_a_clear_error_naming_no_secret(gateway_b, recorder, moto, logdir):
    r = moto.role
    wrong = AwsCreds(r.access_key, r.secret_key[:-1] + ("A" if r.secret_key[-1] != "A" else "B"), r.token)
    with gateway_a(gateway_b, logdir, "mongomux-a-wrong", creds=wrong) as a:
        client = client_of(a)
        try:
            with pytest.raises(PyMongoError) as exc:
                client[DB].wrong.find_one()
        finally:
            client.close()
    message = str(exc.value)
    assert "could not authenticate to the upstream" in message, message
    for s in wrong.secrets() + r.secrets():
        assert s not in message, "the error names a secret key or token"
    assert [c["status"] for c in recorder.calls if c["key"] == r.access_key] and all(
        c["status"] == 403 for c in recorder.calls if c["key"] == r.access_key), "STS was not what refused"
    assert_log_has_none_of(a, wrong.secrets() + r.secrets())
