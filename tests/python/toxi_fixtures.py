"""Toxiproxy between the gateway and its database: network faults on demand.

Toxiproxy (built by scripts/install-deps into .local/bin/toxiproxy-server, v2.5.0) is a TCP
proxy whose HTTP API adds and removes "toxics" on the bytes it relays: latency with jitter, a
bandwidth cap, connections reset (RST) or closed slowly, a timeout that stops all data (a
half-open connection), data cut after N bytes. A toxic applies to the proxy's existing
connections as well as new ones, and removing it restores them (except the ones it closed).
This module starts one server per test session on a free loopback port and speaks its API with
urllib (the API is Toxiproxy's own: JSON over HTTP, no client library needed).

    def test_x(toxiproxy, ferretdb, logdir):
        proxy = toxiproxy.proxy("db", ferretdb.port)     # listens on a free loopback port
        up = proxied(ferretdb, proxy)                      # an Upstream whose port is the proxy's
        gw = start_gateway(up, logdir)                     # the gateway dials the proxy
        name = proxy.add("latency", latency=200, jitter=50)        # downstream (replies) by default
        proxy.add("timeout", stream="upstream", timeout=0)         # requests vanish
        proxy.remove(name); proxy.clear()                  # one toxic, or all of this proxy's
        proxy.disable(); proxy.enable()                    # listener and connections down / up

Toxic attributes are Toxiproxy's: latency `latency`/`jitter` (ms), bandwidth `rate` (KB/s),
slow_close `delay` (ms), timeout `timeout` (ms; 0: until removed), reset_peer `timeout` (ms
after data arrives), limit_data `bytes`. `stream` is "downstream" (database to gateway) or
"upstream" (gateway to database).

The binary is $MONGOMUX_TOXIPROXY (default .local/bin/toxiproxy-server); a missing one is an
error, not a skip, as for the other servers (conftest.py).
"""

from __future__ import annotations

import itertools
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, Proc, Upstream, _binary, _running, _spawn, free_port, tail, wait_until

# Every API call is bounded: a wedged Toxiproxy fails the test instead of hanging it.
API_TIMEOUT = 5.0
_toxic_names = itertools.count(1)


class ToxiproxyError(AssertionError):
    """The API refused a call (status and body in the message)."""


@dataclass
class Toxiproxy:
    """One toxiproxy-server process and its API."""

    proc: Proc
    api_port: int

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data,
                                     method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=API_TIMEOUT) as resp:
                text = resp.read()
        except urllib.error.HTTPError as e:
            raise ToxiproxyError(f"toxiproxy {method} {path}: {e.code} {e.read()[:300]!r}") from None
        return json.loads(text) if text.strip() else None

    def version(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/version", timeout=API_TIMEOUT) as r:
            return r.read().decode().strip()

    def proxy(self, name: str, upstream_port: int, upstream_host: str = "127.0.0.1") -> "Proxy":
        """A new proxy listening on a free loopback port, relaying to upstream_host:port."""
        info = self.call("POST", "/proxies", {
            "name": name, "listen": "127.0.0.1:0",
            "upstream": f"{upstream_host}:{upstream_port}", "enabled": True,
        })
        port = int(info["listen"].rsplit(":", 1)[1])
        return Proxy(self, name, port, upstream_port)

    def reset(self) -> None:
        """Removes every toxic of every proxy and enables them all."""
        self.call("POST", "/reset")


@dataclass
class Proxy:
    """One proxy: where it listens and what it relays to."""

    server: Toxiproxy
    name: str
    port: int
    upstream_port: int
    toxics: list = field(default_factory=list)

    def add(self, kind: str, stream: str = "downstream", toxicity: float = 1.0, **attributes) -> str:
        """Adds a toxic of type `kind` and returns its name (for remove)."""
        name = f"{kind}_{stream}_{next(_toxic_names)}"
        self.server.call("POST", f"/proxies/{self.name}/toxics", {
            "name": name, "type": kind, "stream": stream, "toxicity": toxicity,
            "attributes": attributes,
        })
        self.toxics.append(name)
        return name

    def remove(self, name: str) -> None:
        self.server.call("DELETE", f"/proxies/{self.name}/toxics/{name}")
        self.toxics.remove(name)

    def clear(self) -> None:
        for name in list(self.toxics):
            self.remove(name)

    def active(self) -> list[str]:
        return [t["name"] for t in self.server.call("GET", f"/proxies/{self.name}/toxics")]

    def disable(self) -> None:
        """Closes the listener and every connection through it (the link is cut)."""
        self.server.call("POST", f"/proxies/{self.name}", {"enabled": False})

    def enable(self) -> None:
        self.server.call("POST", f"/proxies/{self.name}", {"enabled": True})

    def delete(self) -> None:
        self.server.call("DELETE", f"/proxies/{self.name}")


@dataclass
class ProxiedUpstream(Upstream):
    """An upstream reached through a proxy: the database's credentials, the proxy's port."""

    proxy_port: int = 0

    @property
    def port(self) -> int:
        return self.proxy_port


def proxied(upstream: Upstream, proxy: Proxy) -> ProxiedUpstream:
    return ProxiedUpstream(upstream.proc, upstream.username, upstream.password, proxy_port=proxy.port)


def start_toxiproxy(logdir: Path) -> Toxiproxy:
    binary = _binary("MONGOMUX_TOXIPROXY", ROOT / ".local/bin/toxiproxy-server")
    port = free_port()
    env = dict(os.environ, LOG_LEVEL="error")  # info and warn log every connection it relays or loses
    popen, log = _spawn("toxiproxy", [binary, "-host", "127.0.0.1", "-port", port], logdir, env)
    proc = Proc("toxiproxy", popen, port, log, stop_timeout=5.0)
    _running.append(proc)
    server = Toxiproxy(proc, port)

    def answers():
        if not proc.alive():
            raise AssertionError(f"toxiproxy exited with {popen.returncode}:\n{tail(log)}")
        try:
            return server.version()
        except OSError:
            return None

    wait_until(answers, 15.0, what="toxiproxy's API")
    return server


@pytest.fixture(scope="session")
def toxiproxy(logdir):
    """A toxiproxy-server for the session. Proxies made with `make_proxy` are deleted when
    their test ends, so that names can be reused."""
    server = start_toxiproxy(logdir)
    yield server
    server.proc.stop()


@pytest.fixture
def make_proxy(toxiproxy):
    """make_proxy(name, upstream_port): a proxy deleted (with its toxics) when the test ends."""
    made: list[Proxy] = []

    def make(name: str, upstream_port: int) -> Proxy:
        p = toxiproxy.proxy(name, upstream_port)
        made.append(p)
        return p

    yield make
    for p in made:
        try:
            p.delete()
        except (ToxiproxyError, OSError):
            pass
