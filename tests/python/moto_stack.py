"""moto in server mode as AWS IAM and STS, set up the way a Lambda function's identity is:
a role, a user allowed to assume it, the user's access key, and temporary credentials for the
role from AssumeRole, which is what Lambda puts in a function's AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.

Standalone on purpose (only the standard library, boto3 and a `moto_server` binary): pytest
fixtures, bench tools and a developer's shell can all use it.

    stack = start_moto_stack(workdir)            # moto_server -H 127.0.0.1 -p <free port>
    env = stack.role_credentials.env()           # AWS_ACCESS_KEY_ID/... of the assumed role
    stack.caller_arn(stack.role_credentials)     # arn:aws:sts::123456789012:assumed-role/...
    stack.stop()

    python tests/python/moto_stack.py            # self-check: start, set up, verify, stop

Signature checking: moto checks nothing by default. It is started with
INITIAL_NO_AUTH_ACTION_COUNT = the number of set-up calls made unauthenticated here (create
the user, the role that trusts it, the user's policy allowing sts:AssumeRole on the role, the
access key); every request after those must carry
a valid SigV4 signature and be allowed by the caller's IAM policies. AssumeRole is therefore
the first checked call, made with the user's new key (which proves the key and the policy).
Enforcement is then confirmed both ways: a wrong secret gets 403, the right one 200.

What moto does not check (see local-stack.md): clock skew, credential expiry, replay of an
identical request. Tests of those must rely on the gateway's own checks.

Every credential here is minted per run by a moto server on loopback; none is worth keeping,
but they are still kept out of reprs (`field(repr=False)`) so test reports never show them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
# Unauthenticated set-up calls start_moto_stack makes; moto checks every request after these.
SETUP_CALLS = 4



def trust_policy(principal_arn: str) -> str:
    """A role trust policy letting exactly `principal_arn` assume the role. (moto compares the
    principal literally: an account root ARN would not admit the account's users.)"""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": principal_arn}, "Action": "sts:AssumeRole"}],
    })


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def env(self) -> dict:
        """The variables Lambda sets for a function (no token for a long-term key)."""
        e = {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
        if self.session_token:
            e["AWS_SESSION_TOKEN"] = self.session_token
        return e

    def secrets(self) -> list[str]:
        """What must never appear in a log."""
        return [s for s in (self.secret_access_key, self.session_token) if s]


@dataclass
class MotoStack:
    process: subprocess.Popen
    port: int
    log_path: Path
    role_name: str
    user_name: str
    user_credentials: AwsCredentials | None = None  # the user's long-term key
    role_credentials: AwsCredentials | None = None  # AssumeRole of role_name by the user

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT_ID}:role/{self.role_name}"

    @property
    def user_arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT_ID}:user/{self.user_name}"

    def client(self, service: str, creds: AwsCredentials | None = None):
        """A boto3 client for `service` at this moto; unsigned-looking dummy keys without creds."""
        import boto3
        from botocore.config import Config

        creds = creds or AwsCredentials("AKIAMOTOSETUPDUMMY00", "dummy-secret-for-unauthenticated-setup")
        return boto3.client(
            service, endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
            aws_session_token=creds.session_token,
            config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 1}),
        )

    def assume_role(self, session_name: str = "mongomux-test", role_arn: str | None = None) -> AwsCredentials:
        """Temporary credentials for the role (by default ours), assumed by the user (a checked call)."""
        c = self.client("sts", self.user_credentials).assume_role(
            RoleArn=role_arn or self.role_arn, RoleSessionName=session_name)["Credentials"]
        return AwsCredentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])

    def caller_arn(self, creds: AwsCredentials) -> str:
        """GetCallerIdentity signed with `creds`: the ARN STS reports (raises on 403)."""
        return self.client("sts", creds).get_caller_identity()["Arn"]

    def set_enforcement(self, on: bool) -> None:
        """Switch signature checking on (`0` unauthenticated calls left) or off (`inf`)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf",
                                     method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=5):
            pass

    def enforcing(self) -> bool:
        """True when moto refuses a request signed with a wrong secret (HTTP 403)."""
        from botocore.exceptions import ClientError

        good = self.role_credentials or self.user_credentials
        first = good.secret_access_key[0]
        wrong = ("y" if first == "x" else "x") + good.secret_access_key[1:]  # differs, always
        bad = AwsCredentials(good.access_key_id, wrong, good.session_token)
        try:
            self.caller_arn(bad)
        except ClientError as e:
            return e.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        return False

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_server_bin() -> Path:
    path = Path(os.environ.get("MONGOMUX_MOTO") or ROOT / ".venv/bin/moto_server")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"no moto_server at {path}: run scripts/install-deps (moto[server] "
                                f"is in tests/python/requirements.txt) or set MONGOMUX_MOTO")
    return path


def start_moto_stack(workdir: Path, role_name: str = "mongomux-fn-role", user_name: str = "mongomux-deployer",
                     port: int | None = None, timeout: float = 60.0) -> MotoStack:
    """Start moto_server on 127.0.0.1 (a free port unless given), set up the role, the user,
    its key and the role's temporary credentials, and confirm signatures are checked. Its log
    goes to workdir/moto-PORT.log. The caller stops it (stop()), also on failure of its own."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log_path = workdir / f"moto-{port}.log"
    # Only what is set here: a developer's AWS_* or MOTO_* settings must not change moto.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_CALLS)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(moto_server_bin()), "-H", "127.0.0.1", "-p", str(port)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                cwd=workdir, start_new_session=True)
    stack = MotoStack(proc, port, log_path, role_name, user_name)
    try:
        _wait_ready(stack, timeout)
        _set_up(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


def _wait_ready(stack: MotoStack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not stack.alive():
            raise RuntimeError(f"moto_server exited with {stack.process.returncode}; see {stack.log_path}")
        try:
            # /moto-api/ is not an AWS action: it does not use up an unauthenticated call.
            with urllib.request.urlopen(f"{stack.endpoint}/moto-api/", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not answer within {timeout}s; see {stack.log_path}")
            time.sleep(0.2)


def _set_up(stack: MotoStack) -> None:
    iam = stack.client("iam")
    # The SETUP_CALLS unauthenticated calls:
    iam.create_user(UserName=stack.user_name)                                          # 1
    iam.create_role(RoleName=stack.role_name,                                          # 2
                    AssumeRolePolicyDocument=trust_policy(stack.user_arn))
    iam.put_user_policy(UserName=stack.user_name, PolicyName="assume-fn-role",         # 3
                        PolicyDocument=json.dumps({
                            "Version": "2012-10-17",
                            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                           "Resource": stack.role_arn}],
                        }))
    key = iam.create_access_key(UserName=stack.user_name)["AccessKey"]                # 4
    stack.user_credentials = AwsCredentials(key["AccessKeyId"], key["SecretAccessKey"])
    # From here on every request is checked: AssumeRole with the user's key is the first.
    stack.set_enforcement(True)  # belt and braces, should the count ever be off
    stack.role_credentials = stack.assume_role(f"{stack.role_name}-session")
    arn = stack.caller_arn(stack.role_credentials)
    want = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{stack.role_name}/"
    if not arn.startswith(want):
        raise RuntimeError(f"GetCallerIdentity of the assumed role answered {arn}, expected {want}...")
    if not stack.enforcing():
        raise RuntimeError("moto accepted a request signed with a wrong secret: signature checking is off")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="moto-stack-") as d:
        t = time.perf_counter()
        s = start_moto_stack(Path(d))
        try:
            print(f"moto on {s.endpoint}, set up in {time.perf_counter() - t:.1f}s")
            print(f"role {s.role_arn}; caller {s.caller_arn(s.role_credentials)}")
            print(f"user {s.user_arn}; caller {s.caller_arn(s.user_credentials)}")
            print(f"signatures enforced: {s.enforcing()}")
        finally:
            s.stop()
    sys.exit(0)
