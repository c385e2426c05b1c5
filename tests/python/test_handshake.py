"""The gateway answers the handshake itself, as a mongos, over OP_QUERY and OP_MSG."""

import signal

import pytest

import mongowire as w
from conftest import start_gateway, tail

REQUIRED = ("ok", "msg", "minWireVersion", "maxWireVersion", "maxBsonObjectSize", "maxMessageSizeBytes",
            "maxWriteBatchSize", "localTime", "logicalSessionTimeoutMinutes", "connectionId")


@pytest.fixture(scope="module")
def upstream_hello(ferretdb):
    with ferretdb.client() as c:
        return c.admin.command("hello")


def check_mongos_hello(doc: dict, upstream: dict):
    missing = [k for k in REQUIRED if k not in doc]
    assert not missing, f"hello reply lacks {missing}: {doc}"
    assert doc["ok"] == 1
    assert doc["msg"] == "isdbgrid"
    assert doc.get("isWritablePrimary") is True or doc.get("ismaster") is True, doc
    assert "topologyVersion" not in doc, "topologyVersion makes drivers use streaming hello"
    assert "setName" not in doc and "hosts" not in doc, "a mongos is not a replica-set member"
    assert doc["maxWireVersion"] == upstream["maxWireVersion"]
    assert doc["minWireVersion"] == upstream["minWireVersion"]
    assert doc["logicalSessionTimeoutMinutes"] == upstream["logicalSessionTimeoutMinutes"]
    assert doc["maxBsonObjectSize"] == 16 * 1024 * 1024
    assert doc["maxMessageSizeBytes"] == 48_000_000
    assert doc["maxWriteBatchSize"] == 100_000
    assert isinstance(doc["connectionId"], int)


@pytest.mark.parametrize("command", ["isMaster", "ismaster", "hello"])
def test_op_query_handshake_answers_isdbgrid(gateway, upstream_hello, command):
    sock = w.connect(gateway.port)
    rid = w.next_request_id()
    sock.sendall(w.op_query("admin.$cmd", {command: 1, "helloOk": True,
                                           "client": {"driver": {"name": "raw", "version": "0"}}},
                            request_id=rid))
    msg = w.recv_message(sock, 5)
    assert msg is not None, "gateway closed the connection instead of answering the legacy handshake"
    assert msg.opcode == w.OP_REPLY
    assert msg.response_to == rid
    assert len(msg.docs) == 1
    doc = msg.doc
    check_mongos_hello(doc, upstream_hello)
    if command != "hello":
        assert doc.get("ismaster") is True, "legacy isMaster replies carry ismaster: true"
    assert doc.get("helloOk") is True, "the request had helloOk: true"

    # After the legacy handshake, the same connection speaks OP_MSG.
    rid = w.next_request_id()
    sock.sendall(w.op_msg({"ping": 1, "$db": "admin"}, request_id=rid))
    msg = w.recv_message(sock, 5)
    assert msg is not None and msg.opcode == w.OP_MSG and msg.response_to == rid
    assert msg.doc["ok"] == 1
    sock.close()


def test_op_msg_hello_answers_isdbgrid(gateway, upstream_hello):
    sock = w.connect(gateway.port)
    ids = set()
    for _ in range(2):
        rid = w.next_request_id()
        sock.sendall(w.op_msg({"hello": 1, "$db": "admin"}, request_id=rid))
        msg = w.recv_message(sock, 5)
        assert msg is not None and msg.opcode == w.OP_MSG and msg.response_to == rid
        check_mongos_hello(msg.doc, upstream_hello)
        assert msg.doc.get("isWritablePrimary") is True
        ids.add(msg.doc["connectionId"])
    assert len(ids) == 1, "connectionId is per connection: stable on one connection"
    other = w.connect(gateway.port)
    other.sendall(w.op_msg({"hello": 1, "$db": "admin"}))
    assert w.recv_message(other, 5).doc["connectionId"] not in ids
    sock.close()
    other.close()


def test_pymongo_sees_a_mongos(gateway, clients):
    c = clients(gateway)
    c.admin.command("ping")
    td = c.topology_description
    assert td.topology_type_name == "Sharded", td
    (server,) = td.server_descriptions().values()
    assert server.server_type_name == "Mongos", server


@pytest.mark.timeout(60)
def test_sigterm_exits_zero(ferretdb, logdir, clients):
    gw = start_gateway(ferretdb, logdir, name="mongomux-sigterm")
    try:
        c = clients(gw)
        assert c.admin.command("ping")["ok"] == 1
        c.close()
        code = gw.proc.stop(signal.SIGTERM)
        assert code == 0, f"exit code {code} after SIGTERM with no clients:\n{tail(gw.proc.log)}"
    finally:
        if gw.proc.alive():
            gw.proc.popen.kill()
