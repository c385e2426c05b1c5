//! Strict validation of every MONGODB-AWS value a client supplies that ends up in the request
//! the server sends to STS: the `Authorization` header (`a`), `X-Amz-Date` (`d`) and the session
//! token (`t`).
//!
//! These values are copied into an HTTP request, so anything beyond the exact shapes a SigV4
//! signer produces is refused: a CR or LF would let a client add or override headers (for
//! example a second `X-MongoDB-Server-Nonce` carrying another conversation's nonce, which turns
//! a captured request of another principal into a login as that principal). The grammar is
//! deliberately narrower than what HTTP allows; it is what every MongoDB driver sends
//! (source/auth/auth.md, "MONGODB-AWS"):
//!
//! `AWS4-HMAC-SHA256 Credential=<key id>/<yyyymmdd>/<region>/sts/aws4_request,
//!  SignedHeaders=<h1>;<h2>;..., Signature=<64 lower-case hex>`
//!
//! No crate on crates.io parses the server side of this header without pulling in an AWS SDK,
//! and the grammar is small, so it is parsed here, strictly, with a test for each refused shape.

use crate::AuthError;

/// Headers the MONGODB-AWS signed request consists of; a signature may cover only these.
pub const ALLOWED_SIGNED_HEADERS: [&str; 7] = [
    "content-length",
    "content-type",
    "host",
    "x-amz-date",
    "x-amz-security-token",
    "x-mongodb-gs2-cb-flag",
    "x-mongodb-server-nonce",
];

/// Headers the signature must cover: without the nonce and flag a request signed for one
/// conversation could be replayed in another.
const REQUIRED_SIGNED_HEADERS: [&str; 4] = [
    "host",
    "x-amz-date",
    "x-mongodb-gs2-cb-flag",
    "x-mongodb-server-nonce",
];

/// Longest Authorization header accepted (a real one is about 300 bytes).
const MAX_AUTHORIZATION: usize = 1024;
/// Longest session token accepted (AWS documents no limit; real ones are under 2 KiB).
const MAX_TOKEN: usize = 8192;

/// The parts of a validated Authorization header.
#[derive(Debug, PartialEq, Eq)]
pub struct Authorization<'a> {
    /// `yyyymmdd` of the credential scope.
    pub scope_date: &'a str,
    /// The region of the credential scope.
    pub region: &'a str,
    /// The headers the signature covers, in the order given (sorted, no duplicates).
    pub signed_headers: Vec<&'a str>,
    /// The signature, 64 lower-case hex digits.
    pub signature: &'a str,
}

fn refuse(_why: &'static str) -> AuthError {
    // The reason is not sent to the client: it would tell a prober which check it tripped.
    AuthError::Malformed("a")
}

/// Parses and checks the Authorization header; `has_token` says whether a session token is
/// sent, which must then be signed (and must not be signed otherwise).
pub fn parse_authorization(a: &str, has_token: bool) -> Result<Authorization<'_>, AuthError> {
    if a.len() > MAX_AUTHORIZATION || !a.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(refuse("characters"));
    }
    let rest = a
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or(refuse("algorithm"))?;
    let mut parts = rest.split(',').map(|p| p.trim_start_matches(' '));
    let credential = parts
        .next()
        .and_then(|p| p.strip_prefix("Credential="))
        .ok_or(refuse("credential"))?;
    let signed = parts
        .next()
        .and_then(|p| p.strip_prefix("SignedHeaders="))
        .ok_or(refuse("signed headers"))?;
    let signature = parts
        .next()
        .and_then(|p| p.strip_prefix("Signature="))
        .ok_or(refuse("signature"))?;
    if parts.next().is_some() {
        return Err(refuse("extra parts"));
    }
    let (scope_date, region) = check_credential(credential)?;
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(refuse("signature"));
    }
    let signed_headers = check_signed_headers(signed, has_token)?;
    Ok(Authorization {
        scope_date,
        region,
        signed_headers,
        signature,
    })
}

/// `<key id>/<yyyymmdd>/<region>/sts/aws4_request`; returns the date and region.
fn check_credential(c: &str) -> Result<(&str, &str), AuthError> {
    let parts: Vec<&str> = c.split('/').collect();
    let [key, date, region, "sts", "aws4_request"] = parts[..] else {
        return Err(refuse("credential scope"));
    };
    let key_ok = (16..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric());
    let date_ok = date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit());
    let region_ok = (1..=64).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if key_ok && date_ok && region_ok {
        Ok((date, region))
    } else {
        Err(refuse("credential scope"))
    }
}

fn check_signed_headers(s: &str, has_token: bool) -> Result<Vec<&str>, AuthError> {
    let names: Vec<&str> = s.split(';').collect();
    if names.iter().any(|n| !ALLOWED_SIGNED_HEADERS.contains(n)) {
        return Err(refuse("a header outside the MONGODB-AWS request"));
    }
    // SigV4 lists signed headers sorted; a repeated or unsorted list is not a signer's output.
    if names.windows(2).any(|w| w[0] >= w[1]) {
        return Err(refuse("signed headers not sorted or repeated"));
    }
    if !REQUIRED_SIGNED_HEADERS.iter().all(|h| names.contains(h)) {
        return Err(AuthError::AuthenticationFailed);
    }
    if names.contains(&"x-amz-security-token") != has_token {
        return Err(AuthError::AuthenticationFailed);
    }
    Ok(names)
}

/// The region a driver signs for when it is handed `host` (auth.md, MONGODB-AWS: the global
/// endpoint is us-east-1, otherwise the host's second label, as in `sts.eu-west-1.amazonaws.com`).
/// A scope for any other region was signed for another host.
pub fn region_of_host(host: &str) -> &str {
    if host == "sts.amazonaws.com" {
        return "us-east-1";
    }
    match host.split('.').nth(1) {
        Some(region) if !region.is_empty() => region,
        _ => "us-east-1",
    }
}

/// `X-Amz-Date`: exactly `yyyymmddThhmmssZ`, digits where digits belong.
pub fn check_date_shape(d: &str) -> Result<(), AuthError> {
    let b = d.as_bytes();
    let ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    ok.then_some(()).ok_or(AuthError::Malformed("d"))
}

/// A session token: base64 (standard or URL-safe alphabet), bounded.
pub fn check_token(t: &str) -> Result<(), AuthError> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TOKEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'));
    ok.then_some(()).ok_or(AuthError::Malformed("t"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE12345/20261129/us-east-1/sts/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-date;x-mongodb-gs2-cb-flag;x-mongodb-server-nonce, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_what_signers_produce() {
        let a = parse_authorization(GOOD, false).unwrap();
        assert_eq!(a.scope_date, "20261129");
        assert_eq!(a.region, "us-east-1");
        assert_eq!(region_of_host("sts.amazonaws.com"), "us-east-1");
        assert_eq!(region_of_host("sts.eu-west-1.amazonaws.com"), "eu-west-1");
        assert_eq!(region_of_host("localhost"), "us-east-1");
        assert_eq!(a.signed_headers.len(), 6);
        let with_token = GOOD.replace("x-amz-date;", "x-amz-date;x-amz-security-token;");
        assert!(parse_authorization(&with_token, true).is_ok());
        // Some signers put no space after the commas.
        assert!(parse_authorization(&GOOD.replace(", ", ","), false).is_ok());
        // A signer that does not sign content-length/content-type is still within the set.
        let minimal = GOOD.replace("content-length;content-type;", "");
        assert!(parse_authorization(&minimal, false).is_ok());
    }

    #[test]
    fn refuses_control_characters_anywhere() {
        for bad in ["\r\n", "\n", "\r", "\0", "\t", "\x7f", "é"] {
            let injected = format!("{GOOD}{bad}x-mongodb-server-nonce: AAAA");
            assert!(parse_authorization(&injected, false).is_err(), "{bad:?}");
            let inside = GOOD.replace("us-east-1", &format!("us-east-1{bad}"));
            assert!(parse_authorization(&inside, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_headers_outside_the_set() {
        for extra in [
            "x-forwarded-for",
            "authorization",
            "x-amz-content-sha256",
            "HOST",
        ] {
            let s = GOOD.replace("host;", &format!("host;{extra};"));
            assert!(parse_authorization(&s, false).is_err(), "{extra}");
        }
        let repeated = GOOD.replace("host;", "host;host;");
        assert!(parse_authorization(&repeated, false).is_err());
        let unsorted = GOOD.replace("content-length;content-type", "content-type;content-length");
        assert!(parse_authorization(&unsorted, false).is_err());
    }

    #[test]
    fn refuses_unbound_or_mismatched_signatures() {
        let no_nonce = GOOD.replace(";x-mongodb-server-nonce", "");
        assert!(parse_authorization(&no_nonce, false).is_err());
        let no_flag = GOOD.replace("x-mongodb-gs2-cb-flag;", "");
        assert!(parse_authorization(&no_flag, false).is_err());
        assert!(
            parse_authorization(GOOD, true).is_err(),
            "token sent but not signed"
        );
        let signed_token = GOOD.replace("x-amz-date;", "x-amz-date;x-amz-security-token;");
        assert!(
            parse_authorization(&signed_token, false).is_err(),
            "token signed but not sent"
        );
    }

    #[test]
    fn refuses_malformed_structure() {
        let cases = [
            GOOD.replace("AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA1 "),
            GOOD.replace("/sts/", "/s3/"),
            GOOD.replace("/aws4_request", "/aws4_request/x"),
            GOOD.replace("20261129", "2026112"),
            GOOD.replace("AKIDEXAMPLE12345", "AKID+EXAMPLE1234"),
            GOOD.replace("Signature=0", "Signature=G"),
            GOOD.replace("Signature=0", "Signature=00"),
            format!("{GOOD}, Extra=1"),
            GOOD.replace("SignedHeaders=", "Signed="),
            "x".repeat(2000),
            String::new(),
        ];
        for c in cases {
            assert!(parse_authorization(&c, false).is_err(), "{c:?}");
        }
    }

    #[test]
    fn dates_and_tokens() {
        assert!(check_date_shape("20261129T100000Z").is_ok());
        for bad in [
            "20261129T10000Z",
            "2026+129T100000Z",
            "20261129T1000\r\nZ",
            "20261129 100000Z",
        ] {
            assert!(check_date_shape(bad).is_err(), "{bad:?}");
        }
        assert!(check_token("FQoGZXIvYXdzEJr//////////wEaDG+b/x=").is_ok());
        for bad in ["", "tok\r\nx-evil: 1", "tok en", "tok\0"] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
        assert!(check_token(&"a".repeat(MAX_TOKEN + 1)).is_err());
    }
}
