"""Helpers for the MONGODB-AWS tests (issue 4): moto as STS and IAM with signature checking on,
gateways with IAM users, a MONGODB-AWS client over raw sockets, and STS metrics.

moto (`moto_server`, PyPI) is started with INITIAL_NO_AUTH_ACTION_COUNT set to exactly the number
of set-up calls made here (create two roles, a user, its access key and its policy, assume each
role), so
every later request must carry a valid SigV4 signature. Enforcement is then switched on
explicitly as well (`POST /moto-api/reset-auth` with `0`) and checked with a bad signature, so
a miscount cannot silently leave it off. What moto does not check (clock skew, replay of an
identical request) is left to the gateway's own checks, and the tests for those assert that the
gateway refused them without calling STS at all.

Why a hand-written MONGODB-AWS client: the tests must send what no driver sends (a tampered
signature, a client-final replayed from another conversation, SignedHeaders without the nonce, a
date 30 minutes off), and time each step of a login. It signs exactly as pymongo-auth-aws does:
botocore's SigV4Auth over `POST /` with body `Action=GetCallerIdentity&Version=2011-06-15` and
the X-MongoDB-Server-Nonce / X-MongoDB-GS2-CB-Flag headers, Host = the `h` the server handed out.

Every key here is generated per run by a moto server on loopback that lives in pytest's
temporary folder; none is a secret worth keeping.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import secrets
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import bson
from bson.binary import Binary

from conftest import ROOT, Gateway, Proc, Upstream, _binary, _running, _spawn, free_port, start_gateway, tail
from mongowire import RawConn
from security_fixtures import metrics_text

ACCOUNT = "123456789012"
ROLE_NAME = "fn-role"
OTHER_ROLE_NAME = "other-role"  # assumable, but no gateway user entry names it
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"
OTHER_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{OTHER_ROLE_NAME}"
STS_HOST = "sts.amazonaws.com"  # the gateway's default aws_sts_host; clients sign for it
REGION = "us-east-1"
STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
STS_RESULTS = ("ok", "denied", "throttled", "timeout", "error", "refused")
# The results that are calls to STS; `refused` counts requests the gateway refused itself.
STS_CALL_RESULTS = ("ok", "denied", "throttled", "timeout", "error")

# The unauthenticated set-up calls provision() makes; moto checks every request after these.
SETUP_CALLS = 7

TRUST_ANYONE = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
})

ASSUME_ANY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
})


@dataclass(frozen=True)
class AwsCreds:
    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)

    def env(self) -> dict:
        """What Lambda puts in a function's environment."""
        e = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        if self.token:
            e["AWS_SESSION_TOKEN"] = self.token
        return e

    def secrets(self) -> list[str]:
        return [s for s in (self.secret_key, self.token) if s]


@dataclass
class Moto:
    proc: Proc
    role: AwsCreds = None          # temporary credentials of fn-role (AssumeRole)
    other_role: AwsCreds = None    # temporary credentials of other-role (no gateway user)
    user_key: AwsCreds = None      # the deployer's long-term key

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _boto_client(service: str, moto: Moto, creds: AwsCreds | None = None):
    import boto3
    from botocore.config import Config

    creds = creds or AwsCreds("AKIAIOSFODNN7EXAMPLE", "dummy-secret-for-unauthenticated-setup")
    return boto3.client(
        service, endpoint_url=moto.endpoint, region_name=REGION,
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
        aws_session_token=creds.token,
        config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 1}),
    )


def start_moto(logdir: Path) -> Moto:
    """moto_server on a free loopback port, provisioned (see provision()), signatures enforced."""
    binary = _binary("MONGOMUX_MOTO", ROOT / ".venv/bin/moto_server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_CALLS)
    popen, log = _spawn(f"moto-{port}", [binary, "-H", "127.0.0.1", "-p", port], logdir, env)
    proc = Proc(f"moto-{port}", popen, port, log)
    _running.append(proc)
    deadline = time.monotonic() + 60
    while True:
        if not proc.alive():
            raise AssertionError(f"moto exited with {popen.returncode}:\n{tail(log)}")
        try:
            # /moto-api/ is not an AWS action: it does not use up an unauthenticated call.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.stop()
                raise AssertionError(f"moto did not answer within 60 s:\n{tail(log)}")
            time.sleep(0.2)
    moto = Moto(proc)
    try:
        provision(moto)
    except BaseException:
        proc.stop()
        raise
    return moto


def provision(moto: Moto) -> None:
    """Exactly SETUP_CALLS unauthenticated calls: two roles anyone may assume, a user with an
    access key and the right to assume roles (so tests can mint fresh role credentials once
    signatures are enforced), and temporary credentials for each role, assumed with the user's
    key."""
    iam = _boto_client("iam", moto)
    iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=TRUST_ANYONE)          # 1
    iam.create_role(RoleName=OTHER_ROLE_NAME, AssumeRolePolicyDocument=TRUST_ANYONE)    # 2
    iam.create_user(UserName="deployer")                                                # 3
    k = iam.create_access_key(UserName="deployer")["AccessKey"]                         # 4
    moto.user_key = AwsCreds(k["AccessKeyId"], k["SecretAccessKey"])
    iam.put_user_policy(UserName="deployer", PolicyName="assume-roles", PolicyDocument=ASSUME_ANY)  # 5
    sts = _boto_client("sts", moto, moto.user_key)
    for arn, attr in ((ROLE_ARN, "role"), (OTHER_ROLE_ARN, "other_role")):              # 6, 7
        c = sts.assume_role(RoleArn=arn, RoleSessionName=f"{attr}-{secrets.token_hex(3)}")["Credentials"]
        setattr(moto, attr, AwsCreds(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]))
    # Belt and braces: enforcement on from now whatever the count, then prove it.
    req = urllib.request.Request(f"{moto.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})  # a form body would be parsed away
    with urllib.request.urlopen(req, timeout=5):
        pass
    assert_moto_enforces(moto)


def assert_moto_enforces(moto: Moto) -> None:
    """A GetCallerIdentity signed with a wrong secret must get 403 from moto itself, and the
    right one 200 with the assumed-role ARN."""
    from botocore.exceptions import ClientError

    bad = AwsCreds(moto.role.access_key, moto.role.secret_key[:-1] + ("A" if moto.role.secret_key[-1] != "A" else "B"),
                   moto.role.token)
    try:
        _boto_client("sts", moto, bad).get_caller_identity()
    except ClientError as e:
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403, e.response
    else:
        raise AssertionError("moto accepted a wrong secret: signature checking is off")
    arn = _boto_client("sts", moto, moto.role).get_caller_identity()["Arn"]
    assert arn.startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE_NAME}/"), arn


# ---------------------------------------------------------------------------
# Gateways with IAM users


IAM_USER_TOML = '[[users]]\nname = "{arn}"\ndb = "$external"\naws = true\n'


def write_iam_config(path: Path, sts_endpoint: str, arns: tuple = (ROLE_ARN,), max_concurrency: int = 8,
                     timeout: str = "10s", extra: str = "") -> Path:
    text = (f'sts_endpoint = "{sts_endpoint}"\nsts_max_concurrency = {max_concurrency}\n'
            f'sts_timeout = "{timeout}"\n{extra}\n' + "".join(IAM_USER_TOML.format(arn=a) for a in arns))
    path.write_text(text)
    return path


def start_iam_gateway(upstream: Upstream, logdir: Path, sts_endpoint: str, name: str | None = None,
                      arns: tuple = (ROLE_ARN,), max_concurrency: int = 8, timeout: str = "10s",
                      extra_args: tuple = ()) -> Gateway:
    name = name or f"mongomux-iam-{secrets.token_hex(3)}"
    cfg = write_iam_config(logdir / f"{name}.toml", sts_endpoint, arns, max_concurrency, timeout)
    return start_gateway(upstream, logdir, name=name, metrics=True,
                         extra_args=("--config", str(cfg), *extra_args))


def iam_uri(gw: Gateway) -> str:
    return f"mongodb://127.0.0.1:{gw.port}/?authMechanism=MONGODB-AWS&authSource=$external"


@contextlib.contextmanager
def aws_environment(creds: AwsCreds | None, drop: tuple = ()):
    """Put `creds` in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN (minus the names
    in `drop`) for the duration, with nothing else the AWS SDKs might read instead (profiles,
    config files, instance metadata), and restore the environment afterwards."""
    saved = dict(os.environ)
    try:
        for k in list(os.environ):
            if k.startswith("AWS_"):
                del os.environ[k]
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        os.environ["AWS_CONFIG_FILE"] = "/nonexistent/mongomux-test-aws-config"
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/mongomux-test-aws-credentials"
        os.environ["AWS_REGION"] = REGION
        for k, v in (creds.env() if creds else {}).items():
            if k not in drop:
                os.environ[k] = v
        _forget_cached_aws_credentials()
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _forget_cached_aws_credentials()


def _forget_cached_aws_credentials() -> None:
    try:
        from pymongo_auth_aws import auth
        auth.set_cached_credentials(None)
    except ImportError:
        pass


# ---------------------------------------------------------------------------
# MONGODB-AWS over a raw socket


def sign(creds: AwsCreds, server_nonce: bytes, host: str = STS_HOST, *, skew: dt.timedelta = dt.timedelta(0),
         omit_signed: tuple = (), region: str = REGION) -> dict:
    """The client-final payload `{a, d, t?}` a driver sends, signed with botocore's SigV4Auth.

    `skew` moves the signing clock (X-Amz-Date and the signature agree: only the date is off);
    `omit_signed` leaves headers out of the signed request (so out of SignedHeaders), e.g.
    ("X-MongoDB-Server-Nonce",).
    """
    from botocore import auth as bauth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Length": str(len(STS_BODY)),
        "Host": host,
        "X-MongoDB-Server-Nonce": base64.b64encode(server_nonce).decode(),
        "X-MongoDB-GS2-CB-Flag": "n",
    }
    for h in omit_signed:
        headers.pop(h, None)
    request = AWSRequest(method="POST", url="/", data=STS_BODY, headers=headers)
    signer = bauth.SigV4Auth(Credentials(creds.access_key, creds.secret_key, token=creds.token), "sts", region)
    if skew:
        real = bauth.get_current_datetime
        with mock.patch.object(bauth, "get_current_datetime", lambda *a, **k: real(*a, **k) + skew):
            signer.add_auth(request)
    else:
        signer.add_auth(request)
    final = {"a": request.headers["Authorization"], "d": request.headers["X-Amz-Date"]}
    if creds.token:
        final["t"] = creds.token
    return final


def tamper_signature(authorization: str) -> str:
    """Flip one hex digit of the Signature."""
    head, sig = authorization.rsplit("Signature=", 1)
    i = len(sig) // 2
    flipped = "0" if sig[i] != "0" else "1"
    return f"{head}Signature={sig[:i]}{flipped}{sig[i + 1:]}"


@dataclass
class ServerFirst:
    conversation_id: int
    nonce: bytes
    host: str
    reply: dict


class AwsConn(RawConn):
    """A RawConn that speaks MONGODB-AWS step by step."""

    def sasl_start(self, client_nonce: bytes | None = None, timeout: float = 30.0) -> ServerFirst | dict:
        """saslStart with `{r, p: 110}`; the parsed server-first, or the error reply."""
        self.client_nonce = client_nonce or secrets.token_bytes(32)
        payload = bson.encode({"r": Binary(self.client_nonce), "p": 110})
        reply = self.command({"saslStart": 1, "mechanism": "MONGODB-AWS", "payload": Binary(payload)},
                             db="$external", timeout=timeout)
        if reply.get("ok") != 1:
            return reply
        server = bson.decode(bytes(reply["payload"]))
        assert set(server) == {"s", "h"}, f"server-first must hold only s and h: {server}"
        s = bytes(server["s"])
        assert len(s) == 64 and s.startswith(self.client_nonce), "server nonce must extend ours to 64 bytes"
        assert reply.get("done") is False, reply
        return ServerFirst(reply["conversationId"], s, server["h"], reply)

    def sasl_continue(self, first: ServerFirst, final: dict | bytes, timeout: float = 60.0) -> dict:
        payload = final if isinstance(final, (bytes, bytearray)) else bson.encode(final)
        return self.command({"saslContinue": 1, "conversationId": first.conversation_id,
                             "payload": Binary(bytes(payload))}, db="$external", timeout=timeout)

    def aws_login(self, creds: AwsCreds, timeout: float = 60.0) -> dict:
        first = self.sasl_start(timeout=timeout)
        if isinstance(first, dict):
            return first
        return self.sasl_continue(first, sign(creds, first.nonce, first.host), timeout=timeout)


# ---------------------------------------------------------------------------
# STS metrics


def sts_counts(gw: Gateway) -> dict:
    """mongomux_sts_requests_total by result, plus the latency histogram's sum and count."""
    out = {r: 0.0 for r in STS_RESULTS}
    out["sum"] = out["count"] = 0.0
    for line in metrics_text(gw).splitlines():
        if line.startswith("#") or not line.startswith("mongomux_sts_"):
            continue
        key, _, value = line.rpartition(" ")
        for r in STS_RESULTS:
            if key == f'mongomux_sts_requests_total{{result="{r}"}}':
                out[r] = float(value)
        if key == "mongomux_sts_request_seconds_sum":
            out["sum"] = float(value)
        elif key == "mongomux_sts_request_seconds_count":
            out["count"] = float(value)
        elif key == "mongomux_sts_in_flight":
            out["in_flight"] = float(value)
    return out


def sts_delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if k != "in_flight"}


def sts_calls(d: dict) -> float:
    """How many STS calls a delta holds (refusals by the gateway itself are not calls)."""
    return sum(d[r] for r in STS_CALL_RESULTS) + d.get("count", 0)


class InFlightSampler:
    """Reads mongomux_sts_in_flight from the metrics endpoint every `interval` seconds in a
    thread; `.max` is the highest value seen."""

    def __init__(self, gw: Gateway, interval: float = 0.02):
        self.gw, self.interval = gw, interval
        self.max = 0.0
        self.samples = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sts-in-flight")

    def _run(self):
        url = f"http://127.0.0.1:{self.gw.metrics_port}/metrics"
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    text = r.read().decode()
                for line in text.splitlines():
                    if line.startswith("mongomux_sts_in_flight "):
                        self.max = max(self.max, float(line.split()[1]))
                        self.samples += 1
            except OSError:
                self.errors += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def post_to_sts(endpoint_port: int, final: dict, server_nonce: bytes, host: str = STS_HOST,
                timeout: float = 15.0) -> tuple[int, str]:
    """Send the GetCallerIdentity request the gateway would rebuild from `final` straight to the
    STS at 127.0.0.1:`endpoint_port` (moto); (status, body). Used as a control: it shows what
    STS itself would say, so a refusal by the gateway can be told apart from one by STS."""
    import http.client

    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Length": str(len(STS_BODY)),
        "Host": host,
        "X-Amz-Date": final["d"],
        "Authorization": final["a"],
        "X-MongoDB-Server-Nonce": base64.b64encode(server_nonce).decode(),
        "X-MongoDB-GS2-CB-Flag": "n",
    }
    if "t" in final:
        headers["X-Amz-Security-Token"] = final["t"]
    conn = http.client.HTTPConnection("127.0.0.1", endpoint_port, timeout=timeout)
    try:
        conn.request("POST", "/", body=STS_BODY, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


class CountingProxy:
    """A TCP relay in front of STS (moto) that counts the connections open through it: `.max` is
    the most that were ever open at once, measured outside the gateway.

    A connection counts from accept until STS has finished its response (EOF from STS); the
    count drops *before* that EOF is passed on to the gateway. The gateway can only start its
    next call after reading that EOF and giving back its slot, so every overlap the gateway
    causes is counted and a close racing a new connect can never inflate the figure.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.open = 0
        self.max = 0
        self.total = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="sts-proxy")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                self.open += 1
                self.total += 1
                self.max = max(self.max, self.open)
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _done(self, counted: list):
        if counted[0]:
            counted[0] = False
            with self._lock:
                self.open -= 1

    def _relay(self, client: socket.socket):
        counted = [True]
        client.settimeout(60)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=60)
        except OSError:
            self._done(counted)
            client.close()
            return

        def to_upstream():
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
                upstream.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        t = threading.Thread(target=to_upstream, daemon=True)
        t.start()
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._done(counted)  # STS is finished with this request
            try:
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            t.join(60)
            client.close()
            upstream.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


class FakeSts:
    """A stand-in STS on loopback for what moto cannot be made to do: answer with a chosen
    status and body after a chosen delay. It checks no signature; it records every request
    (headers with lower-case names, body) so tests can compare it with what the client signed.

        with FakeSts(status=400, body=THROTTLING) as sts: ...
    """

    def __init__(self, status: int = 200, body: str | None = None, delay: float = 0.0):
        import http.server

        self.status, self.delay = status, delay
        self.body = body if body is not None else caller_identity_xml(
            f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE_NAME}/fake-session")
        self.requests: list[tuple[dict, bytes]] = []
        self.active = self.max_active = 0  # requests being handled at once (delay included)
        self._lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                with fake._lock:
                    fake.active += 1
                    fake.max_active = max(fake.max_active, fake.active)
                try:
                    time.sleep(fake.delay)
                finally:
                    with fake._lock:
                        fake.active -= 1
                out = fake.body.encode()
                self.close_connection = True
                try:
                    self.send_response(fake.status)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(out)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass  # the gateway gave up on this call (its deadline passed)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name="fake-sts")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def caller_identity_xml(arn: str) -> str:
    return ("<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
            f"<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AROAFAKE:fake</UserId>"
            f"<Account>{ACCOUNT}</Account></GetCallerIdentityResult>"
            "<ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ResponseMetadata>"
            "</GetCallerIdentityResponse>")


THROTTLING = ("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>"
              "<Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
              "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>")
