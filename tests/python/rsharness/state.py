"""The replica set's state and the `hello` reply each member gives from it.

One `SetState` per harness process, mutated only by control operations (all on the event
loop thread, so no locks). Every change that a driver should notice goes through `changed()`,
which bumps *every* member's topologyVersion counter and wakes awaitable hellos, the way a
real member increments its counter on any replica-set state or config change.

Election ids are built as mongod builds them, `7fffffff` followed by the term as a big-endian
int64, so "newer election" is simply "greater ObjectId", which is what SDAM compares.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field

from bson import Int64, ObjectId, Timestamp

# What the harness reports for the limits; maxWireVersion is FerretDB 1.24's own (21 = 7.0).
MAX_BSON_OBJECT_SIZE = 16 * 1024 * 1024
MAX_MESSAGE_SIZE = 48_000_000
MAX_WRITE_BATCH_SIZE = 100_000
SESSION_TIMEOUT_MINUTES = 30
MIN_WIRE_VERSION = 0
MAX_WIRE_VERSION = 21

PRIMARY, SECONDARY, RECOVERING, REMOVED = "primary", "secondary", "recovering", "removed"


def election_id(term: int) -> ObjectId:
    return ObjectId(b"\x7f\xff\xff\xff" + term.to_bytes(8, "big"))


class ClusterClock:
    """A synthesized, strictly increasing cluster time (seconds since the epoch, increment)."""

    def __init__(self) -> None:
        self.secs, self.inc = 0, 0

    def tick(self) -> Timestamp:
        now = int(time.time())
        if now > self.secs:
            self.secs, self.inc = now, 1
        else:
            self.inc += 1
        return Timestamp(self.secs, self.inc)

    def tick_for(self, ms: "MemberState") -> Timestamp:
        """The next cluster time as member `ms` sees it: its own clock (the set's, shifted by
        the member's `clock_offset`), never behind a time it learned from a client."""
        ts = self.tick()
        own = Timestamp(max(ts.time + ms.clock_offset, 0), ts.inc)
        if ms.known is not None and ms.known > own:
            return ms.known
        return own

    def gossip(self, ms: "MemberState") -> dict:
        """`$clusterTime` and `operationTime` as every reply of member `ms` carries them."""
        ts = self.tick_for(ms)
        return {
            "$clusterTime": {"clusterTime": ts, "signature": {"hash": b"\0" * 20, "keyId": Int64(0)}},
            "operationTime": ts,
        }

    @staticmethod
    def learn(ms: "MemberState", gossip) -> None:
        """A request's `$clusterTime` advances the member's clock, as mongod's does (the
        signature is not checked here)."""
        ts = gossip.get("clusterTime") if isinstance(gossip, dict) else None
        if isinstance(ts, Timestamp) and (ms.known is None or ts > ms.known):
            ms.known = ts


@dataclass
class MemberState:
    index: int
    host: str  # "ip:port", exactly as it appears in `hosts`, `me` and `primary`
    backend: tuple[str, int]
    role: str = SECONDARY
    tags: dict = field(default_factory=dict)
    lag_secs: float = 0.0
    hung: bool = False
    gone: bool = False
    # A stale primary claims to be primary with an older (electionId, setVersion).
    stale_claim: tuple[ObjectId, int] | None = None
    recovering_code: int = 11600
    # Seconds this member's cluster clock runs ahead (or behind) the set's, and the highest
    # cluster time a request's $clusterTime taught it.
    clock_offset: int = 0
    known: Timestamp | None = None
    process_id: ObjectId = field(default_factory=ObjectId)
    tv_counter: int = 0

    def topology_version(self) -> dict:
        return {"processId": self.process_id, "counter": Int64(self.tv_counter)}


class SetState:
    def __init__(self, set_name: str, hosts: list[str], backends: list[tuple[str, int]],
                 compressors: list[str] | None = None) -> None:
        self.set_name = set_name
        # The compressors every member enables (mongod's --networkMessageCompressors).
        self.compressors = list(compressors) if compressors is not None else []
        self.members = [MemberState(i, h, b) for i, (h, b) in enumerate(zip(hosts, backends))]
        self.term = 1
        self.set_version = 1
        self.election_id = election_id(self.term)
        self.members[0].role = PRIMARY
        self.clock = ClusterClock()
        self._changed = asyncio.Event()
        self._connection_ids = iter(range(1, 1 << 31))

    # --- views -----------------------------------------------------------------------------

    def primary(self) -> MemberState | None:
        return next((m for m in self.members if m.role == PRIMARY and m.stale_claim is None), None)

    def hosts(self) -> list[str]:
        return [m.host for m in self.members if m.role != REMOVED]

    def next_connection_id(self) -> int:
        return next(self._connection_ids)

    def changed_event(self) -> asyncio.Event:
        return self._changed

    # --- mutations -------------------------------------------------------------------------

    def changed(self) -> None:
        """Record a state change: bump every member's topologyVersion and wake waiters."""
        for m in self.members:
            m.tv_counter += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def step_down(self) -> None:
        for m in self.members:
            if m.role == PRIMARY and m.stale_claim is None:
                m.role = SECONDARY
        self.changed()

    def elect(self, index: int) -> None:
        target = self.members[index]
        if target.role == REMOVED or target.gone:
            raise ValueError(f"member {index} cannot be elected (removed or gone)")
        for m in self.members:
            if m.role == PRIMARY and m.stale_claim is None:
                m.role = SECONDARY
        self.term += 1
        self.election_id = election_id(self.term)
        target.role, target.stale_claim = PRIMARY, None
        self.changed()

    def stale_primary(self, index: int) -> None:
        """Member `index` claims primary with the previous term's electionId and an older
        setVersion, as a primary cut off before the last election would."""
        target = self.members[index]
        if target is self.primary():
            raise ValueError("the real primary cannot also be the stale one")
        target.role = PRIMARY
        target.stale_claim = (election_id(max(self.term - 1, 0)), max(self.set_version - 1, 0))
        self.changed()

    def reconfig(self) -> None:
        self.set_version += 1
        self.changed()

    # --- the hello reply -------------------------------------------------------------------

    def hello(self, m: MemberState, legacy_name: bool, connection_id: int) -> dict:
        """What member `m` answers to hello (`legacy_name`: isMaster spelling)."""
        writable = m.role == PRIMARY
        now = dt.datetime.now(dt.timezone.utc)
        doc: dict = {"topologyVersion": m.topology_version()}
        if m.role == REMOVED:
            # A member without a valid config: no set name, so drivers drop it from the set.
            doc.update({"isWritablePrimary": False, "secondary": False, "isreplicaset": True,
                        "info": "Does not have a valid replica set config"})
        else:
            doc["ismaster" if legacy_name else "isWritablePrimary"] = writable
            doc["secondary"] = m.role == SECONDARY
            doc.update({"setName": self.set_name, "hosts": self.hosts(), "me": m.host})
            if m.stale_claim is not None:
                doc.update({"primary": m.host, "electionId": m.stale_claim[0],
                            "setVersion": m.stale_claim[1]})
            else:
                doc["setVersion"] = self.set_version
                p = self.primary()
                if p is not None:
                    doc["primary"] = p.host
                if writable:
                    doc["electionId"] = self.election_id
            if m.tags:
                doc["tags"] = dict(m.tags)
            written = now - dt.timedelta(seconds=m.lag_secs)
            op_time = {"ts": Timestamp(int(written.timestamp()), 1), "t": Int64(self.term)}
            doc["lastWrite"] = {"opTime": op_time, "lastWriteDate": written.replace(microsecond=0),
                                "majorityOpTime": op_time, "majorityWriteDate": written.replace(microsecond=0)}
        if legacy_name and m.role == REMOVED:
            doc["ismaster"] = doc.pop("isWritablePrimary")
        doc.update({
            "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
            "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
            "maxWriteBatchSize": MAX_WRITE_BATCH_SIZE,
            "localTime": now,
            "logicalSessionTimeoutMinutes": SESSION_TIMEOUT_MINUTES,
            "connectionId": connection_id,
            "minWireVersion": MIN_WIRE_VERSION,
            "maxWireVersion": MAX_WIRE_VERSION,
            "readOnly": False,
            "ok": 1.0,
        })
        return doc

    def status(self) -> dict:
        p = self.primary()
        return {
            "set_name": self.set_name,
            "term": self.term,
            "set_version": self.set_version,
            "election_id": str(self.election_id),
            "primary": p.host if p else None,
            "hosts": self.hosts(),
            "compressors": self.compressors,
            "members": [{
                "index": m.index, "host": m.host, "role": m.role, "tags": m.tags,
                "lag_secs": m.lag_secs, "hung": m.hung, "gone": m.gone,
                "stale": m.stale_claim is not None, "backend": f"{m.backend[0]}:{m.backend[1]}",
                "topology_version": m.tv_counter, "process_id": str(m.process_id),
            } for m in self.members],
        }
