#!/usr/bin/env python3
"""Writes the seeds of the `session` fuzz target: a few hand-made whole sessions.

That target's input is not a message but a list of steps decoded with the `arbitrary` crate
(1.x), so each seed is the byte string `arbitrary` decodes into the session written here:
integers little-endian at their width, `bool` one byte (low bit), an enum variant a u32 `x`
with variant = (x * count) >> 32, an `Option` a bool then the value, and every `Vec` (the
top-level list of steps too) one "keep going" byte (1) before each element and a 0 after the
last. The enums below must list their variants in the order of fuzz_targets/session.rs and
session/commands.rs; a reordering there silently changes what these seeds mean.

Standard library only. Run from anywhere: `python3 fuzz/seeds/make_session_seeds.py`; the
output is committed.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

STEP = ["Connect", "Hello", "Login", "Send", "Receive", "HandFramed", "Garbage", "Disconnect",
        "UpstreamFault", "Pause"]
KIND = ["Find", "Aggregate", "Insert", "GetMore", "KillCursors", "Commit", "Abort",
        "EndSessions", "Ping", "Count", "Delete", "ListCollections", "Named"]
DB = ["App", "Other", "Admin"]
CURSOR = ["Mine", "Anyones", "Number"]
FAULT = ["Drop", "WrongResponseTo", "ShutdownInProgress", "NotWritablePrimary",
         "CursorNotFound", "NoSuchTransaction", "Code"]
HAND_OP = ["Msg", "Query", "Compressed", "Other"]
ALICE, BOB = 0, 1


def variant(names, name):
    v, n = names.index(name), len(names)
    x = ((v << 32) + n - 1) // n
    assert (x * n) >> 32 == v
    return struct.pack("<I", x)


def u8(v):
    return bytes([v])


def flag(b):
    return u8(1 if b else 0)


def option(value):
    return b"\x00" if value is None else b"\x01" + value


def vec(items):
    return b"".join(b"\x01" + i for i in items) + b"\x00"


def connect(k):
    return variant(STEP, "Connect") + u8(k)


def hello(k, legacy=False):
    return variant(STEP, "Hello") + u8(k) + flag(legacy)


def login(k, user, wrong=False, sha1=False):
    return variant(STEP, "Login") + u8(k) + u8(user) + flag(wrong) + flag(sha1)


def send(k, kind, db="App", coll=0, lsid=None, txn=None, cursor=("Mine", 0), batches=0,
         wait=True):
    """`txn` is (number, start); `cursor` is (pick, index or id)."""
    pick, arg = cursor
    cmd = (variant(KIND, kind) + variant(DB, db) + u8(coll)
           + option(None if lsid is None else u8(lsid))
           + option(None if txn is None else u8(txn[0]) + flag(txn[1]))
           + variant(CURSOR, pick) + (struct.pack("<q", arg) if pick == "Number" else u8(arg))
           + u8(batches) + vec([]))
    return variant(STEP, "Send") + u8(k) + cmd + flag(wait)


def receive(k):
    return variant(STEP, "Receive") + u8(k)


def disconnect(k):
    return variant(STEP, "Disconnect") + u8(k)


def fault(name):
    return variant(STEP, "UpstreamFault") + variant(FAULT, name)


def hand_framed(k, op, body):
    return variant(STEP, "HandFramed") + u8(k) + variant(HAND_OP, op) + vec([u8(b) for b in body])


def session(*steps):
    return vec(steps)


def ready(k, user=None, legacy=False):
    steps = [connect(k), hello(k, legacy)]
    if user is not None:
        steps.append(login(k, user))
    return steps


def write(name, data):
    folder = os.path.join(HERE, "session")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def main():
    write("login_find_getmore", session(
        *ready(0, ALICE), send(0, "Find", lsid=0, batches=2),
        send(0, "GetMore", lsid=0), send(0, "GetMore", lsid=0), disconnect(0)))
    write("cursor_of_another_user", session(
        *ready(0, ALICE), *ready(1, BOB), send(0, "Find", batches=3),
        send(1, "GetMore", cursor=("Anyones", 0)), send(1, "KillCursors", cursor=("Anyones", 0)),
        send(0, "GetMore"), send(0, "KillCursors")))
    write("anonymous_shared_session", session(
        *ready(0), *ready(1), send(0, "Find", lsid=1, batches=2),
        send(1, "GetMore", lsid=1, cursor=("Anyones", 0)), send(0, "GetMore", lsid=1)))
    write("transaction", session(
        *ready(0, ALICE), send(0, "Insert", lsid=1, txn=(1, True)),
        send(0, "Find", lsid=1, txn=(1, False), batches=1),
        send(0, "Commit", lsid=1, txn=(1, False)), send(0, "EndSessions", lsid=1)))
    write("pipelined_clients", session(
        *ready(0, ALICE), *ready(1, BOB, legacy=True), *ready(2), *ready(3, ALICE),
        *[send(k, "Find", lsid=k % 2, batches=1, wait=False) for k in range(4)],
        *[send(k, "Insert", wait=False) for k in range(4)],
        *[receive(k) for k in range(4)], *[receive(k) for k in range(4)]))
    write("upstream_faults", session(
        *ready(0, ALICE), fault("Drop"), send(0, "Find", batches=1), send(0, "Ping"),
        fault("ShutdownInProgress"), send(0, "Insert"), fault("WrongResponseTo"),
        send(0, "Find"), fault("NoSuchTransaction"), send(0, "Insert", lsid=2, txn=(2, True)),
        send(0, "Abort", lsid=2, txn=(2, False))))
    write("wrong_password_then_right", session(
        connect(0), hello(0), login(0, ALICE, wrong=True), login(0, ALICE, sha1=True),
        send(0, "Find", batches=1), send(0, "GetMore")))
    elements = (b"\x10ping\x00" + struct.pack("<i", 1)
                + b"\x02$db\x00" + struct.pack("<i", 6) + b"admin\x00")
    ping = struct.pack("<i", len(elements) + 5) + elements + b"\x00"
    write("hand_framed_then_command", session(
        *ready(0), hand_framed(0, "Msg", b"\x00\x00\x00\x00\x00" + ping), send(0, "Ping")))


if __name__ == "__main__":
    main()
