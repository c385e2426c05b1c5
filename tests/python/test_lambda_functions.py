"""The Node.js and Python example functions (issue 14, item 7) in a real Lambda execution
environment: the AWS Lambda Runtime Interface Emulator running the official runtime interface
clients (`aws-lambda-ric` from npm, `awslambdaric` from PyPI) with the function's handler,
through the gateway to FerretDB, logging in with MONGODB-AWS as the function's role.

    examples/lambda-node/index.mjs   node  node_modules/aws-lambda-ric/bin/index.mjs index.handler
    examples/lambda-python/app.py    .venv/bin/python -m awslambdaric app.handler

(scripts/install-lambda-functions installs both.) The connection string is the one the template
gives them for the NLB: `?loadBalanced=true&authMechanism=MONGODB-AWS&authSource=$external`, no
credentials. moto (moto_stack.py) plays IAM and STS with signature checking on; the function's
environment holds temporary credentials of a role from AssumeRole, as Lambda's does, and the
gateway's only user is that role's ARN.

What must hold, for each language:

- every invocation succeeds and its answer is right (inserted ids unique, counts exact); a bad
  event fails only its own invocation;
- the environment creates one client and opens one connection, whatever the number of
  invocations: every answer says clients_created = 1 and connections_created = 1 (the driver's
  own connection-pool events), the function logs "created client" once, the emulator keeps one
  function process, that process holds the same sockets to the gateway throughout, and the
  gateway's connection gauge and total do not move after the first invocation;
- the driver runs in load-balanced mode (the answer reports the LoadBalanced topology), so it
  opens no monitoring connection: exactly one gateway connection for the whole run;
- the login was MONGODB-AWS: the gateway called STS once (one successful call for all the
  invocations) and logged the role's ARN as the authenticated principal;
- no credential reaches the function's log;
- with a wrong secret key, the invocation fails with the gateway's AuthenticationFailed (STS,
  that is moto, denied the signature); with no credentials at all, it fails with the driver's
  own clear error and the gateway is not asked to log anyone in;
- the connection string and handlers tested here are the ones deploy/template.yaml deploys.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

import procnet
from conftest import ROOT, start_gateway
from lambda_fixtures import Emulator, InvokeError, start_emulator
from moto_stack import AwsCredentials, start_moto_stack
from security_fixtures import metric

INVOCATIONS = 20
NODE_DIR = ROOT / "examples/lambda-node"
PYTHON_DIR = ROOT / "examples/lambda-python"
CREATED_CLIENT = re.compile(r"mongomux-lambda-(node|python): created client \((.*)\)")


@dataclass(frozen=True)
class Function:
    """One example function: the runtime interface client's command line, run in `folder`."""

    language: str
    folder: Path
    command: list

    def check_installed(self) -> None:
        missing = [c for c in self.command if isinstance(c, Path) and not c.exists()]
        if missing:
            pytest.fail(f"{self.language} example function: {missing} missing; run scripts/install-deps "
                        f"(scripts/install-lambda-functions)", pytrace=False)


FUNCTIONS = {
    "node": Function("node", NODE_DIR, ["node", NODE_DIR / "node_modules/aws-lambda-ric/bin/index.mjs",
                                        "index.handler"]),
    "python": Function("python", PYTHON_DIR, [PYTHON_DIR / ".venv/bin/python", "-m", "awslambdaric",
                                              "app.handler"]),
}


@pytest.fixture(scope="module")
def fn_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lambda-functions")


@pytest.fixture(scope="module")
def moto(fn_dir):
    stack = start_moto_stack(fn_dir / "moto")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def iam_gateway(ferretdb, fn_dir, moto):
    """A gateway whose only user is the role's ARN, verifying logins against moto's STS."""
    cfg = fn_dir / "gateway-iam.toml"
    cfg.write_text(f'sts_endpoint = "{moto.endpoint}"\nsts_max_concurrency = 8\nsts_timeout = "10s"\n'
                   f'[[users]]\nname = "{moto.role_arn}"\ndb = "$external"\naws = true\n')
    gw = start_gateway(ferretdb, fn_dir, name="mongomux-lambda-fn-gw", metrics=True,
                       extra_args=("--config", str(cfg)))
    yield gw
    gw.proc.stop()


# The options of the connection string deploy/template.yaml gives the functions (checked below).
NLB_URI_OPTIONS = "?loadBalanced=true&authMechanism=MONGODB-AWS&authSource=$external"


def nlb_uri(gw, db: str) -> str:
    """The connection string deploy/template.yaml gives the functions, with this gateway in
    place of the NLB: no credentials, load-balanced, MONGODB-AWS."""
    return f"mongodb://127.0.0.1:{gw.port}/{db}{NLB_URI_OPTIONS}"


def test_template_gives_the_functions_the_tested_connection_string():
    """What these tests run is what the template deploys: the Node.js and Python functions'
    MONGODB_URI is the NLB, the database, and exactly NLB_URI_OPTIONS."""
    template = (ROOT / "deploy/template.yaml").read_text()
    for resource, runtime_param, code, handler in (("NodeFunction", "NodeFunctionRuntime", "lambda-node", "index.handler"),
                                                   ("PythonFunction", "PythonFunctionRuntime", "lambda-python", "app.handler")):
        m = re.search(rf"^  {resource}:\n(?:    .*\n|      .*\n|\s*\n)+", template, re.M)
        assert m, f"{resource} is not in deploy/template.yaml"
        block = m.group(0)
        assert f"CodeUri: ../examples/{code}\n" in block and f"Handler: {handler}\n" in block, block
        assert f"Runtime: !Ref {runtime_param}\n" in block, block
        uri = re.search(r'MONGODB_URI: !Sub "(.*)"', block)
        assert uri and uri.group(1) == "mongodb://${LoadBalancer.DNSName}:${GatewayPort}/${DatabaseName}" + NLB_URI_OPTIONS, \
            block


def start_function(fn: Function, gw, fn_dir: Path, db: str, creds_env: dict, name: str) -> Emulator:
    fn.check_installed()
    return start_emulator(fn.command, fn_dir, cwd=fn.folder, function_name=name, env={
        "MONGODB_URI": nlb_uri(gw, db),
        "LAMBDA_TASK_ROOT": str(fn.folder),
        **creds_env,
    })


def gauges(gw) -> tuple[float, float]:
    return (metric(gw, "mongomux_client_connections"), metric(gw, "mongomux_client_connections_total"))


def sts(gw, result: str) -> float:
    return metric(gw, "mongomux_sts_requests_total", f'result="{result}"')


def iam_logins(gw) -> list[str]:
    """The gateway's log lines for MONGODB-AWS logins, which name the principal."""
    return [ln for ln in gw.proc.log.read_text(errors="replace").splitlines()
            if "client authenticated with MONGODB-AWS" in ln]


def created_client_lines(em: Emulator) -> list[str]:
    return [m.group(0) for m in CREATED_CLIENT.finditer(em.log_text())]


def check_answer(answer: dict, op: str, invocation: int) -> None:
    assert answer.get("ok") is True and answer.get("op") == op, answer
    assert answer.get("clients_created") == 1, f"a second client was created: {answer}"
    assert answer.get("connections_created") == 1, f"the driver opened another connection: {answer}"
    assert answer.get("invocations") == invocation, f"not the same environment: {answer}"
    assert answer.get("topology") == "LoadBalanced", f"the driver is not in load-balanced mode: {answer}"


@pytest.mark.parametrize("language", sorted(FUNCTIONS))
def test_function_one_client_one_iam_login(language, ferretdb, iam_gateway, fn_dir, moto):
    fn = FUNCTIONS[language]
    db = f"lambda_fn_{language}"
    with ferretdb.client() as c:
        c.drop_database(db)
    creds = moto.assume_role(session_name=f"{language}-fn")
    before, sts_ok_before = gauges(iam_gateway), sts(iam_gateway, "ok")
    logins_before = len(iam_logins(iam_gateway))
    em = start_function(fn, iam_gateway, fn_dir, db, creds.env(), name=f"orders-fn-{language}")
    try:
        inserted: set[str] = set()
        baseline = fn_pid = fn_socks = None
        for i in range(INVOCATIONS):
            if i % 2 == 0:
                answer = em.invoke({"op": "insert", "doc": {"i": i, "tag": language}})
                check_answer(answer, "insert", i + 1)
                oid = answer["inserted_id"]["$oid"]
                assert oid not in inserted, f"duplicate id {oid}"
                inserted.add(oid)
            else:
                answer = em.invoke({"op": "count", "filter": {"tag": language}})
                check_answer(answer, "count", i + 1)
                assert answer["count"] == len(inserted), (i, answer, len(inserted))

            now = gauges(iam_gateway)
            pids = em.function_pids()
            assert len(pids) == 1, f"the emulator runs {len(pids)} function processes: {pids}"
            held = procnet.upstream_connections(iam_gateway.port, pids[0])
            if baseline is None:
                baseline, fn_pid, fn_socks = now, pids[0], held
                assert fn_socks == 1, f"the function holds {held} sockets to the gateway, expected 1"
            else:
                assert pids[0] == fn_pid, "the function process was restarted"
                assert now == baseline, f"invocation {i}: gateway connections (open, total) {now} != {baseline}"
                assert held == fn_socks, f"invocation {i}: function holds {held} sockets to the gateway, was {fn_socks}"

        with ferretdb.client() as c:
            assert c[db]["events"].count_documents({"tag": language}) == len(inserted) == INVOCATIONS // 2

        # A bad event is that invocation's error; the environment and its client carry on.
        with pytest.raises(InvokeError, match="function error.*unknown op"):
            em.invoke({"op": "drop_everything"})
        check_answer(em.invoke({"op": "ping"}), "ping", INVOCATIONS + 2)
        assert em.function_pids() == [fn_pid] and gauges(iam_gateway) == baseline

        created = created_client_lines(em)
        assert len(created) == 1, f"'created client' logged {len(created)} times:\n" + "\n".join(created)
        assert "load_balanced=true" in created[0], created[0]
        # One Embedded Metric Format line per invocation (the bad event's too): the first
        # created the connection and logged in with IAM once; every later one reused it.
        emf = [json.loads(line) for line in em.log_text().splitlines() if line.startswith('{"_aws"')]
        assert len(emf) == INVOCATIONS + 2, f"{len(emf)} metric lines for {INVOCATIONS + 2} invocations"
        first = emf[0]
        assert first["FunctionName"] == f"orders-fn-{language}", first
        assert (first["ColdStart"], first["ConnectionsOpened"], first["IamAuthentications"]) == (1, 1, 1), first
        assert first["ConnectTime"] > 0, first
        assert all((e["ClientReused"], e["ConnectionsOpened"], e["IamAuthentications"]) == (1, 0, 0) for e in emf[1:]), \
            [e for e in emf[1:] if e["ConnectionsOpened"]][:2]
        assert "auth=MONGODB-AWS" in created[0] and f"app_name=orders-fn-{language}" in created[0], created[0]
        # Load-balanced: no monitoring connection, so the whole run is one gateway connection.
        opened = baseline[1] - before[1]
        assert opened == 1, f"the function opened {opened} gateway connections, expected 1"
        # One MONGODB-AWS login for all the invocations, checked by STS (moto, signatures on).
        assert sts(iam_gateway, "ok") - sts_ok_before == 1
        logins = iam_logins(iam_gateway)[logins_before:]
        assert len(logins) == 1 and f"user={moto.role_arn} " in logins[0], logins
        log = em.log_text()
        for secret in creds.secrets():
            assert secret not in log, "a credential reached the function's log"
        print(f"\n[lambda] {language} example under the RIE with its runtime interface client: "
              f"{INVOCATIONS} invocations, one client, one gateway connection, one STS call")
    finally:
        em.stop()


@pytest.mark.parametrize("language", sorted(FUNCTIONS))
def test_function_wrong_credentials_is_an_auth_error(language, iam_gateway, fn_dir, moto):
    """A secret key that does not match the access key id: the driver signs, the gateway asks
    STS, STS (moto, signatures checked) refuses, and the invocation fails with
    AuthenticationFailed (18). The environment survives for the next invocation."""
    fn = FUNCTIONS[language]
    good = moto.assume_role(session_name=f"{language}-wrong")
    wrong = AwsCredentials(good.access_key_id, "wrong" + secrets.token_hex(16), good.session_token)
    denied_before = sts(iam_gateway, "denied")
    em = start_function(fn, iam_gateway, fn_dir, "lambda_fn_wrong", wrong.env(), name=f"wrong-fn-{language}")
    try:
        for _ in range(2):
            with pytest.raises(InvokeError) as err:
                em.invoke({"op": "ping"})
            msg = str(err.value)
            print(f"\n[lambda] {language}, wrong secret: {msg.splitlines()[0][:400]}")
            # The gateway's reply, as each driver raises it: Node's MongoServerError, pymongo's
            # OperationFailure with code 18.
            want = {"node": "'errorType': 'MongoServerError', 'errorMessage': 'Authentication failed.'",
                    "python": "'code': 18, 'codeName': 'AuthenticationFailed'"}[language]
            assert msg.startswith("function error") and want in msg, msg
        assert sts(iam_gateway, "denied") - denied_before >= 1, "the gateway did not ask STS"
        assert len(em.function_pids()) == 1, "the function process died"
        assert len(created_client_lines(em)) == 1
        assert wrong.secret_access_key not in em.log_text()
    finally:
        em.stop()


@pytest.mark.parametrize("language", sorted(FUNCTIONS))
def test_function_without_credentials_is_a_clear_error(language, iam_gateway, fn_dir):
    """No AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN (and no instance
    metadata, config files or container credentials: lambda_fixtures.LAMBDA_ENV): the driver
    cannot sign and says so; nothing reaches STS."""
    fn = FUNCTIONS[language]
    calls_before = sum(sts(iam_gateway, r) for r in ("ok", "denied", "error"))
    em = start_function(fn, iam_gateway, fn_dir, "lambda_fn_nocreds", {}, name=f"nocreds-fn-{language}")
    try:
        with pytest.raises(InvokeError) as err:
            em.invoke({"op": "ping"})
        msg = str(err.value)
        print(f"\n[lambda] {language}, no credentials: {msg.splitlines()[0][:400]}")
        want = {"node": "'errorType': 'MongoAWSError', 'errorMessage': 'Could not load credentials from any providers'",
                "python": "temporary MONGODB-AWS credentials could not be obtained"}[language]
        assert msg.startswith("function error") and want in msg, msg
        assert sum(sts(iam_gateway, r) for r in ("ok", "denied", "error")) == calls_before
    finally:
        em.stop()
