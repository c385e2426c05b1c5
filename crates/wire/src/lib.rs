//! The MongoDB wire protocol as bytes in, structures out, and back: message headers, OP_MSG,
//! the legacy OP_QUERY/OP_REPLY pair that drivers still use for their first `hello`, and the
//! OP_COMPRESSED envelope.
//!
//! This crate owns framing and encoding only. It performs no I/O and knows nothing about
//! sockets, pools or tokio, so that it can be fuzzed and unit-tested in isolation. Every length
//! read from the wire is checked against [`MAX_MESSAGE_SIZE`] (or a smaller caller-supplied
//! limit) before anything is allocated from it: a client's int32 is never trusted.
//!
//! Parsing borrows from the caller's buffer ([`bson::RawDocument`]) so the gateway's hot path can
//! look at a few routing fields and forward the rest without copying.

#![forbid(unsafe_code)]

mod compressed;
mod crc32c;
mod error;
mod frame;
mod header;
mod legacy;
mod msg;
pub mod scan;

pub use compressed::{CompressorId, OpCompressed};
pub use crc32c::crc32c;
pub use error::WireError;
pub use frame::{
    check_frame, declared_length, peek_msg_flags, peek_request_id, rewrite_ids, strip_checksum,
};
pub use header::{Header, OpCode, HEADER_LEN};
pub use legacy::{encode_op_reply, OpQuery, OpReply, REPLY_QUERY_FAILURE};
pub use msg::{encode_op_msg, DocSequence, MsgFlags, OpMsg};

/// Largest message the gateway accepts or advertises (`maxMessageSizeBytes`), as real servers do.
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;
/// Largest BSON document (`maxBsonObjectSize`).
pub const MAX_BSON_OBJECT_SIZE: usize = 16 * 1024 * 1024;
/// Largest write batch (`maxWriteBatchSize`).
pub const MAX_WRITE_BATCH_SIZE: i32 = 100_000;

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, WireError>;
