//! Unit tests of upstream compression: each codec's round trip through the envelope, the
//! refusal of frames whose sizes or ids are wrong, negotiation and the never-compressed list.

use bson::{doc, rawdoc};
use mongomux_wire::{encode_op_msg, OpMsg};

use super::*;

const ALL: [Compressor; 3] = [Compressor::Snappy, Compressor::Zlib, Compressor::Zstd];

/// An OP_MSG `insert` of `n` repetitive documents (compressible), requestID 7.
fn insert(n: usize) -> Vec<u8> {
    let docs: Vec<_> = (0..n)
        .map(|i| doc! { "_id": i as i64, "text": "the same words again and again ".repeat(8) })
        .collect();
    let body = bson::to_vec(&doc! { "insert": "c", "documents": docs, "$db": "test" }).unwrap();
    encode_op_msg(7, 0, 0, &body, &[])
}

/// An OP_COMPRESSED frame around `msg` with the given id, declared size and payload.
fn envelope(msg: &[u8], declared: usize, id: u8, payload: &[u8]) -> Vec<u8> {
    OpCompressed::encode(&Header::parse(msg).unwrap(), declared, id, payload)
}

#[test]
fn each_codec_round_trips_a_message_through_the_envelope() {
    let msg = insert(200);
    for c in ALL {
        let wrapped = compress_message(c, &msg).expect("an insert is compressed");
        assert!(is_compressed(&wrapped));
        assert!(
            wrapped.len() < msg.len() / 4,
            "{}: {} bytes",
            c.name(),
            wrapped.len()
        );
        let env = OpCompressed::parse(&wrapped).unwrap();
        assert_eq!(env.compressor, CompressorId::from_u8(c.id()));
        assert_eq!(env.original_opcode, OpCode::Msg);
        assert_eq!(env.header.request_id, 7);
        let back = decompress_message(&wrapped).unwrap();
        assert_eq!(&back[..], &msg[..], "{}", c.name());
        assert_eq!(
            OpMsg::parse(&back).unwrap().command_name().unwrap(),
            "insert"
        );
    }
}

#[test]
fn empty_and_tiny_bodies_round_trip() {
    for c in ALL {
        let body = rawdoc! { "ping": 1, "$db": "admin" };
        let msg = encode_op_msg(1, 0, 0, body.as_bytes(), &[]);
        let wrapped = compress_message(c, &msg).unwrap();
        assert_eq!(&decompress_message(&wrapped).unwrap()[..], &msg[..]);
    }
}

#[test]
fn noop_envelopes_are_unwrapped() {
    let msg = insert(1);
    let wrapped = envelope(&msg, msg.len() - HEADER_LEN, 0, &msg[HEADER_LEN..]);
    assert_eq!(&decompress_message(&wrapped).unwrap()[..], &msg[..]);
}

#[test]
fn declared_sizes_beyond_the_message_limit_are_refused_before_allocating() {
    let msg = insert(1);
    for c in ALL {
        let data = c.compress(&msg[HEADER_LEN..]).unwrap();
        let wrapped = envelope(&msg, MAX_MESSAGE_SIZE, c.id(), &data);
        assert!(
            matches!(
                decompress_message(&wrapped),
                Err(CompressionError::Envelope(WireError::LengthTooLarge { .. }))
            ),
            "{}",
            c.name()
        );
    }
    let mut negative = envelope(&msg, 0, 3, b"x");
    negative[20..24].copy_from_slice(&(-1i32).to_le_bytes());
    assert!(matches!(
        decompress_message(&negative),
        Err(CompressionError::Envelope(_))
    ));
}

#[test]
fn payloads_larger_than_declared_are_refused() {
    let msg = insert(50);
    let real = msg.len() - HEADER_LEN;
    for c in ALL {
        let data = c.compress(&msg[HEADER_LEN..]).unwrap();
        let wrapped = envelope(&msg, real - 1, c.id(), &data);
        let e = decompress_message(&wrapped).unwrap_err();
        assert!(
            matches!(
                e,
                CompressionError::Oversize { .. } | CompressionError::Corrupt { .. }
            ),
            "{}: {e:?}",
            c.name()
        );
    }
}

#[test]
fn payloads_smaller_than_declared_are_refused() {
    let msg = insert(50);
    let real = msg.len() - HEADER_LEN;
    for c in ALL {
        let data = c.compress(&msg[HEADER_LEN..]).unwrap();
        let wrapped = envelope(&msg, real + 1, c.id(), &data);
        let e = decompress_message(&wrapped).unwrap_err();
        assert!(
            matches!(e, CompressionError::SizeMismatch { actual, declared, .. } if actual == real && declared == real + 1),
            "{}: {e:?}",
            c.name()
        );
    }
    let short = envelope(&msg, real, 0, &msg[HEADER_LEN..msg.len() - 1]);
    assert!(matches!(
        decompress_message(&short),
        Err(CompressionError::SizeMismatch { .. })
    ));
}

#[test]
fn unknown_ids_and_corrupt_payloads_are_refused() {
    let msg = insert(5);
    let real = msg.len() - HEADER_LEN;
    for id in [4u8, 9, 255] {
        let wrapped = envelope(&msg, real, id, &msg[HEADER_LEN..]);
        assert!(matches!(
            decompress_message(&wrapped),
            Err(CompressionError::UnknownCompressor(i)) if i == id
        ));
    }
    for c in ALL {
        // The plain body is not a valid stream for any codec.
        let wrapped = envelope(&msg, real, c.id(), &msg[HEADER_LEN..]);
        assert!(
            decompress_message(&wrapped).is_err(),
            "{} took garbage",
            c.name()
        );
        let mut data = c.compress(&msg[HEADER_LEN..]).unwrap();
        data.truncate(data.len() / 2);
        let wrapped = envelope(&msg, real, c.id(), &data);
        assert!(
            decompress_message(&wrapped).is_err(),
            "{} took a truncated stream",
            c.name()
        );
    }
}

#[test]
fn a_nested_envelope_is_refused() {
    let msg = insert(1);
    let inner = compress_message(Compressor::Zstd, &msg).unwrap();
    let mut outer = envelope(&inner, inner.len() - HEADER_LEN, 0, &inner[HEADER_LEN..]);
    // originalOpcode = OP_COMPRESSED
    outer[16..20].copy_from_slice(&2012i32.to_le_bytes());
    assert!(matches!(
        decompress_message(&outer),
        Err(CompressionError::Envelope(WireError::UnexpectedOpCode(
            2012
        )))
    ));
}

#[test]
fn the_never_compressed_commands_travel_plain() {
    for name in [
        "hello",
        "isMaster",
        "ismaster",
        "saslStart",
        "saslContinue",
        "getnonce",
        "authenticate",
        "createUser",
        "updateUser",
        "copydbSaslStart",
        "copydbgetnonce",
        "copydb",
    ] {
        assert!(never_compressed(name), "{name}");
        let body = bson::to_vec(&doc! { name: 1, "$db": "admin" }).unwrap();
        let msg = encode_op_msg(1, 0, 0, &body, &[]);
        assert_eq!(compress_message(Compressor::Zstd, &msg), None, "{name}");
    }
    for name in ["find", "insert", "buildInfo", "getMore", "dropUser", "ping"] {
        assert!(!never_compressed(name), "{name}");
    }
}

#[test]
fn only_op_msg_is_compressed() {
    let mut query = insert(3);
    query[12..16].copy_from_slice(&2004i32.to_le_bytes());
    assert_eq!(compress_message(Compressor::Zlib, &query), None);
    assert_eq!(compress_message(Compressor::Zlib, b"short"), None);
}

#[test]
fn negotiation_takes_the_first_of_our_list_the_server_accepts() {
    let ours: Vec<String> = ["zstd", "zlib", "snappy"].map(String::from).into();
    let reply = doc! { "ok": 1, "compression": ["zlib", "snappy"] };
    assert_eq!(negotiate(&ours, &reply), Some(Compressor::Zlib));
    let reply = doc! { "ok": 1, "compression": ["snappy", "zstd"] };
    assert_eq!(negotiate(&ours, &reply), Some(Compressor::Zstd));
    assert_eq!(negotiate(&ours, &doc! { "ok": 1 }), None);
    assert_eq!(negotiate(&ours, &doc! { "ok": 1, "compression": [] }), None);
    assert_eq!(
        negotiate(&ours, &doc! { "ok": 1, "compression": ["lz4"] }),
        None
    );
    assert_eq!(
        negotiate(&[], &doc! { "ok": 1, "compression": ["zstd"] }),
        None
    );
}
