#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: a few valid messages each target starts from.

Standard library only; BSON is encoded by hand for the handful of types the seeds use.
Run from anywhere: `python3 fuzz/seeds/make_seeds.py`. The output is committed, so the fuzz
smoke run does not need Python; rerun this only to change the seeds.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def cstring(s):
    return s.encode() + b"\x00"


def element(key, value):
    if isinstance(value, bool):
        return b"\x08" + cstring(key) + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"\x10" + cstring(key) + struct.pack("<i", value)
        return b"\x12" + cstring(key) + struct.pack("<q", value)
    if isinstance(value, float):
        return b"\x01" + cstring(key) + struct.pack("<d", value)
    if isinstance(value, str):
        raw = value.encode()
        return b"\x02" + cstring(key) + struct.pack("<i", len(raw) + 1) + raw + b"\x00"
    if isinstance(value, bytes):  # binary subtype 4 (UUID), as in lsid
        return b"\x05" + cstring(key) + struct.pack("<i", len(value)) + b"\x04" + value
    if isinstance(value, dict):
        return b"\x03" + cstring(key) + doc(value)
    if isinstance(value, list):
        return b"\x04" + cstring(key) + doc({str(i): v for i, v in enumerate(value)})
    raise TypeError(type(value))


def doc(d):
    """A document from a dict, or from (key, value) pairs when keys repeat."""
    pairs = d.items() if isinstance(d, dict) else d
    body = b"".join(element(k, v) for k, v in pairs)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def header(length, request_id, response_to, op_code):
    return struct.pack("<iiii", length, request_id, response_to, op_code)


def op_msg(request_id, body, sequences=(), flags=0):
    out = struct.pack("<I", flags) + b"\x00" + doc(body)
    for ident, docs in sequences:
        payload = cstring(ident) + b"".join(doc(x) for x in docs)
        out += b"\x01" + struct.pack("<i", len(payload) + 4) + payload
    return header(16 + len(out), request_id, 0, 2013) + out


def op_query(request_id, name, query):
    out = struct.pack("<i", 0) + cstring(name) + struct.pack("<ii", 0, -1) + doc(query)
    return header(16 + len(out), request_id, 0, 2004) + out


def op_reply(response_to, docs, flags=0):
    out = struct.pack("<iqii", flags, 0, 0, len(docs)) + b"".join(doc(x) for x in docs)
    return header(16 + len(out), 9, response_to, 1) + out


def op_compressed_noop(message):
    length, request_id, response_to, op_code = struct.unpack("<iiii", message[:16])
    inner = message[16:]
    out = struct.pack("<iiB", op_code, len(inner), 0) + inner
    return header(16 + len(out), request_id, response_to, 2012) + out


def write(target, name, data):
    path = os.path.join(HERE, target, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def wire_seeds():
    lsid = {"id": bytes(range(16))}
    hello = {"hello": 1, "helloOk": True, "$db": "admin",
             "client": {"driver": {"name": "seed", "version": "1"}}}
    write("wire_decode", "op_msg_hello", op_msg(1, hello))
    insert = {"insert": "c", "ordered": True, "lsid": lsid, "txnNumber": 2**40, "$db": "test"}
    write("wire_decode", "op_msg_insert_kind1",
          op_msg(2, insert, [("documents", [{"_id": 1}, {"_id": 2, "x": "y"}])]))
    write("wire_decode", "op_msg_update_two_seqs",
          op_msg(3, {"update": "c", "$db": "test"},
                 [("updates", [{"q": {}, "u": {"$set": {"a": 1}}}]),
                  ("let", [{"v": 1.5}])]))
    write("wire_decode", "op_msg_more_to_come",
          op_msg(4, {"insert": "c", "writeConcern": {"w": 0}, "$db": "t"},
                 [("documents", [{"a": [1, 2, {"b": False}]}])], flags=2))
    # A checksummed message: flags bit 0 and a CRC-32C (Castagnoli) trailer.
    plain = op_msg(5, {"ping": 1, "$db": "admin"}, flags=1)
    body = struct.pack("<i", len(plain) + 4) + plain[4:]
    write("wire_decode", "op_msg_checksum", body + struct.pack("<I", crc32c(body)))
    write("wire_decode", "op_query_ismaster",
          op_query(6, "admin.$cmd", {"isMaster": 1, "helloOk": True}))
    write("wire_decode", "op_query_wrapped",
          op_query(7, "admin.$cmd", {"$query": {"isMaster": 1}, "$readPreference": {"mode": "primary"}}))
    write("wire_decode", "op_reply_ismaster",
          op_reply(6, [{"ismaster": True, "msg": "isdbgrid", "ok": 1.0}]))
    write("wire_decode", "op_reply_query_failure",
          op_reply(7, [{"$err": "no", "code": 352, "ok": 0.0}], flags=2))
    write("wire_decode", "op_compressed_noop_ping",
          op_compressed_noop(op_msg(8, {"ping": 1, "$db": "admin"})))
    write("wire_decode", "op_compressed_noop_query",
          op_compressed_noop(op_query(9, "admin.$cmd", {"hello": 1})))


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def scram_seeds():
    # Control byte: bits 0-1 mode, bit 2 SHA-256, bit 3 user known (see the target's docs).
    client_first = b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    client_final = b"c=biws,r=%N,p=" + b"A" * 27 + b"="  # 20-byte proof, right for SHA-1
    write("scram_server", "server_sha1_known", bytes([0b1000]) + client_first + b"\x00" + client_final)
    client_final256 = b"c=biws,r=%N,p=" + b"A" * 43 + b"="  # 32-byte proof
    write("scram_server", "server_sha256_known", bytes([0b1100]) + client_first + b"\x00" + client_final256)
    write("scram_server", "server_unknown_user_y_header",
          bytes([0b0100]) + b"y,,n=ghost=2Cx,r=abc,e=ext" + b"\x00" + b"c=eSws,r=%N,x=1,p=AAAA")
    write("scram_server", "server_broken_credential", bytes([0b1001]) + client_first + b"\x00" + client_final)
    server_first = b"r=%Nsrv,s=QSXCR+Q6sek8bf92,i=4096"
    write("scram_server", "client_sha1", bytes([0b0010]) + server_first + b"\x00" + b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
    write("scram_server", "client_sha256_error", bytes([0b0110]) + server_first + b",z=1\x00" + b"e=invalid-proof")
    write("scram_server", "username_escapes", bytes([0b0111]) + "a,b=c\u00fc".encode() + b"\x00" + b"pencil")


def command_view_seeds():
    # Control byte (see the target's docs): bit 0 clear, a whole message follows; bit 0 set, a
    # BSON body follows and the target builds the OP_MSG; bit 1 adds a kind-1 section of the
    # rest, its identifier picked by bits 2-4 (0 documents, 1 updates, 2 deletes, 3 ops,
    # 4 nsInfo).
    def body(name, d, ident=None, docs=()):
        control = 1 if ident is None else 1 | 2 | (ident << 2)
        write("command_view", name, bytes([control]) + doc(d) + b"".join(doc(x) for x in docs))

    lsid = {"id": bytes(range(16))}
    write("command_view", "raw_find_app",
          b"\x00" + op_msg(1, {"find": "c", "filter": {"a": 1}, "lsid": lsid, "$db": "app"}))
    write("command_view", "raw_hello", b"\x00" + op_msg(2, {"hello": 1, "$db": "admin"}))
    body("insert_kind1", {"insert": "c", "$db": "app"}, 0, [{"_id": 1}, {"_id": 2}])
    body("update_kind1", {"update": "c", "$db": "app"}, 1, [{"q": {}, "u": {"$set": {"a": 1}}}])
    body("bulkwrite_nsinfo", {"bulkWrite": 1, "$db": "admin"}, 4, [{"ns": "other.c"}, {"ns": "app.c"}])
    body("aggregate_lookup_facet", {
        "aggregate": "c", "cursor": {}, "$db": "app",
        "pipeline": [
            {"$lookup": {"from": {"db": "other", "coll": "s"}, "as": "x",
                         "pipeline": [{"$unionWith": {"coll": "u", "pipeline": []}}]}},
            {"$facet": {"f": [{"$graphLookup": {"from": "g", "startWith": "$a",
                                                 "connectFromField": "a", "connectToField": "b",
                                                 "as": "y"}}]}},
            {"$merge": {"into": {"db": "app", "coll": "m"}}},
        ]})
    body("aggregate_out_other_db", {"aggregate": "c", "cursor": {}, "$db": "app",
                                    "pipeline": [{"$out": {"db": "other", "coll": "o"}}]})
    body("rename_collection", {"renameCollection": "app.a", "to": "other.b", "$db": "admin"})
    body("data_size", {"dataSize": "app.system.users", "$db": "app"})
    body("map_reduce_out_db", {"mapReduce": "c", "map": "m", "reduce": "r",
                               "out": {"replace": "o", "db": "other"}, "$db": "app"})
    body("find_system_users", {"find": "system.users", "$db": "admin"})
    body("find_system_views", {"find": "system.views", "$db": "app"})
    body("drop_database_admin", {"dropDatabase": 1, "$db": "admin"})
    body("duplicate_lsid", [("find", "c"), ("lsid", lsid), ("lsid", {"id": bytes(16)}), ("$db", "app")])
    body("getmore_txn", {"getMore": 2**40, "collection": "c", "lsid": lsid, "txnNumber": 3,
                         "autocommit": False, "$db": "app"})
    body("kill_cursors", {"killCursors": "c", "cursors": [2**40, 5], "$db": "app"})
    body("end_sessions", {"endSessions": [lsid], "$db": "admin"})
    body("server_status", {"serverStatus": 1, "$db": "admin"})
    body("logout", {"logout": 1, "$db": "app"})
    body("odd_types", {"find": 5, "$db": "app", "collection": [1, {"a": 1.5}]})


def sts_request_seeds():
    # Control byte: bit 0 set, NUL-separated a, d, t strings (clear: a raw BSON final
    # message); bit 1 the regional host (eu-west-1); bit 2 a channel-binding flag other than n.
    sig = "0123456789abcdef" * 4
    signed = "content-length;content-type;host;x-amz-date;x-mongodb-gs2-cb-flag;x-mongodb-server-nonce"
    signed_token = ("content-length;content-type;host;x-amz-date;x-amz-security-token;"
                    "x-mongodb-gs2-cb-flag;x-mongodb-server-nonce")

    def auth(region, headers=signed):
        return (f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE12345/20261129/{region}/sts/aws4_request, "
                f"SignedHeaders={headers}, Signature={sig}")

    date = "20261129T120000Z"
    write("sts_request", "global", b"\x01" + auth("us-east-1").encode() + b"\x00" + date.encode())
    write("sts_request", "regional", b"\x03" + auth("eu-west-1").encode() + b"\x00" + date.encode())
    write("sts_request", "with_token", b"\x01" + auth("us-east-1", signed_token).encode()
          + b"\x00" + date.encode() + b"\x00" + b"FQoGZXIvYXdzEJr//////////wEaDM+token==")
    write("sts_request", "raw_bson", b"\x00" + doc({"a": auth("us-east-1"), "d": date}))
    write("sts_request", "crlf_injection", b"\x01" + auth("us-east-1").encode()
          + b"\r\nX-MongoDB-Server-Nonce: AAAA" + b"\x00" + date.encode())
    write("sts_request", "stale_date", b"\x01" + auth("us-east-1").encode() + b"\x00"
          + b"20261129T090000Z")
    write("sts_request", "channel_binding", b"\x05" + auth("us-east-1").encode() + b"\x00" + date.encode())


if __name__ == "__main__":
    wire_seeds()
    scram_seeds()
    command_view_seeds()
    sts_request_seeds()
