"""The gateway at its file descriptor limit: clients beyond what fits are refused at accept with
a log line, every client already held keeps being served, and the upstream pool never runs out of
descriptors (the binary lowers max-clients to fit the limit, keeping the pool's share back).

The limit is set on the gateway process alone with `prlimit`, small enough to reach with a few
hundred sockets from this process.
"""

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import mongowire as mw
from conftest import start_gateway, tail, wait_until

FD_LIMIT = 256
POOL = 4
# What the binary keeps back for itself: the pool, the STS bound (default 32), a reserve of 64.
ROOM = FD_LIMIT - POOL - 32 - 64


def handshake(port: int) -> socket.socket | None:
    """A connection that completed `hello`, or None if the gateway closed it instead."""
    try:
        sock = mw.connect(port, timeout=5)
    except OSError:
        return None
    try:
        sock.sendall(mw.op_msg({"hello": 1, "$db": "admin"}))
        reply = mw.recv_message(sock, timeout=5)
    except OSError:
        reply = None
    if reply is None or reply.doc.get("ok") != 1:
        sock.close()
        return None
    return sock


def find(sock: socket.socket) -> bool:
    sock.sendall(mw.op_msg({"find": "fdlimit", "filter": {}, "limit": 1, "$db": "test"}))
    reply = mw.recv_message(sock, timeout=15)
    return reply is not None and reply.doc.get("ok") == 1


@pytest.fixture
def limited_gateway(ferretdb, logdir):
    gw = start_gateway(ferretdb, logdir, name="mongomux-fdlimit", pool_size=POOL,
                       extra_args=("--max-clients", "100000"),
                       wrapper=("prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--"))
    yield gw
    gw.proc.stop()


def test_clients_beyond_the_descriptor_limit_are_refused_and_held_ones_keep_working(limited_gateway):
    gw = limited_gateway
    wait_until(lambda: "does not fit the file descriptor limit" in gw.proc.log.read_text(),
               timeout=5, what="start-up warning about max-clients")
    held, refused = [], 0
    try:
        for _ in range(ROOM + 60):
            s = handshake(gw.port)
            if s is None:
                refused += 1
            else:
                held.append(s)
        assert ROOM - 5 <= len(held) <= ROOM, (len(held), refused)
        assert refused >= 55, refused
        log = gw.proc.log.read_text()
        assert "max-clients reached; refusing new client connections" in log, tail(gw.proc.log)
        assert "file descriptor limit reached" not in log, "the gateway hit EMFILE instead of refusing first"

        # Every held client is still served, and the pool can still use all its connections.
        with ThreadPoolExecutor(max_workers=32) as ex:
            results = list(ex.map(find, held[:64]))
        assert all(results), results.count(False)
        assert gw.proc.alive()

        # Room frees up as clients leave.
        for s in held[:10]:
            s.close()
        del held[:10]
        time.sleep(0.3)
        back = handshake(gw.port)
        assert back is not None, "a client was refused after others left"
        held.append(back)
    finally:
        for s in held:
            s.close()
