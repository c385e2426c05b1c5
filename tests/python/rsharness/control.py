"""The control channel: one JSON object per line in, one per line out, on a loopback port.

Request: `{"op": NAME, ...arguments}`. Reply: `{"ok": true, "result": ...}` or
`{"ok": false, "error": "..."}`. Operations (member arguments are indexes into the member
list the harness printed at start):

    status                          the set's state (state.SetState.status)
    counts   [reset: bool]          per member host: {"served": {cmd: n}, "refused": {cmd: n},
                                    "compressed": {compressor: requests}, "wire": {"in": bytes,
                                    "out": bytes}}
    compressors names               the compressors every member offers from now on (new
                                    connections negotiate; [] offers none)
    step_down                       the primary becomes a secondary; no primary until `elect`
    elect    member, [bump_set_version]  a new term and electionId; member becomes primary
                                    (setVersion changes only when asked, as in mongod)
    lag      member, secs           member's lastWrite falls `secs` behind
    hang     member, [on: bool]     member keeps reading requests and never answers (on=false ends it)
    disappear member                listener and every connection closed
    reappear member                 listening again on the same address, with a new processId,
                                    as a secondary (a primary that disappeared is primary no more)
    add_member [host, backend]      a new secondary (same address family as member 0) joins `hosts`
    remove_member member            member leaves `hosts` and reports no valid config
    set_tags member, tags           member's tags replaced (a reconfig: setVersion + 1)
    recovering member, [on, code]   member neither primary nor secondary; data commands get `code`
    stale_primary member            member claims primary with the previous term's electionId and
                                    an older setVersion, beside the real primary

Operations that change what `hello` says bump every member's topologyVersion, so streaming
hellos answer at once. `lag` does so too, so that drivers see it without waiting a heartbeat
(a real member would only show it at the next one).

This channel has no authentication: it listens on loopback only, in a test process.
"""

from __future__ import annotations

import asyncio
import json
import socket

from . import compress
from .member import Member
from .state import RECOVERING, REMOVED, SECONDARY, MemberState, SetState

MAX_LINE = 1 << 16


class Control:
    def __init__(self, state: SetState, members: list[Member]) -> None:
        self.state, self.members = state, members

    def _member(self, req: dict) -> Member:
        i = req["member"]
        if not isinstance(i, int) or not 0 <= i < len(self.members):
            raise ValueError(f"no member {i!r}")
        return self.members[i]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    result = await self.apply(req)
                    reply = {"ok": True, "result": result}
                except Exception as e:  # any bad request is reported, never fatal to the harness
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # the harness is stopping
        finally:
            writer.close()

    async def apply(self, req: dict):
        op, st = req.get("op"), self.state
        if op == "status":
            return st.status()
        if op == "counts":
            out = {m.ms.host: {"served": dict(m.served), "refused": dict(m.refused),
                               "compressed": dict(m.compressed), "wire": dict(m.wire_bytes)}
                   for m in self.members}
            if req.get("reset"):
                for m in self.members:
                    for counter in (m.served, m.refused, m.compressed, m.wire_bytes):
                        counter.clear()
            return out
        if op == "compressors":
            names = list(req["names"])
            unknown = [n for n in names if n not in compress.CODECS]
            if unknown:
                raise ValueError(f"compressors not available here: {unknown}")
            st.compressors = names
            return st.status()
        if op == "step_down":
            st.step_down()
        elif op == "elect":
            st.elect(self._member(req).ms.index)
            if req.get("bump_set_version"):
                st.reconfig()  # an election that came with a reconfig
        elif op == "lag":
            self._member(req).ms.lag_secs = float(req["secs"])
            st.changed()
        elif op == "clock_offset":
            self._member(req).ms.clock_offset = int(req["secs"])
        elif op == "hang":
            self._member(req).set_hung(bool(req.get("on", True)))
        elif op == "disappear":
            await self._member(req).disappear()
        elif op == "reappear":
            m = self._member(req)
            if m.ms.gone:
                await m.reappear()
        elif op == "add_member":
            return await self._add_member(req)
        elif op == "remove_member":
            m = self._member(req)
            m.ms.role = REMOVED
            st.reconfig()
        elif op == "set_tags":
            self._member(req).ms.tags = dict(req["tags"])
            st.reconfig()
        elif op == "recovering":
            ms = self._member(req).ms
            if req.get("on", True):
                ms.role, ms.stale_claim = RECOVERING, None
                ms.recovering_code = int(req.get("code", 11600))
            elif ms.role == RECOVERING:
                ms.role = SECONDARY
            st.changed()
        elif op == "stale_primary":
            st.stale_primary(self._member(req).ms.index)
        else:
            raise ValueError(f"unknown op {op!r}")
        return st.status()

    async def _add_member(self, req: dict) -> dict:
        first = self.members[0].ms
        ip = req.get("host") or first.host.rsplit(":", 1)[0]
        backend = tuple(req["backend"].rsplit(":", 1)) if req.get("backend") else first.backend
        sock = bind(ip, 0)
        host = f"{ip}:{sock.getsockname()[1]}"
        ms = MemberState(len(self.members), host, (backend[0], int(backend[1])))
        ms.role = SECONDARY
        self.state.members.append(ms)
        member = Member(self.state, ms)
        await member.listen(sock)
        self.members.append(member)
        self.state.reconfig()
        return {"member": ms.index, "host": host, "status": self.state.status()}


def bind(ip: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ip, port))
    return sock



class MongosControl(Control):
    """The control channel of a `--mongos` harness. Operations (member = router index):

        status                          the routers (mongos.ClusterState.status)
        counts   [reset: bool]          per router host, as for a replica set
        hello_delay member, ms, [jitter_ms]  router waits `ms` (± `jitter_ms`, at most `ms`) before
                                    answering each hello (0 ends it)
        quiesce  member, [on: bool, wake: bool]  router in quiesce mode: hello and commands answer
                                    91 (wake false: pending awaitable hellos are not woken)
        hang     member, [on: bool]     requests are read and never answered
        disappear member                listener closed, idle connections cut, busy ones finish
        reappear member                 listening again, a new processId, not quiescing
    """

    async def apply(self, req: dict):
        op, st = req.get("op"), self.state
        if op in ("status", "counts", "hang", "disappear", "reappear"):
            return await super().apply(req)
        if op == "hello_delay":
            self._member(req).set_hello_delay(float(req["ms"]) / 1000.0,
                                              float(req.get("jitter_ms", 0)) / 1000.0)
        elif op == "quiesce":
            self._member(req).set_quiesce(bool(req.get("on", True)), bool(req.get("wake", True)))
        else:
            raise ValueError(f"unknown op {op!r} for a mongos harness")
        return st.status()
