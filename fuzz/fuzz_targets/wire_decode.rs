//! Arbitrary bytes into every decoder of `mongomux-wire`.
//!
//! Two properties: no input makes the codec panic, and whatever decodes re-encodes (with the
//! crate's own encoders) into bytes that decode to the same structure. The input is tried as
//! it is and, to get past the length and opcode checks without waiting for the fuzzer to learn
//! them, as a copy whose messageLength is fixed up and whose opCode is forced to each decoder's.
#![no_main]

use bson::{RawBsonRef, RawDocument};
use libfuzzer_sys::fuzz_target;
use mongomux_wire::scan;
use mongomux_wire::{
    check_frame, encode_op_msg, encode_op_reply, rewrite_ids, strip_checksum, Header, MsgFlags,
    OpCode, OpCompressed, OpMsg, OpQuery, OpReply, HEADER_LEN, MAX_MESSAGE_SIZE,
};

fuzz_target!(|data: &[u8]| {
    scan_agrees_with_bson(data);
    for max in [MAX_MESSAGE_SIZE, 4096, 17, 16, 0] {
        if let Ok(Some(len)) = check_frame(data, max) {
            assert!((HEADER_LEN..=max).contains(&len) && len <= data.len());
        }
    }
    if let Ok(h) = Header::parse(data) {
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
    }
    // strip_checksum is called by the gateway on replies it has not parsed, so any framed
    // bytes must be safe; rewrite_ids needs only a header.
    let mut copy = data.to_vec();
    let (_, len) = strip_checksum(&mut copy, MsgFlags::EXHAUST_ALLOWED);
    assert!(len <= data.len());
    if copy.len() >= HEADER_LEN {
        rewrite_ids(&mut copy, 1, 2);
    }

    decode_all(data, 0);
    if data.len() >= HEADER_LEN {
        let mut fixed = data.to_vec();
        let len = fixed.len() as i32;
        fixed[0..4].copy_from_slice(&len.to_le_bytes());
        for op in [
            OpCode::Msg,
            OpCode::Query,
            OpCode::Reply,
            OpCode::Compressed,
        ] {
            fixed[12..16].copy_from_slice(&op.as_i32().to_le_bytes());
            decode_all(&fixed, 0);
        }
    }
});

/// Runs every decoder over `m`; `depth` stops OP_COMPRESSED from recursing more than once.
fn decode_all(m: &[u8], depth: u32) {
    if let Ok(msg) = OpMsg::parse(m) {
        check_msg(m, &msg);
    }
    if let Ok(q) = OpQuery::parse(m) {
        check_query(m, &q);
    }
    if let Ok(r) = OpReply::parse(m) {
        check_reply(&r);
    }
    if let Ok(c) = OpCompressed::parse(m) {
        check_compressed(m, &c, depth);
    }
}

fn check_msg(m: &[u8], msg: &OpMsg<'_>) {
    let _ = msg.command_name();
    walk(msg.body, 0);
    let mut sequences: Vec<(&str, Vec<&[u8]>)> = Vec::new();
    for seq in &msg.sequences {
        let docs: Vec<&[u8]> = seq.iter().map(|d| d.as_bytes()).collect();
        // Every document of a sequence was framed by parse, so iteration covers all bytes.
        assert_eq!(
            docs.iter().map(|d| d.len()).sum::<usize>(),
            seq.documents.len()
        );
        for d in seq.iter() {
            walk(d, 0);
        }
        sequences.push((seq.identifier, docs));
    }

    // Re-encode: body first, then the sequences, no checksum.
    let refs: Vec<(&str, &[&[u8]])> = sequences.iter().map(|(i, d)| (*i, &d[..])).collect();
    let flags = msg.flags.0 & !MsgFlags::CHECKSUM_PRESENT;
    let bytes = encode_op_msg(
        msg.header.request_id,
        msg.header.response_to,
        flags,
        msg.body.as_bytes(),
        &refs,
    );
    let checksum_len = if msg.flags.checksum_present() { 4 } else { 0 };
    assert_eq!(bytes.len(), m.len() - checksum_len);
    let again = OpMsg::parse(&bytes).expect("re-encoded OP_MSG parses");
    assert_same_msg(msg, &again, flags);

    // Dropping the checksum and optional flags, as the gateway does before forwarding, leaves
    // a message that still parses to the same thing.
    let mut copy = m.to_vec();
    let clear = MsgFlags::EXHAUST_ALLOWED | MsgFlags::MORE_TO_COME;
    let (before, len) = strip_checksum(&mut copy, clear);
    assert_eq!(before, msg.flags.0);
    copy.truncate(len);
    rewrite_ids(&mut copy, 77, msg.header.request_id);
    let stripped = OpMsg::parse(&copy).expect("stripped OP_MSG parses");
    assert_eq!(stripped.header.request_id, 77);
    assert_eq!(stripped.header.response_to, msg.header.request_id);
    assert_eq!(stripped.flags.0, flags & !clear);
    assert_eq!(stripped.body.as_bytes(), msg.body.as_bytes());
    assert_eq!(stripped.sequences.len(), msg.sequences.len());
}

fn assert_same_msg(a: &OpMsg<'_>, b: &OpMsg<'_>, flags: u32) {
    assert_eq!(b.header.request_id, a.header.request_id);
    assert_eq!(b.header.response_to, a.header.response_to);
    assert_eq!(b.flags.0, flags);
    assert_eq!(b.body.as_bytes(), a.body.as_bytes());
    assert_eq!(b.command_name().ok(), a.command_name().ok());
    assert_eq!(b.sequences.len(), a.sequences.len());
    for (x, y) in a.sequences.iter().zip(&b.sequences) {
        assert_eq!(x.identifier, y.identifier);
        assert_eq!(x.documents, y.documents);
    }
}

fn check_query(m: &[u8], q: &OpQuery<'_>) {
    let _ = (q.database(), q.is_command());
    walk(q.query, 0);
    if let Some(s) = q.return_fields_selector {
        walk(s, 0);
    }
    // The crate has no OP_QUERY encoder (the gateway only receives them); build one from the
    // layout and check it reproduces the input exactly.
    let mut out = Vec::with_capacity(m.len());
    out.extend_from_slice(&m[..HEADER_LEN]);
    out.extend_from_slice(&q.flags.to_le_bytes());
    out.extend_from_slice(q.full_collection_name.as_bytes());
    out.push(0);
    out.extend_from_slice(&q.number_to_skip.to_le_bytes());
    out.extend_from_slice(&q.number_to_return.to_le_bytes());
    out.extend_from_slice(q.query.as_bytes());
    if let Some(s) = q.return_fields_selector {
        out.extend_from_slice(s.as_bytes());
    }
    assert_eq!(out, m);
}

fn check_reply(r: &OpReply<'_>) {
    for d in &r.documents {
        walk(d, 0);
    }
    let docs: Vec<&[u8]> = r.documents.iter().map(|d| d.as_bytes()).collect();
    let bytes = encode_op_reply(
        r.header.request_id,
        r.header.response_to,
        r.response_flags,
        &docs,
    );
    let again = OpReply::parse(&bytes).expect("re-encoded OP_REPLY parses");
    assert_eq!(again.header.request_id, r.header.request_id);
    assert_eq!(again.header.response_to, r.header.response_to);
    assert_eq!(again.response_flags, r.response_flags);
    // encode_op_reply always writes cursorID 0 and startingFrom 0.
    assert_eq!((again.cursor_id, again.starting_from), (0, 0));
    let again_docs: Vec<&[u8]> = again.documents.iter().map(|d| d.as_bytes()).collect();
    assert_eq!(again_docs, docs);
}

fn check_compressed(m: &[u8], c: &OpCompressed<'_>, depth: u32) {
    assert_ne!(c.original_opcode, OpCode::Compressed);
    let inner_header = Header {
        length: 0,
        request_id: c.header.request_id,
        response_to: c.header.response_to,
        op_code: c.original_opcode,
    };
    let bytes = OpCompressed::encode(
        &inner_header,
        c.uncompressed_size,
        m[HEADER_LEN + 8],
        c.data,
    );
    assert_eq!(bytes, m);
    if let Ok(inner) = c.decompress_noop() {
        let h = Header::parse(&inner).expect("rebuilt message has a header");
        assert_eq!(h.length as usize, inner.len());
        assert_eq!(h.op_code, c.original_opcode);
        assert_eq!(check_frame(&inner, MAX_MESSAGE_SIZE), Ok(Some(inner.len())));
        if depth == 0 {
            decode_all(&inner, depth + 1);
        }
    }
}

/// Visits every element of a document, as routing code that looks deeper than the first key
/// would. Malformed elements end the walk with an error, never a panic.
fn walk(doc: &RawDocument, depth: u32) {
    if depth > 64 {
        return;
    }
    for item in doc.iter() {
        let Ok((_, value)) = item else {
            return;
        };
        match value {
            RawBsonRef::Document(d) => walk(d, depth + 1),
            RawBsonRef::Array(a) => {
                for v in a {
                    if let Ok(RawBsonRef::Document(d)) = v {
                        walk(d, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The gateway's byte-level element walk never panics, and on every document the bson crate
/// iterates cleanly it yields the same keys in the same order.
fn scan_agrees_with_bson(data: &[u8]) {
    if let Ok(walk) = scan::elements(data) {
        let _ = walk.count();
    }
    let Ok(doc) = RawDocument::from_bytes(data) else {
        return;
    };
    let Ok(theirs) = doc.iter().collect::<Result<Vec<_>, _>>() else {
        return;
    };
    let ours: Vec<_> = scan::elements(data)
        .expect("bson accepted the framing")
        .collect::<Result<Vec<_>, _>>()
        .expect("bson accepted every element");
    assert_eq!(ours.len(), theirs.len());
    for (o, (k, _)) in ours.iter().zip(&theirs) {
        assert_eq!(o.key, k.as_bytes());
    }
}
