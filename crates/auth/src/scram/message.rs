//! The SCRAM message grammar of RFC 5802 §7, shared by the client and server
//! sides: parsing the four messages, escaping user names, and building the
//! AuthMessage both sides sign.
//!
//! Everything here is a pure function over untrusted bytes. It must never
//! panic, never allocate more than a small multiple of its (bounded) input,
//! and never put input bytes into an error: errors name the field that was
//! wrong with a static string.
//!
//! The parsers are strict where the RFC or MongoDB require it (attribute
//! order, nonce alphabet, base64, the GS2 header) and lenient where the RFC
//! asks for forward compatibility: unknown optional extensions after the
//! mandatory attributes are ignored (RFC 5802 §5.1 "extensions").

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::AuthError;

/// Longest SCRAM message accepted. Real messages are a few hundred bytes;
/// the cap bounds the work (UTF-8 checks, HMAC over AuthMessage) that a
/// client can make us do before it has proved anything.
pub(crate) const MAX_MESSAGE_LEN: usize = 16 * 1024;

pub(crate) fn encode_b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Decodes the base64 of RFC 5802 §7 (standard alphabet, padded).
pub(crate) fn decode_b64(s: &str, what: &'static str) -> Result<Vec<u8>, AuthError> {
    BASE64.decode(s).map_err(|_| AuthError::Malformed(what))
}

/// Checks the size bound and UTF-8 (RFC 5802 §7: messages are UTF-8).
pub(crate) fn as_text<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, AuthError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(AuthError::Malformed(what));
    }
    std::str::from_utf8(bytes).map_err(|_| AuthError::Malformed(what))
}

/// Escapes a user name for the `n=` attribute: `,` becomes `=2C` and `=`
/// becomes `=3D` (RFC 5802 §5.1 "n"). No SASLprep (auth.md).
pub(crate) fn escape_username(username: &str) -> Cow<'_, str> {
    if !username.contains([',', '=']) {
        return Cow::Borrowed(username);
    }
    let mut out = String::with_capacity(username.len() + 8);
    for c in username.chars() {
        match c {
            ',' => out.push_str("=2C"),
            '=' => out.push_str("=3D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Reverses [`escape_username`]. Any `=` not starting `=2C` or `=3D` is
/// invalid (RFC 5802 §5.1: the server MUST fail), and a literal `,` cannot
/// occur because the caller split on commas.
pub(crate) fn unescape_username(escaped: &str) -> Result<String, AuthError> {
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(pos) = rest.find('=') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if after.starts_with("=2C") {
            out.push(',');
        } else if after.starts_with("=3D") {
            out.push('=');
        } else {
            return Err(AuthError::Malformed("user name has an invalid '=' escape"));
        }
        rest = &after[3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// RFC 5802 §7 "printable": ASCII 0x21..=0x7E except `,`. A nonce must be
/// non-empty and made of these.
pub(crate) fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Takes the value of a `k=value` attribute, failing if the key differs.
fn attribute<'a>(part: Option<&'a str>, key: u8, what: &'static str) -> Result<&'a str, AuthError> {
    let part = part.ok_or(AuthError::Malformed(what))?;
    match part.as_bytes() {
        [k, b'=', ..] if *k == key => Ok(&part[2..]),
        _ => Err(AuthError::Malformed(what)),
    }
}

/// Optional extensions must still be attributes: `ALPHA "=" value`.
fn check_extensions<'a>(
    parts: impl Iterator<Item = &'a str>,
    what: &'static str,
) -> Result<(), AuthError> {
    for part in parts {
        match part.as_bytes() {
            [k, b'=', ..] if k.is_ascii_alphabetic() => {}
            _ => return Err(AuthError::Malformed(what)),
        }
    }
    Ok(())
}

/// Rejects a leading `m=` (RFC 5802 §5.1: a mandatory extension we do not
/// understand MUST fail the authentication).
fn reject_mandatory_extension(first: Option<&str>) -> Result<(), AuthError> {
    match first {
        Some(p) if p.starts_with("m=") => Err(AuthError::Unsupported("mandatory extension (m=)")),
        _ => Ok(()),
    }
}

/// Parses an iteration count: decimal digits only (no sign, as `u32::parse`
/// would allow), no overflow, not zero (RFC 5802 §7 "posit-number").
fn parse_iterations(s: &str) -> Result<u32, AuthError> {
    const WHAT: &str = "server-first: invalid iteration count (i=)";
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::Malformed(WHAT));
    }
    match s.parse::<u32>() {
        Ok(0) | Err(_) => Err(AuthError::Malformed(WHAT)),
        Ok(n) => Ok(n),
    }
}

/// client-first-message (RFC 5802 §7), as seen by the server.
#[derive(Debug)]
pub(crate) struct ClientFirst<'a> {
    /// "n,," or "y,,": echoed back, base64'd, in client-final's `c=`.
    pub(crate) gs2_header: &'a str,
    /// client-first-message-bare: the first part of AuthMessage.
    pub(crate) bare: &'a str,
    /// The user name with `=2C`/`=3D` un-escaped.
    pub(crate) username: String,
    pub(crate) nonce: &'a str,
}

/// Parses `gs2-header client-first-message-bare`.
///
/// Only the GS2 headers `n,,` (client does not support channel binding) and
/// `y,,` (client does, but thinks we do not; RFC 5802 §6) are accepted:
/// `p=` asks for channel binding, which MongoDB does not do, and a non-empty
/// authzid (`a=`) is not supported.
pub(crate) fn parse_client_first(msg: &str) -> Result<ClientFirst<'_>, AuthError> {
    let (flag, rest) = msg
        .split_once(',')
        .ok_or(AuthError::Malformed("client-first: missing GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(AuthError::ChannelBindingNotSupported),
        _ => {
            return Err(AuthError::Malformed(
                "client-first: invalid GS2 channel-binding flag",
            ))
        }
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(AuthError::Malformed("client-first: missing GS2 header"))?;
    if !authzid.is_empty() {
        return Err(if authzid.starts_with("a=") {
            AuthError::Unsupported("authorization identity (a=)")
        } else {
            AuthError::Malformed("client-first: invalid GS2 header")
        });
    }
    let gs2_header = &msg[..msg.len() - bare.len()];

    let mut parts = bare.split(',');
    let first = parts.next();
    reject_mandatory_extension(first)?;
    let escaped = attribute(first, b'n', "client-first: missing user name (n=)")?;
    let username = unescape_username(escaped)?;
    if username.is_empty() {
        return Err(AuthError::Malformed("client-first: empty user name"));
    }
    let nonce = attribute(parts.next(), b'r', "client-first: missing nonce (r=)")?;
    if !is_valid_nonce(nonce) {
        return Err(AuthError::Malformed("client-first: invalid nonce"));
    }
    check_extensions(parts, "client-first: invalid extension")?;
    Ok(ClientFirst {
        gs2_header,
        bare,
        username,
        nonce,
    })
}

/// server-first-message (RFC 5802 §7), as seen by the client.
#[derive(Debug)]
pub(crate) struct ServerFirst<'a> {
    /// The combined nonce: client nonce followed by the server's part.
    pub(crate) nonce: &'a str,
    pub(crate) salt: Vec<u8>,
    pub(crate) iterations: u32,
}

/// Parses `[reserved-mext ","] nonce "," salt "," iteration-count ["," extensions]`.
pub(crate) fn parse_server_first(msg: &str) -> Result<ServerFirst<'_>, AuthError> {
    let mut parts = msg.split(',');
    let first = parts.next();
    reject_mandatory_extension(first)?;
    let nonce = attribute(first, b'r', "server-first: missing nonce (r=)")?;
    if !is_valid_nonce(nonce) {
        return Err(AuthError::Malformed("server-first: invalid nonce"));
    }
    let salt_b64 = attribute(parts.next(), b's', "server-first: missing salt (s=)")?;
    let salt = decode_b64(salt_b64, "server-first: salt is not base64")?;
    if salt.is_empty() {
        return Err(AuthError::Malformed("server-first: empty salt"));
    }
    let iterations = parse_iterations(attribute(
        parts.next(),
        b'i',
        "server-first: missing iteration count (i=)",
    )?)?;
    check_extensions(parts, "server-first: invalid extension")?;
    Ok(ServerFirst {
        nonce,
        salt,
        iterations,
    })
}

/// client-final-message (RFC 5802 §7), as seen by the server.
#[derive(Debug)]
pub(crate) struct ClientFinal<'a> {
    /// Decoded `c=`: must equal the GS2 header of client-first, since there
    /// is no channel-binding data.
    pub(crate) channel_binding: Vec<u8>,
    pub(crate) nonce: &'a str,
    /// client-final-message-without-proof: the last part of AuthMessage.
    pub(crate) without_proof: &'a str,
    pub(crate) proof: Vec<u8>,
}

/// Parses `channel-binding "," nonce ["," extensions] "," proof`.
pub(crate) fn parse_client_final(msg: &str) -> Result<ClientFinal<'_>, AuthError> {
    // The proof is always the last attribute, and base64 has no commas, so
    // the last comma splits off exactly the part AuthMessage excludes.
    let (without_proof, proof_part) = msg
        .rsplit_once(',')
        .ok_or(AuthError::Malformed("client-final: missing proof (p=)"))?;
    let proof_b64 = attribute(Some(proof_part), b'p', "client-final: missing proof (p=)")?;
    let proof = decode_b64(proof_b64, "client-final: proof is not base64")?;
    if proof.is_empty() {
        return Err(AuthError::Malformed("client-final: empty proof"));
    }

    let mut parts = without_proof.split(',');
    let cb_b64 = attribute(
        parts.next(),
        b'c',
        "client-final: missing channel binding (c=)",
    )?;
    let channel_binding = decode_b64(cb_b64, "client-final: channel binding is not base64")?;
    let nonce = attribute(parts.next(), b'r', "client-final: missing nonce (r=)")?;
    check_extensions(parts, "client-final: invalid extension")?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

/// server-final-message (RFC 5802 §7), as seen by the client.
#[derive(Debug)]
pub(crate) enum ServerFinal {
    /// `v=`: the ServerSignature.
    Verifier(Vec<u8>),
    /// `e=`: the server refused; already sanitised.
    Error(AuthError),
}

/// Parses `(server-error / verifier) ["," extensions]`.
pub(crate) fn parse_server_final(msg: &str) -> Result<ServerFinal, AuthError> {
    let mut parts = msg.split(',');
    let first = parts.next().unwrap_or_default();
    let result = if let Some(v) = first.strip_prefix("v=") {
        ServerFinal::Verifier(decode_b64(v, "server-final: verifier is not base64")?)
    } else if let Some(e) = first.strip_prefix("e=") {
        ServerFinal::Error(AuthError::server_rejected(e))
    } else {
        return Err(AuthError::Malformed("server-final: expected v= or e="));
    };
    check_extensions(parts, "server-final: invalid extension")?;
    Ok(result)
}

/// AuthMessage = client-first-message-bare "," server-first-message ","
/// client-final-message-without-proof (RFC 5802 §3).
pub(crate) fn auth_message(
    client_first_bare: &str,
    server_first: &str,
    without_proof: &str,
) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(client_first_bare.len() + server_first.len() + without_proof.len() + 2);
    m.extend_from_slice(client_first_bare.as_bytes());
    m.push(b',');
    m.extend_from_slice(server_first.as_bytes());
    m.push(b',');
    m.extend_from_slice(without_proof.as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which error a malformed input must produce.
    type Check = fn(&AuthError) -> bool;

    #[test]
    fn username_escaping_round_trips() {
        assert_eq!(escape_username("user"), "user");
        assert_eq!(escape_username("a,b=c"), "a=2Cb=3Dc");
        assert_eq!(escape_username("=,="), "=3D=2C=3D");
        for name in ["user", "a,b=c", "=,=", "ü,=x", ""] {
            assert_eq!(unescape_username(&escape_username(name)).unwrap(), name);
        }
    }

    #[test]
    fn bad_escapes_are_rejected() {
        for bad in ["a=", "a=2", "a=2c", "a=3d", "=", "a=41b", "x=2"] {
            assert!(
                matches!(unescape_username(bad), Err(AuthError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn nonce_alphabet() {
        assert!(is_valid_nonce("fyko+d2lbbFgONRv9qkxdawL"));
        assert!(is_valid_nonce("%hvY)$k0~!"));
        for bad in ["", "a,b", "a b", "a\u{7f}", "é", "a\tb"] {
            assert!(!is_valid_nonce(bad), "{bad:?}");
        }
    }

    #[test]
    fn iterations_are_strict_digits() {
        assert_eq!(parse_iterations("4096").unwrap(), 4096);
        assert_eq!(parse_iterations("004096").unwrap(), 4096);
        for bad in ["", "+4096", "-1", "0", "4096 ", "0x10", "99999999999"] {
            assert!(parse_iterations(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn client_first_accepts_n_and_y_headers() {
        let m = parse_client_first("n,,n=a=2Cb,r=abc").unwrap();
        assert_eq!(m.gs2_header, "n,,");
        assert_eq!(m.bare, "n=a=2Cb,r=abc");
        assert_eq!(m.username, "a,b");
        assert_eq!(m.nonce, "abc");
        let m = parse_client_first("y,,n=u,r=abc,x=ext").unwrap();
        assert_eq!(m.gs2_header, "y,,");
        assert_eq!(m.bare, "n=u,r=abc,x=ext");
    }

    #[test]
    fn client_first_rejections() {
        use AuthError::*;
        let cases: &[(&str, Check)] = &[
            ("p=tls-unique,,n=u,r=abc", |e| {
                matches!(e, ChannelBindingNotSupported)
            }),
            ("p=,,n=u,r=abc", |e| matches!(e, ChannelBindingNotSupported)),
            ("n,a=admin,n=u,r=abc", |e| matches!(e, Unsupported(_))),
            ("n,,m=ext,n=u,r=abc", |e| matches!(e, Unsupported(_))),
            ("x,,n=u,r=abc", |e| matches!(e, Malformed(_))),
            ("N,,n=u,r=abc", |e| matches!(e, Malformed(_))),
            ("n,b,n=u,r=abc", |e| matches!(e, Malformed(_))),
            ("n,,", |e| matches!(e, Malformed(_))),
            ("n,,n=,r=abc", |e| matches!(e, Malformed(_))),
            ("n,,n=u", |e| matches!(e, Malformed(_))),
            ("n,,n=u,r=", |e| matches!(e, Malformed(_))),
            ("n,,n=u,r=a b", |e| matches!(e, Malformed(_))),
            ("n,,r=abc,n=u", |e| matches!(e, Malformed(_))),
            ("n,,n=u=XY,r=abc", |e| matches!(e, Malformed(_))),
            ("n,,n=u,r=abc,", |e| matches!(e, Malformed(_))),
            ("n,,n=u,r=abc,junk", |e| matches!(e, Malformed(_))),
            ("", |e| matches!(e, Malformed(_))),
            ("n", |e| matches!(e, Malformed(_))),
        ];
        for (msg, expected) in cases {
            let err = parse_client_first(msg).unwrap_err();
            assert!(expected(&err), "{msg:?} gave {err:?}");
        }
    }

    #[test]
    fn server_first_parsing() {
        let m = parse_server_first("r=abcdef,s=c2FsdA==,i=4096,z=ignored").unwrap();
        assert_eq!(
            (m.nonce, m.salt.as_slice(), m.iterations),
            ("abcdef", &b"salt"[..], 4096)
        );
        for bad in [
            "",
            "m=x,r=abc,s=c2FsdA==,i=4096",
            "r=abc,s=c2FsdA==",
            "r=abc,s=c2FsdA,i=4096",
            "r=abc,s=,i=4096",
            "r=abc,s=c2FsdA==,i=",
            "r=abc,s=c2FsdA==,i=+4096",
            "s=c2FsdA==,r=abc,i=4096",
            "r=a,c,s=c2FsdA==,i=4096",
            "e=other-error",
        ] {
            assert!(parse_server_first(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn client_final_parsing() {
        let m = parse_client_final("c=biws,r=abc,p=cHJvb2Y=").unwrap();
        assert_eq!(m.channel_binding, b"n,,");
        assert_eq!(m.nonce, "abc");
        assert_eq!(m.without_proof, "c=biws,r=abc");
        assert_eq!(m.proof, b"proof");
        let m = parse_client_final("c=biws,r=abc,x=1,p=cHJvb2Y=").unwrap();
        assert_eq!(m.without_proof, "c=biws,r=abc,x=1");
        for bad in [
            "",
            "c=biws,r=abc",
            "c=biws,r=abc,p=",
            "c=biws,r=abc,p=!!",
            "r=abc,c=biws,p=cHJvb2Y=",
            "c=biws,p=cHJvb2Y=",
            "c=@@,r=abc,p=cHJvb2Y=",
            "c=biws,r=abc,p=cHJvb2Y=,x=1",
        ] {
            assert!(parse_client_final(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_final_parsing() {
        assert!(matches!(
            parse_server_final("v=dmVyaWZpZXI=").unwrap(),
            ServerFinal::Verifier(v) if v == b"verifier"
        ));
        assert!(matches!(
            parse_server_final("e=invalid-proof").unwrap(),
            ServerFinal::Error(AuthError::ServerRejected(s)) if s == "invalid-proof"
        ));
        // An empty verifier parses; the client then rejects it as a
        // signature mismatch.
        assert!(matches!(
            parse_server_final("v=").unwrap(),
            ServerFinal::Verifier(v) if v.is_empty()
        ));
        for bad in ["", "v=%%", "x=1", "v=dmVyaWZpZXI=,1"] {
            assert!(parse_server_final(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn size_and_utf8_bounds() {
        assert!(as_text(b"n,,n=u,r=a", "x").is_ok());
        assert!(as_text(&[0xff, 0xfe], "x").is_err());
        assert!(as_text(&vec![b'a'; MAX_MESSAGE_LEN + 1], "x").is_err());
    }
}
