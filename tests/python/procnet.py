"""Count TCP connections from outside every process, the way the kernel sees them.

Tests use this to check what the upstream really sees, without trusting the
gateway's own counters: /proc/net/tcp and /proc/net/tcp6 list every socket of
this network namespace, and /proc/<pid>/fd tells which of them a process holds.

A server is matched by its full address, not its port alone: a client bound to
another loopback source (127.0.0.2, say, as the security tests do) may get an
ephemeral port equal to a server's port on 127.0.0.1. An IPv4 address also
matches its IPv4-mapped IPv6 form (a dual-stack listener's view). The Rust
tests and benchmarks count the same way (crates/testkit, sockets).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from dataclasses import dataclass

ESTABLISHED = "01"


@dataclass(frozen=True)
class Sock:
    local: str  # "HEXADDR:HEXPORT" exactly as the kernel prints it
    remote: str
    state: str
    inode: int

    @property
    def local_port(self) -> int:
        return int(self.local.rsplit(":", 1)[1], 16)

    @property
    def remote_port(self) -> int:
        return int(self.remote.rsplit(":", 1)[1], 16)

    @property
    def local_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return kernel_ip(self.local)

    @property
    def remote_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return kernel_ip(self.remote)


def kernel_ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address of a "HEXADDR:HEXPORT" entry: 32-bit words printed in host byte order
    (127.0.0.1 is 0100007F on x86); an IPv4-mapped IPv6 address is returned as IPv4."""
    hexaddr = addr.rsplit(":", 1)[0]
    raw = b"".join(socket.htonl(int(hexaddr[i:i + 8], 16)).to_bytes(4, "big")
                   for i in range(0, len(hexaddr), 8))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _same_ip(a: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str) -> bool:
    want = ipaddress.ip_address(host)
    if isinstance(want, ipaddress.IPv6Address) and want.ipv4_mapped is not None:
        want = want.ipv4_mapped
    return a == want


def sockets() -> list[Sock]:
    """Every TCP socket, each once.

    /proc/net/tcp is produced in chunks while the kernel's tables change, so one
    read can list the same socket twice (or miss one): entries are de-duplicated
    by their address pair, which is unique per connection.
    """
    out: dict[tuple[str, str], Sock] = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split()
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            out[(parts[1], parts[2])] = Sock(parts[1], parts[2], parts[3], int(parts[9]))
    return list(out.values())


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` holds open (empty if it is gone)."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except (FileNotFoundError, ProcessLookupError):
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def upstream_connections(upstream_port: int, pid: int | None = None, host: str = "127.0.0.1") -> int:
    return len(upstream_connection_list(upstream_port, pid, host))


def upstream_connection_list(upstream_port: int, pid: int | None = None, host: str = "127.0.0.1") -> list[Sock]:
    """ESTABLISHED connections the server at `host`:`upstream_port` has.

    Counted on the server's side (local address == host:upstream_port), so each
    connection counts once even though both ends live on this machine. With
    `pid`, only connections whose other end is a socket held by that process
    (e.g. the gateway) are counted.
    """
    owned = socket_inodes(pid) if pid is not None else set()
    socks = sockets()
    server_side = [s for s in socks
                   if s.state == ESTABLISHED and s.local_port == upstream_port and _same_ip(s.local_ip, host)]
    if pid is None:
        return server_side
    peers = {s.local for s in socks
             if s.inode in owned and s.remote_port == upstream_port and _same_ip(s.remote_ip, host)}
    return [s for s in server_side if s.remote in peers]


class MaxSampler:
    """Samples upstream_connections() in a thread; `.max` is the highest count seen.

        with MaxSampler(port, pid) as sampler:
            ... do things ...
        assert sampler.max <= pool_size
    """

    def __init__(self, upstream_port: int, pid: int | None = None, interval: float = 0.02,
                 host: str = "127.0.0.1"):
        self.upstream_port, self.pid, self.interval, self.host = upstream_port, pid, interval, host
        self.max = 0
        self.samples = 0
        self.at_max: list[Sock] = []  # the connections seen when the maximum was reached
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def _sample(self) -> None:
        conns = upstream_connection_list(self.upstream_port, self.pid, self.host)
        self.samples += 1
        if len(conns) > self.max:
            self.max, self.at_max = len(conns), conns

    def describe(self) -> str:
        ports = sorted(s.remote_port for s in self.at_max)
        return f"max {self.max} upstream connections over {self.samples} samples; at the max, from ports {ports}"

    def __enter__(self) -> "MaxSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # one last sample, so a short test still has at least one
