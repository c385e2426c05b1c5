"""Transactions through a gateway whose upstream is nx-27017.

FerretDB 1.24 has no transactions, so these use a second gateway in front of
nx-27017, and nx-27017 directly as the reference.
"""

import pytest


@pytest.fixture(params=["direct", "gateway"])
def nx_target(request):
    return request.getfixturevalue("nx" if request.param == "direct" else "nx_gateway")


@pytest.fixture
def txdb(nx_target, clients, request):
    c = clients(nx_target)
    name = f"txn_{request.node.originalname.removeprefix('test_')[:30]}_{request.node.callspec.params['nx_target'][0]}"
    c.drop_database(name)
    yield c, c[name]
    c.drop_database(name)


def test_transaction_commit(txdb):
    client, db = txdb
    db.accounts.insert_many([{"_id": "alice", "balance": 100}, {"_id": "bob", "balance": 0}])
    with client.start_session() as s:
        with s.start_transaction():
            db.accounts.update_one({"_id": "alice"}, {"$inc": {"balance": -30}}, session=s)
            db.accounts.update_one({"_id": "bob"}, {"$inc": {"balance": 30}}, session=s)
            db.ledger.insert_one({"from": "alice", "to": "bob", "amount": 30}, session=s)
    balances = {d["_id"]: d["balance"] for d in db.accounts.find()}
    assert balances == {"alice": 70, "bob": 30}
    assert db.ledger.count_documents({}) == 1


def test_transaction_abort(txdb):
    client, db = txdb
    db.accounts.insert_one({"_id": "alice", "balance": 100})
    with client.start_session() as s:
        s.start_transaction()
        db.accounts.update_one({"_id": "alice"}, {"$inc": {"balance": -30}}, session=s)
        db.accounts.insert_one({"_id": "mallory", "balance": 30}, session=s)
        s.abort_transaction()
    assert db.accounts.find_one({"_id": "alice"})["balance"] == 100
    assert db.accounts.find_one({"_id": "mallory"}) is None


def test_transaction_aborted_by_exception(txdb):
    client, db = txdb
    db.items.insert_one({"_id": 1})

    class Boom(Exception):
        pass

    with client.start_session() as s:
        with pytest.raises(Boom):
            with s.start_transaction():
                db.items.insert_one({"_id": 2}, session=s)
                raise Boom
    assert sorted(d["_id"] for d in db.items.find()) == [1]


@pytest.mark.timeout(120)
def test_many_sequential_transactions_release_the_pool(txdb):
    """More transactions than pool connections, one after another: each must
    give its upstream connection back when it ends (no pin leak)."""
    client, db = txdb
    for i in range(12):
        with client.start_session() as s:
            with s.start_transaction():
                db.seq.insert_one({"_id": i}, session=s)
            if i % 2:
                continue
            s.start_transaction()
            db.seq.insert_one({"_id": 1000 + i}, session=s)
            s.abort_transaction()
    assert sorted(d["_id"] for d in db.seq.find()) == list(range(12))
