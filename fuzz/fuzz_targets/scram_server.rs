//! Arbitrary SCRAM payloads into both sides of `mongomux-auth`.
//!
//! Input layout: one control byte, then two payloads separated by the first NUL byte (SCRAM
//! messages are text and never contain NUL). Control bits 0 and 1 pick the mode, bit 2 the
//! mechanism, bit 3 whether the server knows the user:
//!
//! - mode 0: payload A is a client-first message for `ScramServer::start`, payload B the
//!   client-final for `finish` (called twice: the second call must be refused).
//! - mode 1: as mode 0 against a stored credential that does not decode.
//! - mode 2: a real `ScramClient`'s conversation; payload A is the server-first for
//!   `client_final`, payload B the server-final for `verify_server_final`.
//! - mode 3: payload A is a user name and B a password for a real client whose client-first
//!   the server must parse back to exactly that user name.
//!
//! `%N` in a payload is replaced by the nonce the other side chose, so the fuzzer can reach the
//! checks behind the nonce comparison instead of stopping at a random value it cannot guess.
//!
//! Never a panic is the property. Inputs whose server-first asks for more than
//! [`MAX_FUZZ_ITERATIONS`] PBKDF2 rounds are skipped: `ScramClient` accepts any count from
//! 4096 up to u32::MAX and runs PBKDF2 synchronously, so a large count is minutes or hours of
//! work. That is a known limit of the client (it trusts the upstream's count), reported
//! separately, not something the fuzzer should keep rediscovering as a timeout.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mongomux_auth::{Mechanism, ScramClient, ScramCredential, ScramServer, Secret, MIN_ITERATIONS};

const USER: &str = "user";
const MAX_FUZZ_ITERATIONS: u64 = 20_000;

fn credential(m: Mechanism) -> ScramCredential {
    static CREDS: OnceLock<[ScramCredential; 2]> = OnceLock::new();
    let creds = CREDS.get_or_init(|| {
        let pw = Secret::new("pencil");
        [
            ScramCredential::derive(Mechanism::ScramSha1, USER, &pw, MIN_ITERATIONS),
            ScramCredential::derive(Mechanism::ScramSha256, USER, &pw, MIN_ITERATIONS),
        ]
    });
    creds[usize::from(m == Mechanism::ScramSha256)].clone()
}

fn broken_credential(m: Mechanism) -> ScramCredential {
    ScramCredential {
        mechanism: m,
        salt: "not base64!".into(),
        iterations: 1,
        stored_key: "c2hvcnQ=".into(),
        server_key: String::new(),
    }
}

/// Replaces every `%N` in `payload` with `nonce`.
fn with_nonce(payload: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + nonce.len());
    let mut i = 0;
    while i < payload.len() {
        if payload[i..].starts_with(b"%N") {
            out.extend_from_slice(nonce);
            i += 2;
        } else {
            out.push(payload[i]);
            i += 1;
        }
    }
    out
}

/// The value of the `r=` attribute of a SCRAM message we produced ourselves.
fn nonce_of(message: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(message).expect("our own messages are UTF-8");
    let r = text
        .split(',')
        .find_map(|p| p.strip_prefix("r="))
        .expect("our own messages carry a nonce");
    r.as_bytes().to_vec()
}

/// Whether any `i=` attribute asks for more rounds than the fuzzer can afford.
fn too_many_iterations(server_first: &[u8]) -> bool {
    server_first.split(|b| *b == b',').any(|p| {
        p.strip_prefix(b"i=").is_some_and(|digits| {
            let digits: Vec<u8> = digits
                .iter()
                .copied()
                .take_while(u8::is_ascii_digit)
                .collect();
            let trimmed = digits.iter().skip_while(|d| **d == b'0').count();
            trimmed > 9
                || std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|n| n > MAX_FUZZ_ITERATIONS)
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = match rest.iter().position(|c| *c == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mechanism = if control & 4 == 0 {
        Mechanism::ScramSha1
    } else {
        Mechanism::ScramSha256
    };
    let known = control & 8 != 0;
    match control & 3 {
        0 | 1 => {
            let stored = if control & 3 == 0 {
                credential(mechanism)
            } else {
                broken_credential(mechanism)
            };
            let started = ScramServer::start(mechanism, a, |name| {
                (known && name == USER).then_some(stored)
            });
            let Ok((mut server, server_first)) = started else {
                return;
            };
            let _ = (server.username(), server.mechanism(), format!("{server:?}"));
            let client_final = with_nonce(b, &nonce_of(&server_first));
            let _ = server.finish(&client_final);
            assert!(server.finish(&client_final).is_err(), "finish ran twice");
        }
        2 => {
            let mut client = ScramClient::new(mechanism, USER, &Secret::new("pencil"));
            assert!(client.verify_server_final(b).is_err());
            let client_first = client.client_first();
            let server_first = with_nonce(a, &nonce_of(&client_first));
            if too_many_iterations(&server_first) {
                return;
            }
            if let Ok(client_final) = client.client_final(&server_first) {
                let _ = String::from_utf8(client_final).expect("client-final is UTF-8");
                let _ = client.verify_server_final(b);
            }
            let _ = format!("{client:?}");
        }
        _ => {
            let (Ok(user), Ok(password)) = (std::str::from_utf8(a), std::str::from_utf8(b)) else {
                return;
            };
            let mut client = ScramClient::new(mechanism, user, &Secret::new(password));
            let client_first = client.client_first();
            let mut seen = None;
            let started = ScramServer::start(mechanism, &client_first, |name| {
                seen = Some(name.to_owned());
                None
            });
            match started {
                Ok((server, _)) => {
                    assert_eq!(seen.as_deref(), Some(user));
                    assert_eq!(server.username(), user);
                }
                // Only the empty name and oversized messages are refused.
                Err(_) => assert!(user.is_empty() || client_first.len() > 16 * 1024),
            }
        }
    }
});
