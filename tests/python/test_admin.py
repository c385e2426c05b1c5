"""The admin surface (issue 16, part 1): the gateway's own commands on the `admin` database for
its operator roles, the same reports as JSON on the metrics listener behind a bearer token, and
`mongomux status`. Every command is exercised, with the refusals: anonymous clients, data users,
the monitor role on control commands, other databases, and a gateway with no users at all.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import bson
import pytest
from pymongo.errors import OperationFailure

from conftest import wait_until
from mongowire import RawConn, op_msg, recv_message
from security_fixtures import gateways  # noqa: F401 - pytest fixture
from security_fixtures import gateway_bin, make_user, write_config

UNAUTHORIZED = 13
BAD_VALUE = 2
EXCEEDED_TIME_LIMIT = 262

SHOW = ["mongomuxStatus", "mongomuxPools", "mongomuxClients", "mongomuxServers", "mongomuxStats"]
CONTROL = ["mongomuxPause", "mongomuxResume", "mongomuxReload"]


class Stack:
    """A gateway with an operator of each role, a data user and an admin token."""

    def __init__(self, gateways, tmp_path, **settings):
        self.ops = make_user("ops", role="gatewayMonitor")
        self.root = make_user("root", role="gatewayAdmin")
        self.app = make_user("app", databases=("shop",))
        self.token = secrets.token_hex(32)
        self.cfg = tmp_path / "gw.toml"
        self.settings = dict(admin_token_sha256=hashlib.sha256(self.token.encode()).hexdigest(),
                             access=["127.0.0.0/8"], **settings)
        self.users = [self.ops, self.root, self.app]
        self.write()
        self.gw = gateways("--config", self.cfg, pool_size=4)

    def write(self, users=None, **extra):
        settings = dict(self.settings, **extra)
        access = settings.pop("access")
        write_config(self.cfg, users=users or self.users, access=access, **settings)

    def client(self, user, **kw):
        return self.gw.client(**user.pymongo_kw(), **kw)

    def http(self, path: str, token: str | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.gw.metrics_port}{path}")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture
def stack(gateways, tmp_path):
    return Stack(gateways, tmp_path)


def code_of(fn) -> tuple[int, str]:
    with pytest.raises(OperationFailure) as e:
        fn()
    return e.value.code, str(e.value)


def test_reports_show_pools_clients_servers_and_commands(stack):
    with stack.client(stack.app, appname="shop-api") as app, stack.client(stack.ops) as ops:
        shop = app.shop
        shop.orders.insert_many([{"_id": i} for i in range(20)])
        cursor = shop.orders.find(batch_size=2)
        next(cursor)  # an open cursor, held by this client
        for _ in range(5):
            shop.orders.find_one({"_id": 3})

        pools = ops.admin.command("mongomuxPools")["pools"]
        assert len(pools) == 1, pools
        pool = pools[0]
        assert pool["size"] == 4 and 1 <= pool["open"] <= 4, pool
        assert pool["open"] == pool["inUse"] + pool["idle"], pool
        assert pool["serverType"] == "standalone" and pool["waiting"] == 0
        assert pool["checkoutWait"]["count"] >= 7, pool
        assert pool["checkoutWait"]["p50Micros"] <= pool["checkoutWait"]["p99Micros"]

        servers = ops.admin.command("mongomuxServers")["servers"]
        assert len(servers) == pool["open"], servers
        assert {s["state"] for s in servers} <= {"idle", "inUse", "pinned"}
        assert sum(s["openCursors"] for s in servers) >= 1, servers

        # The driver's monitoring connection never logs in; its pool's connections do.
        every = ops.admin.command("mongomuxClients", appName="shop-api")["clients"]
        assert any(c["user"] is None for c in every), every
        listed = ops.admin.command("mongomuxClients", appName="shop-api", user="app")
        assert listed["total"] >= 1 and not listed["truncated"], listed
        mine = listed["clients"]
        assert all(c["appName"] == "shop-api" and c["user"] == "app" for c in mine), mine
        assert any(c["cursors"] >= 1 for c in mine), mine
        assert any(c["sessions"] >= 1 for c in mine), mine
        assert all(c["driver"].startswith("PyMongo") for c in mine), mine
        assert all(c["address"].startswith("127.0.0.1:") for c in mine)
        # The monitor's own in-flight command is shown while it runs.
        me = ops.admin.command("mongomuxClients", user="ops", limit=10)["clients"]
        assert any((c["inFlight"] or {}).get("command") == "mongomuxClients" for c in me), me
        none = ops.admin.command("mongomuxClients", limit=0)
        assert none["clients"] == [] and none["truncated"] and none["total"] >= 2, none

        stats = {r["command"]: r for r in ops.admin.command("mongomuxStats")["commands"]}
        assert stats["find"]["count"] >= 6 and stats["insert"]["count"] >= 1, stats
        assert stats["find"]["p50Micros"] > 0 and stats["find"]["errors"] == 0

        status = ops.admin.command("mongomuxStatus", clientLimit=1)
        g = status["gateway"]
        assert g["paused"] is None and not g["draining"] and g["topology"] == "Single", g
        assert g["clients"] >= 2 and g["cursors"] >= 1, g
        assert status["clients"]["truncated"] and len(status["clients"]["clients"]) == 1
        assert {"pools", "servers", "commands"} <= status.keys()

        # The same reports as JSON, with the token.
        code, body = stack.http("/admin/status", stack.token)
        assert code == 200 and body["pools"][0]["member"] == pool["member"], body
        assert body["gateway"]["clients"] == g["clients"]
        for section in ("pools", "servers", "stats", "clients"):
            code, body = stack.http(f"/admin/{section}", stack.token)
            assert code == 200, (section, body)
        assert stack.http("/admin/nothing", stack.token)[0] == 404
        cursor.close()


def test_admin_json_needs_its_token(stack, gateways):
    assert stack.http("/admin/status")[0] == 401
    assert stack.http("/admin/status", "wrong")[0] == 401
    assert stack.http("/admin/status", stack.token + " x")[0] == 401
    # Two Authorization headers carry no token, even if one is right.
    with socket.create_connection(("127.0.0.1", stack.gw.metrics_port), timeout=5) as s:
        s.sendall((f"GET /admin/status HTTP/1.1\r\nAuthorization: Bearer {stack.token}\r\n"
                   f"Authorization: Bearer x\r\n\r\n").encode())
        assert s.recv(64).startswith(b"HTTP/1.1 401 "), "duplicate header accepted"
    # Metrics stay open; with no token configured the admin paths do not exist.
    other = gateways()
    with urllib.request.urlopen(f"http://127.0.0.1:{other.metrics_port}/metrics", timeout=5) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{other.metrics_port}/admin/status", timeout=5)
    assert e.value.code == 404
    log = stack.gw.proc.log.read_text()
    assert stack.token not in log


def test_admin_commands_are_refused_to_everyone_else(stack, gateways):
    port = stack.gw.port
    # Anonymous: nothing before a login.
    with RawConn(port) as c:
        c.hello()
        for name in SHOW + CONTROL + ["mongomuxKillClients"]:
            reply = c.command({name: 1, "user": "x"} if name == "mongomuxKillClients" else {name: 1})
            assert reply["ok"] == 0 and reply["code"] == UNAUTHORIZED, (name, reply)
    # A data user: refused, with the role it would need.
    with stack.client(stack.app) as app:
        for name in SHOW + CONTROL:
            code, text = code_of(lambda: app.admin.command(name))
            assert code == UNAUTHORIZED and "gateway role" in text, (name, text)
    # The monitor: shows, but does not steer.
    with stack.client(stack.ops) as ops:
        for name in CONTROL:
            code, text = code_of(lambda: ops.admin.command(name))
            assert code == UNAUTHORIZED and "gatewayAdmin" in text, (name, text)
        code, _ = code_of(lambda: ops.admin.command("mongomuxKillClients", user="app"))
        assert code == UNAUTHORIZED
        # Operators have no data access, and the commands live on admin only.
        code, text = code_of(lambda: ops.shop.orders.find_one())
        assert code == UNAUTHORIZED and "no access to data" in text, text
        code, text = code_of(lambda: ops.shop.command("mongomuxPools"))
        assert code == UNAUTHORIZED and "admin database" in text, text
        assert ops.admin.command("connectionStatus")["authInfo"]["authenticatedUserRoles"] == [
            {"role": "gatewayMonitor", "db": "admin"}]
    with stack.client(stack.root) as root:
        code, text = code_of(lambda: root.shop.command("mongomuxPause"))
        assert code == UNAUTHORIZED and "admin database" in text, text
        assert root.admin.command("mongomuxResume")["wasPaused"] is False
    # A gateway without users has no operators: the commands are refused to everyone.
    anonymous = gateways()
    with anonymous.client() as c:
        for name in SHOW + CONTROL:
            code, text = code_of(lambda: c.admin.command(name))
            assert code == UNAUTHORIZED and "no users configured" in text, (name, text)


def raw_doc(*pairs) -> bytes:
    """A BSON document with the fields in order, repeats allowed (bson.encode cannot repeat)."""
    body = b"".join(bson.encode({k: v})[4:-1] for k, v in pairs)
    return (len(body) + 5).to_bytes(4, "little") + body + b"\x00"


def test_bad_arguments_get_clear_errors(stack):
    with stack.client(stack.root) as root:
        bad = [
            ({"maxWaitMS": "soon"}, "mongomuxPause", "maxWaitMS must be an integer"),
            ({"maxWaitMS": 0}, "mongomuxPause", "between 1 and"),
            ({"maxWaitMS": 3_600_001}, "mongomuxPause", "between 1 and"),
            ({"wait": 5}, "mongomuxPause", "does not take the field wait"),
            ({}, "mongomuxKillClients", "at least one of address, user, appName"),
            ({"address": "somewhere"}, "mongomuxKillClients", "not an IP address"),
            ({"address": "127.0.0.1:99999"}, "mongomuxKillClients", "not an IP address"),
            ({"user": 5}, "mongomuxKillClients", "non-empty string"),
            ({"appName": ""}, "mongomuxKillClients", "non-empty string"),
            ({"limit": -1}, "mongomuxClients", "between 0 and 10000"),
            ({"limit": 1.5}, "mongomuxClients", "must be an integer"),
            ({"user\r\nx": "a"}, "mongomuxClients", "does not take the field"),
        ]
        for fields, name, message in bad:
            code, text = code_of(lambda: root.admin.command(name, **fields))
            assert code == BAD_VALUE and message in text, (name, fields, text)
            assert "\r\n" not in text
        assert root.admin.command("mongomuxPause", maxWaitMS=1000.0)["paused"] is True
        root.admin.command("mongomuxResume")
    # A field given twice is refused, whichever value comes first.
    with RawConn(stack.gw.port) as c:
        assert c.auth(stack.root.name, stack.root.password)["ok"] == 1
        doc = raw_doc(("mongomuxKillClients", 1), ("user", "nobody"), ("user", "app"), ("$db", "admin"))
        c.sock.sendall(op_msg(doc))
        reply = recv_message(c.sock).doc
        assert reply["code"] == BAD_VALUE and "given twice" in reply["errmsg"], reply


def insert_loop(client, coll, prefix, stop, results):
    """Inserts unique ids until `stop`; records (id, seconds, error code or None)."""
    i = 0
    while not stop.is_set():
        _id = f"{prefix}-{i}"
        t = time.perf_counter()
        try:
            client.shop[coll].insert_one({"_id": _id})
            results.append((_id, time.perf_counter() - t, None))
        except OperationFailure as e:
            results.append((_id, time.perf_counter() - t, e.code))
        i += 1


def run_workers(stack, coll, n, during, **client_kw):
    stop = threading.Event()
    results: list = []
    clients = [stack.client(stack.app, **client_kw) for _ in range(n)]
    threads = [threading.Thread(target=insert_loop, args=(c, coll, f"w{k}", stop, results))
               for k, c in enumerate(clients)]
    for t in threads:
        t.start()
    try:
        during()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for c in clients:
            c.close()
    return results


@pytest.mark.timeout(120)
def test_pause_and_resume_under_load_lose_nothing_and_bound_the_wait(stack):
    with stack.client(stack.root) as root, stack.client(stack.app) as app:
        app.shop.paused.drop()
        seen = {}

        def during():
            time.sleep(0.5)
            reply = root.admin.command("mongomuxPause", maxWaitMS=10_000)
            assert reply["paused"] is True and reply["wasPaused"] is False, reply
            # Requests pile up at the gate; the gateway still answers pings and admin commands.
            wait_until(lambda: root.admin.command("mongomuxStatus")["gateway"]["paused"]["waiting"] >= 8,
                       10, what="requests waiting at the gate")
            t = time.perf_counter()
            app.admin.command("ping")
            seen["ping"] = time.perf_counter() - t
            time.sleep(1.5)
            reply = root.admin.command("mongomuxResume")
            assert reply["wasPaused"] is True and reply["pausedSecs"] >= 1.5, reply
            seen["released"] = reply["released"]
            time.sleep(0.5)

        results = run_workers(stack, "paused", 8, during)
        assert seen["ping"] < 1.0 and seen["released"] >= 8, seen
        errors = [r for r in results if r[2] is not None]
        assert not errors, errors[:5]
        slowest = max(r[1] for r in results)
        assert 1.5 <= slowest < 10, slowest  # waited through the pause, never past its bound
        print(f"pause 1.5 s under 8 inserting clients: {len(results)} inserts, 0 errors, "
              f"{seen['released']} released at resume, slowest {slowest:.2f} s")
        acked = [r[0] for r in results]
        stored = [d["_id"] for d in app.shop.paused.find({}, {"_id": 1})]
        assert sorted(stored) == sorted(acked), "an acknowledged insert is missing or doubled"

        # A pause longer than maxWaitMS: each request gives up after its bound, unsent.
        def long_pause():
            time.sleep(0.3)
            root.admin.command("mongomuxPause", maxWaitMS=400)
            time.sleep(2.0)
            root.admin.command("mongomuxResume")
            time.sleep(0.3)

        results = run_workers(stack, "bounded", 8, long_pause, retryWrites=False)
        failed = [r for r in results if r[2] is not None]
        assert failed and all(r[2] == EXCEEDED_TIME_LIMIT for r in failed), failed[:5]
        assert max(r[1] for r in failed) < 1.4, max(r[1] for r in failed)
        assert min(r[1] for r in failed) >= 0.39
        print(f"pause 2 s with maxWaitMS 400: {len(failed)} inserts refused with 262 after "
              f"{min(r[1] for r in failed):.2f}-{max(r[1] for r in failed):.2f} s, none stored; "
              f"{len(results) - len(failed)} acknowledged")
        stored = {d["_id"] for d in app.shop.bounded.find({}, {"_id": 1})}
        assert stored == {r[0] for r in results if r[2] is None}, "a refused insert ran, or an acked one is missing"
        assert root.admin.command("mongomuxStats")["commands"]


def test_kill_clients_by_address_user_and_app_name(stack):
    port = stack.gw.port
    conns = {}
    for name, source, user, app in [("a", "127.0.0.1", stack.app, "etl"),
                                    ("b", "127.0.0.2", stack.app, "web"),
                                    ("c", "127.0.0.3", stack.ops, "web")]:
        c = RawConn(port, source=source)
        c.hello(client={"application": {"name": app}, "driver": {"name": "raw", "version": "1"}})
        assert c.auth(user.name, user.password)["ok"] == 1
        conns[name] = c
    try:
        with stack.client(stack.root, appname="console") as root:
            def alive():
                listed = root.admin.command("mongomuxClients")["clients"]
                return {c["address"].split(":")[0] for c in listed if c["appName"] != "console"}
            assert alive() == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
            assert root.admin.command("mongomuxKillClients", appName="etl")["closing"] == 1
            assert conns["a"].try_command({"ping": 1}) is None
            assert root.admin.command("mongomuxKillClients", address="127.0.0.2", user="ops")["closing"] == 0
            assert root.admin.command("mongomuxKillClients", address="127.0.0.2")["closing"] == 1
            assert conns["b"].try_command({"ping": 1}) is None
            assert conns["c"].command({"ping": 1})["ok"] == 1
            assert root.admin.command("mongomuxKillClients", user="ops")["closing"] == 1
            assert conns["c"].try_command({"ping": 1}) is None
            wait_until(lambda: alive() == set(), 5, what="killed clients gone from the list")
            # The connection that sends the command is spared; its driver's monitoring
            # connection (same appName) is not, and the driver opens a new one.
            assert root.admin.command("mongomuxKillClients", appName="console")["closing"] == 1
            assert root.admin.command("ping")["ok"] == 1
    finally:
        for c in conns.values():
            c.close()
    log = stack.gw.proc.log.read_text()
    assert "closing a client an operator named" in log
    assert "mongomuxKillClients" in log and "admin command" in log


def test_reload_command_applies_or_keeps_the_configuration(stack):
    late = make_user("late", databases=("shop",))
    with stack.client(stack.root) as root:
        stack.write(users=stack.users + [late], slow_op_threshold="250ms")
        reply = root.admin.command("mongomuxReload")
        assert reply["users"] == 4, reply
        assert "slow_op_threshold" in reply["applied"] and reply["needsRestart"] == [], reply
        with stack.client(late) as c:
            c.shop.t.insert_one({"x": 1})
        stack.cfg.write_text("this is = not [valid toml\n")
        code, text = code_of(lambda: root.admin.command("mongomuxReload"))
        assert code == BAD_VALUE and "reload failed" in text, text
        assert stack.app.password not in text
        with stack.client(late) as c:  # the running configuration stayed
            assert c.shop.t.find_one({}, {"_id": 0}) == {"x": 1}
        assert root.admin.command("mongomuxStatus")["gateway"]["reloads"] == 1
    log = stack.gw.proc.log.read_text()
    assert "admin command" in log and "mongomuxReload" in log


def test_status_subcommand_prints_tables_and_json(stack):
    uri = (f"mongodb://{stack.ops.name}:{stack.ops.password}@127.0.0.1:{stack.gw.port}/"
           f"?authSource=admin&directConnection=true")
    with stack.client(stack.app, appname="report\x1b[2J") as app:
        app.shop.s.insert_one({"x": 1})
        out = subprocess.run([gateway_bin(), "status"], capture_output=True, text=True, timeout=30,
                             env={"MONGOMUX_STATUS_URI": uri, "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        text = out.stdout
        for heading in ("POOLS", "SERVERS", "CLIENTS", "COMMANDS", "WAIT P99"):
            assert heading in text, text
        assert "standalone" in text and "insert" in text, text
        assert "report\\u{1b}[2J" in text and "\x1b" not in text, text
        assert stack.ops.password not in text + out.stderr
        out = subprocess.run([gateway_bin(), "status", "--json", "--uri", uri], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert status["gateway"]["topology"] == "Single" and status["ok"] == 1.0
    out = subprocess.run([gateway_bin(), "status", "--uri", uri.replace(stack.ops.password, "wrong")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "wrong" not in out.stderr
    out = subprocess.run([gateway_bin(), "admin-token"], capture_output=True, text=True, timeout=30)
    token = out.stdout.splitlines()[1].removeprefix("# ")
    assert f'admin_token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"' in out.stdout
