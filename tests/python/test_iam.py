"""MONGODB-AWS at the gateway (issue 4), with moto as STS and IAM (signature checking on).

The function's credentials are what Lambda hands a function: temporary credentials from
AssumeRole, in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN. pymongo (with
pymongo-auth-aws) reads them from the environment, exactly as in a function. Attacks no driver
can make (tampered signature, replayed client-final, SignedHeaders without the nonce, a date
30 minutes off) speak the protocol over a raw socket (iam_fixtures.AwsConn), signing with
botocore as pymongo-auth-aws does and then changing one thing.

For refusals that moto itself would not make (unbound SignedHeaders, clock skew), a control
sends the same request straight to moto and shows it would have been accepted: the gateway's
own check is what stops it, and the STS counters show it stopped it without calling STS.

Every refusal is AuthenticationFailed (18). Each refusal test gets a gateway of its own, so the
failed-auth delay per source address (5 failures a minute) never spills into another test.

Figures for the issue's closing note are printed (run with -s to see them): STS calls per
second the gateway sustains against moto, and how one cold IAM login splits between TCP,
hello, saslStart, saslContinue (STS included) and the first query, against a warm query.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import secrets
import socket
import statistics
import threading
import time

import bson
import pymongo
import pytest
from pymongo.errors import OperationFailure

import procnet
from conftest import free_port
from iam_fixtures import (ACCOUNT, OTHER_ROLE_NAME, ROLE_ARN, ROLE_NAME, STS_BODY, STS_HOST, THROTTLING, AwsConn,
                          AwsCreds, CountingProxy, FakeSts, InFlightSampler, aws_environment, iam_uri, post_to_sts,
                          sign, start_iam_gateway, start_moto, sts_calls, sts_counts, sts_delta, tamper_signature)
from mongowire import AUTHENTICATION_FAILED

DB = "iamtest"


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def moto(logdir):
    m = start_moto(logdir)
    yield m
    m.proc.stop()


class IamGateways:
    """Gateways with IAM users, started per test and stopped at teardown; at teardown every
    log is also checked for the credentials the tests used (none may ever be logged)."""

    def __init__(self, upstream, logdir, moto):
        self.upstream, self.logdir, self.moto = upstream, logdir, moto
        self.started = []

    def __call__(self, sts_endpoint: str | None = None, **kw):
        gw = start_iam_gateway(self.upstream, self.logdir, sts_endpoint or self.moto.endpoint, **kw)
        self.started.append(gw)
        return gw

    def stop_all(self):
        secrets_used = self.moto.role.secrets() + self.moto.other_role.secrets() + self.moto.user_key.secrets()
        leaked = []
        for gw in self.started:
            try:
                gw.proc.stop()
            except AssertionError:
                pass
            text = gw.proc.log.read_text(errors="replace")
            leaked += [f"{gw.proc.name}: a secret of length {len(s)}" for s in secrets_used if s in text]
        assert not leaked, f"credentials found in gateway logs: {leaked}"


@pytest.fixture
def iam_gateways(ferretdb, logdir, moto):
    f = IamGateways(ferretdb, logdir, moto)
    yield f
    f.stop_all()


@pytest.fixture(scope="module")
def iam_gw(ferretdb, logdir, moto):
    """One gateway for the tests that only log in successfully (no failed-auth delays)."""
    f = IamGateways(ferretdb, logdir, moto)
    gw = f(name="mongomux-iam")
    yield gw
    f.stop_all()


def iam_client(gw, **kw) -> pymongo.MongoClient:
    kw.setdefault("serverSelectionTimeoutMS", 10_000)
    kw.setdefault("connectTimeoutMS", 10_000)
    return pymongo.MongoClient(iam_uri(gw), **kw)


def pymongo_login_fails(gw, creds: AwsCreds | None, drop: tuple = ()) -> OperationFailure:
    """Log in with pymongo, credentials from the environment; return the OperationFailure."""
    with aws_environment(creds, drop=drop):
        client = iam_client(gw)
        try:
            with pytest.raises(OperationFailure) as exc:
                client[DB].items.find_one()
        finally:
            client.close()
    return exc.value


def assert_refused(reply: dict) -> None:
    assert reply.get("ok") == 0, reply
    assert reply.get("code") == AUTHENTICATION_FAILED, reply
    assert reply.get("codeName") == "AuthenticationFailed", reply


def assert_names_no_secret(text: str, *creds: AwsCreds, extra: tuple = ()) -> None:
    """(The failure messages never quote `text`: it would put the credential in the report.)"""
    for c in creds:
        for name, s in (("secret key", c.secret_key), ("session token", c.token), ("access key id", c.access_key)):
            if s:
                assert s not in text, f"the error message names the {name}"
    for s in extra:
        assert s not in text, "the error message names the request signature"


def fresh_first(conn: AwsConn):
    conn.hello()
    first = conn.sasl_start()
    assert not isinstance(first, dict), f"saslStart refused: {first}"
    assert first.host == STS_HOST, f"h must be the configured host, got {first.host!r}"
    return first


# ---------------------------------------------------------------------------
# Getting in


def test_role_user_gets_in_and_runs_crud(iam_gw, moto):
    before = sts_counts(iam_gw)
    with aws_environment(moto.role):
        client = iam_client(iam_gw)
        try:
            coll = client[DB].crud
            coll.drop()
            coll.insert_one({"_id": 1, "n": 1})
            coll.insert_many([{"_id": i, "n": i} for i in range(2, 11)])
            assert coll.count_documents({}) == 10
            assert coll.update_one({"_id": 3}, {"$set": {"n": 30}}).modified_count == 1
            assert coll.find_one({"_id": 3})["n"] == 30
            assert coll.delete_many({"n": {"$lt": 3}}).deleted_count == 2
            assert [d["_id"] for d in coll.find({}, sort=[("_id", 1)])] == list(range(3, 11))
            assert sum(d["n"] for d in coll.aggregate([{"$match": {"_id": {"$gte": 4}}}])) == sum(range(4, 11))
            coll.drop()
        finally:
            client.close()
    d = sts_delta(before, sts_counts(iam_gw))
    assert d["ok"] >= 1, f"the login was not verified with STS: {d}"
    assert d["denied"] == d["error"] == d["timeout"] == d["throttled"] == 0, d


def test_sts_host_and_nonce_come_from_the_gateway(iam_gw):
    """h is the configured host (never the client's), s extends our nonce with fresh bytes."""
    with AwsConn(iam_gw.port) as a, AwsConn(iam_gw.port) as b:
        nonce = secrets.token_bytes(32)
        fa = fresh_first(a)
        b.hello()
        fb = b.sasl_start(client_nonce=nonce)
        fa2 = a.sasl_start(client_nonce=nonce)
        assert fb.nonce[:32] == fa2.nonce[:32] == nonce
        assert len({fa.nonce[32:], fb.nonce[32:], fa2.nonce[32:]}) == 3, "server nonce reused"


def test_iam_user_long_term_key_gets_in_when_registered(iam_gateways, moto):
    """An IAM user's long-term key (no session token) is verified as arn:aws:iam::ACCOUNT:user/NAME;
    it gets in only where that ARN is registered."""
    user_arn = f"arn:aws:iam::{ACCOUNT}:user/deployer"
    gw = iam_gateways(arns=(ROLE_ARN, user_arn))
    with aws_environment(moto.user_key):
        client = iam_client(gw)
        try:
            client[DB].items.find_one()
        finally:
            client.close()
    only_role = iam_gateways()
    e = pymongo_login_fails(only_role, moto.user_key)
    assert e.code == AUTHENTICATION_FAILED, e.details


# ---------------------------------------------------------------------------
# Refusals


def test_role_without_gateway_user_is_refused(iam_gateways, moto):
    gw = iam_gateways()
    before = sts_counts(gw)
    e = pymongo_login_fails(gw, moto.other_role)
    assert e.code == AUTHENTICATION_FAILED, e.details
    d = sts_delta(before, sts_counts(gw))
    # STS vouched for the signature: the refusal is the gateway's user lookup.
    assert d["ok"] == 1 and d["denied"] == 0, d
    assert OTHER_ROLE_NAME not in str(e.details), "the message must not say which principal was tried"


def test_wrong_secret_is_refused(iam_gateways, moto):
    gw = iam_gateways()
    wrong = AwsCreds(moto.role.access_key, "wrong" + moto.role.secret_key[5:], moto.role.token)
    before = sts_counts(gw)
    e = pymongo_login_fails(gw, wrong)
    assert e.code == AUTHENTICATION_FAILED, e.details
    assert_names_no_secret(str(e.details), moto.role, wrong)
    d = sts_delta(before, sts_counts(gw))
    assert d["denied"] == 1 and d["ok"] == 0, d


def test_tampered_signature_is_refused(iam_gateways, moto):
    gw = iam_gateways()
    before = sts_counts(gw)
    with AwsConn(gw.port) as conn:
        first = fresh_first(conn)
        final = sign(moto.role, first.nonce, first.host)
        tampered = dict(final, a=tamper_signature(final["a"]))
        assert tampered["a"] != final["a"]
        assert_refused(conn.sasl_continue(first, tampered))
    assert sts_delta(before, sts_counts(gw))["denied"] == 1
    # Control: the same steps without the flipped digit get in.
    with AwsConn(gw.port) as conn:
        first = fresh_first(conn)
        reply = conn.sasl_continue(first, sign(moto.role, first.nonce, first.host))
        assert reply.get("ok") == 1 and reply.get("done") is True, reply
        assert conn.command({"find": "items", "filter": {}}, db=DB).get("ok") == 1


def test_replayed_client_final_is_refused(iam_gateways, moto):
    """Conversation 1 succeeds; its client-final (captured on the wire) is sent in conversation
    2, which even reuses conversation 1's client nonce. The gateway's fresh server nonce makes
    STS see a different request than the one that was signed."""
    gw = iam_gateways()
    client_nonce = secrets.token_bytes(32)
    with AwsConn(gw.port) as one:
        one.hello()
        first1 = one.sasl_start(client_nonce=client_nonce)
        captured = bson.encode(sign(moto.role, first1.nonce, first1.host))
        reply = one.sasl_continue(first1, captured)
        assert reply.get("ok") == 1, reply
    before = sts_counts(gw)
    with AwsConn(gw.port) as two:
        two.hello()
        first2 = two.sasl_start(client_nonce=client_nonce)
        assert first2.nonce[32:] != first1.nonce[32:], "server nonce repeated across conversations"
        assert_refused(two.sasl_continue(first2, captured))
        # The refused connection is not authenticated.
        r = two.command({"find": "items", "filter": {}}, db=DB)
        assert r.get("ok") == 0 and r.get("code") == 13, r
    d = sts_delta(before, sts_counts(gw))
    # The gateway remembers the signatures it sent: the replay is refused without an STS call.
    assert d["refused"] == 1 and sts_calls(d) == 0, d


@pytest.mark.parametrize("unsigned", [
    ("X-MongoDB-Server-Nonce",),
    ("X-MongoDB-GS2-CB-Flag",),
    ("X-MongoDB-Server-Nonce", "X-MongoDB-GS2-CB-Flag"),
], ids=["no-nonce", "no-cb-flag", "neither"])
def test_signed_headers_must_cover_nonce_and_flag(iam_gateways, moto, unsigned):
    """A signature that does not cover the server nonce would be valid in any conversation.
    moto accepts such a request (unsigned headers are ignored), so only the gateway's check
    stops it, and it must do so without calling STS."""
    gw = iam_gateways()
    with AwsConn(gw.port) as conn:
        first = fresh_first(conn)
        final = sign(moto.role, first.nonce, first.host, omit_signed=unsigned)
        signed = final["a"].split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
        for h in unsigned:
            assert h.lower() not in signed
        # Control: straight to moto, this request is accepted.
        status, body = post_to_sts(moto.port, final, first.nonce)
        assert status == 200 and f"assumed-role/{ROLE_NAME}/" in body, (status, body[:300])
        before = sts_counts(gw)
        assert_refused(conn.sasl_continue(first, final))
        after = sts_counts(gw)
    d = sts_delta(before, after)
    assert sts_calls(d) == 0 and d["refused"] == 1, f"the gateway called STS for an unbound signature: {d}"


def test_missing_session_token_is_refused(iam_gateways, moto):
    """Temporary credentials without AWS_SESSION_TOKEN (pymongo), and a client-final that was
    signed with the token but leaves `t` out (raw)."""
    gw = iam_gateways()
    before = sts_counts(gw)
    e = pymongo_login_fails(gw, moto.role, drop=("AWS_SESSION_TOKEN",))
    assert e.code == AUTHENTICATION_FAILED, e.details
    with AwsConn(gw.port) as conn:
        first = fresh_first(conn)
        final = sign(moto.role, first.nonce, first.host)
        assert "x-amz-security-token" in final["a"]
        del final["t"]
        assert_refused(conn.sasl_continue(first, final))
    d = sts_delta(before, sts_counts(gw))
    assert d["ok"] == 0, d
    # pymongo's login is refused by STS; the raw one signs a token it does not send, which the
    # gateway refuses itself (a signed header that is absent), with no STS call.
    assert d["denied"] + d["error"] == 1 and d["refused"] == 1, d


@pytest.mark.parametrize("sts", ["closed-port", "silent-listener"])
def test_unreachable_sts_is_refused_naming_no_secret(iam_gateways, moto, sts):
    """STS down (nothing listening) or hanging (accepts, never answers): AuthenticationFailed
    within sts_timeout, with a message that names no secret."""
    silent = None
    if sts == "closed-port":
        port = free_port()  # bound and released: nothing listens there
    else:
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
    try:
        gw = iam_gateways(sts_endpoint=f"http://127.0.0.1:{port}", timeout="2s")
        before = sts_counts(gw)
        t = time.monotonic()
        e = pymongo_login_fails(gw, moto.role)
        took = time.monotonic() - t
        assert e.code == AUTHENTICATION_FAILED, e.details
        assert_names_no_secret(str(e.details), moto.role)
        with AwsConn(gw.port) as conn:
            first = fresh_first(conn)
            final = sign(moto.role, first.nonce, first.host)
            reply = conn.sasl_continue(first, final)
            assert_refused(reply)
            sig = final["a"].rsplit("Signature=", 1)[1]
            assert_names_no_secret(str(reply), moto.role, extra=(sig,))
        d = sts_delta(before, sts_counts(gw))
        kind = "error" if sts == "closed-port" else "timeout"
        assert d[kind] == 2 and d["ok"] == 0, d
        assert took < 10, f"refusal took {took:.1f}s with sts_timeout 2s"
        print(f"\nSTS {sts}: pymongo login refused after {took:.2f}s; counted as {kind!r}")
    finally:
        if silent:
            silent.close()


def test_rebuilt_request_is_what_the_client_signed(iam_gateways, moto):
    """What reaches STS: POST / with the fixed body, Host = the configured host, the client's
    Authorization, date and token, and the gateway's own copy of this conversation's nonce."""
    with FakeSts() as sts:
        gw = iam_gateways(sts_endpoint=sts.endpoint)
        with AwsConn(gw.port) as conn:
            first = fresh_first(conn)
            final = sign(moto.role, first.nonce, first.host)
            reply = conn.sasl_continue(first, final)
            assert reply.get("ok") == 1 and reply.get("done") is True, reply
    assert len(sts.requests) == 1, sts.requests
    headers, body = sts.requests[0]
    assert body == STS_BODY.encode()
    assert headers["host"] == STS_HOST
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["content-length"] == "43"
    assert headers["authorization"] == final["a"]
    assert headers["x-amz-date"] == final["d"]
    assert headers["x-amz-security-token"] == final["t"]
    assert headers["x-mongodb-server-nonce"] == base64.b64encode(first.nonce).decode()
    assert headers["x-mongodb-gs2-cb-flag"] == "n"


def test_sts_throttling_is_refused_and_counted(iam_gateways, moto):
    with FakeSts(status=400, body=THROTTLING) as sts:
        gw = iam_gateways(sts_endpoint=sts.endpoint)
        before = sts_counts(gw)
        e = pymongo_login_fails(gw, moto.role)
        assert e.code == AUTHENTICATION_FAILED, e.details
        d = sts_delta(before, sts_counts(gw))
    assert d["throttled"] == 1 and d["ok"] == d["denied"] == 0, d


def test_sts_queue_has_a_deadline(iam_gateways, moto):
    """sts_max_concurrency 1, sts_timeout 2s, an STS that takes 1.2 s: of three logins at
    once, the first gets in and the two queued behind it fail at their deadline (the wait for
    a slot counts), instead of piling up."""
    with FakeSts(delay=1.2) as sts:
        gw = iam_gateways(sts_endpoint=sts.endpoint, max_concurrency=1, timeout="2s")
        before = sts_counts(gw)
        replies, took = [None] * 3, [0.0] * 3

        def login(i):
            with AwsConn(gw.port) as conn:
                t = time.perf_counter()
                replies[i] = conn.aws_login(moto.role, timeout=20)
                took[i] = time.perf_counter() - t

        threads = [threading.Thread(target=login, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        d = sts_delta(before, sts_counts(gw))
    oks = [r for r in replies if r and r.get("ok") == 1]
    refused = [r for r in replies if r and r.get("code") == AUTHENTICATION_FAILED]
    print(f"\nqueue deadline: {len(oks)} in, {len(refused)} refused after {sorted(round(x, 2) for x in took)} s; "
          f"STS received {len(sts.requests)} requests and worked on up to {sts.max_active} at once "
          f"(bound 1: a call abandoned at its deadline frees its slot while STS may still be on it)")
    assert len(oks) == 1 and len(refused) == 2, replies
    assert d["ok"] == 1 and d["timeout"] == 2, d
    assert max(took) < 4, f"a queued login waited past its deadline: {took}"


@pytest.mark.parametrize("minutes", [-30, 30])
def test_date_30_minutes_off_is_refused(iam_gateways, moto, minutes):
    """moto does not check clock skew; the gateway refuses a date more than 15 minutes off
    before calling STS."""
    gw = iam_gateways()
    with AwsConn(gw.port) as conn:
        first = fresh_first(conn)
        final = sign(moto.role, first.nonce, first.host, skew=dt.timedelta(minutes=minutes))
        signed_at = dt.datetime.strptime(final["d"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        off = (signed_at - dt.datetime.now(dt.timezone.utc)).total_seconds() / 60
        assert abs(off - minutes) < 2, off
        status, _ = post_to_sts(moto.port, final, first.nonce)
        assert status == 200, "control: moto accepts the skewed request itself"
        before = sts_counts(gw)
        assert_refused(conn.sasl_continue(first, final))
        d = sts_delta(before, sts_counts(gw))
    assert sts_calls(d) == 0 and d["refused"] == 1, f"the gateway called STS for a skewed date: {d}"


# ---------------------------------------------------------------------------
# Scale: a cold-start burst against a bounded STS


BURST = 200
STS_BOUND = 8


@pytest.mark.timeout(180)
@pytest.mark.parametrize("via", ["counting-proxy", "direct"])
def test_burst_of_cold_logins_respects_sts_bound(iam_gateways, moto, via):
    """200 function environments cold-start at once (one raw connection each: connect, hello,
    MONGODB-AWS, first query), against sts_max_concurrency = 8. All get in, with one STS call
    each; the gateway's in-flight gauge (sampled every 20 ms) and the connections STS sees
    never exceed 8. `counting-proxy` puts a relay between the gateway and moto that counts
    open connections exactly; `direct` measures the rate without it (figure for the notes).
    Both also sample established sockets to the STS port from /proc/net/tcp (printed only).
    Without the proxy, STS is only ever reached by the gateway process, and the gauge is the
    assertion."""
    proxy = CountingProxy(moto.port) if via == "counting-proxy" else None
    with contextlib.ExitStack() as stack:
        if proxy:
            stack.enter_context(proxy)
        sts_port = proxy.port if proxy else moto.port
        gw = iam_gateways(sts_endpoint=f"http://127.0.0.1:{sts_port}", max_concurrency=STS_BOUND,
                          timeout="60s")
        burst(gw, moto, sts_port, proxy, via)


def burst(gw, moto, sts_port, proxy, via):
    with AwsConn(gw.port) as warm:  # the upstream pool is warm, as for a running gateway
        assert warm.aws_login(moto.role).get("ok") == 1
        warm.command({"delete": "burst", "deletes": [{"q": {}, "limit": 0}]}, db=DB)
        warm.command({"insert": "burst", "documents": [{"_id": 1}]}, db=DB)
    before = sts_counts(gw)
    results: list = [None] * BURST
    conns: list = []
    lock = threading.Lock()
    barrier = threading.Barrier(BURST + 1)

    def environment(i: int):
        try:
            barrier.wait(60)
            t0 = time.perf_counter()
            c = AwsConn(gw.port, timeout=100)
            with lock:
                conns.append(c)
            c.hello()
            login = c.aws_login(moto.role, timeout=100)
            t_login = time.perf_counter() - t0
            q = c.command({"find": "burst", "filter": {}}, db=DB, timeout=30) if login.get("ok") == 1 else {}
            results[i] = (login, q, t_login, time.perf_counter() - t0)
        except Exception as e:  # recorded, reported below
            results[i] = ({"ok": 0, "exception": repr(e)}, {}, 0.0, 0.0)

    threads = [threading.Thread(target=environment, args=(i,), daemon=True) for i in range(BURST)]
    for t in threads:
        t.start()
    # Established sockets to the STS port, sampled from /proc/net/tcp, are printed but not
    # asserted: one read of that file is not a snapshot (the kernel fills it bucket by bucket
    # while connections come and go, and under this load one read takes tens of milliseconds),
    # so with ~100 short STS connections a second it can list a closed connection and its
    # successor together. The counting proxy is the exact measure.
    with InFlightSampler(gw, 0.02) as gauge, procnet.MaxSampler(sts_port, None, 0.02) as sockets:
        barrier.wait(60)
        start = time.perf_counter()
        for t in threads:
            t.join(max(0.0, 150 - (time.perf_counter() - start)))
        wall = time.perf_counter() - start
    try:
        assert not any(t.is_alive() for t in threads), "burst clients still running after 150 s"
        failed = [(i, r[0]) for i, r in enumerate(results) if r is None or r[0].get("ok") != 1]
        assert not failed, f"{len(failed)} of {BURST} logins failed, e.g. {failed[:3]}"
        bad_q = [r[1] for r in results if r[1].get("ok") != 1 or r[1]["cursor"]["firstBatch"] != [{"_id": 1}]]
        assert not bad_q, f"first queries failed: {bad_q[:3]}"
    finally:
        for c in conns:
            c.close()
    d = sts_delta(before, sts_counts(gw))
    logins = sorted(r[2] for r in results)
    rate = BURST / wall
    mean_sts = d["sum"] / d["count"]
    print(f"\n--- burst ({via}): {BURST} cold IAM logins at once, sts_max_concurrency {STS_BOUND}, moto as STS ---")
    print(f"wall {wall:.2f}s -> {rate:.0f} logins/s = STS GetCallerIdentity calls/s sustained")
    print(f"login time (connect..saslContinue done): p50 {logins[BURST // 2] * 1000:.0f} ms, "
          f"p95 {logins[int(BURST * 0.95)] * 1000:.0f} ms, max {logins[-1] * 1000:.0f} ms")
    print(f"mongomux_sts_request_seconds mean {mean_sts * 1000:.1f} ms over {d['count']:.0f} calls "
          f"(it starts timing before the wait for a slot, so it includes queueing); "
          f"service time implied by the bound: {STS_BOUND / rate * 1000:.1f} ms per call")
    print(f"max mongomux_sts_in_flight {gauge.max:.0f} over {gauge.samples} samples; "
          f"max established sockets to STS {sockets.max} over {sockets.samples} samples"
          + (f"; counting proxy: max {proxy.max} open at once, {proxy.total} connections" if proxy else ""))
    assert d["ok"] == BURST, f"one STS call per login expected: {d}"
    assert gauge.samples > 10, f"too few in-flight samples: {gauge.samples} ({gauge.errors} errors)"
    assert 1 <= gauge.max <= STS_BOUND, f"mongomux_sts_in_flight reached {gauge.max} (bound {STS_BOUND})"
    if proxy:
        assert proxy.total >= BURST, f"only {proxy.total} connections went through the proxy"
        assert proxy.max <= STS_BOUND, f"{proxy.max} STS requests were open at once (bound {STS_BOUND})"


# One function environment as a process: a fresh interpreter with the official driver, the
# role's credentials in its environment (as Lambda gives them), one client, one query.
FUNCTION_PROCESS = """
import sys, pymongo
client = pymongo.MongoClient(sys.argv[1], maxPoolSize=1, serverSelectionTimeoutMS=150000,
                             socketTimeoutMS=150000)
doc = client[sys.argv[2]].burst.find_one({"_id": 1})
assert doc == {"_id": 1}, doc
print("ok")
"""


@pytest.mark.timeout(280)
def test_burst_of_200_function_processes(iam_gateways, moto):
    """200 function environments, each its own process with pymongo and pymongo-auth-aws,
    cold-start at once against sts_max_concurrency = 8: every one gets in and reads, with one
    STS call per environment, and the gateway never runs more than 8 STS calls at once."""
    import os
    import subprocess
    import sys

    gw = iam_gateways(max_concurrency=STS_BOUND, timeout="150s")
    with AwsConn(gw.port) as warm:
        assert warm.aws_login(moto.role).get("ok") == 1
        warm.command({"delete": "burst", "deletes": [{"q": {}, "limit": 0}]}, db=DB)
        warm.command({"insert": "burst", "documents": [{"_id": 1}]}, db=DB)
    before = sts_counts(gw)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(moto.role.env())
    env["AWS_REGION"] = "us-east-1"
    env["AWS_LAMBDA_RUNTIME_API"] = "127.0.0.1:9"  # drivers switch to their Lambda behaviour
    start = time.perf_counter()
    with InFlightSampler(gw, 0.02) as gauge:
        procs = [subprocess.Popen([sys.executable, "-c", FUNCTION_PROCESS, iam_uri(gw), DB],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(BURST)]
        outcomes = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, 240 - (time.perf_counter() - start)))
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            outcomes.append((p.returncode, out.strip(), err.strip()[-300:]))
        wall = time.perf_counter() - start
    failed = [o for o in outcomes if o[0] != 0 or o[1] != "ok"]
    d = sts_delta(before, sts_counts(gw))
    print(f"\n--- {BURST} function processes cold-starting at once with IAM: {wall:.1f}s wall, "
          f"max mongomux_sts_in_flight {gauge.max:.0f} (bound {STS_BOUND}), STS results {d}")
    assert not failed, f"{len(failed)} of {BURST} environments failed, e.g. {failed[:2]}"
    assert d["ok"] == BURST, f"one STS call per environment expected: {d}"
    assert 1 <= gauge.max <= STS_BOUND, f"mongomux_sts_in_flight reached {gauge.max}"


# ---------------------------------------------------------------------------
# Figures: one cold IAM login, step by step


COLD = 25
WARM = 200


@pytest.mark.timeout(120)
def test_figure_cold_login_split(iam_gw, moto):
    """A new function environment's first operation through the gateway, step by step over a
    raw socket, against a warm query on an authenticated connection."""
    with AwsConn(iam_gw.port) as setup:  # warm the upstream pool and give the query a document
        assert setup.aws_login(moto.role).get("ok") == 1
        setup.command({"delete": "cold", "deletes": [{"q": {}, "limit": 0}]}, db=DB)
        setup.command({"insert": "cold", "documents": [{"_id": 1, "v": "x"}]}, db=DB)
    steps = {k: [] for k in ("tcp", "hello", "saslStart", "sign", "saslContinue", "first query", "total")}
    before = sts_counts(iam_gw)
    for _ in range(COLD):
        t0 = time.perf_counter()
        conn = AwsConn(iam_gw.port)
        t1 = time.perf_counter()
        conn.hello()
        t2 = time.perf_counter()
        first = conn.sasl_start()
        t3 = time.perf_counter()
        final = sign(moto.role, first.nonce, first.host)
        t4 = time.perf_counter()
        reply = conn.sasl_continue(first, final)
        t5 = time.perf_counter()
        assert reply.get("ok") == 1, reply
        q = conn.command({"find": "cold", "filter": {"_id": 1}}, db=DB)
        t6 = time.perf_counter()
        assert q["cursor"]["firstBatch"] == [{"_id": 1, "v": "x"}], q
        for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t6 - t0)):
            steps[k].append(v)
        conn.close()
    d = sts_delta(before, sts_counts(iam_gw))
    assert d["ok"] == COLD, d
    sts_mean = d["sum"] / d["count"]
    with AwsConn(iam_gw.port) as conn:
        assert conn.aws_login(moto.role).get("ok") == 1
        conn.command({"find": "cold", "filter": {"_id": 1}}, db=DB)
        warm = []
        for _ in range(WARM):
            t = time.perf_counter()
            q = conn.command({"find": "cold", "filter": {"_id": 1}}, db=DB)
            warm.append(time.perf_counter() - t)
            assert q.get("ok") == 1
    ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    total = ms(steps["total"])
    print(f"\n--- one cold MONGODB-AWS login (raw client, median of {COLD}; moto as STS, debug gateway) ---")
    for k, xs in steps.items():
        if k != "total":
            print(f"{k:>13}: {ms(xs):7.2f} ms  ({ms(xs) / total * 100:4.1f}%)")
    print(f"{'total':>13}: {total:7.2f} ms")
    print(f"STS GetCallerIdentity (gateway histogram, no queueing here): mean {sts_mean * 1000:.2f} ms "
          f"of saslContinue's mean {statistics.mean(steps['saslContinue']) * 1000:.2f} ms")
    print(f"warm query on an authenticated connection: median {ms(warm):.2f} ms (of {WARM}); "
          f"cold first operation is {total / ms(warm):.0f}x a warm one")
