#!/usr/bin/env python3
"""PNG figures drawn from the CSV files that mongomux-bench writes (issue #5).

This module owns the benchmark pictures in the docs, so that each one is regenerated from
measured data by one command (`scripts/bench-plots`), never drawn by hand:

  latency-<upstream>.png        p50 / p99 / p99.9 by concurrency per target    (latency*.csv)
  latency-added-<upstream>.png  p50 and p99 added over direct (`*-direct` rows)  (latency*.csv)
  fleet-upstream-<shape>.png    upstream connections over time per mode   (fleet-timeline.csv)
  memory-per-client.png         proxy RSS by client connections (idle-memory.csv, fan-in.csv)
  cpu-per-op.png                user + system CPU per operation per proxy      (throughput.csv)
  soak.png                      gateway RSS, descriptors, upstream connections and p99 over a
                                soak, with the least-squares slope after warm-up (soak.csv)

It only reads CSVs; it never runs a benchmark. A figure is drawn only when its CSV is there, and
a missing optional column or target leaves that part out rather than failing, because the CSV
formats are still growing. A file may hold several runs (`run` column): the latest is plotted,
or with --all-runs every run as its own series (older ones fainter). A colour means the same
target in every figure.
"""

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot loads)
from matplotlib.ticker import (  # noqa: E402
    FixedLocator, LogFormatterSciNotation, MaxNLocator, NullLocator, ScalarFormatter,
    StrMethodFormatter)

# Name in the CSVs -> (label, colour, marker); fixed so that a colour means one thing everywhere.
STYLES = {
    "direct": ("direct", "#4d4d4d", "o"),
    "gateway": ("mongomux", "#1f77b4", "s"),
    "mongomux": ("mongomux", "#1f77b4", "s"),
    "mongobetween": ("mongobetween", "#d62728", "^"),
    "null-relay": ("null relay", "#8c8c8c", "x"),
    "per-invocation": ("per-invocation", "#ff7f0e", "v"),
}
SPARE_COLOURS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
FLEET_MODES = {
    "per-invocation": "new client per invocation",
    "direct": "client per environment, direct",
    "gateway": "client per environment, via mongomux",
}
PERCENTILES = [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]
_spare: dict[str, str] = {}


def style(name: str) -> tuple[str, str, str]:
    """Label, colour and marker of a target, proxy or mode; unknown names get a spare colour."""
    if name in STYLES:
        return STYLES[name]
    return name, _spare.setdefault(name, SPARE_COLOURS[len(_spare) % len(SPARE_COLOURS)]), "D"


def ordered(names, first=tuple(STYLES)) -> list[str]:
    """Distinct names: those in `first` in its order, then the rest sorted."""
    names = set(names)
    return [n for n in first if n in names] + sorted(names - set(first))


def num(row: dict, col: str) -> float | None:
    """The cell as a number; None when the column is absent, empty or not numeric."""
    try:
        return float(row.get(col) or "")
    except ValueError:
        return None


def run_key(run: str | None):
    value = num({"run": run}, "run")
    return (value is None, value or 0.0, run or "")


def read_rows(path: Path, all_runs: bool) -> list[dict] | None:
    """Rows of `path`, of the latest run only unless `all_runs` (for the fleet's files, the
    latest run of each traffic shape, since shapes are often run separately); None when there
    is no file."""
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        # Cells missing from a short row become empty; extra cells of a long row are dropped.
        rows = [{k: v or "" for k, v in r.items() if k is not None} for r in csv.DictReader(f)]
    rows = [r for r in rows if any(r.values())]
    if rows and "run" in rows[0] and not all_runs:
        last: dict[str, str] = {}
        for r in rows:
            group = r.get("shape", "")
            if group not in last or run_key(r["run"]) > run_key(last[group]):
                last[group] = r["run"]
        rows = [r for r in rows if r["run"] == last[r.get("shape", "")]]
    return rows


def missing(name: str, rows: list[dict] | None, *cols: str) -> str | None:
    """Why `name` cannot be plotted (absent, empty, or without `cols`), or None when it can."""
    if rows is None:
        return f"{name}: absent"
    if not rows or not all(c in rows[0] for c in cols):
        return f"{name}: no rows with {', '.join(cols)}"
    return None


def series(rows: list[dict], col: str, all_runs: bool, first=tuple(STYLES)):
    """Rows split by `col` (and by run with --all-runs) as (name, label suffix, alpha, rows)."""
    runs = sorted({r.get("run") for r in rows}, key=run_key) if all_runs else [None]
    out = []
    for name in ordered((r[col] for r in rows), first):
        for run in runs:
            part = [r for r in rows if r[col] == name and (run is None or r.get("run") == run)]
            several = run is not None and len(runs) > 1
            if part:
                out.append((name, f" (run {run})" if several else "",
                            0.45 if several and run != runs[-1] else 1.0, part))
    return out


def run_note(rows: list[dict]) -> str:
    runs = {r.get("run") for r in rows} - {None, ""}
    return f" (run {runs.pop()})" if len(runs) == 1 else f" ({len(runs)} runs)" if runs else ""


class PlainLog(LogFormatterSciNotation):
    """Log-axis labels as plain numbers (400, 1,000) where matplotlib would write 4×10²."""

    def __call__(self, x, pos=None):
        if not super().__call__(x, pos):
            return ""
        return f"{x:,.0f}" if x >= 1 else f"{x:g}"


def concurrency_axis(ax, values) -> None:
    """Log-2 concurrency axis with ticks at the measured values only."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values)) or [1]))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("concurrent clients")


def save(fig, out: Path, name: str, written: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    written.append(out / name)


def latency_grid(rows, ops, pcts, all_runs: bool, log: bool, title: str, ylabel: str):
    """Rows of panels = op, columns = percentile; one line per target against concurrency."""
    fig, axes = plt.subplots(len(ops), len(pcts), figsize=(4.2 * len(pcts), 3.4 * len(ops)),
                             squeeze=False, layout="constrained")
    for op, panel_row in zip(ops, axes):
        op_rows = [r for r in rows if r["op"] == op and num(r, "concurrency")]
        for (col, pct), ax in zip(pcts, panel_row):
            for target, suffix, alpha, part in series(op_rows, "target", all_runs):
                pts = sorted((num(r, "concurrency"), num(r, col)) for r in part
                             if num(r, col) is not None and (num(r, col) > 0 or not log))
                label, colour, marker = style(target)
                if pts:
                    ax.plot(*zip(*pts), marker=marker, color=colour, alpha=alpha,
                            label=label + suffix)
            concurrency_axis(ax, [num(r, "concurrency") for r in op_rows])
            if log:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(PlainLog())
                ax.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False))
            else:
                ax.axhline(0, color="black", linewidth=0.8)
                ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
            ax.set(title=f"{op}: {pct}", ylabel=ylabel)
            ax.grid(True, which="both", alpha=0.3)
    handles = {}
    for ax in axes.flat:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", frameon=False,
                   ncol=min(len(handles), 4 if len(pcts) > 2 else 3))
    fig.suptitle(title)
    return fig


def plot_latency(path: Path, out: Path, all_runs: bool, written: list[Path]) -> str | None:
    rows = read_rows(path, all_runs)
    if why := missing(path.name, rows, "op", "concurrency", "target"):
        return why
    slug = "ferretdb" if path.stem == "latency" else path.stem.removeprefix("latency-")
    upstream = rows[0].get("upstream") or ("FerretDB" if slug == "ferretdb" else slug)
    pcts = [(c, p) for c, p in PERCENTILES if any(num(r, c) is not None for r in rows)]
    if not pcts:
        return f"{path.name}: no percentile columns"
    ops = ordered((r["op"] for r in rows), ("find", "insert"))
    is_diff = [r["target"].endswith("-direct") and r["target"] != "direct" for r in rows]
    measured = [r for r, d in zip(rows, is_diff) if not d]
    fig = latency_grid(measured, ops, pcts, all_runs, True, "Latency by concurrency, upstream: "
                       f"{upstream}{run_note(rows)}", "latency (µs, log scale)")
    save(fig, out, f"latency-{slug}.png", written)
    added = [dict(r, target=r["target"].removesuffix("-direct")) for r, d in zip(rows, is_diff)
             if d]
    if added:
        fig = latency_grid(added, ops, [p for p in pcts if p[1] != "p99.9"], all_runs, False,
                           f"Latency added over direct, upstream: {upstream}{run_note(rows)}",
                           "added latency (µs)")
        save(fig, out, f"latency-added-{slug}.png", written)
    return None


def plot_fleet(results: Path, out: Path, all_runs: bool, written: list[Path]) -> str | None:
    rows = read_rows(results / "fleet-timeline.csv", all_runs)
    if why := missing("fleet-timeline.csv", rows, "t_ms", "mode", "upstream_conns"):
        return why
    summary = read_rows(results / "fleet.csv", all_runs) or []
    pool_col = next((c for c in ("pool_size", "gateway_pool_size") if summary
                     and c in summary[0]), None)
    panels = [("upstream_conns", "upstream connections")]
    if "envs_alive" in rows[0]:
        panels.append(("envs_alive", "environments alive"))
    for shape in ordered({r.get("shape") or "" for r in rows}, ("burst", "steady", "ramp")):
        part = [r for r in rows if (r.get("shape") or "") == shape and num(r, "t_ms") is not None]
        fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3 + 2.4 * len(panels)), sharex=True,
                                 squeeze=False, height_ratios=[2, 1][:len(panels)],
                                 layout="constrained")
        for mode, suffix, alpha, mode_rows in series(part, "mode", all_runs, tuple(FLEET_MODES)):
            for (col, _), ax in zip(panels, axes[:, 0]):
                pts = sorted((num(r, "t_ms") / 1000, num(r, col)) for r in mode_rows
                             if num(r, col) is not None)
                if pts:
                    ax.plot(*zip(*pts), drawstyle="steps-post", color=style(mode)[1],
                            alpha=alpha, label=FLEET_MODES.get(mode, mode) + suffix)
        pools = {num(r, pool_col) for r in summary
                 if pool_col and shape in ("", r.get("shape", shape))}
        for size in sorted(pools - {None}):
            axes[0, 0].axhline(size, color="black", linestyle="--", linewidth=1,
                               label=f"mongomux pool size ({size:g})")
        for (_, ylabel), ax in zip(panels, axes[:, 0]):
            ax.set(ylabel=ylabel, ylim=(0, None))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
        axes[-1, 0].set_xlabel("time since the first arrival (s)")
        axes[0, 0].legend(loc="best", fontsize="small")
        fig.suptitle("Fleet simulation: upstream connections over time"
                     f"{', shape: ' + shape if shape else ''}{run_note(part)}")
        save(fig, out, f"fleet-upstream-{shape}.png" if shape else "fleet-upstream.png", written)
    return None


def memory_points(rows: list[dict]) -> list[tuple[float, float]]:
    """(clients, RSS KiB) points, plus one at 0 clients when the CSV records a baseline."""
    cols = [c for c in rows[0] if c.endswith("rss_kib") and not c.startswith("baseline")]
    rss = next((c for c in ("rss_kib", "gateway_rss_kib", "proxy_rss_kib") if c in cols),
               cols[0] if cols else None)
    if rss is None or "clients" not in rows[0]:
        return []
    pts = {(num(r, "clients"), num(r, rss)) for r in rows}
    pts |= {(0.0, num(r, "baseline_rss_kib")) for r in rows}
    return sorted((c, k) for c, k in pts if c is not None and k is not None)


def fit_slope(pts) -> float | None:
    """Least-squares slope of RSS (KiB) over clients: KiB per client connection."""
    if len({c for c, _ in pts}) < 2:
        return None
    mx, my = (sum(v) / len(pts) for v in zip(*pts))
    return sum((c - mx) * (k - my) for c, k in pts) / sum((c - mx) ** 2 for c, _ in pts)


def plot_memory(results: Path, out: Path, all_runs: bool, written: list[Path]) -> str | None:
    panels = []  # (title, rows with a `proxy` column)
    for name, title in (("idle-memory.csv", "idle clients, after hello"), ("fan-in.csv", "fan-in")):
        rows = read_rows(results / name, all_runs)
        if rows and memory_points(rows):
            proxy = "proxy" if "proxy" in rows[0] else None
            rows = [dict(r, proxy=(proxy and r[proxy]) or "gateway") for r in rows]
            panels.append((title + run_note(rows), rows))
    if not panels:
        return "idle-memory.csv, fan-in.csv: absent or without clients and an RSS column"
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False,
                             layout="constrained")
    for ax, (title, rows) in zip(axes[0], panels):
        for proxy, suffix, alpha, part in series(rows, "proxy", all_runs):
            if pts := memory_points(part):
                label, colour, marker = style(proxy)
                if (slope := fit_slope(pts)) is not None:
                    label += f": {slope:.1f} KiB per client"
                ax.plot([c for c, _ in pts], [k / 1024 for _, k in pts], marker=marker,
                        color=colour, alpha=alpha, label=label + suffix)
        ax.set(title=title, xlabel="client connections", ylabel="proxy RSS (MiB)",
               xlim=(0, None), ylim=(0, None))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize="small", title="slope: least-squares fit")
    fig.suptitle("Proxy memory against client connections")
    save(fig, out, "memory-per-client.png", written)
    return None


def plot_cpu(results: Path, out: Path, all_runs: bool, written: list[Path]) -> str | None:
    rows = read_rows(results / "throughput.csv", all_runs)
    if why := missing("throughput.csv", rows, "proxy", "user_us_per_op", "sys_us_per_op"):
        return why
    cpu = [(r, num(r, "user_us_per_op"), num(r, "sys_us_per_op")) for r in rows]
    cpu = [c for c in cpu if None not in c]  # `direct` has no proxy, so no CPU figures
    if not cpu:
        return "throughput.csv: no rows with numeric user and system CPU per op"
    rank = {name: i for i, name in enumerate(ordered(r["proxy"] for r, _, _ in cpu))}
    cpu.sort(key=lambda c: (num(c[0], "concurrency") or 0, rank[c[0]["proxy"]],
                            run_key(c[0].get("run"))))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cpu)), 4.6), layout="constrained")
    ticks, several_runs = [], len({r.get("run") for r, _, _ in cpu}) > 1
    for x, (r, user, system) in enumerate(cpu):
        label, colour, _ = style(r["proxy"])
        ax.bar(x, user, color=colour)
        ax.bar(x, system, bottom=user, color=colour, alpha=0.45, hatch="//")
        ax.annotate(f"{user + system:.1f}", (x, user + system), ha="center", va="bottom",
                    fontsize="small")
        extras = [r.get("op"), num(r, "concurrency") is not None
                  and f"{num(r, 'concurrency'):g} clients", several_runs and f"run {r.get('run')}"]
        ticks.append("\n".join([label] + [e for e in extras if e]))
    ax.set_xticks(range(len(cpu)), ticks, fontsize="small")
    ax.set(ylabel="CPU per operation (µs)", title="user (solid) + system (hatched)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Proxy CPU per operation" + run_note(rows))
    save(fig, out, "cpu-per-op.png", written)
    return None


SOAK_PANELS = [("rss_mib", "gateway RSS (MiB)", "MiB"), ("fds", "open descriptors", ""),
               ("upstream", "upstream connections", ""), ("p99_ms", "op latency p99 (ms)", "ms")]


def plot_soak(results: Path, out: Path, all_runs: bool, written: list[Path]) -> str | None:
    """The soak's four figures against time, each with its fitted line after the warm-up and the
    slope per minute in the legend (tests/python/soak.py computes the same fit)."""
    rows = read_rows(results / "soak.csv", all_runs)
    if why := missing("soak.csv", rows, "t_s", *(c for c, _, _ in SOAK_PANELS)):
        return why
    warmup = num(rows[0], "warmup_s") or 0.0
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True, layout="constrained")
    for ax, (col, title, unit) in zip(axes.flat, SOAK_PANELS):
        pts = sorted((num(r, "t_s") / 60, num(r, col)) for r in rows if num(r, col) is not None)
        if not pts:
            continue
        ax.plot(*zip(*pts), marker="o", markersize=3, color=style("gateway")[1], label=title)
        if col == "p99_ms" and "p50_ms" in rows[0]:
            p50 = sorted((num(r, "t_s") / 60, num(r, "p50_ms")) for r in rows if num(r, "p50_ms") is not None)
            ax.plot(*zip(*p50), marker=".", color="#4d4d4d", alpha=0.7, label="op latency p50 (ms)")
        if col == "upstream" and "upstream_max" in rows[0]:
            most = sorted((num(r, "t_s") / 60, num(r, "upstream_max")) for r in rows)
            ax.plot(*zip(*most), drawstyle="steps-pre", color="#d62728", alpha=0.6, label="most between samples")
        steady = [(t, v) for t, v in pts if t * 60 > warmup]
        if (slope := fit_line(steady)) is not None:
            a, b = slope
            xs = [steady[0][0], steady[-1][0]]
            ax.plot(xs, [a + b * x for x in xs], "--", color="black", linewidth=1,
                    label=f"fit after warm-up: {b:+.3f} {unit}/min".replace(" /", "/"))
        ax.set(title=title, ylim=(0, None))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    for ax in axes[1]:
        ax.set_xlabel("minutes into the soak")
    minutes = num(rows[0], "minutes")
    fig.suptitle(f"Soak: {minutes:g} minutes of Lambda-style churn through mongomux{run_note(rows)}")
    save(fig, out, "soak.png", written)
    return None


def fit_line(pts) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of (x, y) points."""
    if len({x for x, _ in pts}) < 2:
        return None
    mx, my = (sum(v) / len(pts) for v in zip(*pts))
    b = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return my - b * mx, b


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=here / "results",
                   help="folder with the bench CSVs [default: bench/results]")
    p.add_argument("--out", type=Path, default=here.parent / "docs" / "img" / "bench",
                   help="folder for the PNGs [default: docs/img/bench]")
    p.add_argument("--all-runs", action="store_true",
                   help="plot every run in a CSV as its own series, not only the latest")
    args = p.parse_args(argv)
    if not args.results.is_dir():
        print(f"plot: no results folder {args.results}", file=sys.stderr)
        return 1
    written: list[Path] = []
    latency = {args.results / "latency.csv", args.results / "latency-stub.csv"}
    skipped = [plot_latency(path, args.out, args.all_runs, written)
               for path in sorted(latency | set(args.results.glob("latency*.csv")))]
    skipped += [plot(args.results, args.out, args.all_runs, written)
                for plot in (plot_fleet, plot_memory, plot_cpu, plot_soak)]
    for path in written:
        print(f"wrote {path}")
    for why in filter(None, skipped):
        print(f"skipped {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
