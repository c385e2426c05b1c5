"""MONGODB-AWS request smuggling and the weaknesses around edge authentication (issue 12,
item 2 and its partial weaknesses), against moto STS with signature checking on.

Every client value that reaches the STS request (`a`, `d`, `t`) is checked by the gateway
before any call: a CR/LF that would add or override a header, a header outside the
MONGODB-AWS request, a request signed for another STS host, a stale X-Amz-Date, and a replay of
a request the gateway already sent are all refused with no STS call (`mongomux_sts_requests_total`
counts them as `refused`). A request signed for another conversation's nonce that was never
sent can only be told apart by STS (the gateway cannot check a signature): it is refused by
moto. Each case has a control in which the proper login gets in.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import subprocess
import time

import bson
import pytest

import mongowire as w
from iam_fixtures import (STS_HOST, AwsConn, sign, start_iam_gateway, start_moto, sts_calls, sts_counts,
                          sts_delta, write_iam_config)
from conftest import start_gateway
from mongowire import AUTHENTICATION_FAILED
from security_fixtures import gateway_bin, make_user

DB = "iam_db"


@pytest.fixture(scope="module")
def moto(logdir):
    m = start_moto(logdir)
    yield m
    m.proc.stop()


@pytest.fixture
def gw(ferretdb, logdir, moto):
    g = start_iam_gateway(ferretdb, logdir, moto.endpoint)
    yield g
    g.proc.stop()


def assert_refused(reply: dict) -> None:
    assert reply.get("ok") == 0 and reply.get("code") == AUTHENTICATION_FAILED, reply


def first_of(conn: AwsConn):
    conn.hello()
    first = conn.sasl_start()
    assert not isinstance(first, dict), first
    return first


def b64(nonce: bytes) -> str:
    return base64.b64encode(nonce).decode()


def assert_proper_login_works(gw, moto) -> None:
    with AwsConn(gw.port) as conn:
        first = first_of(conn)
        reply = conn.sasl_continue(first, sign(moto.role, first.nonce, first.host))
        assert reply.get("ok") == 1 and reply.get("done") is True, reply
        assert conn.command({"find": "items", "filter": {}}, db=DB).get("ok") == 1


def _smuggled(case: str, moto, first, other_nonce: bytes) -> dict:
    final = sign(moto.role, first.nonce, first.host)
    inject = f"\r\nX-MongoDB-Server-Nonce: {b64(other_nonce)}"
    if case == "crlf-in-authorization":
        return dict(final, a=final["a"] + inject)
    if case == "lf-in-authorization":
        return dict(final, a=final["a"] + inject.replace("\r", ""))
    if case == "nul-in-authorization":
        return dict(final, a=final["a"].replace(", Signature", "\0, Signature"))
    if case == "crlf-in-token":
        return dict(final, t=final["t"] + inject)
    if case == "crlf-in-date":
        return dict(final, d=final["d"] + inject)
    if case == "extra-signed-header":
        return dict(final, a=final["a"].replace("host;", "host;x-forwarded-for;"))
    if case == "wrong-host":
        return sign(moto.role, first.nonce, "sts.eu-west-1.amazonaws.com", region="eu-west-1")
    if case == "stale-date":
        return sign(moto.role, first.nonce, first.host, skew=dt.timedelta(minutes=-20))
    raise AssertionError(case)


SMUGGLED = ["crlf-in-authorization", "lf-in-authorization", "nul-in-authorization", "crlf-in-token",
            "crlf-in-date", "extra-signed-header", "wrong-host", "stale-date"]


@pytest.mark.parametrize("case", SMUGGLED)
def test_smuggled_values_are_refused_before_sts(gw, moto, case):
    with AwsConn(gw.port) as other:
        other_first = first_of(other)
        with AwsConn(gw.port) as conn:
            first = first_of(conn)
            final = _smuggled(case, moto, first, other_first.nonce)
            before = sts_counts(gw)
            assert_refused(conn.sasl_continue(first, final))
            d = sts_delta(before, sts_counts(gw))
            r = conn.command({"find": "items", "filter": {}}, db=DB)
            assert r.get("ok") == 0 and r.get("code") == 13, r
    assert sts_calls(d) == 0 and d["refused"] == 1, f"{case}: {d}"
    assert_proper_login_works(gw, moto)


def test_a_victims_request_replayed_is_refused_without_a_call(gw, moto):
    """The victim logs in; the attacker replays the captured client-final, alone and with the
    victim's nonce injected after it. Neither reaches STS."""
    with AwsConn(gw.port) as victim:
        first = first_of(victim)
        captured = sign(moto.role, first.nonce, first.host)
        assert victim.sasl_continue(first, captured).get("ok") == 1
        victim_nonce = first.nonce
    before = sts_counts(gw)
    for final in (captured, dict(captured, a=captured["a"] + f"\r\nX-MongoDB-Server-Nonce: {b64(victim_nonce)}")):
        with AwsConn(gw.port) as attacker:
            a_first = first_of(attacker)
            assert_refused(attacker.sasl_continue(a_first, final))
            r = attacker.command({"find": "items", "filter": {}}, db=DB)
            assert r.get("ok") == 0 and r.get("code") == 13, r
    d = sts_delta(before, sts_counts(gw))
    assert sts_calls(d) == 0 and d["refused"] == 2, d
    assert_proper_login_works(gw, moto)


def test_another_conversations_nonce_is_refused(gw, moto):
    """A request signed for conversation A's nonce, sent in conversation B: the gateway sends
    B's nonce, so STS (moto, checking signatures) refuses it."""
    with AwsConn(gw.port) as a, AwsConn(gw.port) as b:
        first_a = first_of(a)
        first_b = first_of(b)
        before = sts_counts(gw)
        assert_refused(b.sasl_continue(first_b, sign(moto.role, first_a.nonce, first_a.host)))
        d = sts_delta(before, sts_counts(gw))
    assert d["ok"] == 0 and d["denied"] == 1, d
    assert_proper_login_works(gw, moto)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_after_abandoned_aws_conversation(ferretdb, logdir, moto, mechanism):
    """A MONGODB-AWS conversation left unfinished does not capture the next conversation: a
    SCRAM login of a real user on the same connection completes (server signature verified)
    and the connection then works as that user. (An unknown user's refusal would not tell:
    a conversation captured by the abandoned one is refused too.)"""
    scram_user = make_user(f"scram-after-aws-{mechanism[-3:].lower()}")
    name = f"mongomux-iam-scram-{secrets.token_hex(3)}"
    cfg = write_iam_config(logdir / f"{name}.toml", moto.endpoint)
    cfg.write_text(cfg.read_text() + scram_user.toml)
    g = start_gateway(ferretdb, logdir, name=name, metrics=True, extra_args=("--config", str(cfg)))
    try:
        with AwsConn(g.port) as conn:
            first_of(conn)  # abandoned
            r = conn.command({"find": "items", "filter": {}}, db=DB)
            assert r.get("code") == 13, f"an abandoned conversation authenticated the connection: {r}"
            reply = conn.auth(scram_user.name, scram_user.password, mechanism=mechanism)
            assert reply.get("ok") == 1 and reply.get("done") is True, reply
            r = conn.command({"find": "items", "filter": {}}, db=DB)
            assert r.get("ok") == 1, r
            status = conn.command({"connectionStatus": 1})
            users = status["authInfo"]["authenticatedUsers"]
            assert users == [{"user": scram_user.name, "db": "admin"}], status
    finally:
        g.proc.stop()


def test_aws_after_abandoned_aws_and_failed_scram_conversations(gw, moto):
    """After an abandoned MONGODB-AWS conversation and a refused SCRAM one (unknown user), a new
    MONGODB-AWS login on the same connection gets in."""
    with AwsConn(gw.port) as conn:
        first_of(conn)  # abandoned
        scram = w.ScramClient("SCRAM-SHA-256", "nobody", "pw")
        r = conn.command({"saslStart": 1, "mechanism": "SCRAM-SHA-256",
                          "payload": bson.Binary(scram.first())}, db="admin")
        assert r.get("ok") == 1, r
        cont = conn.command({"saslContinue": 1, "conversationId": r["conversationId"],
                             "payload": bson.Binary(scram.final(bytes(r["payload"])))}, db="admin")
        assert_refused(cont)
        first = conn.sasl_start()
        reply = conn.sasl_continue(first, sign(moto.role, first.nonce, first.host))
        assert reply.get("ok") == 1, reply
        assert conn.command({"find": "items", "filter": {}}, db=DB).get("ok") == 1


def test_unauthenticated_clients_meet_the_handshake_deadline(ferretdb, logdir, moto):
    """A client that starts anything but monitoring must log in within the handshake deadline
    (2 s here). A driver's monitoring connection never logs in (SDAM): one that sends only
    hello and ping may stay while it keeps sending (a heartbeat at least every three deadlines,
    6 s here), and can do nothing else: its first other command is refused, and it is then held
    to the login deadline like any other client."""
    g = start_iam_gateway(ferretdb, logdir, moto.endpoint, extra_args=("--handshake-timeout", "2s"))
    try:
        with AwsConn(g.port) as silent, AwsConn(g.port) as monitor, AwsConn(g.port) as nosy, \
                AwsConn(g.port) as authed:
            t0 = time.monotonic()
            silent.hello()
            monitor.hello()
            nosy.hello()
            first = first_of(authed)
            assert authed.sasl_continue(first, sign(moto.role, first.nonce, first.host)).get("ok") == 1
            assert nosy.command({"find": "items", "filter": {}}, db=DB).get("code") == 13
            assert w.wait_closed(nosy.sock, 5), "a client past its login deadline was not closed"
            assert time.monotonic() - t0 <= 4
            for _ in range(8):  # heartbeats for 8 s: four login deadlines
                time.sleep(1)
                assert monitor.hello().get("ok") == 1
            assert w.wait_closed(silent.sock, 2), "a silent unauthenticated connection outlived 3 deadlines"
            assert monitor.command({"ping": 1}).get("ok") == 1, "a monitoring connection was cut"
            assert authed.command({"find": "items", "filter": {}}, db=DB).get("ok") == 1
    finally:
        g.proc.stop()


def test_anonymous_mode_beyond_loopback_needs_the_flag(ferretdb, logdir):
    r = subprocess.run([gateway_bin(), "serve", "--listen", "0.0.0.0:0", "--upstream", "mongodb://127.0.0.1:1"],
                       capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "allow_anonymous_non_loopback" in r.stderr + r.stdout, (r.returncode, r.stderr)
    g = start_gateway(ferretdb, logdir, name="mongomux-anon-any", listen="0.0.0.0:0",
                      extra_args=("--allow-anonymous-non-loopback",))
    try:
        with w.RawConn(g.port) as conn:
            assert conn.command({"ping": 1}, db="admin").get("ok") == 1
        time.sleep(0.5)
        assert "ANONYMOUS MODE ON A NON-LOOPBACK LISTENER" in g.proc.log.read_text(errors="replace")
    finally:
        g.proc.stop()


@pytest.mark.parametrize("cidrs", [("0.0.0.0/1", "128.0.0.0/1"), ("::/1", "8000::/1")])
def test_access_list_union_that_admits_everyone_needs_the_flag(ferretdb, logdir, cidrs):
    args = [a for c in cidrs for a in ("--access", c)]
    r = subprocess.run([gateway_bin(), "serve", "--upstream", "mongodb://127.0.0.1:1", *args],
                       capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "together admit every address" in r.stderr + r.stdout, (r.returncode, r.stderr)
    # A list that stays short of everyone starts (loopback clients are inside 0.0.0.0/1).
    g = start_gateway(ferretdb, logdir, name=f"mongomux-acl-{cidrs[0][0]}", extra_args=("--access", "0.0.0.0/1"))
    try:
        with w.RawConn(g.port) as conn:
            assert conn.command({"ping": 1}, db="admin").get("ok") == 1
    finally:
        g.proc.stop()
