//! What a client may make the gateway hold: the next message it sends, and the reply it has not
//! read yet. Owns the three bounds of issue 15's memory attack:
//!
//! - the size of a message before authentication (`max_unauthenticated_message_bytes`, when
//!   users are configured), checked on the length prefix, before the body is read;
//! - the in-flight budget ([`InflightBudget`]): a large message takes its bytes from the budget
//!   before its body is read, a large reply before its upstream connection is let go;
//! - the message deadline (`message_timeout`): from the first byte of a message to its last,
//!   waiting for the budget included, so a client that sends slowly (or stops halfway) cannot
//!   hold budget, buffer and connection slot for long. An idle client with nothing half-sent
//!   has no deadline here: a frozen Lambda environment between invocations is legitimate.
//!
//! [`read_message`] is cancel-safe (the serve loop selects on it): bytes read stay in the
//! framed buffer, and the budget taken and the time the message started are kept in
//! [`Inbound`] across calls.

use std::time::Duration;

use bytes::BytesMut;
use mongomux_wire::{WireError, MAX_MESSAGE_SIZE};
use tokio::time::Instant;

use crate::framed::{FrameError, Framed};
use crate::limits::inflight::{BudgetRefusal, InflightBudget, InflightPermit, SMALL};
use crate::tls::ClientStream;

/// The state of the message being received.
#[derive(Debug, Default)]
pub(super) struct Inbound {
    /// When its first byte arrived.
    started: Option<Instant>,
    /// The budget it holds.
    held: Option<InflightPermit>,
}

/// A whole message and the budget it holds until it has been handled.
pub(super) struct Message {
    pub frame: BytesMut,
    pub permit: Option<InflightPermit>,
}

/// Why no message could be received.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadFailure {
    /// The socket failed or closed mid-message, or the length prefix is out of range.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Larger than a client may send before authenticating.
    #[error("message of {len} bytes exceeds the {max} bytes allowed before authentication")]
    TooLargeBeforeAuth {
        /// The declared length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// Not received in full within the deadline.
    #[error("the message was not received in full within message_timeout ({0:?}); closing")]
    TimedOut(Duration),
}

/// The limits one read is held to.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadLimits {
    /// Largest message accepted now.
    pub max: usize,
    /// Whether `max` is the smaller limit of a client that has not authenticated.
    pub before_auth: bool,
    /// `message_timeout`.
    pub timeout: Duration,
}

impl ReadLimits {
    /// The limits for a client: the smaller size until it authenticates, when users exist.
    pub fn new(auth_pending: bool, unauthenticated_max: usize, timeout: Duration) -> ReadLimits {
        let before_auth = auth_pending && unauthenticated_max < MAX_MESSAGE_SIZE;
        ReadLimits {
            max: if before_auth {
                unauthenticated_max
            } else {
                MAX_MESSAGE_SIZE
            },
            before_auth,
            timeout,
        }
    }
}

/// Reads the next whole message. `Ok(None)` is a clean end of stream between messages.
pub(super) async fn read_message(
    framed: &mut Framed<ClientStream>,
    inbound: &mut Inbound,
    budget: &InflightBudget,
    limits: ReadLimits,
) -> Result<Option<Message>, ReadFailure> {
    framed.set_max(limits.max);
    loop {
        if framed.has_buffered() && inbound.started.is_none() {
            inbound.started = Some(Instant::now());
        }
        let declared = match framed.declared() {
            Err(WireError::LengthTooLarge { len, max }) if limits.before_auth => {
                return Err(ReadFailure::TooLargeBeforeAuth {
                    len: usize::try_from(len).unwrap_or(usize::MAX),
                    max,
                });
            }
            other => other.map_err(FrameError::from)?,
        };
        if let Some(frame) = framed.take_frame().map_err(FrameError::from)? {
            inbound.started = None;
            return Ok(Some(Message {
                frame,
                permit: inbound.held.take(),
            }));
        }
        let deadline = inbound.started.map(|t| t + limits.timeout);
        if let (Some(len), Some(deadline), None) = (declared, deadline, &inbound.held) {
            // Back-pressure: nothing more is read from this client until its bytes are granted.
            inbound.held = budget
                .take(len, deadline)
                .await
                .map_err(|r| refusal(r, limits))?;
        }
        let read = framed.read_some();
        let n = match deadline {
            Some(d) => tokio::time::timeout_at(d, read)
                .await
                .map_err(|_| ReadFailure::TimedOut(limits.timeout))?,
            None => read.await,
        }
        .map_err(FrameError::from)?;
        if n == 0 {
            return match framed.has_buffered() {
                false => Ok(None),
                true => Err(FrameError::Truncated.into()),
            };
        }
    }
}

fn refusal(r: BudgetRefusal, limits: ReadLimits) -> ReadFailure {
    match r {
        BudgetRefusal::TimedOut => ReadFailure::TimedOut(limits.timeout),
        // Settings validation keeps the budget at least one message of the largest size.
        BudgetRefusal::Exceeds { total } => FrameError::Wire(WireError::LengthTooLarge {
            len: i64::try_from(total).unwrap_or(i64::MAX).saturating_add(1),
            max: total,
        })
        .into(),
    }
}

impl super::Session {
    /// Takes budget for a reply of `len` bytes before its upstream connection is let go, so
    /// that replies waiting for slow readers are bounded by the budget. The wait holds an
    /// upstream connection, so it is as short as a checkout's (`checkout_timeout`): only reads
    /// have large replies, and the error (262) is one drivers retry reads on. The permit is
    /// kept until the reply is written.
    pub(super) async fn hold_reply(
        &mut self,
        len: usize,
    ) -> Result<(), crate::error::GatewayError> {
        // Nearly every reply: no settings to read, no budget to take.
        if len <= SMALL {
            return Ok(());
        }
        let limit = self.shared.live.settings.load().checkout_timeout;
        match self.shared.inflight.take(len, Instant::now() + limit).await {
            Ok(permit) => {
                self.reply_permit = permit;
                Ok(())
            }
            Err(_) => Err(crate::error::GatewayError::MessageTimeout(format!(
                "a reply of {len} bytes could not be held: the gateway's in-flight byte budget stayed spent for checkout_timeout ({limit:?})"
            ))),
        }
    }
}
