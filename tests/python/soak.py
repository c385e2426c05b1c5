"""The soak (issue 15, part 5): Lambda-style churn through the gateway for a set time, sampled at
a fixed interval, with the slope of every sampled figure; run as `scripts/soak`.

What it owns: the churn, the sampling and the verdict. It starts FerretDB and a gateway with
one SCRAM user (conftest.py, security_fixtures.py), unless it is given the addresses and the
gateway's pid of a running stack. Then, until `--minutes` have passed:

- churn: `--churn-workers` threads open pymongo clients the way a Lambda invocation does
  (`loadBalanced=true`, one connection, SCRAM login), run insert, find, update and delete of one
  document of their own, and close, paced to `--rate` clients per second in all;
- long-lived clients: `--long-lived` threads each keep one plain-URI client (with its monitor)
  for the whole run and run a find and an update every `--long-period` seconds.

Every `--interval` seconds it samples, from outside the gateway: its resident memory
(/proc/PID/status VmRSS), its open descriptors (/proc/PID/fd), its established connections to
the upstream as the kernel lists them (procnet.py; the most seen between samples too, read every
quarter second), and the p50/p99 latency of the operations that finished in the interval (a
client's login is timed apart, as "connect"). It prints one row per sample, then the
least-squares slope per minute of RSS, descriptors, upstream connections and op p99 over the
samples after the warm-up, and fails (exit 1) when a slope rises above its limit by more than
twice its standard error, the upstream ever had more connections than the pool bound, or any
operation failed. Limits are per minute, relative to the figure's median after warm-up with an
absolute floor (see LIMITS), so they hold for a debug or a release build, and for a 2-minute or
a 30-minute run.

What it must never do: leave a process running (every server it starts is stopped on exit,
conftest's atexit hook backs that up), or report a figure it did not sample.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pymongo
from pymongo.errors import PyMongoError

import procnet

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024

# Slope limits per minute: (relative to the post-warm-up median, absolute floor). A figure passes
# when |slope| <= max(relative * median, floor). RSS: a real leak of 1 % of the footprint per
# minute is a third of it over a 30-minute run, visible against the allocator's noise; the
# 1 MiB floor keeps a 2-minute run on a small debug build from failing on that noise alone.
# Descriptors and upstream connections wander with the number of clients in flight at the
# sample, hence floors of a few. p99 on a shared 2-core machine is the noisiest: a fifth of its
# median per minute still catches a latency that keeps climbing.
LIMITS = {
    "rss_mib": (0.01, 1.0),
    "fds": (0.02, 3.0),
    "upstream": (0.0, 0.5),
    "p99_ms": (0.20, 2.0),
}


@dataclass
class Target:
    """The stack under soak: where the gateway listens, its pid, and the upstream it uses."""

    gateway_port: int
    gateway_pid: int
    upstream_port: int
    user: str
    password: str = field(repr=False)
    pool_bound: int  # most upstream connections allowed: pool plus monitoring

    def uri(self, **options) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"authSource": "admin", **options}.items())
        return f"mongodb://{self.user}:{self.password}@127.0.0.1:{self.gateway_port}/?{query}"


class Window:
    """What finished since the last sample: op and login latencies (ms), errors, clients."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: list[float] = []
        self.logins: list[float] = []
        self.errors: list[str] = []
        self.churned = 0
        self.total_errors = 0

    def op(self, ms: float) -> None:
        with self.lock:
            self.ops.append(ms)

    def login(self, ms: float) -> None:
        with self.lock:
            self.logins.append(ms)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)
            self.total_errors += 1

    def client_done(self) -> None:
        with self.lock:
            self.churned += 1

    def take(self) -> tuple[list[float], list[float], list[str], int]:
        with self.lock:
            out = (self.ops, self.logins, self.errors, self.churned)
            self.ops, self.logins, self.errors, self.churned = [], [], [], 0
        return out


def timed(win: Window, fn, *args, **kw):
    t0 = time.perf_counter()
    result = fn(*args, **kw)
    win.op((time.perf_counter() - t0) * 1000)
    return result


def churn_worker(target: Target, win: Window, stop: threading.Event, period: float, n: int) -> None:
    """One Lambda after another: client, login, four operations on its own document, close.
    Paced to one client per `period` seconds, so the load is the same whatever the latency."""
    uri = target.uri(loadBalanced="true")
    next_at = time.monotonic()
    i = 0
    while not stop.is_set():
        doc_id = f"c{n}-{i}-{uuid.uuid4().hex[:6]}"
        i += 1
        try:
            with pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000, connectTimeoutMS=10_000,
                                     socketTimeoutMS=30_000) as client:
                coll = client.soak.churn
                t0 = time.perf_counter()
                client.admin.command("ping")  # connect, hello and SCRAM login, then one round
                win.login((time.perf_counter() - t0) * 1000)
                timed(win, coll.insert_one, {"_id": doc_id, "n": 0})
                timed(win, coll.find_one, {"_id": doc_id})
                timed(win, coll.update_one, {"_id": doc_id}, {"$inc": {"n": 1}})
                timed(win, coll.delete_one, {"_id": doc_id})
            win.client_done()
        except PyMongoError as e:
            win.error(f"churn: {type(e).__name__}: {str(e)[:160]}")
        next_at += period
        stop.wait(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at, time.monotonic() - period)  # after a stall, do not burst to catch up


def long_lived_worker(target: Target, win: Window, stop: threading.Event, period: float, n: int) -> None:
    """One client for the whole run (plain URI, so it has a monitor too): a find and an update of
    its own document every `period` seconds."""
    doc_id = f"long-{n}-{uuid.uuid4().hex[:6]}"
    with pymongo.MongoClient(target.uri(), maxPoolSize=2, serverSelectionTimeoutMS=10_000,
                             socketTimeoutMS=30_000) as client:
        coll = client.soak.long
        try:
            coll.insert_one({"_id": doc_id, "n": 0})
        except PyMongoError as e:
            win.error(f"long-lived insert: {type(e).__name__}: {str(e)[:160]}")
        while not stop.wait(period):
            try:
                timed(win, coll.find_one, {"_id": doc_id})
                timed(win, coll.update_one, {"_id": doc_id}, {"$inc": {"n": 1}})
            except PyMongoError as e:
                win.error(f"long-lived: {type(e).__name__}: {str(e)[:160]}")
        try:
            coll.delete_one({"_id": doc_id})
        except PyMongoError:
            pass  # the stack is going away; nothing to report


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def slope_per_minute(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares slope of (seconds, value) points and its standard error, both per minute
    (the error is 0 with two points, where it cannot be estimated)."""
    if len(points) < 2:
        return None
    mx = statistics.fmean(t for t, _ in points)
    my = statistics.fmean(v for _, v in points)
    den = sum((t - mx) ** 2 for t, _ in points)
    if den == 0:
        return None
    slope = sum((t - mx) * (v - my) for t, v in points) / den
    if len(points) < 3:
        return slope * 60, 0.0
    residual = sum((v - my - slope * (t - mx)) ** 2 for t, v in points) / (len(points) - 2)
    return slope * 60, (residual / den) ** 0.5 * 60


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


COLUMNS = ["t_s", "rss_mib", "fds", "upstream", "upstream_max", "clients", "ops", "errors",
           "p50_ms", "p99_ms", "login_p99_ms"]


def print_row(row: dict) -> None:
    print(f"{row['t_s']:>6.0f} {row['rss_mib']:>8.1f} {row['fds']:>5} {row['upstream']:>4}/"
          f"{row['upstream_max']:<4} {row['clients']:>7} {row['ops']:>7} {row['errors']:>6} "
          f"{fmt(row['p50_ms'], '.2f'):>7} {fmt(row['p99_ms'], '.2f'):>7} {fmt(row['login_p99_ms'], '.1f'):>9}",
          flush=True)


def verdict(rows: list[dict], warmup_s: float, bound: int, total_errors: int) -> tuple[list[str], list[str]]:
    """Lines describing each slope, and the failures (empty when the soak passed)."""
    lines, failures = [], []
    steady = [r for r in rows if r["t_s"] > warmup_s]
    if len(steady) < 2:
        failures.append(f"only {len(steady)} samples after the {warmup_s:.0f} s warm-up: run longer")
        return lines, failures
    for key, (rel, floor) in LIMITS.items():
        pts = [(r["t_s"], r[key]) for r in steady if r[key] is not None]
        fit = slope_per_minute(pts)
        med = statistics.median(v for _, v in pts) if pts else 0.0
        limit = max(rel * med, floor)
        # Only a rise fails (a figure that falls, as latency does while a debug build warms up,
        # leaks nothing), and only one above the limit by more than twice its standard error:
        # a short run's p99 wanders by more than any limit worth having, and that wandering is
        # noise, not a trend; a real trend (a leak) has a small error and still fails.
        ok = fit is not None and fit[0] - 2 * fit[1] <= limit
        shown = "-" if fit is None else f"{fit[0]:+.3f} ± {fit[1]:.3f}"
        lines.append(f"  {key:<9} slope {shown:>17}/min  (median {med:.2f}; limit +{limit:.3f}/min) "
                     f"{'ok' if ok else 'TOO STEEP'}")
        if not ok:
            failures.append(f"{key} slope {shown}/min exceeds +{limit:.3f}/min by more than twice its error")
    most = max(r["upstream_max"] for r in rows)
    lines.append(f"  upstream connections: at most {most} seen (bound {bound})")
    if most > bound:
        failures.append(f"{most} upstream connections seen, more than the bound {bound}")
    if total_errors:
        failures.append(f"{total_errors} operations failed")
    return lines, failures


class UpstreamMax:
    """Reads the upstream connection count every quarter second; take() gives the most seen since
    the last take, so a burst between two samples is not missed."""

    def __init__(self, target: Target, stop: threading.Event) -> None:
        self.target, self.stop, self.most, self.lock = target, stop, 0, threading.Lock()
        threading.Thread(target=self._run, daemon=True, name="upstream-max").start()

    def count(self) -> int:
        return procnet.upstream_connections(self.target.upstream_port, self.target.gateway_pid)

    def _run(self) -> None:
        while not self.stop.wait(0.25):
            n = self.count()
            with self.lock:
                self.most = max(self.most, n)

    def take(self, now: int) -> int:
        with self.lock:
            most, self.most = max(self.most, now), 0
        return most


def run(target: Target, args, csv_path: Path | None) -> int:
    """The soak itself against a running stack; returns the exit status."""
    win, stop = Window(), threading.Event()
    workers = [threading.Thread(target=long_lived_worker, args=(target, win, stop, args.long_period, n),
                                daemon=True, name=f"long-{n}") for n in range(args.long_lived)]
    period = args.churn_workers / args.rate
    workers += [threading.Thread(target=churn_worker, args=(target, win, stop, period, n), daemon=True,
                                 name=f"churn-{n}") for n in range(args.churn_workers)]
    upstream = UpstreamMax(target, stop)
    run_id = int(time.time())
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else max(30.0, args.interval, duration * 0.1)
    print(f"soak: {args.minutes:g} min, a sample every {args.interval:g} s, warm-up {warmup:g} s; "
          f"{args.churn_workers} churn workers at {args.rate:g} clients/s, {args.long_lived} long-lived "
          f"clients; gateway pid {target.gateway_pid} on port {target.gateway_port}, upstream port "
          f"{target.upstream_port}, pool bound {target.pool_bound}", flush=True)
    print(f"{'t_s':>6} {'rss_MiB':>8} {'fds':>5} {'up/max':>9} {'clients':>7} {'ops':>7} {'errors':>6} "
          f"{'p50_ms':>7} {'p99_ms':>7} {'login_p99':>9}", flush=True)
    rows: list[dict] = []
    start = time.monotonic()
    for w in workers:
        w.start()
    try:
        k = 0
        while True:
            k += 1
            at = start + k * args.interval
            if at > start + duration + 0.001:
                break
            time.sleep(max(0.0, at - time.monotonic()))
            ops, logins, errors, churned = win.take()
            now = upstream.count()
            row = {"t_s": round(time.monotonic() - start, 1), "rss_mib": rss_mib(target.gateway_pid),
                   "fds": fd_count(target.gateway_pid), "upstream": now, "upstream_max": upstream.take(now),
                   "clients": churned, "ops": len(ops), "errors": len(errors), "p50_ms": pct(ops, 50),
                   "p99_ms": pct(ops, 99), "login_p99_ms": pct(logins, 99)}
            rows.append(row)
            print_row(row)
            for e in errors[:2]:
                print(f"        error: {e}", flush=True)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    if csv_path:
        write_csv(csv_path, run_id, args, warmup, rows)
    lines, failures = verdict(rows, warmup, target.pool_bound, win.total_errors)
    total_clients = sum(r["clients"] for r in rows)
    total_ops = sum(r["ops"] for r in rows)
    print(f"soak: {total_clients} short-lived clients, {total_ops} timed operations, "
          f"{win.total_errors} errors; slopes over the {sum(r['t_s'] > warmup for r in rows)} samples "
          f"after the warm-up:")
    print("\n".join(lines))
    if failures:
        print("soak: FAILED: " + "; ".join(failures))
        return 1
    print("soak: all flat")
    return 0


def write_csv(path: Path, run_id: int, args, warmup: float, rows: list[dict]) -> None:
    """Appends this run's rows (with run id, duration, interval and warm-up) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["run", "minutes", "interval_s", "warmup_s", *COLUMNS])
        for r in rows:
            w.writerow([run_id, args.minutes, args.interval, warmup,
                        *("" if r[c] is None else (round(r[c], 3) if isinstance(r[c], float) else r[c])
                          for c in COLUMNS)])
    print(f"soak: rows appended to {path}")


def start_stack(folder: Path, pool_size: int):
    """FerretDB and a gateway with one readWrite SCRAM user; returns (target, stop)."""
    from conftest import MONITOR_CONNECTIONS, start_ferretdb, start_gateway
    from security_fixtures import make_user, write_config

    ferret = start_ferretdb(folder)
    user = make_user("soak-fn")
    cfg = write_config(folder / "soak.toml", [user])
    gw = start_gateway(ferret, folder, name="mongomux-soak", pool_size=pool_size,
                       extra_args=("--config", str(cfg)))

    def stop() -> None:
        gw.proc.stop()
        ferret.proc.stop()

    target = Target(gw.port, gw.pid, ferret.port, user.name, user.password, pool_size + MONITOR_CONNECTIONS)
    return target, stop


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="scripts/soak")
    p.add_argument("--minutes", type=float, default=30.0, help="how long to soak (default 30)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between samples (default 60)")
    p.add_argument("--warmup", type=float, help="seconds left out of the slopes (default: 10%% of the "
                   "run, at least one interval and 30 s)")
    p.add_argument("--rate", type=float, default=15.0, help="short-lived clients per second (default 15)")
    p.add_argument("--churn-workers", type=int, default=6, help="threads running short-lived clients")
    p.add_argument("--long-lived", type=int, default=10, help="long-lived clients (default 10)")
    p.add_argument("--long-period", type=float, default=0.2, help="seconds between a long-lived "
                   "client's rounds (default 0.2)")
    p.add_argument("--pool-size", type=int, default=8, help="the started gateway's --pool-size")
    p.add_argument("--csv", type=Path, help="append the samples to this CSV file")
    p.add_argument("--gateway", help="HOST:PORT of a running gateway (then also --gateway-pid, "
                   "--upstream-port, --pool-bound and MONGOMUX_SOAK_USER/MONGOMUX_SOAK_PASSWORD)")
    p.add_argument("--gateway-pid", type=int)
    p.add_argument("--upstream-port", type=int)
    p.add_argument("--pool-bound", type=int, help="most upstream connections allowed (pool + monitoring)")
    args = p.parse_args(argv)
    if args.minutes * 60 < 2 * args.interval:
        p.error("--minutes must cover at least two --interval")
    if args.gateway:
        if None in (args.gateway_pid, args.upstream_port, args.pool_bound):
            p.error("--gateway needs --gateway-pid, --upstream-port and --pool-bound")
        port = int(args.gateway.rsplit(":", 1)[1])
        target = Target(port, args.gateway_pid, args.upstream_port, os.environ["MONGOMUX_SOAK_USER"],
                        os.environ["MONGOMUX_SOAK_PASSWORD"], args.pool_bound)
        return run(target, args, args.csv)
    with tempfile.TemporaryDirectory(prefix="mongomux-soak-") as folder:
        target, stop = start_stack(Path(folder), args.pool_size)
        try:
            return run(target, args, args.csv)
        finally:
            stop()


if __name__ == "__main__":
    sys.exit(main())
