//! Conversations between our own client and server, and robustness of every
//! parser against mutated input. Fixed vectors live beside each side's code.

use super::*;
use crate::{AuthError, Secret};

const ITERATIONS: u32 = MIN_ITERATIONS;

/// Runs a full conversation: `stored` is what the server holds for
/// `stored_user`; the client logs in as `user` with `password`.
fn converse(
    mechanism: Mechanism,
    stored_user: &str,
    stored: &ScramCredential,
    user: &str,
    password: &str,
) -> Result<String, AuthError> {
    let mut client = ScramClient::new(mechanism, user, &Secret::new(password));
    let (mut server, server_first) =
        ScramServer::start(mechanism, &client.client_first(), |name| {
            (name == stored_user).then(|| stored.clone())
        })?;
    let client_final = client.client_final(&server_first)?;
    let server_final = server.finish(&client_final)?;
    client.verify_server_final(&server_final)?;
    Ok(server.username().to_owned())
}

fn both() -> [Mechanism; 2] {
    [Mechanism::ScramSha1, Mechanism::ScramSha256]
}

#[test]
fn round_trip_both_mechanisms() {
    for m in both() {
        let cred = ScramCredential::derive(m, "alice", &Secret::new("s3cret!"), ITERATIONS);
        assert_eq!(
            converse(m, "alice", &cred, "alice", "s3cret!").unwrap(),
            "alice"
        );
    }
}

#[test]
fn round_trip_with_escaped_and_unicode_names() {
    for m in both() {
        for user in ["a,b=c", "=", ",", "\u{2168}", "ü=,ß"] {
            let cred = ScramCredential::derive(m, user, &Secret::new("pw"), ITERATIONS);
            assert_eq!(converse(m, user, &cred, user, "pw").unwrap(), user);
        }
    }
}

#[test]
fn wrong_password_fails() {
    for m in both() {
        let cred = ScramCredential::derive(m, "alice", &Secret::new("right"), ITERATIONS);
        let err = converse(m, "alice", &cred, "alice", "wrong").unwrap_err();
        assert!(
            matches!(err, AuthError::AuthenticationFailed),
            "{m}: {err:?}"
        );
    }
}

#[test]
fn unknown_user_fails_like_wrong_password() {
    for m in both() {
        let cred = ScramCredential::derive(m, "alice", &Secret::new("right"), ITERATIONS);
        let unknown = converse(m, "alice", &cred, "mallory", "right").unwrap_err();
        let wrong = converse(m, "alice", &cred, "alice", "wrong").unwrap_err();
        assert!(matches!(unknown, AuthError::AuthenticationFailed));
        assert_eq!(unknown.to_string(), wrong.to_string());
        assert_eq!(format!("{unknown:?}"), format!("{wrong:?}"));
    }
}

#[test]
fn sha1_credential_is_bound_to_the_user_name() {
    // The SCRAM-SHA-1 password digest includes the user name, so a
    // credential derived for another name does not verify.
    let cred = ScramCredential::derive(Mechanism::ScramSha1, "bob", &Secret::new("pw"), ITERATIONS);
    let err = converse(Mechanism::ScramSha1, "alice", &cred, "alice", "pw").unwrap_err();
    assert!(matches!(err, AuthError::AuthenticationFailed));
}

#[test]
fn sha256_passwords_are_compared_after_saslprep() {
    // auth.md test plan step 4, run against our own server: each stored
    // password accepts its SASLprep-equivalent forms.
    let m = Mechanism::ScramSha256;
    let ix = ScramCredential::derive(m, "IX", &Secret::new("IX"), ITERATIONS);
    for pw in ["IX", "I\u{00AD}X"] {
        converse(m, "IX", &ix, "IX", pw).unwrap();
    }
    let nine = ScramCredential::derive(m, "\u{2168}", &Secret::new("\u{2163}"), ITERATIONS);
    for pw in ["IV", "I\u{00AD}V", "\u{2163}"] {
        converse(m, "\u{2168}", &nine, "\u{2168}", pw).unwrap();
    }
    // The user name is not normalised: "IX" is not "\u{2168}".
    assert!(converse(m, "\u{2168}", &nine, "IX", "IV").is_err());
}

#[test]
fn credential_survives_serde() {
    let m = Mechanism::ScramSha256;
    let cred = ScramCredential::derive(m, "alice", &Secret::new("pw"), ITERATIONS);
    let back: ScramCredential = bson::from_document(bson::to_document(&cred).unwrap()).unwrap();
    converse(m, "alice", &back, "alice", "pw").unwrap();
}

#[test]
fn mechanism_names() {
    for m in both() {
        assert_eq!(Mechanism::from_name(m.name()), Some(m));
        assert_eq!(m.to_string(), m.name());
    }
    assert_eq!(Mechanism::ScramSha1.name(), "SCRAM-SHA-1");
    assert_eq!(Mechanism::ScramSha256.name(), "SCRAM-SHA-256");
    for bad in [
        "",
        "scram-sha-256",
        "SCRAM-SHA-512",
        "PLAIN",
        "SCRAM-SHA-256 ",
    ] {
        assert_eq!(Mechanism::from_name(bad), None);
    }
}

/// Deterministic mutations of a valid message: every prefix, and every
/// position overwritten with bytes that matter to the grammar.
fn mutations(valid: &str) -> Vec<Vec<u8>> {
    let bytes = valid.as_bytes();
    let mut out: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
    for i in 0..bytes.len() {
        for b in [b',', b'=', b'\0', 0xff, b'p', b'A'] {
            let mut m = bytes.to_vec();
            m[i] = b;
            out.push(m);
        }
    }
    out.push(vec![b','; 100]);
    out.push(vec![b'='; 100]);
    out.push(vec![b'a'; message::MAX_MESSAGE_LEN + 1]);
    out
}

#[test]
fn server_never_panics_on_mutated_input() {
    for v in [&test_vectors::SHA1, &test_vectors::SHA256] {
        let lookup = |_: &str| {
            Some(ScramCredential {
                mechanism: v.mechanism,
                salt: v.salt.into(),
                iterations: v.iterations,
                stored_key: v.stored_key.into(),
                server_key: v.server_key.into(),
            })
        };
        for m in mutations(v.client_first) {
            let _ = ScramServer::start(v.mechanism, &m, lookup);
        }
        for m in mutations(v.client_final) {
            let (mut s, _) = ScramServer::start_with_nonce(
                v.mechanism,
                v.client_first.as_bytes(),
                lookup,
                v.server_nonce_suffix,
            )
            .unwrap();
            // Only the untouched message may succeed.
            assert!(s.finish(&m).is_err() || m == v.client_final.as_bytes());
        }
    }
}

#[test]
fn client_never_panics_on_mutated_input() {
    // Only SHA-1 for the server-first mutations: each mutation that still
    // parses costs a PBKDF2 run, and the code path is the same for both.
    let v = &test_vectors::SHA1;
    let new_client = || {
        let mut c = ScramClient::with_nonce(
            v.mechanism,
            test_vectors::USER,
            &Secret::new(test_vectors::PASSWORD),
            v.client_nonce.to_owned(),
        );
        c.client_first();
        c
    };
    for m in mutations(v.server_first) {
        let _ = new_client().client_final(&m);
    }
    let mut c = new_client();
    c.client_final(v.server_first.as_bytes()).unwrap();
    for m in mutations(v.server_final) {
        assert!(c.verify_server_final(&m).is_err() || m == v.server_final.as_bytes());
    }
}
