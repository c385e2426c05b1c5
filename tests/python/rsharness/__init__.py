"""A replica-set stand-in for the tests: N members in one asyncio process, in front of FerretDB.

No MongoDB server can be installed where this suite runs, and FerretDB 1.24 is a standalone;
yet the gateway has to discover replica sets, route by read preference and follow failovers.
This package makes FerretDB look like a replica set to a driver, closely enough that pymongo
and the Rust driver run their full SDAM logic against it:

- `wire`    the frames a member reads and writes (OP_MSG, OP_QUERY, OP_REPLY). No I/O.
- `state`   the set's state (who is primary, terms, election ids, set version, per-member
            faults) and the `hello` reply it implies. No I/O.
- `member`  one listening member: answers `hello` itself (also awaitable and exhaust
            streaming), refuses what a real member in its state would refuse, and relays the
            rest to its FerretDB backend on a connection of its own per client connection, so
            SCRAM passes through untouched.
- `control` the line-JSON control channel the tests drive faults through.
- `__main__` the process: `python -m rsharness --help`.

The Python API for tests is `tests/python/rs_fixtures.py`; nothing else should speak the
control protocol directly.
"""
