"""Samples a live gateway's /metrics while the soak's Lambda-style churn runs through it, and
writes the dashboard's main panels, computed from those samples, as CSV: the data behind
docs/img/operations-dashboard.png (issue 16: "a PNG of the dashboard rendered from real data,
or an equivalent plot"). `scripts/dashboard-sample` runs it, then bench/plot_dashboard.py draws
it with the benchmarks' matplotlib.

What it owns: starting FerretDB and a gateway with metrics and one SCRAM user, running
`soak.run` against it for `--minutes`, scraping /metrics every `--every` seconds, and turning
counters into per-second rates and histograms into p50/p99 between scrapes, the way the
dashboard's PromQL does (rate over the scrape interval, histogram_quantile over the buckets).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import soak
from conftest import MONITOR_CONNECTIONS, start_ferretdb, start_gateway
from security_fixtures import make_user, write_config

SAMPLE = re.compile(r'^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+|NaN|\+Inf)$')


def scrape(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def total(s: dict, name: str, label_filter: str = "") -> float:
    return sum(v for (n, labels), v in s.items() if n == name and label_filter in labels)


def quantile(prev: dict, cur: dict, name: str, q: float) -> float | None:
    """histogram_quantile over the buckets' increase between two scrapes, in milliseconds."""
    buckets = []
    for (n, labels), v in cur.items():
        if n == f"{name}_bucket":
            le = re.search(r'le="([^"]+)"', labels).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), v - prev.get((n, labels), 0.0)))
    buckets.sort()
    count = buckets[-1][1] if buckets else 0
    if count <= 0:
        return None
    rank, lower, below = q * count, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return lower * 1000
            return (lower + (le - lower) * (rank - below) / max(c - below, 1e-9)) * 1000
        lower, below = le, c
    return None


def ms(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def row(t: float, prev: dict, cur: dict, dt: float) -> dict:
    rate = lambda name, f="": (total(cur, name, f) - total(prev, name, f)) / dt  # noqa: E731
    return {
        "t_s": round(t, 1),
        "client_connections": total(cur, "mongomux_client_connections"),
        "accepted_per_s": round(rate("mongomux_client_connections_total"), 2),
        "upstream_open": total(cur, "mongomux_upstream_connections"),
        "upstream_in_use": total(cur, "mongomux_upstream_connections_in_use"),
        "ops_per_s": round(rate("mongomux_operations_total"), 1),
        "find_per_s": round(rate("mongomux_operations_total", 'command="find"'), 1),
        "insert_per_s": round(rate("mongomux_operations_total", 'command="insert"'), 1),
        "checkout_p99_ms": ms(quantile(prev, cur, "mongomux_checkout_wait_seconds", 0.99)),
        "upstream_p50_ms": ms(quantile(prev, cur, "mongomux_upstream_request_seconds", 0.5)),
        "upstream_p99_ms": ms(quantile(prev, cur, "mongomux_upstream_request_seconds", 0.99)),
        "auth_failures_per_s": round(rate("mongomux_gateway_errors_total", 'code="18"'), 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--every", type=float, default=2.0, help="seconds between scrapes")
    p.add_argument("--out", type=Path, default=Path("bench/results/dashboard.csv"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mongomux-dashboard-") as folder:
        folder = Path(folder)
        ferret = start_ferretdb(folder)
        user = make_user("dashboard-fn")
        gw = start_gateway(ferret, folder, name="mongomux-dashboard", pool_size=8, metrics=True,
                           extra_args=("--config", str(write_config(folder / "gw.toml", [user]))))
        try:
            target = soak.Target(gw.port, gw.pid, ferret.port, user.name, user.password, 8 + MONITOR_CONNECTIONS)
            load_args = argparse.Namespace(
                minutes=args.minutes, interval=max(10.0, args.minutes * 60 / 6), warmup=None, rate=15.0,
                churn_workers=6, long_lived=10, long_period=0.2)
            load = threading.Thread(target=soak.run, args=(target, load_args, None), daemon=True)
            rows, start = [], time.monotonic()
            prev, prev_t = scrape(gw.metrics_port), start
            load.start()
            while load.is_alive():
                time.sleep(args.every)
                cur, now = scrape(gw.metrics_port), time.monotonic()
                rows.append(row(now - start, prev, cur, now - prev_t))
                prev, prev_t = cur, now
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
            print(f"{len(rows)} scrapes over {rows[-1]['t_s']:.0f} s written to {args.out}")
        finally:
            gw.proc.stop()
            ferret.proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
