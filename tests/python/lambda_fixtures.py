"""The AWS Lambda Runtime Interface Emulator as a test fixture: run an example function's
binary as a Lambda execution environment on loopback, invoke it over HTTP, read its log.

One emulator is one execution environment: it starts the function's bootstrap on the first
invocation and keeps that process for every later one, exactly as Lambda keeps a warm
environment. With `max_concurrency` the emulator runs in its Lambda Managed Instances mode,
where one environment takes several invocations at once (inside a private mount namespace:
see _managed_instances_wrapper).

Binaries (scripts/test exports these; a missing one is an error, never a skip):

    MONGOMUX_LAMBDA_RIE            aws-lambda-rie       default .local/bin/aws-lambda-rie
                                   (scripts/install-lambda-rie installs it)
    MONGOMUX_LAMBDA_PASSWORD_BIN   the password example default target/debug/lambda-password
    MONGOMUX_LAMBDA_IAM_BIN        the IAM example      default target/debug/lambda-iam

Addresses: the emulator's defaults are 0.0.0.0:8080 (invocations) and 127.0.0.1:9001 (the
runtime API); both are always given here as 127.0.0.1 with free ports. Note that
`aws-lambda-rie --help` does not print help: the emulator ignores unknown flags and starts
listening on its defaults, so nothing here ever runs it without both addresses.

The function's environment is built from scratch (no AWS_*, MONGO* or RUST_LOG of the
developer's leaks in): what Lambda itself sets, plus what the test passes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT, Proc, _binary, _running, _spawn, free_port, tail

INVOKE_PATH = "/2015-03-31/functions/function/invocations"
CREATED_CLIENT = "mongomux-lambda: created client"
CONNECTION_READY = re.compile(r"mongomux-lambda: connection ready address=\S+ id=\d+ in (\d+) ms")

# What Lambda always puts in a function's environment (values for a local run).
LAMBDA_ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
    "AWS_LAMBDA_FUNCTION_TIMEOUT": "30",
    # The AWS SDK's chain must not wander off to instance metadata or a developer's files.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/mongomux-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/mongomux-test-aws-credentials",
    "RUST_LOG": "info",
    "AWS_LAMBDA_LOG_FORMAT": "Text",
}


def rie_bin() -> Path:
    return _binary("MONGOMUX_LAMBDA_RIE", ROOT / ".local/bin/aws-lambda-rie")


def example_bin(name: str) -> Path:
    """`lambda-password` or `lambda-iam`, as built by `cargo build -p NAME`."""
    var = f"MONGOMUX_LAMBDA_{name.removeprefix('lambda-').upper()}_BIN"
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    return _binary(var, target / "debug" / name)


class InvokeError(AssertionError):
    """The emulator answered with a non-200 status, or the function reported an error."""


@dataclass
class Emulator:
    proc: Proc
    api_port: int
    function_name: str
    busy_retries: int = 0

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{INVOKE_PATH}"

    def invoke(self, event: dict, timeout: float = 35.0, busy_retry_for: float = 0.0) -> dict:
        """POST one event; the function's JSON answer. A function error raises InvokeError.

        In Managed Instances mode the emulator answers 400 `Runtime.Unavailable` when every
        runtime worker is busy (or not yet polling), where Lambda would queue or route the
        request elsewhere; `busy_retry_for` seconds of retries (every 10 ms) stand in for that.
        `self.busy_retries` counts them."""
        data = json.dumps(event).encode()
        deadline = time.monotonic() + busy_retry_for
        while True:
            req = urllib.request.Request(self.url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    body = r.read().decode()
                break
            except urllib.error.HTTPError as e:
                detail = e.read()[:500]
                if e.code == 400 and b"Runtime.Unavailable" in detail and time.monotonic() < deadline:
                    self.busy_retries += 1
                    time.sleep(0.01)
                    continue
                raise InvokeError(f"emulator answered {e.code}: {detail!r}\n{tail(self.proc.log)}")
        answer = json.loads(body) if body else None
        if isinstance(answer, dict) and "errorType" in answer:
            raise InvokeError(f"function error: {answer}\n{tail(self.proc.log)}")
        return answer

    def log_text(self) -> str:
        return self.proc.log.read_text(errors="replace")

    def created_client_lines(self) -> list[str]:
        return [ln for ln in self.log_text().splitlines() if CREATED_CLIENT in ln]

    def connections_ready_ms(self) -> list[int]:
        """Time to open each pooled connection the function logged (connect, handshake, auth)."""
        return [int(m.group(1)) for m in CONNECTION_READY.finditer(self.log_text())]

    def function_pids(self) -> list[int]:
        """Processes the emulator started (the function's bootstrap), by parent pid."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            # comm may contain spaces and parentheses: the ppid is the 2nd field after the last ')'.
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == self.proc.pid:
                pids.append(int(entry))
        return pids

    def stop(self) -> None:
        """Stop the emulator and the function it runs (its whole process group)."""
        pgid = None
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pass
        try:
            self.proc.stop()
        finally:
            # The emulator started in its own session (see conftest._spawn): its group is ours
            # to end, and it holds the function's bootstrap.
            if pgid is not None and pgid == self.proc.pid:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def start_emulator(bootstrap: Path | list, logdir: Path, env: dict, name: str | None = None,
                   function_name: str = "mongomux-example", max_concurrency: int | None = None,
                   timeout: float = 20.0, cwd: Path | None = None) -> Emulator:
    """aws-lambda-rie on 127.0.0.1 (free ports) running `bootstrap` with `env` on top of the
    standard Lambda variables; returns once it accepts connections (the function itself starts
    on the first invocation).

    `bootstrap` is a binary (the Rust examples), or a command with arguments, such as a runtime
    interface client and its handler (`[node, .../aws-lambda-ric/bin/index.mjs, index.handler]`);
    the emulator runs it in `cwd` (default: `logdir`), which the Node.js and Python runtime
    interface clients take as the function's folder."""
    port, api_port = free_port(), free_port()
    name = name or f"rie-{function_name}-{port}"
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("AWS_", "MONGO", "RUST_LOG", "LOG_LEVEL", "_"))}
    full_env.update(LAMBDA_ENV)
    full_env["AWS_LAMBDA_FUNCTION_NAME"] = function_name
    full_env.update(env)
    if max_concurrency is not None:
        full_env["AWS_LAMBDA_MAX_CONCURRENCY"] = str(max_concurrency)
    cmd = [rie_bin(),
           "--runtime-interface-emulator-address", f"127.0.0.1:{port}",
           "--runtime-api-address", f"127.0.0.1:{api_port}",
           "--log-level", "info",
           *(bootstrap if isinstance(bootstrap, list) else [bootstrap])]
    if max_concurrency is not None:
        cmd = _managed_instances_wrapper(bootstrap, logdir / f"{name}-var") + cmd
    popen, log = _spawn(name, cmd, logdir, full_env, cwd=cwd)
    proc = Proc(name, popen, port, log, stop_timeout=10.0)
    _running.append(proc)
    em = Emulator(proc, api_port, function_name)
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise AssertionError(f"{name} exited with {popen.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return em
        except OSError:
            if time.monotonic() > deadline:
                em.stop()
                raise AssertionError(f"{name} did not listen on 127.0.0.1:{port} within {timeout}s\n{tail(log)}")
            time.sleep(0.05)


def _managed_instances_wrapper(bootstrap: Path, var_dir: Path) -> list:
    """The emulator's Managed Instances mode (this pseudo-version) ignores the bootstrap given on
    its command line: it treats every function as a ZIP deployment and looks only at
    /var/runtime/bootstrap, /var/task/bootstrap and /opt/bootstrap, then runs it in /var/task.
    Rather than write into the machine's /var, the emulator gets a private mount namespace in
    which a folder of this test's own (holding task/bootstrap -> the function) is mounted over
    /var. Nothing outside that process tree sees the mount, and it vanishes with it."""
    task = var_dir / "task"
    task.mkdir(parents=True, exist_ok=True)
    link = task / "bootstrap"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(bootstrap).resolve())
    # unshare execs sh, which execs the emulator: the emulator keeps the pid Popen knows.
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /var && exec "$@"', var_dir]


REPORT = re.compile(r"REPORT RequestId: \S+\s+(?:Init Duration: ([\d.]+) ms\s+)?Duration: ([\d.]+) ms")


def reported_durations(em: Emulator) -> list[tuple[float | None, float]]:
    """(init ms or None, duration ms) from each REPORT line the emulator printed."""
    out = []
    for m in REPORT.finditer(em.log_text()):
        out.append((float(m.group(1)) if m.group(1) else None, float(m.group(2))))
    return out
