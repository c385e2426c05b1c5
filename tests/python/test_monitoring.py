"""The dashboard and the alerting rules name only metrics a live gateway exports (issue 16).

`deploy/monitoring/grafana-dashboard.json` and `deploy/monitoring/alerts.yml` are read as text;
every `mongomux_*` name in their expressions must be a metric family that a running gateway
(after some traffic) renders on /metrics, a histogram's `_bucket`/`_sum`/`_count` counting as
its family. `promtool check rules` and `promtool test rules` run in scripts/test's `promtool`
phase.
"""

from __future__ import annotations

import json
import re


from conftest import ROOT
from security_fixtures import gateways  # noqa: F401 - pytest fixture
from security_fixtures import make_user, metrics_text, write_config

MONITORING = ROOT / "deploy" / "monitoring"
NAME = re.compile(r"\bmongomux_[a-z_]+")
SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_exprs() -> list[str]:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and all(p["targets"] for p in dash["panels"]), "every panel has a query"
    return exprs + [v.get("query", "") for v in dash["templating"]["list"]]


def exported_families(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def family_of(name: str, families: set[str]) -> str | None:
    if name in families:
        return name
    for s in SUFFIXES:
        if name.endswith(s) and name[: -len(s)] in families:
            return name[: -len(s)]
    return None


def test_every_metric_the_dashboard_and_rules_use_is_exported(gateways, tmp_path):
    # A user and an appName, so that the per-user and per-app families have series too.
    user = make_user("watcher", databases=("monitoring",))
    gw = gateways("--config", write_config(tmp_path / "gw.toml", users=[user]))
    with gw.client(appname="dashboard-check", **user.pymongo_kw()) as c:
        c.monitoring.t.insert_one({"x": 1})
        c.monitoring.t.find_one()
        c.monitoring.t.drop()
    families = exported_families(metrics_text(gw))
    used = {n for e in dashboard_exprs() for n in NAME.findall(e)}
    used |= set(NAME.findall((MONITORING / "alerts.yml").read_text()))
    missing = sorted(n for n in used if family_of(n, families) is None)
    print(f"\n{len(used)} metric names used by the dashboard and the rules, all among the "
          f"{len(families)} families a live gateway exports" if not missing else "")
    assert not missing, f"used but not exported: {missing}"

