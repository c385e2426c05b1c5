//! Framing a byte stream into messages, and the in-place header rewrites a proxy needs.
//!
//! [`check_frame`] is the only place a length prefix from the network is interpreted: it says
//! "complete", "need more" or "invalid" before the caller reserves any buffer for the message.

use crate::header::{read_i32, HEADER_LEN};
use crate::msg::MsgFlags;
use crate::{Result, WireError};

/// Looks at the start of `buf` and returns `Ok(Some(len))` when a whole message of `len` bytes
/// is present, `Ok(None)` when more bytes are needed, or an error when the declared length is
/// outside `[16, max]`. Only the first four bytes are needed to decide validity.
pub fn check_frame(buf: &[u8], max: usize) -> Result<Option<usize>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let declared = read_i32(buf, 0) as i64;
    if declared < HEADER_LEN as i64 {
        return Err(WireError::LengthTooSmall(declared));
    }
    if declared as u64 > max as u64 {
        return Err(WireError::LengthTooLarge { len: declared, max });
    }
    let len = declared as usize;
    Ok((buf.len() >= len).then_some(len))
}

/// The declared messageLength at the start of `buf`, once four bytes are there. Meaningful as a
/// size only after [`check_frame`] accepted it.
pub fn declared_length(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4).then(|| read_i32(buf, 0).max(0) as usize)
}

/// The requestID of a message whose first eight bytes are present, even when the rest is not
/// (to answer a message whose length cannot be trusted).
pub fn peek_request_id(buf: &[u8]) -> Option<i32> {
    (buf.len() >= 8).then(|| read_i32(buf, 4))
}

/// The flag bits of a framed OP_MSG, read without parsing its sections (to honour `moreToCome`
/// on a message whose body does not decode).
pub fn peek_msg_flags(message: &[u8]) -> Option<MsgFlags> {
    (message.len() >= HEADER_LEN + 4).then(|| MsgFlags(read_i32(message, HEADER_LEN) as u32))
}

/// Overwrites requestID and responseTo of a framed message in place.
pub fn rewrite_ids(message: &mut [u8], request_id: i32, response_to: i32) {
    debug_assert!(message.len() >= HEADER_LEN);
    message[4..8].copy_from_slice(&request_id.to_le_bytes());
    message[8..12].copy_from_slice(&response_to.to_le_bytes());
}

/// For an OP_MSG, clears `clear` flag bits and drops a trailing checksum (which any header
/// rewrite invalidates), fixing messageLength. Returns the flags as they were and the new
/// length, to which the caller truncates its buffer.
///
/// Total on any input: bytes too short to hold a flags field (an unparsed upstream reply can
/// be a bare 16-byte header) are left alone and reported as flags 0 with their own length.
pub fn strip_checksum(message: &mut [u8], clear: u32) -> (u32, usize) {
    if message.len() < HEADER_LEN + 4 {
        return (0, message.len());
    }
    let flags = read_i32(message, HEADER_LEN) as u32;
    let mut new_flags = flags & !clear;
    let mut len = message.len();
    if flags & MsgFlags::CHECKSUM_PRESENT != 0 && len >= HEADER_LEN + 8 {
        new_flags &= !MsgFlags::CHECKSUM_PRESENT;
        len -= 4;
        message[0..4].copy_from_slice(&(len as i32).to_le_bytes());
    }
    message[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&new_flags.to_le_bytes());
    (flags, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_at_partial_headers() {
        let msg = crate::encode_op_msg(7, 0, MsgFlags::MORE_TO_COME, &[5, 0, 0, 0, 0], &[]);
        assert_eq!(declared_length(&msg[..4]), Some(msg.len()));
        assert_eq!(declared_length(&msg[..3]), None);
        assert_eq!(peek_request_id(&msg[..8]), Some(7));
        assert_eq!(peek_request_id(&msg[..7]), None);
        assert!(peek_msg_flags(&msg).unwrap().more_to_come());
        assert_eq!(peek_msg_flags(&msg[..19]), None);
        assert_eq!(
            declared_length(&[0xff, 0xff, 0xff, 0xff]),
            Some(0),
            "negative is no size"
        );
    }
    use crate::{crc32c, encode_op_msg, OpMsg, MAX_MESSAGE_SIZE};
    use bson::rawdoc;

    #[test]
    fn frame_states() {
        assert_eq!(check_frame(&[1, 2], MAX_MESSAGE_SIZE), Ok(None));
        assert_eq!(
            check_frame(&15i32.to_le_bytes(), MAX_MESSAGE_SIZE),
            Err(WireError::LengthTooSmall(15))
        );
        assert_eq!(
            check_frame(&(-1i32).to_le_bytes(), MAX_MESSAGE_SIZE),
            Err(WireError::LengthTooSmall(-1))
        );
        assert!(matches!(
            check_frame(&48_000_001i32.to_le_bytes(), MAX_MESSAGE_SIZE),
            Err(WireError::LengthTooLarge { .. })
        ));
        let mut buf = 20i32.to_le_bytes().to_vec();
        assert_eq!(check_frame(&buf, MAX_MESSAGE_SIZE), Ok(None));
        buf.resize(25, 0);
        assert_eq!(check_frame(&buf, MAX_MESSAGE_SIZE), Ok(Some(20)));
    }

    /// Found by the wire_decode fuzz target: any input shorter than 20 bytes (the empty one
    /// first) indexed past the end. The gateway calls this on upstream replies it could not
    /// parse, which may be a bare header.
    #[test]
    fn strip_checksum_on_short_input_is_a_no_op() {
        for len in 0..HEADER_LEN + 4 {
            let mut m = vec![0xffu8; len];
            assert_eq!(strip_checksum(&mut m, MsgFlags::EXHAUST_ALLOWED), (0, len));
            assert!(m.iter().all(|b| *b == 0xff));
        }
        let mut header_only = 16i32.to_le_bytes().to_vec();
        header_only.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0xdd, 0x07, 0, 0]);
        assert_eq!(strip_checksum(&mut header_only, 0), (0, HEADER_LEN));
    }

    #[test]
    fn strip_checksum_and_exhaust() {
        let body = rawdoc! { "getMore": 5i64, "$db": "d" };
        let mut m = encode_op_msg(1, 0, MsgFlags::EXHAUST_ALLOWED, body.as_bytes(), &[]);
        let flags = (MsgFlags::EXHAUST_ALLOWED | MsgFlags::CHECKSUM_PRESENT).to_le_bytes();
        m[16..20].copy_from_slice(&flags);
        let len = (m.len() + 4) as i32;
        m[0..4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c(&m);
        m.extend_from_slice(&crc.to_le_bytes());
        assert!(OpMsg::parse(&m).is_ok());
        let (before, len) = strip_checksum(&mut m, MsgFlags::EXHAUST_ALLOWED);
        m.truncate(len);
        assert_ne!(before & MsgFlags::EXHAUST_ALLOWED, 0);
        rewrite_ids(&mut m, 99, 0);
        let parsed = OpMsg::parse(&m).unwrap();
        assert_eq!(parsed.flags.0, 0);
        assert_eq!(parsed.header.request_id, 99);
    }
}
