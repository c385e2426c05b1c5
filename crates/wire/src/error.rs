//! The one error type of the codec. Messages describe the fault in the bytes, never their content.

/// A message that cannot be framed or decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The declared messageLength is smaller than a header can be.
    #[error("message length {0} is smaller than the 16-byte header")]
    LengthTooSmall(i64),
    /// The declared messageLength is larger than the limit.
    #[error("message length {len} exceeds the maximum of {max} bytes")]
    LengthTooLarge { len: i64, max: usize },
    /// The message ends before a structure it declares.
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    /// Bytes left over after the last structure the message declares.
    #[error("{0} trailing bytes after the message body")]
    TrailingBytes(usize),
    /// OP_MSG flag bits that the specification reserves as must-be-zero.
    #[error("OP_MSG has unknown required flag bits {0:#x}")]
    UnknownRequiredFlags(u32),
    /// An OP_MSG section kind other than 0 or 1.
    #[error("unknown OP_MSG section kind {0}")]
    UnknownSectionKind(u8),
    /// An OP_MSG without its single kind-0 body, or with two of them.
    #[error("OP_MSG must have exactly one body section, found {0}")]
    BodyCount(usize),
    /// Two document sequences with the same identifier.
    #[error("duplicate document sequence identifier")]
    DuplicateSequence,
    /// The CRC-32C checksum does not match the message.
    #[error("OP_MSG checksum mismatch")]
    ChecksumMismatch,
    /// A cstring without its terminating NUL, or not UTF-8.
    #[error("invalid cstring in {0}")]
    InvalidCString(&'static str),
    /// A BSON document whose framing is wrong.
    #[error("invalid BSON document in {0}")]
    InvalidBson(&'static str),
    /// The operation is not the one the caller asked to decode.
    #[error("unexpected opcode {0}")]
    UnexpectedOpCode(i32),
    /// A compressor id this build does not implement.
    #[error("unsupported compressor id {0}")]
    UnsupportedCompressor(u8),
    /// Decompressed size did not match the declared one.
    #[error("compressed payload does not match its declared size")]
    CompressedSizeMismatch,
}
