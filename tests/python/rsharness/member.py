"""One replica-set member: a listener, and a task per client connection.

What a member answers itself: `hello`/`isMaster` (plain, awaitable, and exhaust-streamed, from
`state.SetState.hello`), `endSessions` (FerretDB 1.24 has no such command; mongod answers ok),
and the refusals a real member in its role gives (10107, 13435, the recovering code). Everything
else is relayed to the member's FerretDB backend on a backend connection owned by this client
connection alone, so authentication (SCRAM saslStart/saslContinue) is FerretDB's, per client
connection, exactly as if the driver spoke to FerretDB directly.

A member must never answer a command in a way its role forbids, and never let the replica-set
fields a driver sends (`$clusterTime`, `$readPreference`, `readConcern.afterClusterTime`) reach
FerretDB: 1.24 happens to ignore them, but the harness must not depend on that.

# Concurrency note
All of this runs on one event loop. Control operations mutate `SetState` between awaits, so a
reply is always built from one consistent state. A client task blocked in an awaitable hello
or in a hang is cancelled by `disappear`.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct

from bson import ObjectId

from . import compress, wire
from .state import PRIMARY, RECOVERING, REMOVED, SECONDARY, MemberState, SetState

HELLO_NAMES = {"hello", "isMaster", "ismaster"}

# Commands that never need primary or secondaryOk (mongod: "secondaryAllowed: always").
ALWAYS_ALLOWED = {
    "hello", "isMaster", "ismaster", "ping", "buildInfo", "buildinfo", "saslStart", "saslContinue",
    "authenticate", "logout", "getnonce", "endSessions", "killSessions", "refreshSessions",
    "startSession", "getParameter", "serverStatus", "hostInfo", "whatsmyuri", "connectionStatus",
    "getLog", "listCommands", "getCmdLineOpts", "getMore", "killCursors", "currentOp",
    "abortTransaction", "commitTransaction",
}

# Commands only a writable primary accepts.
WRITE_COMMANDS = {
    "insert", "update", "delete", "findAndModify", "findandmodify", "create", "drop",
    "dropDatabase", "createIndexes", "dropIndexes", "deleteIndexes", "renameCollection", "collMod",
    "createUser", "updateUser", "dropUser", "dropAllUsersFromDatabase", "grantRolesToUser",
    "revokeRolesFromUser", "createRole", "dropRole", "updateRole", "compact", "reIndex",
    "convertToCapped", "cloneCollectionAsCapped", "applyOps",
}

# Fields with replica-set meaning that the harness consumes and does not relay.
STRIP_TOP = ("$clusterTime", "$readPreference")
STRIP_READ_CONCERN = ("afterClusterTime", "afterOpTime")

CODE_NAMES = {
    10107: "NotWritablePrimary", 13435: "NotPrimaryNoSecondaryOk", 13436: "NotPrimaryOrSecondary",
    11600: "InterruptedAtShutdown", 11602: "InterruptedDueToReplStateChange",
    189: "PrimarySteppedDown", 91: "ShutdownInProgress", 6: "HostUnreachable",
    352: "UnsupportedOpQueryCommand",
}


def error(code: int, errmsg: str, labels: list[str] | None = None) -> dict:
    doc = {"ok": 0.0, "errmsg": errmsg, "code": code, "codeName": CODE_NAMES.get(code, "Error")}
    if labels:
        doc["errorLabels"] = labels
    return doc


def is_write(body: dict) -> bool:
    name = next(iter(body), "")
    if name in WRITE_COMMANDS:
        return True
    if name == "aggregate":
        # An aggregation ending in $out or $merge writes, so it needs the primary.
        pipeline = body.get("pipeline") or []
        return bool(pipeline) and isinstance(pipeline[-1], dict) and (
            "$out" in pipeline[-1] or "$merge" in pipeline[-1])
    return False


def sanitize(body: dict) -> dict:
    """The command as relayed to FerretDB: replica-set-only fields removed."""
    out = {k: v for k, v in body.items() if k not in STRIP_TOP}
    rc = out.get("readConcern")
    if isinstance(rc, dict) and any(k in rc for k in STRIP_READ_CONCERN):
        rc = {k: v for k, v in rc.items() if k not in STRIP_READ_CONCERN}
        if rc:
            out["readConcern"] = rc
        else:
            del out["readConcern"]
    return out


class Member:
    """A member's listener, its live client connections and its command counters."""

    # The per-connection handler; the mongos persona (`mongos.Router`) brings its own.
    conn_class: type["ClientConn"]

    def __init__(self, state: SetState, ms: MemberState) -> None:
        self.state, self.ms = state, ms
        self.served: collections.Counter = collections.Counter()
        self.refused: collections.Counter = collections.Counter()
        # Requests that arrived as OP_COMPRESSED, by compressor; bytes read and written on
        # client connections (frames as on the wire, compressed or not).
        self.compressed: collections.Counter = collections.Counter()
        self.wire_bytes: collections.Counter = collections.Counter()
        self.server: asyncio.base_events.Server | None = None
        self.tasks: set[asyncio.Task] = set()
        self.conns: dict[asyncio.Task, ClientConn] = {}
        self.unhung = asyncio.Event()
        self.unhung.set()

    async def listen(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            host, port = self.ms.host.rsplit(":", 1)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
        self.server = await asyncio.start_server(self._accept, sock=sock)

    async def disappear(self) -> None:
        """Close the listener and every connection, as a crashed mongod would."""
        self.ms.gone = True
        if self.server is not None:
            self.server.close()
            self.server = None
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def reappear(self) -> None:
        """Listen again on the same address, as a restarted process: a new processId, not hung,
        and never primary (a restarted mongod rejoins as a secondary; `elect` makes it primary)."""
        self.ms.process_id, self.ms.tv_counter, self.ms.gone = ObjectId(), 0, False
        self.set_hung(False)
        if self.ms.role == PRIMARY:
            self.ms.role, self.ms.stale_claim = SECONDARY, None
            self.state.changed()
        await self.listen()

    def set_hung(self, hung: bool) -> None:
        self.ms.hung = hung
        if hung:
            self.unhung.clear()
        else:
            self.unhung.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        conn = self.conn_class(self, reader, writer)
        self.conns[task] = conn
        try:
            await conn.run()
        except (asyncio.IncompleteReadError, ConnectionError, wire.ProtocolError, OSError):
            pass  # the client went away or sent garbage: drop the connection, as mongod does
        except asyncio.CancelledError:
            pass  # disappear()
        finally:
            self.tasks.discard(task)
            self.conns.pop(task, None)
            conn.close()


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(wire.HEADER.size)
    length, *_ = wire.check_header(head)  # bounded before reading the rest
    return head, await reader.readexactly(length - wire.HEADER.size)


class ClientConn:
    """One client connection to a member, and its own backend connection (opened lazily)."""

    def __init__(self, member: Member, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.member, self.ms, self.state = member, member.ms, member.state
        self.reader, self.writer = reader, writer
        self.connection_id = self.state.next_connection_id()
        self.backend: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        # The client asked for SCRAM's skipEmptyExchange (see finish_scram).
        self.skip_empty_exchange = False
        # Between reading a non-hello request and flushing its reply (a mongos that goes away
        # lets such a request finish: see mongos.Router.disappear).
        self.busy = False
        # The compressor of the request being answered: mongod replies in kind.
        self.reply_compressor: str | None = None

    def close(self) -> None:
        self.writer.transport.abort()
        if self.backend is not None:
            self.backend[1].transport.abort()
            self.backend = None

    async def run(self) -> None:
        while not self.ms.gone:
            head, rest = await read_frame(self.reader)
            self.member.wire_bytes["in"] += len(head) + len(rest)
            self.reply_compressor = None
            if wire.HEADER.unpack(head)[3] == wire.OP_COMPRESSED:
                name, head, rest = compress.unwrap(head, rest, self.state.compressors)
                self.member.compressed[name] += 1
                self.reply_compressor = name
            msg = wire.parse(head, rest)
            self.busy = msg.command not in HELLO_NAMES
            await self.member.unhung.wait()  # hung: the request is read and never answered
            if msg.opcode == wire.OP_QUERY:
                await self.on_query(msg)
            else:
                await self.on_msg(msg)
            self.busy = False

    # --- dispatch ------------------------------------------------------------------------

    async def on_msg(self, msg: wire.Message) -> None:
        name = msg.command
        if name in HELLO_NAMES:
            self.member.served[name] += 1
            await self.hello(msg)
            return
        secondary_ok = (msg.body.get("$readPreference") or {}).get("mode", "primary") != "primary"
        reply = await self.command(msg.body, msg.sequences, secondary_ok)
        if msg.flags & wire.MORE_TO_COME:
            return  # unacknowledged write: the client reads no reply
        await self.send(wire.op_msg(reply, response_to=msg.request_id))

    async def send(self, frame: bytes) -> None:
        """Write one reply, compressed as its request was."""
        if self.reply_compressor is not None:
            frame = compress.wrap(frame, self.reply_compressor)
        self.member.wire_bytes["out"] += len(frame)
        self.writer.write(frame)
        await self.writer.drain()

    async def on_query(self, msg: wire.Message) -> None:
        db, _, coll = msg.namespace.partition(".")
        body = dict(msg.body)
        body.setdefault("$db", db)
        if coll != "$cmd":
            reply = error(352, "OP_QUERY is only supported for commands")
        elif msg.command in HELLO_NAMES:
            self.member.served[msg.command] += 1
            reply = await self.hello_doc(body, legacy_name=msg.command != "hello")
        else:
            reply = await self.command(body, b"", bool(msg.flags & wire.QUERY_SECONDARY_OK))
        await self.send(wire.op_reply(reply, msg.request_id))

    async def command(self, body: dict, sequences: bytes, secondary_ok: bool) -> dict:
        """A non-hello command: refused as the member's role demands, answered, or relayed."""
        name = next(iter(body), "")
        self.state.clock.learn(self.ms, body.get("$clusterTime"))
        refusal = self.refusal(body, secondary_ok) or self.causal_refusal(body)
        if refusal is not None:
            self.member.refused[name] += 1
            # mongod 4.4+ puts its topologyVersion in every state-change error, so a driver can
            # tell an error that reflects what it already knows (ignored) from news.
            refusal["topologyVersion"] = self.ms.topology_version()
            return {**refusal, **self.state.clock.gossip(self.ms)}
        self.member.served[name] += 1
        if name == "endSessions":
            reply = {"ok": 1.0}
        else:
            if name == "saslStart":
                self.note_sasl_options(body)
            reply = await self.relay(sanitize(body), sequences)
            if name == "saslContinue":
                reply = await self.finish_scram(body, reply)
        reply.update(self.state.clock.gossip(self.ms))
        return reply

    def refusal(self, body: dict, secondary_ok: bool) -> dict | None:
        name = next(iter(body), "")
        if name in ALWAYS_ALLOWED:
            return None
        role = self.ms.role
        if role == REMOVED:
            return error(13436, "node is not in primary or recovering state")
        if role == RECOVERING:
            return error(self.ms.recovering_code, "node is recovering")
        if role == PRIMARY:
            return None
        if is_write(body):
            # mongod 4.4+ labels a refused retryable write so that drivers retry it elsewhere.
            labels = ["RetryableWriteError"] if "txnNumber" in body else None
            return error(10107, "not primary", labels)
        if not secondary_ok:
            return error(13435, "not primary and secondaryOk=false")
        return None

    def causal_refusal(self, body: dict) -> dict | None:
        """mongod refuses a read that must wait for a cluster time beyond its own (after
        learning the request's $clusterTime): the time cannot have happened yet."""
        rc = body.get("readConcern")
        after = rc.get("afterClusterTime") if isinstance(rc, dict) else None
        if after is None:
            return None
        now = self.state.clock.tick_for(self.ms)
        if after > now:
            return error(72, "readConcern afterClusterTime value must not be greater than the current "
                             f"clusterTime. Requested clusterTime: {after}; current clusterTime: {now}")
        self.member.served["afterClusterTime"] += 1
        return None

    # --- SCRAM -----------------------------------------------------------------------------

    def note_sasl_options(self, start: dict) -> None:
        options = start.get("options")
        self.skip_empty_exchange = isinstance(options, dict) and options.get("skipEmptyExchange") is True

    async def finish_scram(self, request: dict, reply: dict) -> dict:
        """FerretDB 1.24 ignores skipEmptyExchange: after the server-final message it answers
        done: false and waits for one more, empty, saslContinue. mongod (4.4+) answers done: true
        when the client asked to skip it, and the Rust driver fails authentication otherwise.
        So, for a client that asked, the harness sends that empty step itself."""
        payload = reply.get("payload")
        if not (self.skip_empty_exchange and reply.get("ok") == 1 and reply.get("done") is False
                and isinstance(payload, bytes) and payload.startswith(b"v=")):
            return reply
        extra = await self.relay({"saslContinue": 1, "conversationId": reply.get("conversationId", 1),
                                  "payload": b"", "$db": request.get("$db", "admin")}, b"")
        if extra.get("ok") == 1 and extra.get("done") is True:
            reply["done"] = True
        return reply

    # --- hello ---------------------------------------------------------------------------

    async def hello_doc(self, body: dict, legacy_name: bool) -> dict:
        doc = self.state.hello(self.ms, legacy_name, self.connection_id)
        if body.get("helloOk") is True:
            doc["helloOk"] = True
        if isinstance(body.get("compression"), list):
            # mongod answers with the client's list, in its order, less what it does not enable.
            doc["compression"] = [c for c in body["compression"] if c in self.state.compressors]
        if "saslSupportedMechs" in body or "speculativeAuthenticate" in body:
            # Only FerretDB knows the user's mechanisms and can start its SCRAM conversation.
            fwd = {k: v for k, v in sanitize(body).items() if k not in ("topologyVersion", "maxAwaitTimeMS")}
            if isinstance(body.get("speculativeAuthenticate"), dict):
                self.note_sasl_options(body["speculativeAuthenticate"])
            upstream = await self.relay(fwd, b"")
            for key in ("saslSupportedMechs", "speculativeAuthenticate"):
                if key in upstream:
                    doc[key] = upstream[key]
        doc.update(self.state.clock.gossip(self.ms))
        return doc

    async def hello(self, msg: wire.Message) -> None:
        """hello over OP_MSG: plain, awaitable (topologyVersion + maxAwaitTimeMS) or, with
        exhaustAllowed, streamed with moreToCome until the connection goes away."""
        body = msg.body
        legacy_name = msg.command != "hello"
        tv, max_await = body.get("topologyVersion"), body.get("maxAwaitTimeMS")
        awaitable = isinstance(tv, dict) and max_await is not None
        exhaust = awaitable and bool(msg.flags & wire.EXHAUST_ALLOWED)
        response_to, first = msg.request_id, True
        while True:
            if awaitable:
                await self.await_change(tv, float(max_await) / 1000.0)
            await self.member.unhung.wait()
            doc = await self.hello_doc(body if first else {}, legacy_name)
            first = False
            request_id = wire.next_id()
            # An error reply (a quiescing mongos) ends a stream, as it does on a server.
            more = exhaust and not self.ms.gone and doc.get("ok") == 1.0
            await self.send(wire.op_msg(doc, response_to=response_to,
                                        flags=wire.MORE_TO_COME if more else 0, request_id=request_id))
            if not more:
                return
            # Each streamed reply answers the previous one, as mongod numbers them.
            response_to, tv = request_id, doc["topologyVersion"]

    async def await_change(self, tv: dict, max_wait: float) -> None:
        """Return at once if the client's topologyVersion is not this member's current one,
        else when it changes or `max_wait` passes."""
        if tv.get("processId") != self.ms.process_id or int(tv.get("counter", -1)) != self.ms.tv_counter:
            return
        event = self.state.changed_event()
        try:
            await asyncio.wait_for(event.wait(), max_wait)
        except asyncio.TimeoutError:
            pass

    # --- relay ---------------------------------------------------------------------------

    async def relay(self, body: dict, sequences: bytes) -> dict:
        try:
            if self.backend is None:
                host, port = self.ms.backend
                self.backend = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
            reader, writer = self.backend
            writer.write(wire.op_msg(body, sequences=sequences))
            await writer.drain()
            head, rest = await read_frame(reader)
            _, reply = wire.reply_body(head, rest)
            return reply
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, wire.ProtocolError,
                struct.error) as e:
            if self.backend is not None:
                self.backend[1].transport.abort()
                self.backend = None
            return error(6, f"harness backend {self.ms.backend[0]}:{self.ms.backend[1]}: {e!r}")


Member.conn_class = ClientConn
