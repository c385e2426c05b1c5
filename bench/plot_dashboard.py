"""Draws docs/img/operations-dashboard.png from bench/results/dashboard.csv (written by
tests/python/dashboard_sample.py while Lambda-style churn ran through a live gateway): four of
the Grafana dashboard's panels (deploy/monitoring/grafana-dashboard.json), computed from real
scrapes of /metrics. Run by scripts/dashboard-sample with the benchmarks' matplotlib venv."""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(rows, key):
    return [float(r[key]) if r[key] not in ("", "None") else float("nan") for r in rows]


def main(src: Path, dst: Path) -> None:
    rows = list(csv.DictReader(src.open()))
    t = series(rows, "t_s")
    fig, ax = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    a = ax[0][0]
    a.plot(t, series(rows, "client_connections"), label="open")
    a.plot(t, series(rows, "accepted_per_s"), label="accepted/s")
    a.set_title("Client connections")
    a = ax[0][1]
    a.plot(t, series(rows, "upstream_open"), label="open")
    a.plot(t, series(rows, "upstream_in_use"), label="in use")
    a.axhline(8, color="grey", linestyle=":", label="pool_size")
    a.set_title("Upstream connections (what the database sees)")
    a = ax[1][0]
    a.plot(t, series(rows, "ops_per_s"), label="all")
    a.plot(t, series(rows, "find_per_s"), label="find")
    a.plot(t, series(rows, "insert_per_s"), label="insert")
    a.set_title("Operations per second")
    a = ax[1][1]
    a.plot(t, series(rows, "upstream_p50_ms"), label="upstream p50")
    a.plot(t, series(rows, "upstream_p99_ms"), label="upstream p99")
    a.plot(t, series(rows, "checkout_p99_ms"), label="checkout wait p99")
    a.set_yscale("log")
    a.set_ylabel("ms")
    a.set_title("Latency")
    for a in ax.flat:
        a.legend(loc="upper right", fontsize=8)
        a.grid(alpha=0.3)
    for a in ax[1]:
        a.set_xlabel("seconds")
    fig.suptitle("mongomux dashboard panels from a live gateway under Lambda-style churn (debug build)")
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dst, dpi=90)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
