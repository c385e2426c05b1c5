"""The mongos persona: routers of a sharded cluster, each in front of FerretDB.

A router answers `hello` as mongos does (`msg: "isdbgrid"`, `isWritablePrimary: true`, a
`topologyVersion` of its own, the limits and wire versions, and none of the replica-set fields:
no setName, hosts, me, primary, electionId, setVersion, lastWrite), so drivers see a Sharded
topology of Mongos servers. Everything else is relayed to FerretDB exactly as a replica-set
member relays it (`member.ClientConn`), with the same per-command counters; a router has no
role, so it never refuses a write or a read for lack of `secondaryOk`.

What a router can be made to do (from `control.MongosControl`):

- `hello_delay`: wait before answering every `hello` (plain, awaitable, the handshake's), so
  its round-trip time, as a driver measures it, is that much longer: a router far away. With a
  jitter each hello waits a different time within delay ± jitter, as over a jittery link (and
  then a driver's latency samples and its awaitable replies drift apart in time, instead of
  arriving in lockstep as they do with a fixed delay).
- `quiesce`: mongos 5.0+ between a shutdown request and the shutdown. `hello` (also a pending
  awaitable one, woken by a topologyVersion bump) answers `ok: 0` with code 91
  ShutdownInProgress, and every other command is refused with 91 (a retryable write with its
  `RetryableWriteError` label, as 4.4+ servers attach it), so drivers move away and retry.
- `disappear` / `reappear`: the listener closes and idle connections are cut at once; a
  connection in the middle of a relayed command finishes it and then closes. This is a router
  that goes away, not a shard that loses a write: FerretDB (unlike a shard) cannot deduplicate
  a retried write, so a request is never cut after it reached the backend. `reappear` listens
  again on the same address with a new processId.
- `hang`: as for a member, requests are read and never answered.

Routers are independent: each has its own topologyVersion counter and wakes only its own
awaitable hellos. All run on the harness's one event loop (no locks).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from dataclasses import dataclass, field

from bson import Int64, ObjectId, Timestamp

from . import state as rs_state
from .member import ClientConn, Member, error

MONGOS = "mongos"
SHUTDOWN_IN_PROGRESS = 91


@dataclass
class RouterState:
    """One router; the attributes `member.ClientConn` reads have a member's names."""

    index: int
    host: str
    backend: tuple[str, int]
    role: str = MONGOS
    hung: bool = False
    gone: bool = False
    hello_delay: float = 0.0  # seconds
    hello_jitter: float = 0.0  # seconds either side of hello_delay
    quiescing: bool = False
    recovering_code: int = SHUTDOWN_IN_PROGRESS
    process_id: ObjectId = field(default_factory=ObjectId)
    tv_counter: int = 0
    # The cluster clock as this router sees it (see state.ClusterClock.tick_for).
    clock_offset: int = 0
    known: Timestamp | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def topology_version(self) -> dict:
        return {"processId": self.process_id, "counter": Int64(self.tv_counter)}

    def changed(self) -> None:
        """A change `hello` shows: bump the counter and wake this router's awaitable hellos."""
        self.tv_counter += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def changed_event(self) -> asyncio.Event:
        return self._changed


class ClusterState:
    """The routers of one cluster: the clock and connection ids they share, and their hello."""

    def __init__(self, hosts: list[str], backends: list[tuple[str, int]],
                 compressors: list[str] | None = None) -> None:
        self.members = [RouterState(i, h, b) for i, (h, b) in enumerate(zip(hosts, backends))]
        self.clock = rs_state.ClusterClock()
        # The compressors every router enables (mongos's --networkMessageCompressors).
        self.compressors = list(compressors) if compressors is not None else []
        self._connection_ids = iter(range(1, 1 << 31))

    def next_connection_id(self) -> int:
        return next(self._connection_ids)

    def changed(self) -> None:
        """What `member.Member.reappear` calls when a primary comes back (never, here)."""

    def hello(self, r: RouterState, legacy_name: bool, connection_id: int) -> dict:
        """What router `r` answers to hello, from mongos 7.0's reply (no replica-set fields)."""
        if r.quiescing:
            doc = error(SHUTDOWN_IN_PROGRESS, "The server is in quiesce mode and will shut down")
            doc["topologyVersion"] = r.topology_version()
            return doc
        return {
            "ismaster" if legacy_name else "isWritablePrimary": True,
            "msg": "isdbgrid",
            "topologyVersion": r.topology_version(),
            "maxBsonObjectSize": rs_state.MAX_BSON_OBJECT_SIZE,
            "maxMessageSizeBytes": rs_state.MAX_MESSAGE_SIZE,
            "maxWriteBatchSize": rs_state.MAX_WRITE_BATCH_SIZE,
            "localTime": dt.datetime.now(dt.timezone.utc),
            "logicalSessionTimeoutMinutes": rs_state.SESSION_TIMEOUT_MINUTES,
            "connectionId": connection_id,
            "minWireVersion": rs_state.MIN_WIRE_VERSION,
            "maxWireVersion": rs_state.MAX_WIRE_VERSION,
            "ok": 1.0,
        }

    def status(self) -> dict:
        return {
            "mongos": True,
            "hosts": [r.host for r in self.members],
            "members": [{
                "index": r.index, "host": r.host, "hung": r.hung, "gone": r.gone,
                "hello_delay_ms": r.hello_delay * 1000,
                "hello_jitter_ms": r.hello_jitter * 1000, "quiescing": r.quiescing,
                "backend": f"{r.backend[0]}:{r.backend[1]}",
                "topology_version": r.tv_counter, "process_id": str(r.process_id),
            } for r in self.members],
        }


class RouterConn(ClientConn):
    """A client connection to a router: a member's connection with mongos's hello and refusals."""

    async def hello_doc(self, body: dict, legacy_name: bool) -> dict:
        r = self.ms
        delay = r.hello_delay + random.uniform(-r.hello_jitter, r.hello_jitter) if r.hello_jitter else r.hello_delay
        if delay > 0:
            await asyncio.sleep(delay)
        return await super().hello_doc(body, legacy_name)

    def refusal(self, body: dict, secondary_ok: bool) -> dict | None:
        if not self.ms.quiescing:
            return None
        # Like mongod 4.4+, a refused retryable write is labelled so that the driver retries it.
        labels = ["RetryableWriteError"] if "txnNumber" in body else None
        return error(SHUTDOWN_IN_PROGRESS, "The server is in quiesce mode and will shut down", labels)

    async def await_change(self, tv: dict, max_wait: float) -> None:
        if tv.get("processId") != self.ms.process_id or int(tv.get("counter", -1)) != self.ms.tv_counter:
            return
        try:
            await asyncio.wait_for(self.ms.changed_event().wait(), max_wait)
        except asyncio.TimeoutError:
            pass


class Router(Member):
    """One router's listener, connections and counters."""

    conn_class = RouterConn

    async def disappear(self) -> None:
        """Stop listening and cut every connection that is not in the middle of a relayed
        command; those finish their command and then close (`ClientConn.run` stops once the
        router is gone). Returns without waiting for them (one may be hung)."""
        self.ms.gone = True
        if self.server is not None:
            self.server.close()
            self.server = None
        idle = [t for t, conn in self.conns.items() if not conn.busy]
        for task in idle:
            task.cancel()
        await asyncio.gather(*idle, return_exceptions=True)

    async def reappear(self) -> None:
        self.ms.quiescing = False
        await super().reappear()

    def set_hello_delay(self, secs: float, jitter: float = 0.0) -> None:
        self.ms.hello_delay = max(0.0, secs)
        self.ms.hello_jitter = max(0.0, min(jitter, self.ms.hello_delay))

    def set_quiesce(self, on: bool, wake: bool = True) -> None:
        """`wake=False` leaves pending awaitable hellos asleep: the moment between the shutdown
        request and a monitor's next look, when only new connections and commands see it."""
        if self.ms.quiescing != on:
            self.ms.quiescing = on
            if wake:
                self.ms.changed()
