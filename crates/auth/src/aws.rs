//! MONGODB-AWS, server side (source/auth/auth.md, "MONGODB-AWS"): the two SASL messages the
//! client sends, the one the server answers with, the STS `GetCallerIdentity` request the server
//! rebuilds from them, and the ARN in STS's answer.
//!
//! Owns every check that can be made without STS: the client nonce is 32 bytes and prefixes the
//! server nonce; the channel-binding flag is `n`; the signature covers the MongoDB nonce and
//! flag headers (without them a request signed for one conversation could be replayed in
//! another) and nothing outside the MONGODB-AWS request's headers; every client value copied
//! into the STS request has exactly the shape a signer produces, so no CR/LF or other byte can
//! add or override a header (`aws_fields`); the request date is within the allowed
//! clock skew. The host and body are never the client's: the host is configured, the body fixed. It does no I/O: sending the
//! request to STS is the gateway's job. A signature can only be verified by STS, so nothing
//! here caches or short-cuts that step.

use std::time::{Duration, SystemTime};

use bson::{doc, spec::BinarySubtype, Binary, Document, RawBsonRef, RawDocument};
use rand::RngCore;

use crate::{aws_fields, AuthError};

/// The fixed body of every GetCallerIdentity request (auth.md, MONGODB-AWS step 4).
pub const STS_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// Largest difference between the client's X-Amz-Date and our clock, as AWS allows.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
const GS2_FLAG_NO_BINDING: i32 = 110; // 'n'

/// The server's half of a conversation, after the client's first message.
#[derive(Clone)]
pub struct AwsServerFirst {
    nonce: [u8; 64],
    host: String,
}

impl std::fmt::Debug for AwsServerFirst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsServerFirst")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// The request to send to STS.
#[derive(Clone, PartialEq, Eq)]
pub struct StsRequest {
    /// Headers in order, names lower-case; values may hold a session token (secret-ish).
    pub headers: Vec<(String, String)>,
    /// Always [`STS_BODY`].
    pub body: &'static str,
    /// The SigV4 signature (64 lower-case hex digits), unique to one signed request: what a
    /// replay of the same request would repeat.
    pub signature: String,
}

impl std::fmt::Debug for StsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("StsRequest")
            .field("headers", &names)
            .finish_non_exhaustive()
    }
}

fn binary_field<'a>(doc: &'a RawDocument, key: &'static str) -> Result<&'a [u8], AuthError> {
    match doc.get(key) {
        Ok(Some(RawBsonRef::Binary(b))) => Ok(b.bytes),
        _ => Err(AuthError::Malformed(key)),
    }
}

fn string_field<'a>(doc: &'a RawDocument, key: &'static str) -> Result<Option<&'a str>, AuthError> {
    match doc.get(key) {
        Ok(Some(RawBsonRef::String(s))) => Ok(Some(s)),
        Ok(None) => Ok(None),
        _ => Err(AuthError::Malformed(key)),
    }
}

/// Handles the client's first message `{r: <32 bytes>, p: 110}` and returns the server's
/// state and reply payload `{s: <64 bytes>, h: <host>}`. `host` comes from configuration,
/// never from the client.
pub fn server_first(
    client_first: &[u8],
    host: &str,
) -> Result<(AwsServerFirst, Vec<u8>), AuthError> {
    let doc = RawDocument::from_bytes(client_first).map_err(|_| AuthError::Malformed("payload"))?;
    let r = binary_field(doc, "r")?;
    if r.len() != 32 {
        return Err(AuthError::Malformed("r"));
    }
    match doc.get("p") {
        Ok(Some(RawBsonRef::Int32(GS2_FLAG_NO_BINDING))) => {}
        _ => return Err(AuthError::ChannelBindingNotSupported),
    }
    let mut nonce = [0u8; 64];
    nonce[..32].copy_from_slice(r);
    rand::thread_rng().fill_bytes(&mut nonce[32..]);
    let reply = doc! {
        "s": Binary { subtype: BinarySubtype::Generic, bytes: nonce.to_vec() },
        "h": host,
    };
    let bytes = bson::to_vec(&reply).map_err(|_| AuthError::Malformed("reply"))?;
    Ok((
        AwsServerFirst {
            nonce,
            host: host.to_string(),
        },
        bytes,
    ))
}

impl AwsServerFirst {
    /// Handles the client's final message `{a: Authorization, d: X-Amz-Date, t?: token}` and
    /// rebuilds the signed GetCallerIdentity request, after the local checks.
    pub fn sts_request(
        &self,
        client_final: &[u8],
        now: SystemTime,
    ) -> Result<StsRequest, AuthError> {
        let doc =
            RawDocument::from_bytes(client_final).map_err(|_| AuthError::Malformed("payload"))?;
        let authorization = string_field(doc, "a")?.ok_or(AuthError::Malformed("a"))?;
        let date = string_field(doc, "d")?.ok_or(AuthError::Malformed("d"))?;
        let token = string_field(doc, "t")?;
        checked_request(
            Signed {
                authorization,
                date,
                token,
            },
            &self.nonce,
            &self.host,
            now,
        )
    }

    /// The host handed to the client.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// The client-supplied parts of a signed GetCallerIdentity request.
struct Signed<'a> {
    authorization: &'a str,
    date: &'a str,
    token: Option<&'a str>,
}

/// Rebuilds the signed GetCallerIdentity request for STS at `host` with `nonce`, after the
/// local checks every client-supplied value gets.
fn checked_request(
    signed: Signed<'_>,
    nonce: &[u8; 64],
    host: &str,
    now: SystemTime,
) -> Result<StsRequest, AuthError> {
    let Signed {
        authorization,
        date,
        token,
    } = signed;
    {
        // Every value below is copied into the HTTP request sent to STS: each is checked
        // against the exact shape a SigV4 signer produces before anything else happens.
        let parsed = aws_fields::parse_authorization(authorization, token.is_some())?;
        aws_fields::check_date_shape(date)?;
        if let Some(t) = token {
            aws_fields::check_token(t)?;
        }
        // The credential scope's day is the request's day; a mismatch is not a signer's output.
        if parsed.scope_date != &date[..8] {
            return Err(AuthError::Malformed("a"));
        }
        // The host is signed; a scope for another region means it was signed for another host
        // (an endpoint in the same region is caught by STS, which sees our host header).
        if parsed.region != aws_fields::region_of_host(host) {
            return Err(AuthError::AuthenticationFailed);
        }
        check_date(date, now)?;
        let mut headers = vec![
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("content-length".to_string(), STS_BODY.len().to_string()),
            ("host".to_string(), host.to_string()),
            ("x-amz-date".to_string(), date.to_string()),
            ("authorization".to_string(), authorization.to_string()),
            ("x-mongodb-server-nonce".to_string(), base64_encode(nonce)),
            ("x-mongodb-gs2-cb-flag".to_string(), "n".to_string()),
        ];
        if let Some(t) = token {
            headers.push(("x-amz-security-token".to_string(), t.to_string()));
        }
        Ok(StsRequest {
            headers,
            body: STS_BODY,
            signature: parsed.signature.to_string(),
        })
    }
}

/// Longest `X-MongoMux-AWS-STS` header value accepted (a real one is under 4 KiB).
pub const MAX_HTTP_HEADER: usize = 16 * 1024;

/// The signed headers an HTTP client sends in `X-MongoMux-AWS-STS` (base64 of this as JSON):
/// the same request a MONGODB-AWS client signs, with a nonce the client chose.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct HttpSigned {
    #[serde(rename = "Authorization")]
    authorization: String,
    #[serde(rename = "X-Amz-Date")]
    date: String,
    #[serde(rename = "X-MongoDB-Server-Nonce")]
    nonce: String,
    #[serde(
        rename = "X-Amz-Security-Token",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    token: Option<String>,
}

/// Encodes the header value for a request signed with `nonce` (the client half of
/// [`http_sts_request`]).
pub(crate) fn http_header(
    authorization: String,
    date: String,
    nonce: &[u8; 64],
    token: Option<String>,
) -> String {
    use base64::Engine;
    let signed = HttpSigned {
        authorization,
        date,
        nonce: base64_encode(nonce),
        token,
    };
    let json = serde_json::to_vec(&signed).expect("strings serialize");
    base64::engine::general_purpose::STANDARD.encode(json)
}

/// Checks an `X-MongoMux-AWS-STS` header value (HTTP clients of the gateway's Data API) and
/// rebuilds the signed GetCallerIdentity request for STS at `host` (from configuration), with
/// the same checks as a MONGODB-AWS login. The nonce is the client's: the replay guard of the
/// caller, which refuses a signature seen before, is what makes each header single-use.
pub fn http_sts_request(value: &str, host: &str, now: SystemTime) -> Result<StsRequest, AuthError> {
    use base64::Engine;
    if value.len() > MAX_HTTP_HEADER {
        return Err(AuthError::Malformed("header"));
    }
    let json = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| AuthError::Malformed("header"))?;
    // A key given twice, an unknown key or a non-string value is refused by the parser.
    let signed: HttpSigned =
        serde_json::from_slice(&json).map_err(|_| AuthError::Malformed("header"))?;
    let nonce: [u8; 64] = base64::engine::general_purpose::STANDARD
        .decode(&signed.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or(AuthError::Malformed("nonce"))?;
    checked_request(
        Signed {
            authorization: &signed.authorization,
            date: &signed.date,
            token: signed.token.as_deref(),
        },
        &nonce,
        host,
        now,
    )
}

/// X-Amz-Date is `YYYYMMDD'T'HHMMSS'Z'`; it must be within [`MAX_CLOCK_SKEW`] of `now`.
fn check_date(date: &str, now: SystemTime) -> Result<(), AuthError> {
    let b = date.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(AuthError::Malformed("d"));
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &date[0..4],
        &date[4..6],
        &date[6..8],
        &date[9..11],
        &date[11..13],
        &date[13..15]
    );
    let when = humantime_rfc3339(&rfc3339).ok_or(AuthError::Malformed("d"))?;
    let skew = match now.duration_since(when) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_CLOCK_SKEW {
        return Err(AuthError::AuthenticationFailed);
    }
    Ok(())
}

/// Parses a UTC RFC 3339 time (second precision) without a date library.
fn humantime_rfc3339(s: &str) -> Option<SystemTime> {
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0, 4)?,
        n(5, 7)?,
        n(8, 10)?,
        n(11, 13)?,
        n(14, 16)?,
        n(17, 19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Extracts `<Arn>` from a GetCallerIdentity response body.
pub fn arn_from_response(xml: &str) -> Option<&str> {
    let start = xml.find("<Arn>")? + "<Arn>".len();
    let end = start + xml[start..].find("</Arn>")?;
    let arn = xml[start..end].trim();
    (!arn.is_empty()).then_some(arn)
}

/// Maps `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` to `arn:aws:iam::ACCOUNT:role/ROLE`,
/// the form users are registered under; other ARNs are returned unchanged. Role paths are not
/// part of an assumed-role ARN, so a role registered with a path is matched by its name.
pub fn principal_arn(arn: &str) -> String {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() == 6 && parts[2] == "sts" {
        if let Some(rest) = parts[5].strip_prefix("assumed-role/") {
            if let Some((role, _session)) = rest.split_once('/') {
                return format!("arn:{}:iam::{}:role/{}", parts[1], parts[4], role);
            }
        }
    }
    arn.to_string()
}

/// The reply document a server sends with its first message, for tests and callers that
/// build it by hand.
pub fn parse_server_first(payload: &[u8]) -> Option<Document> {
    bson::from_slice(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn client_first() -> Vec<u8> {
        let r = Binary {
            subtype: BinarySubtype::Generic,
            bytes: vec![7; 32],
        };
        rawdoc! { "r": r, "p": 110 }.into_bytes()
    }

    fn server() -> AwsServerFirst {
        let (s, reply) = server_first(&client_first(), "sts.amazonaws.com").unwrap();
        let d = parse_server_first(&reply).unwrap();
        assert_eq!(d.len(), 2, "only s and h: drivers reject other fields");
        assert_eq!(d.get_str("h").unwrap(), "sts.amazonaws.com");
        let s_bytes = &d.get_binary_generic("s").unwrap()[..];
        assert_eq!(s_bytes.len(), 64);
        assert_eq!(&s_bytes[..32], &[7; 32]);
        s
    }

    const GOOD_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE12345/20261129/us-east-1/sts/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-date;x-amz-security-token;x-mongodb-gs2-cb-flag;x-mongodb-server-nonce, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn now() -> SystemTime {
        humantime_rfc3339("2026-11-29T10:00:00Z").unwrap()
    }

    #[test]
    fn builds_the_sts_request() {
        let s = server();
        let fin =
            rawdoc! { "a": GOOD_AUTH, "d": "20261129T100500Z", "t": "SECRETTOKEN" }.into_bytes();
        let req = s.sts_request(&fin, now()).unwrap();
        let get = |k: &str| {
            req.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("host"), Some("sts.amazonaws.com"));
        assert_eq!(get("content-length"), Some("43"));
        assert_eq!(get("x-mongodb-gs2-cb-flag"), Some("n"));
        assert_eq!(get("x-amz-security-token"), Some("SECRETTOKEN"));
        assert_eq!(get("x-mongodb-server-nonce").unwrap().len(), 88);
        assert!(!format!("{req:?}").contains("SECRETTOKEN"));
    }

    #[test]
    fn refuses_unbound_signatures_skew_and_bad_nonces() {
        let s = server();
        let unbound = GOOD_AUTH.replace(";x-mongodb-gs2-cb-flag;x-mongodb-server-nonce", "");
        let fin = rawdoc! { "a": unbound, "d": "20261129T100000Z" }.into_bytes();
        assert!(s.sts_request(&fin, now()).is_err());
        let no_token_signed = GOOD_AUTH.replace("x-amz-security-token;", "");
        let fin =
            rawdoc! { "a": no_token_signed, "d": "20261129T100000Z", "t": "tok" }.into_bytes();
        assert!(s.sts_request(&fin, now()).is_err());
        let fin = rawdoc! { "a": GOOD_AUTH, "d": "20261129T093000Z", "t": "x" }.into_bytes();
        assert!(s.sts_request(&fin, now()).is_err(), "30 minutes of skew");
        let fin = rawdoc! { "a": GOOD_AUTH, "d": "garbage", "t": "x" }.into_bytes();
        assert!(s.sts_request(&fin, now()).is_err());
        let fin = rawdoc! { "a": GOOD_AUTH, "d": "20261130T000000Z", "t": "x" }.into_bytes();
        assert!(
            s.sts_request(&fin, now()).is_err(),
            "scope day differs from X-Amz-Date"
        );
    }

    #[test]
    fn refuses_injection_in_every_client_value() {
        let s = server();
        let inject = "\r\nx-mongodb-server-nonce: AAAA";
        let cases = [
            rawdoc! { "a": format!("{GOOD_AUTH}{inject}"), "d": "20261129T100000Z", "t": "tok" },
            rawdoc! { "a": GOOD_AUTH, "d": format!("20261129T100000Z{inject}"), "t": "tok" },
            rawdoc! { "a": GOOD_AUTH, "d": "20261129T100000Z", "t": format!("tok{inject}") },
            rawdoc! { "a": GOOD_AUTH, "d": "20261129T100000Z", "t": 7 },
        ];
        for fin in cases {
            assert!(s.sts_request(fin.as_bytes(), now()).is_err(), "{fin:?}");
        }
        let fin = rawdoc! { "a": GOOD_AUTH, "d": "20261129T100000Z", "t": "tok" };
        assert!(s.sts_request(fin.as_bytes(), now()).is_ok());
        let short = rawdoc! { "r": Binary { subtype: BinarySubtype::Generic, bytes: vec![1; 31] }, "p": 110 };
        assert!(server_first(short.as_bytes(), "h").is_err());
        let bound = rawdoc! { "r": Binary { subtype: BinarySubtype::Generic, bytes: vec![1; 32] }, "p": 121 };
        assert!(server_first(bound.as_bytes(), "h").is_err());
        assert!(server_first(b"not bson", "h").is_err());
    }

    #[test]
    fn arns() {
        let xml = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:sts::123456789012:assumed-role/fn-role/sess-1</Arn></GetCallerIdentityResult></GetCallerIdentityResponse>";
        let arn = arn_from_response(xml).unwrap();
        assert_eq!(principal_arn(arn), "arn:aws:iam::123456789012:role/fn-role");
        assert_eq!(
            principal_arn("arn:aws:iam::123456789012:user/alice"),
            "arn:aws:iam::123456789012:user/alice"
        );
        assert_eq!(arn_from_response("<x/>"), None);
    }

    #[test]
    fn date_parsing() {
        assert_eq!(
            humantime_rfc3339("1970-01-02T00:00:00Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400))
        );
        assert_eq!(humantime_rfc3339("2026-13-01T00:00:00Z"), None);
    }
}
