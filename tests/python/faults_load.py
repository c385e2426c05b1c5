"""The client load of the fault tests (test_faults.py): N raw-wire clients on asyncio.

Each client is one TCP connection to the gateway (so N clients are N client connections the
gateway multiplexes onto its small pool), says `hello`, then loops: insert a document with an
_id no other client uses, read it back by _id, pause a little. Raw wire rather than pymongo:
200 MongoClients would be 400 threads on a 2-core machine, and a driver's own retries would
hide what the gateway answered. Here every reply is the gateway's own, as sent.

Every operation is bounded (`op_bound`): one that takes longer counts as a hang and its
connection is dropped and reopened. Every outcome is recorded with its start and end time, so
the test can say what happened during a fault and when the gateway recovered after it:

    load = Load(port, "db", "coll", clients=200); load.start()
    load.wait_warm(20)                   # every client has had one success
    load.ops_between(t0, t1)             # [Op], started in [t0, t1)
    load.wait_recovered(t_removed, ...)  # seconds until operations succeed again, or None
    load.stop(); load.acked              # _ids whose insert was acknowledged (ok: 1, n: 1)
"""

from __future__ import annotations

import asyncio
import random
import struct
import threading
import time
from dataclasses import dataclass, field

import bson

from mongowire import HEADER, MAX_MESSAGE_SIZE, OP_MSG, parse

# Outcome kinds besides "ok" and "error" (a MongoDB error reply).
HANG = "hang"        # no reply within op_bound: the gateway held the client
CLOSED = "closed"    # the gateway closed the client connection instead of replying
MISMATCH = "mismatch"  # a reply that does not answer the request (wrong responseTo or document)


@dataclass
class Op:
    kind: str          # "insert" or "find"
    start: float
    end: float
    outcome: str       # "ok", "error", HANG, CLOSED, MISMATCH
    code: int | None = None
    code_name: str | None = None
    errmsg: str = ""
    labels: tuple = ()

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def seconds(self) -> float:
        return self.end - self.start


class ClientClosed(Exception):
    pass


@dataclass
class Load:
    port: int
    db: str
    coll: str
    clients: int = 200
    op_bound: float = 15.0
    pause: tuple = (0.3, 0.9)   # seconds between a client's rounds (paced to fit 2 cores)
    ops: list = field(default_factory=list)
    acked: set = field(default_factory=set)
    attempted: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _request_ids: int = 1

    # --- driving -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True,
                                        name="faults-load")
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stops every client; each finishes (or abandons, after op_bound) its operation."""
        self._stop.set()
        self._thread.join(timeout if timeout is not None else self.op_bound + 10)
        assert not self._thread.is_alive(), "the load did not stop"

    async def _main(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    def _record(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    def _next_id(self) -> int:
        self._request_ids += 1  # one event loop: no lock needed
        return self._request_ids

    async def _client(self, n: int) -> None:
        rng = random.Random(n)
        await asyncio.sleep(rng.uniform(0, 1.0))  # spread the connects and the rounds
        seq = 0
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = await self._connect_recorded()
                seq += 1
                _id = f"c{n}-{seq}"
                with self._lock:
                    self.attempted += 1
                ins = await self._op(conn, "insert", {
                    "insert": self.coll, "documents": [{"_id": _id, "client": n, "seq": seq}],
                    "$db": self.db,
                }, lambda d: d.get("n") == 1)
                if ins.ok:
                    with self._lock:
                        self.acked.add(_id)
                    await self._op(conn, "find", {
                        "find": self.coll, "filter": {"_id": _id}, "$db": self.db,
                    }, lambda d, i=_id: [x.get("_id") for x in d["cursor"]["firstBatch"]] == [i])
            except (ClientClosed, MismatchError, OSError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError):
                if conn is not None:
                    conn[1].close()
                conn = None
            await asyncio.sleep(rng.uniform(*self.pause))
        if conn is not None:
            conn[1].close()

    async def _connect_recorded(self):
        """Connects and says hello within op_bound; a failure is recorded as a "connect" op."""
        start = time.monotonic()
        try:
            return await asyncio.wait_for(self._connect(), self.op_bound)
        except asyncio.TimeoutError:
            self._record(Op("connect", start, time.monotonic(), HANG))
            raise
        except (ClientClosed, MismatchError, OSError, asyncio.IncompleteReadError) as e:
            self._record(Op("connect", start, time.monotonic(), CLOSED, errmsg=repr(e)))
            raise

    async def _connect(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        conn = (reader, writer)
        reply = await self._round_trip(conn, {"hello": 1, "$db": "admin"})
        if reply.get("ok") != 1:
            writer.close()
            raise ClientClosed(f"hello refused: {reply}")
        return conn

    async def _round_trip(self, conn, doc: dict) -> dict:
        reader, writer = conn
        rid = self._next_id()
        body = struct.pack("<I", 0) + b"\x00" + bson.encode(doc)
        writer.write(HEADER.pack(HEADER.size + len(body), rid, 0, OP_MSG) + body)
        await writer.drain()
        try:
            head = await reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError:
            raise ClientClosed("closed before the reply") from None
        length = HEADER.unpack(head)[0]
        if not HEADER.size < length <= MAX_MESSAGE_SIZE:
            raise ClientClosed(f"bad reply length {length}")
        msg = parse(head, await reader.readexactly(length - HEADER.size))
        if msg.response_to != rid:
            raise MismatchError(f"responseTo {msg.response_to}, request {rid}")
        return msg.doc

    async def _op(self, conn, kind: str, doc: dict, check) -> Op:
        """One bounded operation, recorded; raises (after recording) when the connection must
        be dropped (hang, closed, mismatch)."""
        start = time.monotonic()
        try:
            reply = await asyncio.wait_for(self._round_trip(conn, doc), self.op_bound)
        except asyncio.TimeoutError:
            self._record(Op(kind, start, time.monotonic(), HANG))
            raise
        except MismatchError as e:
            self._record(Op(kind, start, time.monotonic(), MISMATCH, errmsg=str(e)))
            raise ClientClosed(str(e)) from None
        except (ClientClosed, OSError, asyncio.IncompleteReadError) as e:
            self._record(Op(kind, start, time.monotonic(), CLOSED, errmsg=repr(e)))
            raise ClientClosed(repr(e)) from None
        end = time.monotonic()
        if reply.get("ok") == 1 and not reply.get("writeErrors"):
            if check(reply):
                op = Op(kind, start, end, "ok")
            else:
                op = Op(kind, start, end, MISMATCH, errmsg=repr(reply)[:300])
        else:
            err = (reply.get("writeErrors") or [reply])[0]
            op = Op(kind, start, end, "error", err.get("code"), err.get("codeName"),
                    err.get("errmsg", ""), tuple(reply.get("errorLabels", ())))
        self._record(op)
        return op

    # --- reading the record --------------------------------------------------------------

    def snapshot(self) -> list[Op]:
        with self._lock:
            return list(self.ops)

    def ops_between(self, t0: float, t1: float) -> list[Op]:
        return [o for o in self.snapshot() if t0 <= o.start < t1]

    def wait_warm(self, timeout: float) -> None:
        """Until every client has had a success (all are connected and served)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for o in self.snapshot() if o.ok and o.kind == "find") >= self.clients:
                return
            time.sleep(0.1)
        raise AssertionError(f"the load did not warm up within {timeout}s: "
                             f"{sum(1 for o in self.snapshot() if o.ok)} successes")

    def wait_recovered(self, since: float, streak: float = 1.5, timeout: float = 30.0,
                       min_ops: int = 50) -> float | None:
        """Seconds from `since` (the fault's removal) to the end of the last failed operation
        that started after it, once `streak` seconds of operations (at least `min_ops`) have all
        succeeded; None if that never happened within `timeout`."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = time.monotonic()
            after = [o for o in self.snapshot() if o.start >= since]
            failed = [o for o in after if not o.ok]
            last_bad = max((o.end for o in failed), default=since)
            clean = [o for o in after if o.start > last_bad]
            if now - last_bad >= streak and len(clean) >= min_ops:
                first_ok = min((o.end for o in after if o.ok), default=now)
                return max(last_bad, first_ok) - since
        return None


class MismatchError(Exception):
    pass
