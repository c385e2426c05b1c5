//! A byte stream cut into whole wire messages.
//!
//! Owns the read buffer of one socket. The length prefix of each message goes through
//! [`mongomux_wire::check_frame`] before the buffer grows to hold the message, so a hostile
//! length never causes an allocation. [`Framed::read_frame`] is cancel-safe: bytes already read
//! stay in the buffer, so it can sit in a `select!`.

use bytes::BytesMut;
use mongomux_wire::{check_frame, declared_length, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read per call while no message size is known yet.
const READ_CHUNK: usize = 4096;
/// Buffers that grew beyond this for one big message are released once it has been taken,
/// so an idle connection keeps only a small buffer.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream in the middle of a message.
    #[error("connection closed mid-message")]
    Truncated,
    /// The length prefix is out of range: the stream can no longer be trusted.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A socket plus its read buffer.
#[derive(Debug)]
pub struct Framed<S> {
    stream: S,
    buf: BytesMut,
    max: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Wraps `stream`; messages longer than `max` are refused.
    pub fn new(stream: S, max: usize) -> Self {
        Framed {
            stream,
            buf: BytesMut::new(),
            max,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Whether bytes beyond the last whole message are buffered.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The first bytes of a partly received message, for error replies that need its header.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Changes the largest message accepted from now on (a client's limit grows once it has
    /// authenticated).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The length the next message declares, once its prefix has arrived, checked against the
    /// limit.
    pub fn declared(&self) -> Result<Option<usize>, WireError> {
        check_frame(&self.buf, self.max)?;
        Ok(declared_length(&self.buf))
    }

    /// Takes the next message if it has arrived whole.
    pub fn take_frame(&mut self) -> Result<Option<BytesMut>, WireError> {
        let Some(len) = check_frame(&self.buf, self.max)? else {
            return Ok(None);
        };
        let frame = self.buf.split_to(len);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
        Ok(Some(frame))
    }

    /// Reads once from the socket: up to the rest of the current message when its length is
    /// known (already checked against the limit), else a small chunk. Returns the bytes read;
    /// 0 is the end of the stream. Cancel-safe.
    pub async fn read_some(&mut self) -> std::io::Result<usize> {
        // The length was checked by `declared`/`take_frame` before anything is reserved for it;
        // an unchecked one is treated as unknown.
        let want = match check_frame(&self.buf, self.max) {
            Ok(_) => declared_length(&self.buf).map_or(READ_CHUNK, |declared| {
                declared.saturating_sub(self.buf.len())
            }),
            Err(_) => READ_CHUNK,
        };
        self.buf.reserve(want.max(READ_CHUNK));
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads the next whole message. `Ok(None)` is a clean end of stream between messages.
    pub async fn read_frame(&mut self) -> Result<Option<BytesMut>, FrameError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            if self.read_some().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// Writes a whole message.
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Closes the write side.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_across_reads() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut framed = Framed::new(b, 1000);
        let mut msg = 20i32.to_le_bytes().to_vec();
        msg.resize(20, 7);
        let writer = tokio::spawn(async move {
            a.write_all(&msg[..3]).await.unwrap();
            a.write_all(&msg[3..]).await.unwrap();
            a.write_all(&msg).await.unwrap();
            a.write_all(&msg[..10]).await.unwrap();
        });
        assert_eq!(framed.read_frame().await.unwrap().unwrap().len(), 20);
        assert_eq!(framed.read_frame().await.unwrap().unwrap().len(), 20);
        writer.await.unwrap();
        assert!(matches!(
            framed.read_frame().await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn oversized_length_refused_without_reading_body() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut framed = Framed::new(b, 1000);
        a.write_all(&1_000_000i32.to_le_bytes()).await.unwrap();
        assert!(matches!(
            framed.read_frame().await,
            Err(FrameError::Wire(WireError::LengthTooLarge { .. }))
        ));
        assert!(framed.buf.capacity() < 10_000);
    }
}
