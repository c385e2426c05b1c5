"""Many clients, few upstream connections: counted from outside, in /proc/net/tcp."""

import threading

import pytest

from procnet import MaxSampler, upstream_connections


def test_connection_count_sees_the_gateways_connections(gateway, ferretdb, clients):
    """Guards the counting helper itself: it must see the gateway's upstream sockets."""
    c = clients(gateway)
    c.pool_count.c.insert_one({"x": 1})
    c.drop_database("pool_count")
    n = upstream_connections(ferretdb.port, gateway.pid)
    assert 1 <= n <= gateway.upstream_limit, n
    assert upstream_connections(ferretdb.port) >= n  # all of FerretDB's clients, this suite's included


@pytest.mark.timeout(240)
def test_fan_in_100_clients(gateway, ferretdb, clients):
    """100 separate pymongo clients (each with its own pool, like Lambda
    instances), 20 operations each, all at once."""
    n_clients, n_ops = 100, 20
    coll_name = "fan_in"
    setup = clients(gateway)
    setup.drop_database(coll_name)
    conns = [clients(gateway, maxPoolSize=2, serverSelectionTimeoutMS=30_000, socketTimeoutMS=60_000)
             for _ in range(n_clients)]
    errors, done = [], []
    start = threading.Barrier(n_clients)

    def run(i, c):
        try:
            coll = c[coll_name].docs
            start.wait(60)
            for j in range(n_ops // 2):
                coll.insert_one({"_id": f"{i}-{j}", "i": i})
                got = coll.find_one({"_id": f"{i}-{j}"})
                assert got == {"_id": f"{i}-{j}", "i": i}, got
            done.append(i)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(f"client {i}: {e!r}")

    with MaxSampler(ferretdb.port, gateway.pid) as sampler:
        threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(200)
    assert not errors, errors[:5]
    assert len(done) == n_clients
    assert setup[coll_name].docs.count_documents({}) == n_clients * n_ops // 2
    assert sampler.max <= gateway.upstream_limit, f"pool size {gateway.pool_size} + monitoring, but FerretDB saw {sampler.describe()}"
    setup.drop_database(coll_name)
