"""Bounded memory under floods (issue 15, part 2), against the real gateway and FerretDB.

The attack the red team ran: many clients each declare a 16 MiB message and send it (all but
its last bytes, fast, or a trickle). Without a budget the gateway's RSS grew by 16 MiB per
client. Now:

- a large message takes its bytes from `max_inflight_bytes` before its body is read, so RSS
  stays within the budget plus the idle footprint, whatever the number of clients;
- a message not received in full within `message_timeout` gets 262 and its connection closes;
- before authentication (users configured) a message over `max_unauthenticated_message_bytes`
  is refused on its length prefix (10334) without its body being read;
- a client that does not read a large reply holds budget, not unbounded memory, and is closed
  after `client_write_timeout`;
- meanwhile a well-behaved client (small commands) keeps being served.

Every test is bounded: clients are counted, waits have deadlines, and RSS is read from /proc.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import pytest
from bson import encode
from pymongo.errors import OperationFailure

from conftest import wait_until
from security_fixtures import GatewayFactory, make_user, metric, write_config

MIB = 1024 * 1024
BUDGET = 64 * MIB
DECLARED = 16 * MIB
DB = "memory_flood"


@pytest.fixture
def gateways(logdir, ferretdb, monkeypatch):
    # As the container image and scripts/stack run it (see the Dockerfile): glibc maps large
    # buffers on their own and returns them on free, so RSS follows the budget.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1024 * 1024))
    f = GatewayFactory(logdir, ferretdb)
    yield f
    f.stop_all()


def rss(pid: int) -> int:
    """Resident set size of `pid` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RssSampler:
    """Samples a process's RSS every 50 ms in a thread until stopped; keeps the peak."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.halt = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.halt.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.05)

    def stop(self) -> int:
        self.halt.set()
        self.thread.join(5)
        return self.peak


def op_msg_header(length: int, request_id: int) -> bytes:
    """The first bytes of an OP_MSG declaring `length`: header, flags, section kind 0."""
    return struct.pack("<iiiiIB", length, request_id, 0, 2013, 0, 0)


class WellBehaved:
    """A pymongo client running small inserts and finds until stopped; counts and errors."""

    def __init__(self, client):
        self.coll = client[DB].small
        self.ok, self.errors, self.halt = 0, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        i = 0
        while not self.halt.is_set():
            i += 1
            try:
                self.coll.insert_one({"i": i, "pad": "x" * 200})
                self.coll.find_one({"i": i})
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - every error is a finding here
                self.errors.append(repr(e))
            time.sleep(0.01)

    def stop(self):
        self.halt.set()
        self.thread.join(20)


async def flood_client(port: int, n: int, fast: bool, body: memoryview, deadline: float) -> str:
    """One offender: declares DECLARED bytes and sends all but the last one, at once or in a
    trickle, then waits for the gateway's verdict. Returns how it ended."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        return f"connect failed: {e}"
    outcome = "open at deadline"
    try:
        writer.write(op_msg_header(DECLARED, n))
        sent, step = 21, (256 * 1024 if fast else 1024)

        async def send():
            nonlocal sent
            while sent < DECLARED - 1:
                chunk = body[: min(step, DECLARED - 1 - sent)]
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                if not fast:
                    await asyncio.sleep(0.1)

        sender = asyncio.ensure_future(send())
        try:
            head = await asyncio.wait_for(reader.read(65536), timeout=max(0.1, deadline - time.monotonic()))
            outcome = "error reply" if head and b"ExceededTimeLimit" in head else ("closed" if not head else "other reply")
        except asyncio.TimeoutError:
            pass
        except (ConnectionError, OSError):
            outcome = "closed"
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    finally:
        writer.transport.abort()
    return outcome


async def run_flood(port: int, clients: int, deadline_s: float) -> dict[str, int]:
    body = memoryview(bytes(256 * 1024))
    deadline = time.monotonic() + deadline_s
    sem = asyncio.Semaphore(200)  # connects in flight; all stay open afterwards

    async def one(n):
        async with sem:
            await asyncio.sleep(0)
        return await flood_client(port, n, fast=n % 2 == 0, body=body, deadline=deadline)

    results = await asyncio.gather(*(one(n) for n in range(clients)))
    counts: dict[str, int] = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    return counts


def test_a_thousand_clients_declaring_16_mib_stay_within_the_budget(gateways):
    """1,000 anonymous clients each declare a 16 MiB message (half send all but its last byte as
    fast as the gateway reads, half trickle it). Peak RSS stays within the idle footprint plus
    the 64 MiB budget (plus a margin for 1,000 connections' own state); every offender gets 262
    or is closed at message_timeout; a pymongo client doing small commands is served all along."""
    gw = gateways("--max-inflight-bytes", BUDGET, "--message-timeout", "4s", "--max-clients", 2000)
    pid = gw.proc.popen.pid
    with gw.client() as c:
        c[DB].small.insert_one({"warm": 1})
        idle = rss(pid)
        sampler = RssSampler(pid)
        good = WellBehaved(gw.client())
        started = time.monotonic()
        counts = asyncio.run(run_flood(gw.port, 1000, deadline_s=15))
        took = time.monotonic() - started
        time.sleep(0.5)
        good.stop()
        peak = sampler.stop()
        c[DB].small.drop()
    cut = metric(gw, "mongomux_client_connections_cut_total", 'reason="message_timeout"')
    growth = peak - idle
    print(f"\n1,000 clients x 16 MiB declared, budget {BUDGET // MIB} MiB: RSS idle {idle / MIB:.1f} MiB, "
          f"peak {peak / MIB:.1f} MiB (+{growth / MIB:.1f} MiB); flood over in {took:.1f}s; outcomes {counts}; "
          f"cut for message_timeout: {cut:.0f}; well-behaved client: {good.ok} ops, {len(good.errors)} errors")
    # The budget, plus 1,000 connections' own state (about 10 KiB each) and a margin.
    assert growth < BUDGET + 32 * MIB, f"RSS grew by {growth / MIB:.0f} MiB"
    assert set(counts) <= {"error reply", "closed"}, counts
    assert cut >= 900, cut
    assert not good.errors, good.errors[:3]
    assert good.ok > 20


def test_before_authentication_a_large_message_is_refused_on_its_length(gateways, tmp_path):
    """With users configured, a client that has not logged in may send at most
    max_unauthenticated_message_bytes: a declared 16 MiB gets 10334 at once, without the gateway
    waiting for (or reading) the body, and the connection closes. Logged in, the same client may
    send a 1 MiB insert."""
    user = make_user("flood-user")
    cfg = write_config(tmp_path / "gw.toml", users=[user])
    gw = gateways("--config", cfg)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(op_msg_header(DECLARED, 7))
        started = time.monotonic()
        reply = s.recv(65536)
        waited = time.monotonic() - started
        assert b"BSONObjectTooLarge" in reply and b"before authentication" in reply, reply
        assert struct.unpack("<i", reply[8:12])[0] == 7, "the reply answers the request"
        s.settimeout(5)
        assert s.recv(1) == b"", "closed after the reply"
    assert waited < 2, waited
    assert metric(gw, "mongomux_client_connections_cut_total", 'reason="message_too_large"') == 1
    with gw.client(**user.pymongo_kw()) as c:
        c[DB].big.insert_one({"blob": b"x" * MIB})
        assert len(c[DB].big.find_one()["blob"]) == MIB
        c[DB].big.drop()


def find_without_reading(port: int, coll: str, request_id: int) -> socket.socket:
    """Sends a find for every document of `coll` and never reads the reply."""
    body = encode({"find": coll, "batchSize": 1000, "$db": DB})
    msg = struct.pack("<iiiiIB", 21 + len(body), request_id, 0, 2013, 0, 0) + body
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(msg)
    return s


def test_clients_that_do_not_read_large_replies_hold_budget_not_memory(gateways):
    """30 clients ask for a ~12 MiB reply and never read it. Each reply holds budget (64 MiB:
    five at a time) until client_write_timeout closes its client; the others wait for budget
    at most checkout_timeout and get 262 (drivers retry reads on it). RSS stays within the
    budget plus the replies being read from upstream; a well-behaved client keeps working."""
    gw = gateways("--max-inflight-bytes", BUDGET, "--client-write-timeout", "3s",
                  "--checkout-timeout", "2s")
    pid = gw.proc.popen.pid
    with gw.client() as c:
        big = c[DB].big_replies
        big.drop()
        big.insert_many([{"_id": i, "blob": b"y" * (MIB - 100)} for i in range(12)])
        idle = rss(pid)
        sampler = RssSampler(pid)
        good = WellBehaved(gw.client(retryReads=True))
        socks = [find_without_reading(gw.port, "big_replies", 100 + i) for i in range(30)]
        wait_until(lambda: metric(gw, "mongomux_client_connections_cut_total", 'reason="write_timeout"') >= 4,
                   20, what="slow readers closed")
        time.sleep(3.5)
        good.stop()
        peak = sampler.stop()
        for s in socks:
            s.close()
        big.drop()
    cut = metric(gw, "mongomux_client_connections_cut_total", 'reason="write_timeout"')
    growth = peak - idle
    print(f"\n30 slow readers of 12 MiB replies, budget {BUDGET // MIB} MiB: RSS idle {idle / MIB:.1f} MiB, "
          f"peak {peak / MIB:.1f} MiB (+{growth / MIB:.1f} MiB); closed for write_timeout: {cut:.0f}; "
          f"well-behaved client: {good.ok} ops, {len(good.errors)} errors")
    # Budget, plus one reply per upstream connection being read (pool 4 x 12 MiB), plus margin.
    assert growth < BUDGET + 4 * 12 * MIB + 32 * MIB, f"RSS grew by {growth / MIB:.0f} MiB"
    assert cut >= 4
    assert good.ok > 20
    assert len(good.errors) <= good.ok // 10, good.errors[:3]
