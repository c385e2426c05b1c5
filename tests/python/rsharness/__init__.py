"""A replica-set stand-in for the tests: N members in one asyncio process, in front of FerretDB.

No MongoDB server can be installed where this suite runs, and FerretDB 1.24 is a standalone;
yet the gateway has to discover replica sets, route by read preference and follow failovers.
This package makes FerretDB look like a replica set to a driver, closely enough that pymongo
and the Rust driver run their full SDAM logic against it:

- `wire`    the frames a member reads and writes (OP_MSG, OP_QUERY, OP_REPLY). No I/O.
- `compress` the OP_COMPRESSED envelope and its codecs (zlib, zstd, snappy). No I/O.
- `state`   the set's state (who is primary, terms, election ids, set version, per-member
            faults) and the `hello` reply it implies. No I/O.
- `member`  one listening member: answers `hello` itself (also awaitable and exhaust
            streaming), refuses what a real member in its state would refuse, and relays the
            rest to its FerretDB backend on a connection of its own per client connection, so
            SCRAM passes through untouched.
- `mongos`  the other persona (`--mongos`): routers of a sharded cluster (`msg: "isdbgrid"`),
            each relaying to FerretDB as a member does, with a hello delay (a slow router),
            quiesce mode (91 ShutdownInProgress) and a disappearance that never cuts a
            relayed command in half.
- `control` the line-JSON control channel the tests drive faults through (`MongosControl`
            for routers).
- `__main__` the process: `python -m rsharness --help`.

The Python API for tests is `tests/python/rs_fixtures.py`; nothing else should speak the
control protocol directly.

What is faithful, and what is not (read before trusting a gateway test built on this):

- Faithful: the hello fields SDAM reads (setName, hosts, me, primary, electionId, setVersion,
  topologyVersion, lastWrite, tags, limits), awaitable and exhaust hellos, $clusterTime and
  operationTime on every reply, the refusals 10107 (with RetryableWriteError when the write
  has txnNumber), 13435 (OP_MSG: no non-primary $readPreference; OP_QUERY: no secondaryOk
  bit), the recovering code (11600 by default) with topologyVersion in each, as mongod 4.4+.
- Not replicated: members relay to one FerretDB (or to one each, which never sync). Reads on a
  secondary are never behind; `lag` only moves lastWrite. writeConcern is whatever FerretDB
  does with it (it accepts w: "majority" and answers at once). The cluster time is a clock,
  not tied to writes; each member's can be shifted (`clock_offset`), a request's $clusterTime
  advances it (signatures are not checked) and a read whose afterClusterTime is beyond it is
  refused with 72, as mongod does; since reads are never behind, afterClusterTime then is
  dropped. So $clusterTime gossip across members is tested, replication waits are not.
- FerretDB 1.24 accepts and ignores $clusterTime, $readPreference and
  readConcern.afterClusterTime (the harness strips them anyway); it has no transactions
  (`startTransaction` is refused with FailedToParse, commit/abortTransaction are unknown:
  put nx-27017 behind the harness for those), no endSessions (answered here with ok: 1), no
  replSetGetStatus (not emulated), and no roles in createUser.
- FerretDB 1.24 ignores SCRAM's skipEmptyExchange and waits for one more empty saslContinue;
  the Rust driver (mongodb 3.9) then fails with "expected SCRAM authentication to have
  completed", even against FerretDB directly. Members finish that step themselves when the
  client asked to skip it, as mongod would.
- Compression as mongod does it: a hello that lists `compression` is answered with that list
  less what the set does not enable (`--compressors`, or the `compressors` control op; by
  default zlib, zstd and snappy, those whose Python modules are installed); OP_COMPRESSED
  requests are unwrapped (size bounded, length checked) and answered compressed with the same
  compressor; a frame with a compressor not enabled, or that does not decompress, drops the
  connection. Not replicated: mongod's refusal to compress the handshake and SASL replies
  (clients never compress those requests, so replies in kind are plain anyway). Members count
  compressed requests by compressor and the bytes on their client connections. FerretDB behind
  the members is always spoken to uncompressed.
- No TLS.
- Counters count each command a member received, by name: `served` includes relayed commands
  FerretDB then failed; `refused` are the member's own refusals.
"""
