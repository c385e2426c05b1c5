"""The harness process: `python -m rsharness --backend HOST:PORT [options]`.

Binds every member and the control port first, then prints exactly one line to stdout,

    rsharness: ready {"set_name": ..., "members": ["ip:port", ...], "control": "ip:port"}

and serves until SIGTERM/SIGINT. Member 0 starts as primary, the others as secondaries.
With one --backend every member relays to it (one shared FerretDB, so data survives a
failover); with one --backend per member each relays to its own.

With --mongos the members are the routers of a sharded cluster instead (rsharness.mongos):
the ready line then says `"mongos": true` and has no set name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from . import compress
from .control import Control, MongosControl, bind
from .member import Member
from .mongos import ClusterState, Router
from .state import SetState


def parse_addr(s: str) -> tuple[str, int]:
    host, port = s.rsplit(":", 1)
    return host, int(port)


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rsharness", description=__doc__.splitlines()[0])
    p.add_argument("--set-name", default="rs0")
    p.add_argument("--members", type=int, default=3, help="how many members (default 3)")
    p.add_argument("--member-ips", default="127.0.0.1",
                   help="comma-separated loopback IPs, one per member or one for all")
    p.add_argument("--backend", action="append", required=True, type=parse_addr,
                   help="FerretDB HOST:PORT, once for all members or once per member")
    p.add_argument("--control", default="127.0.0.1:0", type=parse_addr)
    p.add_argument("--mongos", action="store_true",
                   help="routers of a sharded cluster (msg: isdbgrid) instead of a replica set")
    p.add_argument("--compressors", default=",".join(compress.DEFAULT),
                   help="comma-separated compressors the members offer, or 'none' "
                        f"(default: {','.join(compress.DEFAULT) or 'none'}, those this Python can run)")
    args = p.parse_args(argv)

    n = args.members
    ips = args.member_ips.split(",")
    if len(ips) not in (1, n) or len(args.backend) not in (1, n):
        p.error("--member-ips and --backend take one value, or one per member")
    ips = ips * n if len(ips) == 1 else ips
    backends = args.backend * n if len(args.backend) == 1 else args.backend

    socks = [bind(ip, 0) for ip in ips]
    hosts = [f"{ip}:{s.getsockname()[1]}" for ip, s in zip(ips, socks)]
    compressors = [] if args.compressors in ("", "none") else args.compressors.split(",")
    if unknown := [c for c in compressors if c not in compress.CODECS]:
        p.error(f"--compressors: not available here: {unknown}")
    if args.mongos:
        state = ClusterState(hosts, backends, compressors)
        members = [Router(state, r) for r in state.members]
        control = MongosControl(state, members)
        info = {"mongos": True}
    else:
        state = SetState(args.set_name, hosts, backends, compressors)
        members = [Member(state, ms) for ms in state.members]
        control = Control(state, members)
        info = {"set_name": args.set_name}
    for m, s in zip(members, socks):
        await m.listen(s)
    server = await asyncio.start_server(control.handle, *args.control, limit=1 << 16)
    cport = server.sockets[0].getsockname()[1]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("rsharness: ready " + json.dumps({**info, "members": hosts,
                                             "control": f"{args.control[0]}:{cport}"}), flush=True)
    await stop.wait()
    server.close()
    for m in members:
        await m.disappear()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
