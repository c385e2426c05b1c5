"""One client must never reach another client's cursor through the gateway.

Behind the gateway every upstream connection authenticates as the same user, so
FerretDB itself would let any of them continue any cursor: the gateway is the
only thing that can refuse. (Directly against FerretDB the same getMore succeeds,
which is why these tests run through the gateway only.)
"""

import pytest
from bson import Int64
from pymongo.errors import OperationFailure

CURSOR_NOT_FOUND = 43


@pytest.fixture
def owned_cursor(gateway, clients):
    owner = clients(gateway)
    db = owner.cursor_ownership
    db.docs.drop()
    db.docs.insert_many([{"_id": i} for i in range(20)])
    cursor = db.docs.find({}, batch_size=2).sort("_id", 1)
    assert next(cursor)["_id"] == 0
    assert cursor.cursor_id, "the cursor should be open"
    yield cursor
    cursor.close()
    db.docs.drop()


def test_get_more_on_another_clients_cursor_is_cursor_not_found(gateway, clients, owned_cursor):
    thief = clients(gateway)
    with pytest.raises(OperationFailure) as e:
        thief.cursor_ownership.command({"getMore": Int64(owned_cursor.cursor_id), "collection": "docs"})
    assert e.value.code == CURSOR_NOT_FOUND, e.value.details

    # The owner's cursor is untouched and still returns everything.
    assert [d["_id"] for d in owned_cursor] == list(range(1, 20))


def test_kill_cursors_on_another_clients_cursor_does_not_kill_it(gateway, clients, owned_cursor):
    thief = clients(gateway)
    try:
        reply = thief.cursor_ownership.command({"killCursors": "docs", "cursors": [Int64(owned_cursor.cursor_id)]})
        # A mongod-style answer is acceptable too, as long as nothing was killed.
        assert owned_cursor.cursor_id not in reply.get("cursorsKilled", []), reply
    except OperationFailure as e:
        assert e.code == CURSOR_NOT_FOUND, e.details
    assert [d["_id"] for d in owned_cursor] == list(range(1, 20))


def test_guessed_cursor_ids_are_refused(gateway, clients, owned_cursor):
    """Sweep small and nearby ids, as an attacker would: every one is refused."""
    thief = clients(gateway)
    real = owned_cursor.cursor_id
    guesses = set(range(1, 40)) | {real - 1, real, real + 1}
    for cid in sorted(g for g in guesses if g > 0):
        with pytest.raises(OperationFailure) as e:
            thief.cursor_ownership.command({"getMore": Int64(cid), "collection": "docs"})
        assert e.value.code == CURSOR_NOT_FOUND, (cid, e.value.details)
    assert [d["_id"] for d in owned_cursor] == list(range(1, 20))
