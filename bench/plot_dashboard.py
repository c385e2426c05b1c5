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


# The four panels: title, the CSV columns drawn (with their legends), and a log scale.
PANELS = [
    ("Client connections", [("client_connections", "open"), ("accepted_per_s", "accepted/s")], False),
    ("Upstream connections (what the database sees)",
     [("upstream_open", "open"), ("upstream_in_use", "in use")], False),
    ("Operations per second", [("ops_per_s", "all"), ("find_per_s", "find"), ("insert_per_s", "insert")], False),
    ("Latency", [("upstream_p50_ms", "upstream p50"), ("upstream_p99_ms", "upstream p99"),
                 ("checkout_p99_ms", "checkout wait p99")], True),
]
POOL_SIZE = 8  # scripts/dashboard-sample's gateway


def main(src: Path, dst: Path) -> None:
    rows = list(csv.DictReader(src.open()))
    t = series(rows, "t_s")
    fig, ax = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    for a, (title, columns, log) in zip(ax.flat, PANELS):
        for column, label in columns:
            a.plot(t, series(rows, column), label=label)
        if "upstream_in_use" in dict(columns):
            a.axhline(POOL_SIZE, color="grey", linestyle=":", label="pool_size")
        if log:
            a.set_yscale("log")
            a.set_ylabel("ms")
        a.set_title(title)
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
