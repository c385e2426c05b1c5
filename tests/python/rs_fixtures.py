"""Replica sets and sharded-cluster routers for tests: FerretDB behind the rsharness stand-in,
and a small API to fault them.

The gateway must discover replica sets, route by read preference and follow failovers, but no
MongoDB server can run here. `rsharness` (see its package docstring) poses as the members of a
set in front of FerretDB; this module starts it and drives it. Everything a test needs:

    rs = make_replset(n=3)              # or the `replset` fixture: 3 members, one FerretDB
    rs.members                          # ["127.0.0.1:PORT", ...]; member 0 starts as primary
    rs.username, rs.password            # the credential that works on every member
    rs.address(i)                       # member i as pymongo names it: (host, port)
    rs.uri(seed=1)                      # mongodb://user:pw@<member 1>/?authSource=admin&replicaSet=rs0
    rs.uri(seed=1, direct=True)         # ...&directConnection=true (no replicaSet)
    rs.client(seed=0, **pymongo_kw)     # a MongoClient closed at teardown
    rs.counts()                         # {host: {"served": {cmd: n}, "refused": {cmd: n}}}
    rs.served(i, "find")                # one counter; rs.reset_counts() zeroes them all
    rs.step_down(); rs.elect(i)         # no primary, then member i primary (new term and electionId;
                                        # elect(i, bump_set_version=True) also bumps setVersion)
    rs.lag(i, secs)                     # member i's lastWrite falls secs behind
    rs.hang(i) / rs.hang(i, on=False)   # requests are read and never answered
    rs.disappear(i) / rs.reappear(i)    # listener and connections closed / back, new processId
    rs.add_member() -> i; rs.remove_member(i); rs.set_tags(i, {...})
    rs.recovering(i, on=True, code=11600); rs.stale_primary(i); rs.status()
    rs.set_compressors(["zstd"])         # what members offer to new connections ([] = none)
    rs.compressed(i)                    # {compressor: requests member i got compressed}
    rs.wire_bytes(i)                    # {"in": n, "out": n}: bytes on member i's client sockets

`make_replset(separate_backends=True)` gives each member its own FerretDB, so a test can prove
which member served a read (by default all share one, so data survives a failover).
`make_replset(backend=nx)` puts the set in front of nx-27017, which has transactions.
`make_replset(compressors=[...])` starts it offering those compressors (default: all it can run).
`failover_time(rs, client, new_primary, election_delay=0)` measures step-down to the first
successful write; `wait_for_primary(client, rs.address(i))` waits for a driver to follow.

Routers of a sharded cluster (the harness's mongos persona, `rsharness/mongos.py`):

    sc = make_mongos(n=3)               # 3 routers in front of the session's FerretDB
    sc.members, sc.address(i), sc.uri(seed=[0, 1, 2]), sc.client(...)   # as above, no replicaSet
    sc.served(i, "find"), sc.counts(), sc.reset_counts()
    sc.hello_delay(i, ms, jitter_ms=0)  # router i answers every hello ms (± jitter) later: a slow router
    sc.quiesce(i) / sc.quiesce(i, on=False)   # hello and commands answer 91 ShutdownInProgress
    sc.quiesce(i, wake=False)           # ... before the monitors' pending hellos notice
    sc.disappear(i) / sc.reappear(i); sc.hang(i); sc.status()
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pymongo
import pytest

from conftest import ROOT, Proc, Upstream, _running, _spawn, start_ferretdb, tail

HARNESS_DIR = ROOT / "tests/python"
READY = "rsharness: ready "
SHARED_USER = "rsharness"


@dataclass
class Harness:
    """One rsharness process (a replica set or a cluster's routers) and its control channel."""

    proc: Proc
    members: list[str]
    backends: list[Upstream]
    control_addr: tuple[str, int]
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # kept out of failure reports
    _clients: list = field(default_factory=list, repr=False)
    _ctl: socket.socket | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- connecting ----------------------------------------------------------------------

    def topology_options(self, direct: bool) -> dict:
        """The URI options that say what the seeds are."""
        return {"directConnection": "true"} if direct else {}

    def uri(self, seed: int | list[int] = 0, direct: bool = False, credentials: bool = True, **options) -> str:
        """A URI seeded with member(s) `seed`; `options` become URI options (True -> "true")."""
        seeds = [seed] if isinstance(seed, int) else seed
        auth = f"{self.username}:{self.password}@" if credentials and self.username else ""
        opts = {"authSource": "admin"} if auth else {}
        opts.update(self.topology_options(direct))
        opts.update({k: str(v).lower() if isinstance(v, bool) else v for k, v in options.items()})
        return f"mongodb://{auth}{','.join(self.members[i] for i in seeds)}/?{urlencode(opts)}"

    def client(self, seed: int | list[int] = 0, direct: bool = False, credentials: bool = True,
               **kw) -> pymongo.MongoClient:
        kw.setdefault("serverSelectionTimeoutMS", 10_000)
        c = pymongo.MongoClient(self.uri(seed, direct, credentials), **kw)
        self._clients.append(c)
        return c

    def address(self, i: int) -> tuple[str, int]:
        """Member i as pymongo names servers: (host, port)."""
        host, port = self.members[i].rsplit(":", 1)
        return host, int(port)

    # --- control -------------------------------------------------------------------------

    def control(self, op: str, **args):
        """One control operation (see rsharness/control.py); raises on an error reply."""
        with self._lock:
            if self._ctl is None:
                self._ctl = socket.create_connection(self.control_addr, timeout=10)
                self._ctl_file = self._ctl.makefile("rb")
            self._ctl.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            line = self._ctl_file.readline()
        if not line:
            raise AssertionError(f"rsharness closed the control channel:\n{tail(self.proc.log)}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AssertionError(f"rsharness {op}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        self.proc.stop()

    def status(self) -> dict:
        return self.control("status")

    def counts(self, reset: bool = False) -> dict:
        return self.control("counts", reset=reset)

    def reset_counts(self) -> None:
        self.counts(reset=True)

    def served(self, i: int, command: str) -> int:
        return self.counts()[self.members[i]]["served"].get(command, 0)

    def refused(self, i: int, command: str) -> int:
        return self.counts()[self.members[i]]["refused"].get(command, 0)

    def hang(self, i: int, on: bool = True):
        return self.control("hang", member=i, on=on)

    def disappear(self, i: int):
        return self.control("disappear", member=i)

    def reappear(self, i: int):
        return self.control("reappear", member=i)


@dataclass
class ReplicaSet(Harness):
    set_name: str = "rs0"

    def topology_options(self, direct: bool) -> dict:
        return {"directConnection": "true"} if direct else {"replicaSet": self.set_name}

    def step_down(self):
        return self.control("step_down")

    def elect(self, i: int, bump_set_version: bool = False):
        return self.control("elect", member=i, bump_set_version=bump_set_version)

    def lag(self, i: int, secs: float):
        return self.control("lag", member=i, secs=secs)

    def clock_offset(self, i: int, secs: int):
        """Member i's cluster clock runs `secs` ahead of the others (behind if negative)."""
        return self.control("clock_offset", member=i, secs=secs)

    def add_member(self) -> int:
        result = self.control("add_member")
        self.members.append(result["host"])
        return result["member"]

    def remove_member(self, i: int):
        return self.control("remove_member", member=i)

    def set_tags(self, i: int, tags: dict):
        return self.control("set_tags", member=i, tags=tags)

    def recovering(self, i: int, on: bool = True, code: int = 11600):
        return self.control("recovering", member=i, on=on, code=code)

    def stale_primary(self, i: int):
        return self.control("stale_primary", member=i)

    def set_compressors(self, names: list[str]):
        return self.control("compressors", names=names)

    def compressed(self, i: int) -> dict:
        return self.counts()[self.members[i]]["compressed"]

    def wire_bytes(self, i: int) -> dict:
        return self.counts()[self.members[i]]["wire"]


@dataclass
class MongosCluster(Harness):
    """The routers of a sharded cluster (mongos personas)."""

    def hello_delay(self, i: int, ms: float, jitter_ms: float = 0):
        return self.control("hello_delay", member=i, ms=ms, jitter_ms=jitter_ms)

    def quiesce(self, i: int, on: bool = True, wake: bool = True):
        return self.control("quiesce", member=i, on=on, wake=wake)


def _start_harness(logdir: Path, name: str, args: list, backends: list[Upstream],
                   timeout: float, compressors: list[str] | None = None) -> tuple[Proc, dict]:
    """Runs `python -m rsharness ARGS --backend ...` and waits for its ready line."""
    cmd = [sys.executable, "-m", "rsharness", *args]
    for b in backends:
        cmd += ["--backend", f"127.0.0.1:{b.port}"]
    if compressors is not None:
        cmd += ["--compressors", ",".join(compressors) or "none"]
    env = dict(os.environ, PYTHONPATH=str(HARNESS_DIR), PYTHONUNBUFFERED="1")
    popen, log = _spawn(name, cmd, logdir, env, stdout_pipe=True)
    lines: queue.Queue = queue.Queue()

    def pump():  # keep draining stdout so the pipe never fills
        with open(log, "ab") as f:
            for raw in popen.stdout:
                f.write(b"[stdout] " + raw)
                f.flush()
                lines.put(raw.decode(errors="replace"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            popen.kill()
            raise AssertionError(f"rsharness not ready within {timeout}s:\n{tail(log)}")
        if line is None:
            popen.wait()
            raise AssertionError(f"rsharness exited with {popen.returncode}:\n{tail(log)}")
        if line.startswith(READY):
            info = json.loads(line[len(READY):])
            break
    port = int(info["control"].rsplit(":", 1)[1])
    proc = Proc(name, popen, port, log, stop_timeout=5.0)
    _running.append(proc)
    return proc, info


def start_replset(logdir: Path, backends: list[Upstream], n: int = 3, set_name: str = "rs0",
                  member_ips: list[str] | None = None, timeout: float = 15.0,
                  compressors: list[str] | None = None) -> ReplicaSet:
    """Start the harness with `n` members relaying to `backends` (one shared, or one each)."""
    assert len(backends) in (1, n), "one backend for all members, or one per member"
    args = ["--set-name", set_name, "--members", n, "--member-ips", ",".join(member_ips or ["127.0.0.1"])]
    proc, info = _start_harness(logdir, f"rsharness-{set_name}", args, backends, timeout, compressors)
    host, port = info["control"].rsplit(":", 1)
    rs = ReplicaSet(proc=proc, members=info["members"], backends=backends,
                    control_addr=(host, int(port)), set_name=set_name)
    rs.username, rs.password = backends[0].username, backends[0].password
    if len(backends) > 1:
        # Each FerretDB has its own random setup password: give them one common user, so a
        # driver's one credential works on every member.
        rs.username, rs.password = SHARED_USER, secrets.token_urlsafe(18)
        for b in backends:
            with b.client() as c:
                c.admin.command("createUser", SHARED_USER, pwd=rs.password, roles=[])  # FerretDB 1.24: no roles
    return rs


def start_mongos(logdir: Path, backend: Upstream, n: int = 3, timeout: float = 15.0) -> MongosCluster:
    """Start `n` mongos personas relaying to `backend`."""
    proc, info = _start_harness(logdir, f"rsharness-mongos-{secrets.token_hex(2)}",
                                ["--mongos", "--members", n], [backend], timeout)
    host, port = info["control"].rsplit(":", 1)
    sc = MongosCluster(proc=proc, members=info["members"], backends=[backend],
                       control_addr=(host, int(port)))
    sc.username, sc.password = backend.username, backend.password
    return sc


def wait_for_primary(client: pymongo.MongoClient, address: tuple[str, int], timeout: float = 10.0) -> None:
    """Block until the client's topology names `address` as primary."""
    deadline = time.monotonic() + timeout
    while client.primary != address:
        if time.monotonic() > deadline:
            raise AssertionError(f"primary is {client.primary}, not {address}, after {timeout}s:\n"
                                 f"{client.topology_description}")
        time.sleep(0.02)


def failover_time(rs: ReplicaSet, client: pymongo.MongoClient, new_primary: int,
                  election_delay: float = 0.0, db: str = "rs_failover") -> float:
    """Seconds from step_down to the first successful insert through `client`, with the
    election of `new_primary` `election_delay` seconds after the step-down (a real election
    takes a while; 0 measures only the driver's reaction). The client must be connected."""
    coll = client[db]["probe"]
    coll.insert_one({"phase": "before"})
    elect = threading.Timer(election_delay, rs.elect, args=(new_primary,))
    start = time.monotonic()
    rs.step_down()
    elect.start()
    try:
        while True:
            try:
                coll.insert_one({"phase": "after"})
                return time.monotonic() - start
            except pymongo.errors.PyMongoError:
                if time.monotonic() - start > 30:
                    raise
    finally:
        elect.join()


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def make_replset(ferretdb, logdir, tmp_path):
    """make_replset(n=3, separate_backends=False, set_name="rs0", backend=None, compressors=None): a fresh harness
    per call, stopped at teardown. Shared-backend sets use the session's FerretDB, or `backend`
    (e.g. the `nx` fixture, for transactions, which FerretDB 1.24 lacks); separate backends are
    started for the call (about a second each)."""
    made: list[ReplicaSet] = []
    extra: list[Upstream] = []

    def make(n: int = 3, separate_backends: bool = False, set_name: str = "rs0",
             backend: Upstream | None = None, compressors: list[str] | None = None) -> ReplicaSet:
        if backend is not None:
            backends = [backend]
        elif separate_backends:
            backends = []
            for i in range(n):
                d = tmp_path / f"{set_name}-backend{i}"
                d.mkdir()
                up = start_ferretdb(d)
                extra.append(up)
                backends.append(up)
        else:
            backends = [ferretdb]
        rs = start_replset(logdir, backends, n, set_name, compressors=compressors)
        made.append(rs)
        return rs

    yield make
    for rs in made:
        rs.close()
    for up in extra:
        up.proc.stop()


@pytest.fixture
def replset(make_replset) -> ReplicaSet:
    """Three members (0 primary, 1 and 2 secondaries) in front of the session's FerretDB."""
    return make_replset()


@pytest.fixture
def make_mongos(ferretdb, logdir):
    """make_mongos(n=3, backend=None): `n` mongos personas in front of the session's FerretDB
    (or `backend`), stopped at teardown."""
    made: list[MongosCluster] = []

    def make(n: int = 3, backend: Upstream | None = None) -> MongosCluster:
        sc = start_mongos(logdir, backend or ferretdb, n)
        made.append(sc)
        return sc

    yield make
    for sc in made:
        sc.close()
