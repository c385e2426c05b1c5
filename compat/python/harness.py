"""The differential harness of the Python suite (the same contract as compat/lib/harness.mjs).

A scenario is a function of the target ("direct" = the upstream, "gateway" = through mongomux;
a coroutine function for the async client, a plain one for the synchronous client) returning
(outcome, info): the outcome must be identical on both sides (results,
counts, error codes and labels), the info is only recorded. One JSON line per target and one
verdict line go to $COMPAT_RESULTS; a difference fails the test unless
compat/known-differences.json lists it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import os
import subprocess
import time
import traceback
from urllib.parse import quote, urlsplit, urlunsplit

import pymongo
from bson import json_util
from pymongo import monitoring
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError

SUITE = "python"
TARGETS = ("direct", "gateway")


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run the suites through compat/run")
    return value


def uris(target: str) -> dict:
    up = "DIRECT" if target == "direct" else "GATEWAY"
    return {
        "plain": env(f"COMPAT_{up}_URI"),
        "sha256": env(f"COMPAT_{up}_SHA256_URI"),
        "sha1": env(f"COMPAT_{up}_SHA1_URI"),
        "seed": env("COMPAT_DIRECT_URI") if target == "direct" else env("COMPAT_GATEWAY_SEED_URI"),
        "txn": env(f"COMPAT_TXN_{up}_URI"),
        "restart": env(f"COMPAT_RESTART_{up}"),
        "iam": env(f"COMPAT_{up}_IAM_URI"),
    }


def with_options(uri: str, opts: str) -> str:
    return uri + ("&" if "?" in uri else "?") + opts


def with_password(uri: str, password: str) -> str:
    parts = urlsplit(uri)
    user = parts.netloc.split("@", 1)[0].split(":", 1)[0]
    host = parts.netloc.split("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password)}@{host}"))


def db_name(driver: str, scenario: str, target: str) -> str:
    name = f"compat_{driver.replace('-', '_')}_{scenario.replace('-', '_')}_{target[0]}"
    return name[:60]


def error_shape(e: BaseException) -> dict:
    """What of an error is compared: its class, code, codeName and labels (never the message)."""
    shape = {"kind": type(e).__name__, "code": None, "codeName": None,
             "labels": sorted(getattr(e, "_error_labels", ()) or ())}
    if isinstance(e, OperationFailure):
        shape["code"] = e.code
        shape["codeName"] = (e.details or {}).get("codeName")
    if isinstance(e, ConnectionFailure):
        shape["network"] = True
    return shape


def bulk_shape(e: BulkWriteError) -> dict:
    d = e.details
    return {
        "insertedCount": d.get("nInserted"),
        "counts": [d.get("nInserted"), d.get("nMatched"), d.get("nModified"), d.get("nRemoved")],
        "writeErrors": [{"index": w["index"], "code": w["code"]} for w in d.get("writeErrors", [])],
    }


class Events:
    """Every command, heartbeat and topology event of one client (filled by the listeners below)."""

    def __init__(self):
        self.started: list = []
        self.succeeded: list = []
        self.failed: list = []
        self.heartbeats: list[bool] = []
        self.servers: dict[str, str] = {}

    def started_named(self, start: int, name: str) -> int:
        return sum(1 for e in self.started[start:] if e.command_name == name)


# pymongo's listener interfaces share method names (started/succeeded/failed): one small
# listener per interface, all filling one Events.
class _Commands(monitoring.CommandListener):
    def __init__(self, ev: Events):
        self.ev = ev

    def started(self, event):
        self.ev.started.append(event)

    def succeeded(self, event):
        self.ev.succeeded.append(event)

    def failed(self, event):
        self.ev.failed.append(event)


class _Heartbeats(monitoring.ServerHeartbeatListener):
    def __init__(self, ev: Events):
        self.ev = ev

    def started(self, event):
        self.ev.heartbeats.append(bool(event.awaited))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


class _Topology(monitoring.TopologyListener):
    def __init__(self, ev: Events):
        self.ev = ev

    def opened(self, event):
        pass

    def closed(self, event):
        pass

    def description_changed(self, event):
        # Keep the last known type: closing the client turns every server back to Unknown.
        for addr, sd in event.new_description.server_descriptions().items():
            key = f"{addr[0]}:{addr[1]}"
            if sd.server_type_name != "Unknown" or key not in self.ev.servers:
                self.ev.servers[key] = sd.server_type_name


def listeners(ev: Events) -> list:
    return [_Commands(ev), _Heartbeats(ev), _Topology(ev)]


def plain(x):
    """Relaxed extended JSON round trip: both sides compared the way the report shows them."""
    return json.loads(json_util.dumps(x, json_options=json_util.RELAXED_JSON_OPTIONS))


def known_difference(driver: str, scenario: str) -> dict | None:
    with open(env("COMPAT_KNOWN")) as f:
        for k in json.load(f)["differences"]:
            if k["driver"] in (driver, "*") and k["scenario"] == scenario:
                return k
    return None


def record(rec: dict) -> None:
    line = {"ts": dt.datetime.now(dt.timezone.utc).isoformat(), "suite": SUITE, **rec}
    with open(env("COMPAT_RESULTS"), "a") as f:
        f.write(json.dumps(line) + "\n")


def differential(driver: str, version: str, scenario: str, run) -> dict:
    """Run `run(target)` (a coroutine function or a plain one) on both targets, record, compare;
    raise AssertionError on an unexplained difference or a scenario that raised."""
    res = {}
    for target in TARGETS:
        t0 = time.monotonic()
        try:
            result = run(target)
            outcome, info = asyncio.run(result) if inspect.isawaitable(result) else result
            side = {"status": "ok", "outcome": plain(outcome), "info": plain(info or {})}
        except (PyMongoError, Exception) as e:  # noqa: BLE001 - every failure is recorded
            side = {"status": "error", "outcome": {"exception": error_shape(e)},
                    "info": {"message": str(e), "trace": traceback.format_exc(limit=3)[-1500:]}}
        side["ms"] = round((time.monotonic() - t0) * 1000)
        record({"driver": driver, "driver_version": version, "scenario": scenario, "target": target, **side})
        res[target] = side
    same = res["direct"]["outcome"] == res["gateway"]["outcome"]
    both_ok = res["direct"]["status"] == res["gateway"]["status"] == "ok"
    known = known_difference(driver, scenario)
    if not same:
        verdict = "known-difference" if known else "differs"
    else:
        verdict = "same" if both_ok else ("known-difference" if known else "error")
    record({"driver": driver, "driver_version": version, "scenario": scenario, "target": "verdict",
            "verdict": verdict, "known": known["id"] if known else None})
    if verdict in ("differs", "error"):
        raise AssertionError(f"{driver} {scenario}: {verdict}\n  direct:  {json.dumps(res['direct'])}\n"
                             f"  gateway: {json.dumps(res['gateway'])}")
    return res


def not_yet(driver: str, version: str, scenario: str, reason: str) -> None:
    for target in TARGETS:
        record({"driver": driver, "driver_version": version, "scenario": scenario, "target": target,
                "status": "not-yet", "outcome": None, "info": {"reason": reason}})
    record({"driver": driver, "driver_version": version, "scenario": scenario, "target": "verdict",
            "verdict": "not-yet", "reason": reason})


async def ctl_freeze(name: str) -> None:
    p = await asyncio.create_subprocess_exec(env("COMPAT_CTL"), "freeze", name,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await p.communicate()
    if p.returncode:
        raise RuntimeError(f"ctl freeze {name}: {out.decode()}")


async def ctl_restart_later(name: str, delay_ms: int):
    """Start `ctl restart NAME DELAY_MS`; await the returned function's call for its output (the
    same shape as ctl_restart_later_sync, so unasync.py maps one onto the other)."""
    p = await asyncio.create_subprocess_exec(env("COMPAT_CTL"), "restart", name, str(delay_ms),
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)

    async def done() -> str:
        out, _ = await p.communicate()
        if p.returncode:
            raise RuntimeError(f"ctl restart {name}: {out.decode()}")
        return out.decode().strip()

    return done


def ctl_freeze_sync(name: str) -> None:
    p = subprocess.run([env("COMPAT_CTL"), "freeze", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL)
    if p.returncode:
        raise RuntimeError(f"ctl freeze {name}: {p.stdout.decode()}")


def ctl_restart_later_sync(name: str, delay_ms: int):
    """Start `ctl restart NAME DELAY_MS`; call the returned function for its output."""
    p = subprocess.Popen([env("COMPAT_CTL"), "restart", name, str(delay_ms)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def done() -> str:
        out, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"ctl restart {name}: {out.decode()}")
        return out.decode().strip()

    return done


VERSION = pymongo.version
