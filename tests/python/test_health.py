"""Health endpoints on the metrics listener (issue 14, item 4): `GET /livez` answers 200 while
the process serves; `GET /readyz` answers 200 only while the listener accepts, an upstream
member is selectable for writes and the gateway is not draining, else 503 with a reason.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, free_port, start_ferretdb, wait_until
from mongowire import RawConn, op_msg
from security_fixtures import GatewayFactory


@pytest.fixture
def gateways(tmp_path, ferretdb):
    f = GatewayFactory(tmp_path, ferretdb)
    yield f
    f.stop_all()


def get(gw, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def ready(gw) -> bool:
    return get(gw, "/readyz")[0] == 200


def test_ready_and_live_with_the_upstream_up(gateways):
    gw = gateways()
    wait_until(lambda: ready(gw), 10, what="/readyz 200 with FerretDB up")
    assert get(gw, "/readyz") == (200, "ready\n")
    assert get(gw, "/livez") == (200, "ok\n")
    assert get(gw, "/nope")[0] == 404


def test_not_ready_when_no_upstream_answers(gateways):
    dead = free_port()
    gw = gateways(upstream_uri=f"mongodb://127.0.0.1:{dead}/?serverSelectionTimeoutMS=500",
                  credentials_in_env=False)
    status, body = get(gw, "/readyz")
    assert status == 503, body
    assert body.startswith("not ready: no upstream member selectable for writes"), body
    # Still alive: liveness says whether to restart the process, not whether to send it clients.
    assert get(gw, "/livez") == (200, "ok\n")


def test_not_ready_once_the_upstream_stops(gateways, tmp_path):
    folder = tmp_path / "own-ferretdb"
    folder.mkdir()
    up = start_ferretdb(folder)
    try:
        gw = gateways(upstream=up, upstream_uri=up.gateway_upstream_uri() + "&heartbeatFrequencyMS=500")
        wait_until(lambda: ready(gw), 10, what="/readyz 200 with FerretDB up")
        up.proc.stop()
        wait_until(lambda: get(gw, "/readyz")[0] == 503, 10, what="/readyz 503 after FerretDB stopped")
        assert "no upstream member selectable for writes" in get(gw, "/readyz")[1]
    finally:
        up.proc.stop()


def test_not_ready_while_draining(gateways):
    gw = gateways()
    wait_until(lambda: ready(gw), 10, what="/readyz 200 before the drain")
    with RawConn(gw.port) as c:
        assert c.hello().get("ok") == 1
        # Half a request keeps the drain going until its deadline (2s in these tests): the
        # gateway waits for the rest of a message it has begun to receive.
        c.sock.sendall(op_msg({"ping": 1, "$db": "admin"})[:10])
        time.sleep(0.3)  # let the gateway read those bytes before the drain starts
        gw.proc.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: get(gw, "/readyz") == (503, "not ready: draining\n"), 1.5,
                   what="/readyz 503 while draining")
        assert get(gw, "/livez") == (200, "ok\n")
    assert gw.proc.popen.wait(10) == 0


def test_the_template_leaves_ending_connections_to_the_drain():
    """deploy/template.yaml's target group: the NLB must not reset a stopping task's connections
    when its deregistration delay ends, since ECS sends SIGTERM only after that delay and the
    gateway's drain is what ends connections (docs/deploy.md "Stopping a task"); its health check
    is GET /readyz on the metrics port, behind the PROXY v2 header the metrics listener accepts
    (test_proxy_protocol.py runs that check with HAProxy)."""
    text = (ROOT / "deploy/template.yaml").read_text()
    attributes = dict(re.findall(r"- Key: (\S+)\n\s+Value: (.+)", text))
    assert attributes["deregistration_delay.connection_termination.enabled"] == '"false"'
    assert attributes["proxy_protocol.v2.enabled"] == '"true"'
    for line in ("HealthCheckProtocol: HTTP", "HealthCheckPort: !Ref MetricsPort", "HealthCheckPath: /readyz"):
        assert line in text, line
