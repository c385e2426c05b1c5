"""The Lambda kit in a real Lambda execution environment (issue 4): an example function under
the AWS Lambda Runtime Interface Emulator, through the gateway, to FerretDB.

What must hold, whatever the number of invocations:

- the environment creates exactly one MongoDB client (the function logs
  "mongomux-lambda: created client" once, and every answer says clients_created = 1);
- the gateway's `mongomux_client_connections` gauge does not move after the first
  invocation, nor does `mongomux_client_connections_total` (no reconnects), and the kernel
  agrees: the function process holds the same number of sockets to the gateway throughout;
- every invocation's answer is right (inserted ids unique, counts exact).

Two functions, one per authentication style:

- `examples/lambda-password`: a SCRAM user of the gateway, the password in MONGODB_URI. The
  environment also carries (fake) role credentials in AWS_ACCESS_KEY_ID/... as Lambda's does;
  the function must ignore them.
- `examples/lambda-iam`: no password anywhere. moto (moto_stack.py) plays IAM and STS with
  signature checking on; the function gets temporary credentials of a role from AssumeRole,
  the gateway verifies its MONGODB-AWS login against moto and admits the role's ARN.

Figures (run with -s): cold first invocation against warm ones.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import secrets
import statistics
import time
import urllib.parse

import pytest

import procnet
from conftest import start_gateway, tail
from lambda_fixtures import Emulator, example_bin, reported_durations, start_emulator
from moto_stack import start_moto_stack
from security_fixtures import make_user, metric, write_config

INVOCATIONS = 100

# Stand-ins for the role credentials Lambda puts in every function's environment.
FAKE_ROLE_ENV = {
    "AWS_ACCESS_KEY_ID": "ASIAMONGOMUXTESTKEY1",
    "AWS_SECRET_ACCESS_KEY": "not-a-real-secret-" + secrets.token_hex(8),
    "AWS_SESSION_TOKEN": "not-a-real-token-" + secrets.token_hex(8),
}


@pytest.fixture(scope="module")
def lambda_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lambda")


@pytest.fixture(scope="module")
def fn_user():
    # readWrite on the test databases only: the function needs nothing else.
    return make_user("lambda-fn", role="readWrite", databases=("lambda_seq", "lambda_conc"))


@pytest.fixture(scope="module")
def lambda_gateway(ferretdb, lambda_dir, fn_user):
    cfg = write_config(lambda_dir / "gateway.toml", users=[fn_user])
    gw = start_gateway(ferretdb, lambda_dir, name="mongomux-lambda-gw", metrics=True,
                       extra_args=("--config", str(cfg)))
    yield gw
    gw.proc.stop()


def password_uri(gw, user, db: str) -> str:
    pw = urllib.parse.quote(user.password, safe="")
    return f"mongodb://{user.name}:{pw}@127.0.0.1:{gw.port}/{db}?authSource=admin"


def fresh_db(ferretdb, name: str) -> None:
    with ferretdb.client() as c:
        c.drop_database(name)


def gauges(gw) -> tuple[float, float]:
    return (metric(gw, "mongomux_client_connections"), metric(gw, "mongomux_client_connections_total"))


def check_answer(answer: dict, op: str) -> None:
    assert answer.get("ok") is True and answer.get("op") == op, answer
    assert answer.get("clients_created") == 1, f"a second client was created: {answer}"


def emf_lines(em: Emulator) -> list[dict]:
    """The CloudWatch Embedded Metric Format lines the kit printed, one per invocation."""
    return [json.loads(line) for line in em.log_text().splitlines() if line.startswith('{"_aws"')]


def check_reuse_metrics(em: Emulator, function: str, iam: bool) -> list[dict]:
    """The kit's per-invocation metrics say what the log and the gateway say: the first
    invocation created the client and opened the one pooled connection, every later one reused
    it and opened nothing."""
    emf = emf_lines(em)
    assert len(emf) == INVOCATIONS, f"{len(emf)} metric lines for {INVOCATIONS} invocations"
    first, rest = emf[0], emf[1:]
    declared = {m["Name"] for m in first["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert declared == {"ColdStart", "ClientReused", "ConnectionsOpened", "ConnectTime", "IamAuthentications"}
    assert first["FunctionName"] == function and first["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "mongomux/lambda"
    assert (first["ColdStart"], first["ClientReused"], first["ConnectionsOpened"]) == (1, 0, 1), first
    assert first["IamAuthentications"] == (1 if iam else 0), first
    assert first["ConnectTime"] > 0, first
    assert all((e["ColdStart"], e["ClientReused"], e["ConnectionsOpened"], e["IamAuthentications"]) == (0, 1, 0, 0)
               for e in rest), [e for e in rest if e["ConnectionsOpened"]][:2]
    return emf


def run_invocations(em: Emulator, gw, n: int = INVOCATIONS) -> dict:
    """n invocations one after another (inserts and counts alternating), checking every answer
    and the gateway's connection counters after each. Returns timings in seconds."""
    inserted: set[str] = set()
    timings = []
    baseline = None
    fn_pid = None
    for i in range(n):
        t = time.perf_counter()
        if i % 2 == 0:
            answer = em.invoke({"op": "insert", "doc": {"i": i, "tag": "seq"}})
            check_answer(answer, "insert")
            oid = answer["inserted_id"]["$oid"]
            assert oid not in inserted, f"duplicate id {oid}"
            inserted.add(oid)
        else:
            answer = em.invoke({"op": "count"})
            check_answer(answer, "count")
            assert answer["count"] == len(inserted), (i, answer, len(inserted))
        timings.append(time.perf_counter() - t)

        now = gauges(gw)
        pids = em.function_pids()
        assert len(pids) == 1, f"the emulator runs {len(pids)} function processes: {pids}"
        held = procnet.upstream_connections(gw.port, pids[0])
        if baseline is None:
            baseline, fn_pid, fn_socks = now, pids[0], held
            assert fn_socks >= 1, "the function holds no connection to the gateway"
        else:
            assert pids[0] == fn_pid, "the function process was restarted"
            assert now == baseline, f"invocation {i}: gateway connections (open, total) {now} != {baseline}"
            assert held == fn_socks, f"invocation {i}: function holds {held} sockets to the gateway, was {fn_socks}"
    assert len(inserted) == (n + 1) // 2
    return {"first": timings[0], "warm": timings[1:], "connections": baseline, "sockets": fn_socks}


def test_password_example_one_client_for_100_invocations(ferretdb, lambda_gateway, lambda_dir, fn_user):
    fresh_db(ferretdb, "lambda_seq")
    em = start_emulator(example_bin("lambda-password"), lambda_dir, function_name="orders-fn-seq", env={
        "MONGODB_URI": password_uri(lambda_gateway, fn_user, "lambda_seq"),
        **FAKE_ROLE_ENV,
    })
    try:
        before = gauges(lambda_gateway)
        result = run_invocations(em, lambda_gateway)
        # The 100 answers above came from 100 invocations; the log shows one client.
        created = em.created_client_lines()
        assert len(created) == 1, f"'created client' logged {len(created)} times:\n" + "\n".join(created)
        line = created[0]
        assert "auth=password" in line and "app_name=orders-fn-seq" in line and "max_pool_size=2" in line, line
        ready = em.connections_ready_ms()
        assert len(ready) == 1, f"the function opened {len(ready)} pooled connections in {INVOCATIONS} invocations"
        assert fn_user.password not in em.log_text(), "the password reached the function's log"
        assert FAKE_ROLE_ENV["AWS_SECRET_ACCESS_KEY"] not in em.log_text()
        emf = check_reuse_metrics(em, "orders-fn-seq", iam=False)

        opened = result["connections"][1] - before[1]
        assert 1 <= opened <= 3, f"the function opened {opened} gateway connections (monitor + pool expected)"
        warm = result["warm"]
        reports = reported_durations(em)
        print(f"\n[lambda] password example, {INVOCATIONS} sequential invocations: first (cold: process start, "
              f"connect, SCRAM, query) {result['first'] * 1000:.1f} ms; warm median "
              f"{statistics.median(warm) * 1000:.2f} ms, p95 {sorted(warm)[int(len(warm) * .95)] * 1000:.2f} ms "
              f"(HTTP round trip through the emulator); emulator REPORT init {reports[0][0]} ms, "
              f"first duration {reports[0][1]} ms (of which opening the pooled connection: {ready[0]} ms), "
              f"warm median duration "
              f"{statistics.median(d for _, d in reports[1:]):.2f} ms; gateway connections opened by the function: {opened}, "
              f"sockets it holds: {result['sockets']}; EMF: first {json.dumps({k: emf[0][k] for k in ('ColdStart', 'ConnectionsOpened', 'ConnectTime')})}, "
              f"{sum(e['ClientReused'] for e in emf)} of {len(emf)} reused")
    finally:
        em.stop()


def test_password_example_concurrent_invocations_share_one_client(ferretdb, lambda_gateway, lambda_dir, fn_user):
    """Lambda Managed Instances mode (AWS_LAMBDA_MAX_CONCURRENCY=4): one environment, four
    invocations at a time, the first four racing to create the client."""
    fresh_db(ferretdb, "lambda_conc")
    em = start_emulator(example_bin("lambda-password"), lambda_dir, function_name="orders-fn-conc",
                        max_concurrency=4, env={
                            "MONGODB_URI": password_uri(lambda_gateway, fn_user, "lambda_conc"),
                            **FAKE_ROLE_ENV,
                        })
    try:
        def insert(i):
            return em.invoke({"op": "insert", "doc": {"i": i, "tag": "conc"}}, busy_retry_for=10.0)

        # As many callers as the environment takes at once: the first four race to create
        # the client.
        with cf.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(insert, range(INVOCATIONS)))
        for a in answers:
            check_answer(a, "insert")
        assert len({a["inserted_id"]["$oid"] for a in answers}) == INVOCATIONS
        count = em.invoke({"op": "count", "filter": {"tag": "conc"}})
        check_answer(count, "count")
        assert count["count"] == INVOCATIONS, count
        created = em.created_client_lines()
        assert len(created) == 1, f"'created client' logged {len(created)} times:\n" + "\n".join(created)
        # The pool follows the concurrency (clamped to 2..=8), and never more connections than that.
        assert "max_pool_size=4" in created[0], created[0]
        pids = em.function_pids()
        assert len(pids) == 1, pids
        held = procnet.upstream_connections(lambda_gateway.port, pids[0])
        assert 1 <= held <= 4 + 1, f"function holds {held} sockets to the gateway (pool 4 + monitor)"
        assert 1 <= len(em.connections_ready_ms()) <= 4, em.connections_ready_ms()
        print(f"\n[lambda] managed-instances mode, {INVOCATIONS} invocations 4 at a time: one client, "
              f"{held} sockets to the gateway, {em.busy_retries} emulator busy answers retried")
    finally:
        em.stop()


def test_function_errors_are_reported_not_fatal(ferretdb, lambda_gateway, lambda_dir, fn_user):
    """A bad event is the invocation's error; the environment and its client carry on."""
    em = start_emulator(example_bin("lambda-password"), lambda_dir, function_name="orders-fn-err", env={
        "MONGODB_URI": password_uri(lambda_gateway, fn_user, "lambda_seq"),
        **FAKE_ROLE_ENV,
    })
    try:
        check_answer(em.invoke({"op": "ping"}), "ping")
        with pytest.raises(AssertionError, match="function error"):
            em.invoke({"op": "drop_everything"})
        check_answer(em.invoke({"op": "ping"}), "ping")
        assert len(em.created_client_lines()) == 1, tail(em.proc.log)
    finally:
        em.stop()


# ---------------------------------------------------------------------------
# IAM: the whole scenario, no password anywhere


@pytest.fixture(scope="module")
def moto(lambda_dir):
    stack = start_moto_stack(lambda_dir / "moto")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def iam_gateway(ferretdb, lambda_dir, moto):
    """A gateway whose only user is the role's ARN, verifying logins against moto's STS."""
    cfg = lambda_dir / "gateway-iam.toml"
    cfg.write_text(f'sts_endpoint = "{moto.endpoint}"\nsts_max_concurrency = 8\nsts_timeout = "10s"\n'
                   f'[[users]]\nname = "{moto.role_arn}"\ndb = "$external"\naws = true\n')
    gw = start_gateway(ferretdb, lambda_dir, name="mongomux-lambda-iam-gw", metrics=True,
                       extra_args=("--config", str(cfg)))
    yield gw
    gw.proc.stop()


def test_iam_example_one_client_for_100_invocations(ferretdb, iam_gateway, lambda_dir, moto):
    fresh_db(ferretdb, "lambda_iam")
    creds = moto.role_credentials
    em = start_emulator(example_bin("lambda-iam"), lambda_dir, function_name="orders-fn-iam", env={
        "MONGOMUX_URI": f"mongodb://127.0.0.1:{iam_gateway.port}/lambda_iam?loadBalanced=true",  # as the template sets it
        **creds.env(),
    })
    try:
        before = gauges(iam_gateway)
        result = run_invocations(em, iam_gateway)
        created = em.created_client_lines()
        assert len(created) == 1, f"'created client' logged {len(created)} times:\n" + "\n".join(created)
        assert "auth=iam" in created[0] and "app_name=orders-fn-iam" in created[0], created[0]
        assert "load_balanced=true" in created[0], created[0]
        ready = em.connections_ready_ms()
        assert len(ready) == 1, f"the function opened {len(ready)} pooled connections in {INVOCATIONS} invocations"
        log = em.log_text()
        for secret in creds.secrets():
            assert secret not in log, "a credential reached the function's log"
        opened = result["connections"][1] - before[1]
        assert 1 <= opened <= 3, f"the function opened {opened} gateway connections (monitor + pool expected)"
        # One login for 100 invocations: the pool's connection authenticated once (monitoring
        # connections do not authenticate), so the gateway asked STS exactly once.
        sts_ok = metric(iam_gateway, "mongomux_sts_requests_total", 'result="ok"')
        assert sts_ok == 1, f"{sts_ok} successful STS calls for one environment"
        assert "user=" + moto.role_arn in tail(iam_gateway.proc.log, 200)
        emf = check_reuse_metrics(em, "orders-fn-iam", iam=True)
        warm = result["warm"]
        reports = reported_durations(em)
        print(f"\n[lambda] IAM example, {INVOCATIONS} sequential invocations: first (cold: process start, "
              f"connect, MONGODB-AWS with STS at moto, query) {result['first'] * 1000:.1f} ms, emulator REPORT "
              f"duration {reports[0][1]} ms (of which opening the pooled connection: {ready[0]} ms); warm median {statistics.median(warm) * 1000:.2f} ms, REPORT "
              f"{statistics.median(d for _, d in reports[1:]):.2f} ms; gateway connections opened by the "
              f"function: {opened}")
    finally:
        em.stop()
