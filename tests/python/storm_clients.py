"""Authenticated raw-wire clients by the thousand, for the reconnect storm (test_storm.py).

One process of this module holds `--count` clients on one asyncio loop; the test starts several
(a process may hold at most 20,000 descriptors, and one Python loop is faster with a thousand or
two). Each client connects, says `hello` with speculative SCRAM-SHA-256 authentication (as
drivers do), finishes the login and runs one `find`, then sits idle, reading: when the server
closes it (a gateway draining), it reconnects at once, with a short jittered back-off while the
port refuses, logs in again and runs its next `find`, and records when that succeeded.

It talks to the test in JSON lines. First it prints `{"held": OK, "failed": N, "secs": S}` once
every client has logged in (or given up); then it answers `report` (how many reconnected, when the
last one's operation succeeded, the errors seen), `op` (one `find` on every client at once; the
count that succeeded and their latencies' p50/p99) and `quit`. With `--canary PERIOD` it is one
client that runs a find and a ping every PERIOD seconds instead (see `canary`).

What it must never do: count a client as reconnected before its next operation succeeded, or
wait without a deadline. Times are CLOCK_MONOTONIC (time.monotonic), which on Linux is the same
clock in every process, so the test can compare them with its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from bson.binary import Binary

from mongowire import HEADER, MAX_MESSAGE_SIZE, ScramClient, next_request_id, op_msg, parse

DEADLINE = 30.0  # one login or one operation; the test's bound on a stuck server
MECHANISM = "SCRAM-SHA-256"


class Refused(Exception):
    """The server answered with ok: 0 (or closed) where a client needs ok: 1."""


class Client:
    """One connection and what it saw; reconnects whenever the server closes it."""

    def __init__(self, fleet: "Fleet", n: int) -> None:
        self.fleet, self.n = fleet, n
        self.reader = self.writer = None
        self.ops: asyncio.Queue = asyncio.Queue()
        self.logins = 0
        self.closed_at: float | None = None  # the server closed it last at
        self.done_at: float | None = None  # its next operation after that succeeded at

    async def command(self, doc: dict) -> dict:
        rid = next_request_id()
        self.writer.write(op_msg({**doc, "$db": doc.get("$db", "admin")}, request_id=rid))
        await self.writer.drain()
        head = await self.reader.readexactly(HEADER.size)
        length = HEADER.unpack(head)[0]
        if not HEADER.size <= length <= MAX_MESSAGE_SIZE:
            raise Refused(f"bad length {length}")
        msg = parse(head, await self.reader.readexactly(length - HEADER.size))
        if msg.response_to != rid:
            raise Refused(f"reply to {msg.response_to}, expected {rid}")
        return msg.doc

    async def login(self) -> None:
        """hello with speculative authentication, then the rest of the SCRAM conversation."""
        scram = ScramClient(MECHANISM, self.fleet.user, self.fleet.password)
        start = {"saslStart": 1, "mechanism": MECHANISM, "payload": Binary(scram.first()),
                 "options": {"skipEmptyExchange": True}, "db": "admin"}
        hello = await self.command({"hello": 1, "saslSupportedMechs": f"admin.{self.fleet.user}",
                                    "speculativeAuthenticate": start,
                                    "client": {"driver": {"name": "storm", "version": "1"}}})
        step = hello.get("speculativeAuthenticate")
        if hello.get("ok") != 1 or step is None:
            raise Refused(f"hello: {str(hello)[:200]}")
        reply = await self.command({"saslContinue": 1, "conversationId": step["conversationId"],
                                    "payload": Binary(scram.final(bytes(step["payload"])))})
        if reply.get("ok") != 1:
            raise Refused(f"saslContinue: {str(reply)[:200]}")
        scram.verify(bytes(reply["payload"]))
        if not reply.get("done"):
            reply = await self.command({"saslContinue": 1, "conversationId": step["conversationId"],
                                        "payload": Binary(b"")})
            if reply.get("ok") != 1 or not reply.get("done"):
                raise Refused(f"empty saslContinue: {str(reply)[:200]}")

    async def ping(self) -> float:
        """A command the gateway answers itself: how long a logged-in client waits for the
        gateway, without the upstream pool's queue."""
        t0 = time.monotonic()
        reply = await self.command({"ping": 1})
        if reply.get("ok") != 1:
            raise Refused(f"ping: {str(reply)[:200]}")
        return time.monotonic() - t0

    async def find(self) -> float:
        """The operation every client runs: a find that goes through the upstream pool."""
        t0 = time.monotonic()
        reply = await self.command({"find": "docs", "filter": {"_id": self.n % 10}, "limit": 1,
                                    "singleBatch": True, "$db": "storm"})
        if reply.get("ok") != 1:
            raise Refused(f"find: {str(reply)[:200]}")
        return time.monotonic() - t0

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def establish(self) -> None:
        """Connect, log in and run one find, retrying (jittered back-off while the port refuses or
        the server closes the connection) until that worked or the fleet's deadline passed."""
        attempt = 0
        while True:
            try:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection(self.fleet.host, self.fleet.port), DEADLINE)
                await asyncio.wait_for(self.login(), DEADLINE)
                self.logins += 1
                await asyncio.wait_for(self.find(), DEADLINE)
                return
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, Refused) as e:
                self.drop()
                self.fleet.note(e)
                if time.monotonic() > self.fleet.give_up_at:
                    raise
                attempt += 1
                # Like a driver's server selection loop: try again soon, but not in lockstep.
                await asyncio.sleep(random.uniform(0.02, min(1.0, 0.05 * 2 ** min(attempt, 5))))

    async def run(self, gate: asyncio.Semaphore) -> None:
        # The first logins are paced by `gate` (the test measures the storm, not the set-up);
        # reconnections are not.
        async with gate:
            await self.establish()
        self.fleet.held += 1
        while True:
            eof = asyncio.ensure_future(self.reader.read(1))
            op = asyncio.ensure_future(self.ops.get())
            done, _ = await asyncio.wait({eof, op}, return_when=asyncio.FIRST_COMPLETED)
            if op in done:
                eof.cancel()
                await asyncio.gather(eof, return_exceptions=True)
                fut = op.result()
                try:
                    fut.set_result(await asyncio.wait_for(self.find(), DEADLINE))
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, Refused) as e:
                    fut.set_result(e)
                continue
            op.cancel()
            # The server closed it (b"" or a reset), or sent bytes nobody asked for: either way
            # this connection is done, and the client comes back at once.
            if eof.exception() is None and eof.result():
                self.fleet.note(Refused("unexpected bytes from an idle connection"))
            self.closed_at = time.monotonic()
            self.drop()
            await self.establish()
            self.done_at = time.monotonic()
            self.fleet.reconnected += 1


class Fleet:
    def __init__(self, args) -> None:
        self.host, self.port = args.host, args.port
        self.user, self.password = args.user, sys.stdin.readline().strip()
        self.give_up_at = float("inf")
        self.held = self.reconnected = 0
        self.errors: dict[str, int] = {}
        self.clients = [Client(self, n) for n in range(args.count)]

    def note(self, e: Exception) -> None:
        key = f"{type(e).__name__}: {str(e)[:120]}"
        self.errors[key] = self.errors.get(key, 0) + 1

    def report(self) -> dict:
        done = [c.done_at for c in self.clients if c.done_at is not None]
        closed = [c.closed_at for c in self.clients if c.closed_at is not None]
        return {"held": self.held, "reconnected": self.reconnected, "closed": len(closed),
                "first_closed": min(closed, default=None), "last_done": max(done, default=None),
                "done_times": sorted(done), "max_logins": max(c.logins for c in self.clients),
                "errors": self.errors}

    async def op_all(self) -> dict:
        futs = []
        for c in self.clients:
            fut = asyncio.get_running_loop().create_future()
            c.ops.put_nowait(fut)
            futs.append(fut)
        results = await asyncio.wait_for(asyncio.gather(*futs), DEADLINE * 2)
        lat = sorted(r * 1000 for r in results if isinstance(r, float))
        failed = [f"{type(r).__name__}: {str(r)[:120]}" for r in results if not isinstance(r, float)]
        pct = (lambda p: lat[min(len(lat) - 1, int(p / 100 * (len(lat) - 1)))] if lat else None)
        return {"ok": len(lat), "failed": len(failed), "first_errors": failed[:3], "p50_ms": pct(50),
                "p99_ms": pct(99)}


async def canary(fleet: Fleet, period: float) -> None:
    """`--canary`: one client that runs a find and a ping every `period` seconds and answers
    `report` with every (time, find ms, ping ms; null for a failure) it saw; it reconnects like
    the others when its connection goes, and says `{"ready": true}` once logged in. A process of
    its own, so nothing in the test's process (its samplers) can delay it and pass that off as
    the gateway's."""
    c = fleet.clients[0]
    await c.establish()
    say({"ready": True})
    samples: list = []

    async def loop() -> None:
        while True:
            t0 = time.monotonic()
            try:
                find = await asyncio.wait_for(c.find(), DEADLINE) * 1000
                samples.append((t0, find, await asyncio.wait_for(c.ping(), DEADLINE) * 1000))
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, Refused) as e:
                samples.append((t0, None, None))
                fleet.note(e)
                c.drop()
                await c.establish()
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

    task = asyncio.ensure_future(loop())
    read = asyncio.get_running_loop().run_in_executor
    while (await read(None, sys.stdin.readline)).strip() == "report":
        say({"samples": samples, "errors": fleet.errors})
    task.cancel()


def say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main_async(args) -> None:
    fleet = Fleet(args)
    t0 = time.monotonic()
    fleet.give_up_at = t0 + args.give_up
    if args.canary:
        return await canary(fleet, args.canary)
    gate = asyncio.Semaphore(args.connect_concurrency)
    tasks = [asyncio.ensure_future(c.run(gate)) for c in fleet.clients]
    while fleet.held + sum(t.done() for t in tasks) < len(tasks):
        await asyncio.sleep(0.05)
    say({"held": fleet.held, "failed": sum(t.done() for t in tasks), "secs": time.monotonic() - t0,
         "errors": fleet.errors})
    fleet.give_up_at = time.monotonic() + args.give_up  # the storm's reconnections are bounded too
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        word = line.strip()
        if word == "report":
            say(fleet.report())
        elif word == "op":
            say(await fleet.op_all())
        elif word in ("quit", ""):
            break
        else:
            say({"error": f"unknown command {word!r}"})
    for t in tasks:
        t.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description="hold authenticated clients for test_storm.py")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)  # the password comes on the first line of stdin
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--connect-concurrency", type=int, default=100)
    p.add_argument("--canary", type=float, metavar="PERIOD",
                   help="be the canary: one client, a find every PERIOD seconds")
    p.add_argument("--give-up", type=float, default=120.0, help="seconds a client keeps retrying a login")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
