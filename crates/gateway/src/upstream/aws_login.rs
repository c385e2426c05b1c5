//! The MONGODB-AWS login of one upstream connection (source/auth/auth.md, "MONGODB-AWS"): the
//! `saslStart` / `saslContinue` exchange on `$external`, around the payloads and signature built
//! by [`mongomux_auth::AwsClient`].
//!
//! Owns the I/O of the conversation and the choice of credentials: the URI's, as given, or the
//! upstream's [`AwsCredentialSource`], asked only once the server's challenge has arrived so the
//! credentials are checked for expiry at the moment they sign. A failed login clears that
//! source's cache (auth.md, "Caching Credentials"), so a revoked or rotated key is not retried.
//!
//! Never: a key, secret or token in a log line or an error. The access key id (not a secret,
//! it travels in the Authorization header) is logged at debug level so an operator can tell
//! which credential a connection used.

use std::time::SystemTime;

use bson::{doc, spec::BinarySubtype, Binary, Bson, Document};
use mongomux_auth::{AwsClient, AwsCredentials};

use super::aws_credentials::AwsCredentialSource;
use super::config::{AwsStatic, UpstreamAuth, UpstreamConfig};
use super::conn::UpstreamConn;
use super::error::UpstreamError;

/// The SASL mechanism name.
const MECHANISM: &str = "MONGODB-AWS";
/// MONGODB-AWS users live in `$external`.
const SOURCE: &str = "$external";

/// Logs `conn` in with MONGODB-AWS when `cfg` asks for it; does nothing for other credentials.
pub async fn authenticate(
    conn: &mut UpstreamConn,
    cfg: &UpstreamConfig,
) -> Result<(), UpstreamError> {
    let UpstreamAuth::Aws { static_credentials } = &cfg.auth else {
        return Ok(());
    };
    let source = cfg.aws_credentials.as_deref();
    let result = login(conn, static_credentials.as_ref(), source).await;
    if result.is_err() {
        if let Some(source) = source {
            source.invalidate();
        }
    }
    result
}

async fn login(
    conn: &mut UpstreamConn,
    static_credentials: Option<&AwsStatic>,
    source: Option<&AwsCredentialSource>,
) -> Result<(), UpstreamError> {
    let (client, first) = AwsClient::start();
    let start = doc! {
        "saslStart": 1,
        "mechanism": MECHANISM,
        "payload": binary(first),
        "$db": SOURCE,
    };
    let reply = conn.command(&start).await?;
    let (conversation, payload) = sasl_reply(&reply)?;
    let challenge = client
        .challenge(&payload)
        .map_err(|e| UpstreamError::Auth(Some(e)))?;
    let (credentials, now) = credentials(static_credentials, source).await?;
    tracing::debug!(
        access_key_id = %credentials.access_key_id,
        sts_host = challenge.host(),
        "upstream MONGODB-AWS login"
    );
    let fin = challenge
        .client_final(&credentials, now)
        .map_err(|e| UpstreamError::Auth(Some(e)))?;
    let cont = doc! {
        "saslContinue": 1,
        "conversationId": conversation,
        "payload": binary(fin),
        "$db": SOURCE,
    };
    let reply = conn.command(&cont).await?;
    // The server verifies the signature with STS on this message: two round trips, then done.
    if reply.get_bool("done").unwrap_or(false) {
        Ok(())
    } else {
        Err(UpstreamError::Auth(None))
    }
}

/// The URI's keys as given, else the source's (checked for expiry at the returned time).
async fn credentials(
    static_credentials: Option<&AwsStatic>,
    source: Option<&AwsCredentialSource>,
) -> Result<(AwsCredentials, SystemTime), UpstreamError> {
    match (static_credentials, source) {
        (Some(s), _) => Ok((
            AwsCredentials {
                access_key_id: s.access_key_id.clone(),
                secret_access_key: s.secret_access_key.clone(),
                session_token: s.session_token.clone(),
            },
            SystemTime::now(),
        )),
        (None, Some(source)) => source.for_signing().await,
        (None, None) => Err(UpstreamError::AwsCredentials {
            reason: "the upstream URI names no keys and no credential source was set up",
            source: None,
        }),
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

/// The conversation id and payload of the server's first SASL reply.
fn sasl_reply(reply: &Document) -> Result<(Bson, Vec<u8>), UpstreamError> {
    let conversation = reply
        .get("conversationId")
        .cloned()
        .ok_or(UpstreamError::Auth(None))?;
    match reply.get("payload") {
        Some(Bson::Binary(b)) => Ok((conversation, b.bytes.clone())),
        _ => Err(UpstreamError::Auth(None)),
    }
}

#[cfg(test)]
#[path = "aws_login_tests.rs"]
mod tests;
