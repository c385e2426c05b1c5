//! MONGODB-AWS, client side (source/auth/auth.md, "MONGODB-AWS", "Conversation"): the two
//! payloads the gateway sends when it logs in to its own upstream with AWS credentials, and the
//! checks on the one payload the server answers with.
//!
//! Owns: the client nonce (32 random bytes), the validation of the server's reply (the server
//! nonce is 64 bytes and extends ours; the STS host is a plausible FQDN: 1 to 255 bytes, no empty
//! label, nothing but letters, digits, `-`, `_` and `.`), the region derived from that host, and
//! the SigV4 signature of the `GetCallerIdentity` request, made by the maintained `aws-sigv4`
//! crate (never by hand: the signing process has too many details to get subtly wrong).
//!
//! Never: any I/O (credentials are handed in, fetching and caching them is the gateway's job),
//! and no secret in an error or `Debug` output: the secret key and session token travel as
//! [`Secret`]s and every [`AuthError`] built here names a rule, never a value.

use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bson::{rawdoc, spec::BinarySubtype, Binary, RawBsonRef, RawDocument};
use rand::RngCore;

use crate::aws::STS_BODY;
use crate::{aws_fields, AuthError, Secret};

/// `p`: the GS2 channel-binding flag `n` (drivers must not advertise channel binding).
const GS2_FLAG_NO_BINDING: i32 = 110;
/// Longest STS host accepted (RFC 1035, as the auth spec requires).
const MAX_HOST_LEN: usize = 255;

/// AWS credentials to sign with: an access key id and secret key, and a session token when
/// the credentials are temporary.
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    /// The access key id (not secret: it is sent in the Authorization header).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// The session token of temporary credentials.
    pub session_token: Option<Secret>,
}

/// A client conversation after its first message: the nonce it sent.
pub struct AwsClient {
    nonce: [u8; 32],
}

impl std::fmt::Debug for AwsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsClient").finish_non_exhaustive()
    }
}

/// What the server's first reply said, checked: the full nonce and the STS host, with the
/// region the request is signed for.
#[derive(Clone)]
pub struct AwsChallenge {
    nonce: [u8; 64],
    host: String,
    region: String,
}

impl std::fmt::Debug for AwsChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsChallenge")
            .field("host", &self.host)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl AwsClient {
    /// Starts a conversation with a fresh random nonce; returns the client and the
    /// `saslStart` payload `{r: <32 bytes>, p: 110}`.
    pub fn start() -> (AwsClient, Vec<u8>) {
        let mut nonce = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut nonce);
        Self::with_nonce(nonce)
    }

    /// Starts a conversation with a given nonce (tests only need this to be repeatable).
    pub fn with_nonce(nonce: [u8; 32]) -> (AwsClient, Vec<u8>) {
        let payload = rawdoc! {
            "r": Binary { subtype: BinarySubtype::Generic, bytes: nonce.to_vec() },
            "p": GS2_FLAG_NO_BINDING,
        };
        (AwsClient { nonce }, payload.into_bytes())
    }

    /// Checks the server's reply `{s: <64 bytes>, h: <host>}`: the nonce must be 64 bytes and
    /// start with ours, the host must be valid ([`sts_region`]).
    pub fn challenge(&self, server_first: &[u8]) -> Result<AwsChallenge, AuthError> {
        let doc = RawDocument::from_bytes(server_first)
            .map_err(|_| AuthError::AwsServerReply("payload is not BSON"))?;
        let s = match doc.get("s") {
            Ok(Some(RawBsonRef::Binary(b))) => b.bytes,
            _ => return Err(AuthError::AwsServerReply("no server nonce")),
        };
        let nonce: [u8; 64] = s
            .try_into()
            .map_err(|_| AuthError::AwsServerReply("server nonce is not 64 bytes"))?;
        if nonce[..32] != self.nonce {
            return Err(AuthError::AwsServerReply(
                "server nonce does not start with the client nonce",
            ));
        }
        let host = match doc.get("h") {
            Ok(Some(RawBsonRef::String(h))) => h,
            _ => return Err(AuthError::AwsServerReply("no STS host")),
        };
        let region = sts_region(host)?.to_string();
        Ok(AwsChallenge {
            nonce,
            host: host.to_string(),
            region,
        })
    }
}

/// The region a request for STS at `host` is signed for (auth.md, "Region Calculation"), after
/// checking the host: 1 to 255 bytes, no empty label (so no leading or trailing period), and
/// only the bytes a DNS name holds. `sts.amazonaws.com` and single-label hosts give
/// `us-east-1`, any other host its second label.
pub fn sts_region(host: &str) -> Result<&str, AuthError> {
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return Err(AuthError::AwsServerReply(
            "STS host is empty or longer than 255 bytes",
        ));
    }
    if host.split('.').any(str::is_empty) {
        return Err(AuthError::AwsServerReply("STS host has an empty label"));
    }
    let dns_bytes = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !host.bytes().all(dns_bytes) {
        return Err(AuthError::AwsServerReply(
            "STS host holds bytes no DNS name holds",
        ));
    }
    // The server side derives the region the same way; one function keeps the two in step.
    Ok(aws_fields::region_of_host(host))
}

impl AwsChallenge {
    /// A request for the gateway's HTTP Data API, which has no conversation: a fresh random
    /// 64-byte nonce, and the STS host the gateway verifies with (its `aws_sts_host`).
    pub fn for_http(host: &str) -> Result<AwsChallenge, AuthError> {
        let mut nonce = [0u8; 64];
        rand::thread_rng().fill_bytes(&mut nonce);
        let region = sts_region(host)?.to_string();
        Ok(AwsChallenge {
            nonce,
            host: host.to_string(),
            region,
        })
    }

    /// The `X-MongoMux-AWS-STS` header value of an HTTP Data API request: the signed
    /// GetCallerIdentity headers as base64 JSON. Sign a new one per request: the gateway
    /// accepts each signature once.
    pub fn http_header(
        &self,
        credentials: &AwsCredentials,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        let (authorization, date) = self.sign(credentials, now)?;
        let token = credentials
            .session_token
            .as_ref()
            .map(|t| t.expose().to_string());
        Ok(crate::aws::http_header(
            authorization,
            date,
            &self.nonce,
            token,
        ))
    }

    /// The STS host the server named.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The region derived from the host.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Signs `POST /` with body `Action=GetCallerIdentity&Version=2011-06-15` for this host at
    /// `now` and returns the `saslContinue` payload `{a: Authorization, d: X-Amz-Date, t?:
    /// token}`. The signed headers are Content-Type, Content-Length, Host, X-Amz-Date,
    /// X-MongoDB-Server-Nonce (base64 of the 64-byte nonce), X-MongoDB-GS2-CB-Flag (`n`) and,
    /// with temporary credentials, X-Amz-Security-Token.
    pub fn client_final(
        &self,
        credentials: &AwsCredentials,
        now: SystemTime,
    ) -> Result<Vec<u8>, AuthError> {
        let (authorization, date) = self.sign(credentials, now)?;
        let mut payload = rawdoc! { "a": authorization, "d": date };
        if let Some(token) = &credentials.session_token {
            payload.append("t", token.expose());
        }
        Ok(payload.into_bytes())
    }

    /// The Authorization and X-Amz-Date headers of the signed request.
    fn sign(
        &self,
        credentials: &AwsCredentials,
        now: SystemTime,
    ) -> Result<(String, String), AuthError> {
        let content_length = STS_BODY.len().to_string();
        let nonce = base64_encode(&self.nonce);
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", content_length.as_str()),
            ("host", self.host.as_str()),
            ("x-mongodb-server-nonce", nonce.as_str()),
            ("x-mongodb-gs2-cb-flag", "n"),
        ];
        let identity = aws_credential_types::Credentials::new(
            credentials.access_key_id.clone(),
            credentials.secret_access_key.expose(),
            credentials
                .session_token
                .as_ref()
                .map(|t| t.expose().to_string()),
            None,
            "mongomux",
        )
        .into();
        // The defaults sign the session token into the request (SessionTokenMode::Include) and
        // add no payload-hash header, which the MONGODB-AWS request does not have.
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("sts")
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| AuthError::AwsSigning("incomplete signing parameters"))?
            .into();
        let request = SignableRequest::new(
            "POST",
            "/",
            headers.into_iter(),
            SignableBody::Bytes(STS_BODY.as_bytes()),
        )
        .map_err(|_| AuthError::AwsSigning("request not signable"))?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|_| AuthError::AwsSigning("signing failed"))?
            .into_parts();
        let header = |name: &str| {
            instructions
                .headers()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
                .ok_or(AuthError::AwsSigning(
                    "signer produced no Authorization or date",
                ))
        };
        Ok((header("authorization")?, header("x-amz-date")?))
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
#[path = "aws_client_tests.rs"]
mod tests;
