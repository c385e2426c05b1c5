"""Reconnect storms (issue 15, part 4): 5,000 authenticated clients lose their gateway at once
and all come back at once, (a) when the gateway restarts on its port and (b) when one of three
gateways behind HAProxy is drained.

The clients are storm_clients.py processes (raw wire, SCRAM-SHA-256 with speculative
authentication, one socket each), a few processes so no process nears the descriptor limit. A
canary, a process of its own, runs a find every 10 ms on an authenticated connection before,
during and after the storm. Checked and printed:

- the upstream's established connections, read from /proc/net/tcp at FerretDB's port every
  0.1 s, never exceed the gateways' pool bound (pool plus monitoring, per gateway);
- the canary keeps being served during the storm (no failed operation once it is logged in); the
  p50/p99 of its finds (which queue for the upstream pool with the storm's own operations) and
  of its pings (which the gateway answers itself, so they show whether accepting and logging in
  thousands of clients starves a client that is already authenticated) before and during the
  storm are printed;
- every client that lost its connection logs in again and its next operation succeeds, and the
  time until the last one did is printed; afterwards one find on every one of the 5,000 succeeds.

`MONGOMUX_STORM_CLIENTS` lowers the count (a quick local run); the default is the issue's 5,000.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import procnet
from conftest import MONITOR_CONNECTIONS, start_ferretdb, start_gateway, tail, wait_until
from security_fixtures import make_user, write_config
from test_scale_out import start_balancer

CLIENTS = int(os.environ.get("MONGOMUX_STORM_CLIENTS", "5000"))
PROCESSES = 4
POOL = 8
CANARY_PERIOD = 0.01
SCRIPT = Path(__file__).with_name("storm_clients.py")


class Proc:
    """One storm_clients.py process, spoken to in JSON lines; killed when closed."""

    def __init__(self, port: int, user, count: int, *extra: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--port", str(port), "--user", user.name, "--count", str(count), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=SCRIPT.parent)
        self.popen.stdin.write(user.password + "\n")
        self.popen.stdin.flush()

    def read(self, timeout: float = 180.0) -> dict:
        """The next JSON line (the processes bound every wait of their own; this bounds a crash)."""
        result: list = []
        t = threading.Thread(target=lambda: result.append(self.popen.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        assert result and result[0], f"storm_clients.py said nothing (exit {self.popen.poll()})"
        return json.loads(result[0])

    def ask(self, word: str, timeout: float = 180.0) -> dict:
        self.popen.stdin.write(word + "\n")
        self.popen.stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        try:
            self.popen.stdin.write("quit\n")
            self.popen.stdin.close()
            self.popen.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.popen.kill()
            self.popen.wait()


class Fleet:
    """CLIENTS clients over PROCESSES processes, all logged in and idle once started."""

    def __init__(self, port: int, user) -> None:
        shares = [CLIENTS // PROCESSES + (i < CLIENTS % PROCESSES) for i in range(PROCESSES)]
        self.procs = [Proc(port, user, n) for n in shares]
        t0 = time.monotonic()
        held = [p.read() for p in self.procs]
        self.held = sum(h["held"] for h in held)
        self.login_secs = time.monotonic() - t0
        assert self.held == CLIENTS, f"only {self.held}/{CLIENTS} clients logged in: {held}"

    def report(self) -> dict:
        parts = [p.ask("report") for p in self.procs]
        errors: dict = {}
        for part in parts:
            for k, v in part["errors"].items():
                errors[k] = errors.get(k, 0) + v
        done = sorted(t for part in parts for t in part["done_times"])
        return {"closed": sum(p["closed"] for p in parts), "reconnected": sum(p["reconnected"] for p in parts),
                "done_times": done, "errors": errors, "max_logins": max(p["max_logins"] for p in parts)}

    def op_all(self) -> dict:
        for p in self.procs:
            p.popen.stdin.write("op\n")
            p.popen.stdin.flush()
        parts = [p.read() for p in self.procs]
        return {"ok": sum(p["ok"] for p in parts), "failed": sum(p["failed"] for p in parts),
                "first_errors": [e for p in parts for e in p["first_errors"]][:3],
                "p99_ms": max((p["p99_ms"] or 0) for p in parts)}

    def close(self) -> None:
        for p in self.procs:
            p.close()


class UpstreamSampler:
    """Established connections at the upstream's port, every 0.1 s in a thread; `.max` and the
    series. No pid filter: only the gateways of this test talk to this FerretDB, and a restart
    changes the gateway's pid mid-run."""

    def __init__(self, port: int) -> None:
        self.port, self.max, self.series = port, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            n = procnet.upstream_connections(self.port)
            self.series.append((time.monotonic(), n))
            self.max = max(self.max, n)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def cpu_seconds(pids) -> float:
    """User plus system CPU seconds the processes `pids` have used so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def canary_figures(samples: list, before: tuple[float, float], during: tuple[float, float]) -> dict:
    """p50/p99/max (ms) of the canary's finds and pings, and its failed rounds, in the two windows."""
    out = {}
    for name, (lo, hi) in (("before", before), ("during", during)):
        window = [(find, ping) for t, find, ping in samples if lo <= t < hi]
        finds = [f for f, _ in window if f is not None]
        pings = [p for _, p in window if p is not None]
        out[name] = {"n": len(window), "failed": len(window) - len(finds), "p50": pct(finds, 50),
                     "p99": pct(finds, 99), "max": max(finds, default=float("nan")), "ping_p50": pct(pings, 50),
                     "ping_p99": pct(pings, 99), "ping_max": max(pings, default=float("nan"))}
    return out


@pytest.fixture(scope="module")
def storm_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("storm")


@pytest.fixture(scope="module")
def storm_ferret(storm_dir):
    up = start_ferretdb(storm_dir)
    with up.client() as c:
        c.storm.docs.insert_many([{"_id": i, "v": "x" * 100} for i in range(10)])
    yield up
    up.proc.stop()


@pytest.fixture(scope="module")
def storm_user():
    return make_user("storm-fn")


@pytest.fixture(scope="module")
def storm_config(storm_dir, storm_user) -> Path:
    return write_config(storm_dir / "storm.toml", [storm_user])


def gateway(ferret, folder: Path, config: Path, name: str, listen: str = "127.0.0.1:0"):
    return start_gateway(ferret, folder, name=name, pool_size=POOL, listen=listen,
                         extra_args=("--config", str(config)))


def report(title: str, fleet: Fleet, storm: dict, t_cut: float, t_back: float, canary: dict,
           sampler: UpstreamSampler, bound: int, after: dict) -> None:
    done = storm["done_times"]
    last = done[-1] if done else float("nan")
    print(f"\n{title}: {CLIENTS} clients logged in over {PROCESSES} processes in {fleet.login_secs:.1f} s; "
          f"{storm['closed']} lost their connection, {storm['reconnected']} logged in again and ran their next "
          f"operation; the last one {last - t_cut:.2f} s after the cut ({last - t_back:.2f} s after the gateway "
          f"was back); half of them by {pct(done, 50) - t_cut:.2f} s, 99 % by {pct(done, 99) - t_cut:.2f} s; "
          f"most logins by one client {storm['max_logins']}")
    for name, c in canary.items():
        label = "during the storm" if name == "during" else name
        print(f"  canary {label:<17} {c['n']:>4} rounds, {c['failed']} failed; "
              f"find p50 {c['p50']:7.2f} p99 {c['p99']:7.2f} max {c['max']:7.1f} ms; "
              f"ping p50 {c['ping_p50']:6.2f} p99 {c['ping_p99']:7.2f} max {c['ping_max']:7.1f} ms")
    print(f"  upstream connections: at most {sampler.max} over {len(sampler.series)} samples (bound {bound})")
    print(f"  afterwards, one find on every client: {after['ok']} ok, {after['failed']} failed, "
          f"p99 {after['p99_ms']:.1f} ms; connection errors seen while reconnecting: "
          f"{dict(sorted(storm['errors'].items(), key=lambda kv: -kv[1])[:4])}")


def wait_reconnected(fleet: Fleet, expected=None, timeout: float = 180.0) -> dict:
    """The fleet's report once every client that lost its connection has come back (and, with
    `expected`, at least that many lost it); fails at `timeout`."""
    last: dict = {}

    def settled():
        last.update(fleet.report())
        return last["closed"] >= (expected or 1) and last["reconnected"] == last["closed"]

    try:
        wait_until(settled, timeout, interval=1.0, what="every client to reconnect")
    except AssertionError:
        raise AssertionError(f"{last.get('reconnected')}/{last.get('closed')} clients reconnected; "
                             f"errors {last.get('errors')}")
    return last


def check(title: str, fleet: Fleet, canary: Proc, sampler: UpstreamSampler, bound: int,
          t_cut: float, t_back: float, expected: int | None, gateways: list, cpu0: float) -> None:
    """Waits for the storm to settle, prints its figures, and asserts the issue's bounds.
    `cpu0` is what `gateways` (pids) had used when the storm began."""
    storm = wait_reconnected(fleet, expected)
    last = storm["done_times"][-1]
    cpu = cpu_seconds(gateways) - cpu0
    print(f"\n{title}: the gateways serving the storm used {cpu:.1f} s of CPU until {time.monotonic() - t_cut:.1f} s "
          f"after the cut")
    seen = canary.ask("report")
    samples = seen["samples"]
    print(f"\n{title}: what the canary saw while reconnecting: {seen['errors'] or 'nothing'}")
    figures = canary_figures(samples, (t_cut - 3, t_cut), (t_back, last))
    after = fleet.op_all()
    sampler.close()
    report(title, fleet, storm, t_cut, t_back, figures, sampler, bound, after)
    assert sampler.max <= bound, f"{sampler.max} upstream connections, bound {bound}"
    assert figures["during"]["n"] > 0, "the canary ran nothing during the storm"
    assert figures["during"]["failed"] == 0, figures
    assert after["ok"] == CLIENTS, after


@pytest.mark.timeout(600)
def test_gateway_restart_storm(storm_ferret, storm_dir, storm_config, storm_user):
    """SIGTERM (drain) and a new gateway on the same port: all 5,000 reconnect at once."""
    gw = gateway(storm_ferret, storm_dir, storm_config, "mongomux-storm")
    port, procs, sampler, new = gw.port, [], None, None
    try:
        fleet = Fleet(port, storm_user)
        procs.append(fleet)
        canary = Proc(port, storm_user, 1, "--canary", str(CANARY_PERIOD))
        procs.append(canary)
        assert canary.read(60) == {"ready": True}
        sampler = UpstreamSampler(storm_ferret.port)
        time.sleep(3)  # the canary's "before"
        t_cut = time.monotonic()
        assert gw.proc.stop() == 0, tail(gw.proc.log)
        new = gateway(storm_ferret, storm_dir, storm_config, "mongomux-storm-new", listen=f"127.0.0.1:{port}")
        t_back = time.monotonic()
        print(f"\nrestart: the old gateway drained and exited in {t_back - t_cut:.2f} s, with the new one listening")
        check("gateway restart", fleet, canary, sampler, POOL + MONITOR_CONNECTIONS, t_cut, t_back, CLIENTS,
              [new.pid], 0.0)
    finally:
        if sampler:
            sampler.close()
        for p in procs:
            p.close()
        gw.proc.stop()
        if new:
            assert new.proc.stop() == 0, tail(new.proc.log)


@pytest.mark.timeout(600)
def test_drain_one_of_three_behind_haproxy_storm(storm_ferret, storm_dir, storm_config, storm_user):
    """HAProxy round-robin over three gateways; one is drained, and its third of the clients
    reconnect at once through HAProxy to the other two. The canary is on one of those two."""
    gws = [gateway(storm_ferret, storm_dir, storm_config, f"mongomux-storm-lb{i}") for i in range(3)]
    lb = start_balancer(storm_dir, [g.port for g in gws], maxconn=CLIENTS + 500, idle="10m")
    procs, sampler = [], None
    try:
        fleet = Fleet(lb.port, storm_user)
        procs.append(fleet)
        canary = Proc(gws[1].port, storm_user, 1, "--canary", str(CANARY_PERIOD))
        procs.append(canary)
        assert canary.read(60) == {"ready": True}
        sampler = UpstreamSampler(storm_ferret.port)
        time.sleep(3)
        t_cut = time.monotonic()
        survivors = [g.pid for g in gws[1:]]
        cpu0 = cpu_seconds(survivors)
        assert gws[0].proc.stop() == 0, tail(gws[0].proc.log)
        check("drain one of three gateways behind HAProxy", fleet, canary, sampler,
              3 * (POOL + MONITOR_CONNECTIONS), t_cut, t_cut, CLIENTS // 4, survivors, cpu0)
    finally:
        if sampler:
            sampler.close()
        for p in procs:
            p.close()
        lb.stop()
        for g in gws:
            g.proc.stop()
