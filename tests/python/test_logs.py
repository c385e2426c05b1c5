"""`--log-format json` (issue 16, part 3): every line the gateway writes to stderr is one JSON
object, and the events an operator searches for carry their fields: connections, logins that
succeed and fail (mechanism, user), access-list denials (address), slow operations (command,
namespace, appName, duration), reloads and the drain. Secrets never appear, and a CR/LF in a
client-controlled value (here an appName) cannot forge a line.
"""

from __future__ import annotations

import json
import re
import signal
import socket

import pytest
from pymongo.errors import OperationFailure

from conftest import wait_until
from security_fixtures import gateways  # noqa: F401 - pytest fixture
from security_fixtures import make_user, metric, metrics_text, sighup, write_config

APP = "billing\nFAKE {\"event\":\"auth_succeeded\"}\r"


def json_lines(gw) -> list[dict]:
    """The gateway's log lines (stdout's are prefixed and skipped), each parsed: a line that is
    not JSON fails the test."""
    out = []
    for line in gw.proc.log.read_text().splitlines():
        if line.startswith("[stdout]") or not line.strip():
            continue
        out.append(json.loads(line))
    return out


def events(lines: list[dict], name: str) -> list[dict]:
    return [e for e in lines if e.get("event") == name]


def test_json_log_lines_carry_the_events_operators_search_for(gateways, tmp_path):
    user = make_user("logger", databases=("logs",), role="readWrite", db="admin")
    cfg = write_config(tmp_path / "gw.toml", users=[user], slow_op_threshold="0s",
                       access=["127.0.0.1/32"])
    gw = gateways("--config", cfg, "--log-format", "json")
    with gw.client(appname=APP, **user.pymongo_kw()) as c:
        c.logs.t.insert_one({"x": 1})
        c.logs.t.find_one()
        c.logs.t.drop()
    with pytest.raises(OperationFailure):
        with gw.client(**user.pymongo_kw(password="wrong-password")) as c:
            c.logs.command("ping")
    # 127.0.0.2 is not in the access list.
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", gw.port))
        assert s.recv(1) == b""
    sighup(gw)
    wait_until(lambda: events(json_lines(gw), "reload"), 10, what="the reload event")
    gw.proc.popen.send_signal(signal.SIGTERM)
    gw.proc.popen.wait(15)

    lines = json_lines(gw)
    text = gw.proc.log.read_text()
    assert user.password not in text and "wrong-password" not in text
    assert all({"timestamp", "level", "message"} <= e.keys() for e in lines), lines[:2]

    ok = events(lines, "auth_succeeded")
    assert any(e["user"] == "logger" and e["mechanism"] == "SCRAM-SHA-256" for e in ok), ok
    failed = events(lines, "auth_failed")
    assert any(e["user"] == "logger" and e["mechanism"] == "SCRAM-SHA-256" and "peer" in e for e in failed), failed
    denied = events(lines, "access_denied")
    assert denied and denied[0]["address"].startswith("127.0.0.2:"), denied
    slow = [e for e in events(lines, "slow_operation") if e["command"] == "insert"]
    assert slow, events(lines, "slow_operation")
    assert slow[0]["ns"] == "logs.t" and slow[0]["user"] == "logger" and slow[0]["millis"] >= 0
    # The appName arrives whole but escaped: no line was forged from it.
    app = slow[0]["app"]
    assert app.startswith("billing\\nFAKE") and "\n" not in app and "\r" not in app, app
    assert events(lines, "client_connected") and events(lines, "client_disconnected")
    assert events(lines, "drain_started") and events(lines, "drained")
    print(f"\n{len(lines)} JSON lines; events: " + ", ".join(
        f"{k} {len(events(lines, k))}" for k in ("client_connected", "auth_succeeded", "auth_failed",
                                                   "access_denied", "slow_operation", "reload",
                                                   "drain_started", "drained")))
    print(json.dumps(slow[0]))


def test_operations_by_app_and_user_are_counted_with_a_bound(gateways, tmp_path):
    """Per-appName and per-user operation counters: each client's operations land on its own
    series; 120 distinct appNames make 100 series and the rest count as _other."""
    user = make_user("counted", databases=("logs",), role="readWrite", db="admin")
    cfg = write_config(tmp_path / "gw.toml", users=[user])
    gw = gateways("--config", cfg)
    for i in range(120):
        with gw.client(appname=f"fn-{i}", **user.pymongo_kw()) as c:
            c.logs.command("ping")
    text = metrics_text(gw)
    apps = re.findall(r'^mongomux_app_operations_total\{app="([^"]*)"\} (\d+)', text, re.M)
    assert len(apps) == 101, len(apps)
    counts = dict((a, int(n)) for a, n in apps)
    assert counts["fn-0"] >= 1 and counts["_other"] >= 20, counts.get("_other")
    assert metric(gw, "mongomux_user_operations_total", 'user="counted"') >= 120
