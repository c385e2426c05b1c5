"""Real servers for the pytest suite: FerretDB, nx-27017 and the mongomux gateway.

Session fixtures start each process once, on free loopback ports, with its
data and logs in pytest's temporary folder, and always stop it at teardown.

Binaries (scripts/test exports these; the defaults suit a checkout after
scripts/install-deps and `cargo build -p mongomux`):

    MONGOMUX_BIN        the gateway               default target/debug/mongomux
    MONGOMUX_FERRETDB   FerretDB v1.24.x          default .local/bin/ferretdb
    MONGOMUX_NX         nx-27017                  default .venv/bin/nx-27017

A missing binary is an error, not a skip: a suite that quietly skips the
gateway proves nothing.
"""

from __future__ import annotations

import atexit
import os
import queue
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymongo
import pytest

ROOT = Path(__file__).resolve().parents[2]

# Upstream connections one gateway may open (its --pool-size) in this suite.
POOL_SIZE = 4
UPSTREAM_USER = "mongomux"
# Monitoring connections a gateway keeps to each FerretDB member beside its pool (see
# Gateway.upstream_limit and docs/configuration.md).
MONITOR_CONNECTIONS = 1

_running: list["Proc"] = []  # for log tails on failure, and the atexit backstop


@atexit.register
def _kill_leftovers() -> None:
    """Backstop for an interrupted run: no server this suite started outlives it."""
    for proc in list(_running):
        if proc.popen.poll() is None:
            proc.popen.kill()


def _binary(var: str, default: Path) -> Path:
    path = Path(os.environ.get(var) or default)
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"{var}: no executable at {path}. Run scripts/install-deps and "
            f"`cargo build -p mongomux`, or run the suite through scripts/test.",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Proc:
    """A server process this suite started; stop() is safe to call twice."""

    name: str
    popen: subprocess.Popen
    port: int
    log: Path
    stop_timeout: float = 10.0
    exited_on_its_own: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.popen.poll() is not None:
            if self.exited_on_its_own is None:
                self.exited_on_its_own = self.popen.returncode
            return self.popen.returncode
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            raise AssertionError(f"{self.name} did not exit within {self.stop_timeout}s of signal {sig}")
        finally:
            if self in _running:
                _running.remove(self)


def _spawn(name: str, cmd: list, logdir: Path, env: dict | None = None, stdout_pipe: bool = False,
           cwd: Path | None = None):
    """Start `cmd` with its output in logdir/NAME.log, in `cwd` (default: logdir)."""
    log = logdir / f"{name}.log"
    log_f = open(log, "ab")
    popen = subprocess.Popen(
        [str(c) for c in cmd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_pipe else log_f,
        stderr=log_f,
        env=env,
        cwd=cwd or logdir,
        start_new_session=True,  # a Ctrl-C on pytest must not hit the servers before teardown
    )
    log_f.close()
    return popen, log


def _wait_mongo(proc: Proc, uri: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail(proc.log)}")
        try:
            with pymongo.MongoClient(uri, directConnection=True, serverSelectionTimeoutMS=500,
                                     connectTimeoutMS=500) as c:
                c.admin.command("ping")
                return
        except pymongo.errors.PyMongoError as e:
            last = e
            time.sleep(0.1)
    raise AssertionError(f"{proc.name} did not answer ping within {timeout}s: {last}\n{tail(proc.log)}")


# ---------------------------------------------------------------------------
# Upstreams


@dataclass
class Upstream:
    proc: Proc
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # kept out of failure reports

    @property
    def port(self) -> int:
        return self.proc.port

    def uri(self, with_credentials: bool = True) -> str:
        if self.username and with_credentials:
            return f"mongodb://{self.username}:{self.password}@127.0.0.1:{self.port}/?authSource=admin"
        return f"mongodb://127.0.0.1:{self.port}/"

    def gateway_upstream_uri(self) -> str:
        """What the gateway gets as --upstream: no credentials (those go in env vars)."""
        suffix = "?authSource=admin" if self.username else ""
        return f"mongodb://127.0.0.1:{self.port}/{suffix}"

    def client(self, **kw) -> pymongo.MongoClient:
        kw.setdefault("serverSelectionTimeoutMS", 10_000)
        return pymongo.MongoClient(self.uri(), directConnection=True, **kw)


def start_ferretdb(logdir: Path, extra_args: tuple = ()) -> Upstream:
    """FerretDB with authentication on, listening on a free loopback port; `extra_args` are
    added to its command line (the security tests add a TLS listener)."""
    binary = _binary("MONGOMUX_FERRETDB", ROOT / ".local/bin/ferretdb")
    data = logdir / "ferretdb-data"
    data.mkdir(parents=True, exist_ok=True)
    port, debug_port = free_port(), free_port()
    password = secrets.token_urlsafe(18)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRETDB_")}
    env["FERRETDB_SETUP_PASSWORD"] = password  # not on the command line, where `ps` shows it
    popen, log = _spawn("ferretdb", [
        binary,
        "--handler=sqlite",
        f"--sqlite-url=file:{data}/",
        f"--state-dir={logdir}",
        f"--listen-addr=127.0.0.1:{port}",
        f"--debug-addr=127.0.0.1:{debug_port}",
        "--telemetry=disable",
        "--test-enable-new-auth",
        f"--setup-username={UPSTREAM_USER}",
        "--setup-database=admin",
        "--log-level=ERROR",  # WARN logs every error reply in full
        *extra_args,
    ], logdir, env)
    proc = Proc("ferretdb", popen, port, log)
    _running.append(proc)
    up = Upstream(proc, UPSTREAM_USER, password)
    _wait_mongo(proc, up.uri())
    return up


def start_nx(logdir: Path) -> Upstream:
    binary = _binary("MONGOMUX_NX", ROOT / ".venv/bin/nx-27017")
    port = free_port()
    popen, log = _spawn("nx-27017", [
        binary, "--host", "127.0.0.1", "-p", port, "--db", "memory",
        "--log-file", logdir / "nx-27017.internal.log", "--pid-file", logdir / "nx-27017.pid",
    ], logdir)
    proc = Proc("nx-27017", popen, port, log)
    _running.append(proc)
    up = Upstream(proc)
    _wait_mongo(proc, up.uri())
    return up


# ---------------------------------------------------------------------------
# The gateway

LISTENING = re.compile(r"^mongomux: listening on (\S+):(\d+)\s*$")
METRICS = re.compile(r"^mongomux: metrics on (\S+):(\d+)\s*$")


@dataclass
class Gateway:
    proc: Proc
    upstream: Upstream
    pool_size: int
    metrics_port: int | None = None
    stdout_lines: list = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def upstream_limit(self) -> int:
        """The most connections the upstream (one FerretDB) may see from this gateway: the
        pool, plus the member's monitoring connection (FerretDB reports no topologyVersion, so
        the monitor polls on one connection; a streaming member would get a second one for
        round-trip times). Monitoring connections are not pooled and not counted in pool_size."""
        return self.pool_size + MONITOR_CONNECTIONS

    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def client(self, **kw) -> pymongo.MongoClient:
        kw.setdefault("serverSelectionTimeoutMS", 10_000)
        return pymongo.MongoClient(self.uri(), **kw)


def start_gateway(upstream: Upstream, logdir: Path, name: str = "mongomux", pool_size: int = POOL_SIZE,
                  extra_args: tuple = (), metrics: bool = False, startup_timeout: float = 20.0,
                  listen: str = "127.0.0.1:0", upstream_uri: str | None = None,
                  credentials_in_env: bool = True, wrapper: tuple = (), drain_timeout: str = "2s") -> Gateway:
    """Start `mongomux serve` and wait for its "listening on" line.

    `upstream_uri` replaces the upstream's own (credential-free) URI; with
    `credentials_in_env=False` the upstream user and password are not put in
    MONGOMUX_UPSTREAM_USERNAME/PASSWORD (the caller put them in the URI instead).
    `wrapper` is a command the gateway runs under (e.g. `prlimit --nofile=N:N --`).
    `drain_timeout` is short by default, so that stopping a gateway never holds a test up.
    """
    binary = _binary("MONGOMUX_BIN", ROOT / "target/debug/mongomux")
    # Only what this fixture sets: a developer's own MONGOMUX_* settings must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONGOMUX_")}
    env.setdefault("RUST_BACKTRACE", "1")
    env["MONGOMUX_LOG"] = os.environ.get("MONGOMUX_TEST_GATEWAY_LOG", "info")
    if upstream.username and credentials_in_env:
        env["MONGOMUX_UPSTREAM_USERNAME"] = upstream.username
        env["MONGOMUX_UPSTREAM_PASSWORD"] = upstream.password
    cmd = [*wrapper, binary, "serve", "--listen", listen, "--upstream", upstream_uri or upstream.gateway_upstream_uri(),
           "--pool-size", pool_size, "--drain-timeout", drain_timeout, *extra_args]
    if metrics:
        cmd += ["--metrics-listen", "127.0.0.1:0"]
    popen, log = _spawn(name, cmd, logdir, env, stdout_pipe=True)

    # The contract: once bound, the gateway prints "mongomux: listening on HOST:PORT" to stdout.
    # A thread keeps draining stdout (into the log and a list) so the pipe can never fill up.
    lines: queue.Queue = queue.Queue()
    seen: list = []

    def pump():
        with open(log, "ab") as f:
            for raw in popen.stdout:
                f.write(b"[stdout] " + raw)
                f.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                seen.append(line)
                lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True, name=f"{name}-stdout").start()
    port = metrics_port = None
    deadline = time.monotonic() + startup_timeout
    while port is None or (metrics and metrics_port is None):
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            popen.kill()
            popen.wait()
            raise AssertionError(f"{name}: no 'mongomux: listening on' line within {startup_timeout}s\n"
                                 f"stdout so far: {seen}\n{tail(log)}")
        if line is None:
            popen.wait()
            raise AssertionError(f"{name} exited with {popen.returncode} before listening:\n{tail(log)}")
        if m := LISTENING.match(line):
            port = int(m.group(2))
        elif m := METRICS.match(line):
            metrics_port = int(m.group(2))
    proc = Proc(name, popen, port, log, stop_timeout=10.0)
    _running.append(proc)
    return Gateway(proc, upstream, pool_size, metrics_port, seen)


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def logdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def ferretdb(logdir):
    up = start_ferretdb(logdir)
    yield up
    up.proc.stop()


@pytest.fixture(scope="session")
def nx(logdir):
    up = start_nx(logdir)
    yield up
    up.proc.stop()


@pytest.fixture(scope="session")
def gateway(ferretdb, logdir):
    """The gateway in front of FerretDB, --pool-size POOL_SIZE."""
    gw = start_gateway(ferretdb, logdir)
    yield gw
    code = gw.proc.stop()
    assert gw.proc.exited_on_its_own is None, \
        f"gateway had exited by itself with code {gw.proc.exited_on_its_own}:\n{tail(gw.proc.log)}"
    assert code == 0, f"gateway exited with {code} on SIGTERM:\n{tail(gw.proc.log)}"


@pytest.fixture(scope="session")
def nx_gateway(nx, logdir):
    """A second gateway, in front of nx-27017 (which has transactions)."""
    gw = start_gateway(nx, logdir, name="mongomux-nx")
    yield gw
    gw.proc.stop()


@pytest.fixture
def clients():
    """Make MongoClients that are closed when the test ends: clients(target_or_uri, **kw)."""
    made = []

    def make(target, **kw):
        c = target.client(**kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture(params=["direct", "gateway"])
def target(request):
    """Run a test against FerretDB directly (the reference) and through the gateway."""
    if request.param == "direct":
        return request.getfixturevalue("ferretdb")
    return request.getfixturevalue("gateway")


@pytest.fixture
def client(target, clients):
    return clients(target)


def _db_name(request, suffix: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", request.node.originalname.removeprefix("test_"))
    return f"{name[:40]}_{suffix}"


@pytest.fixture
def db(client, request):
    """A fresh database for this test, dropped before and after."""
    suffix = request.node.callspec.params.get("target", "x")[0] if hasattr(request.node, "callspec") else "x"
    name = _db_name(request, suffix)
    client.drop_database(name)
    yield client[name]
    client.drop_database(name)


# ---------------------------------------------------------------------------
# Reports: on failure, show what the servers logged.


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for proc in list(_running):
            state = "running" if proc.alive() else f"EXITED with {proc.popen.returncode}"
            report.sections.append((f"{proc.name} log tail ({state}, {proc.log})", tail(proc.log, 30)))
    return report
