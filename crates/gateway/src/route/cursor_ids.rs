//! The cursor ids clients see, when several gateways share one `session_key`.
//!
//! Behind a load balancer a plain driver sends a cursor's `getMore` on any of its connections,
//! so through any gateway of the deployment; the upstream keeps the cursor (FerretDB and
//! MongoDB both serve a `getMore` on any connection), but only the opening gateway's table
//! knows whose it is. The other gateways derive ownership instead of sharing a table: a
//! client sees its cursor's upstream id XORed with a mask, a keyed MAC (under the shared
//! `session_key`) of the session the cursor was opened in. A request in that session unmasks
//! it to the upstream id on any gateway; a request in any other session, of any identity,
//! unmasks it to an unrelated 63-bit number that names no cursor. So a gateway may continue a
//! cursor it has never seen, and the check needs nothing a client can guess.
//!
//! Without a configured key each gateway has its own, cursors cannot move between gateways,
//! and ids are passed through unchanged (mask 0): the table alone decides.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::identity::session_key::SessionKey;

/// Whose a cursor is, as far as its id's mask goes.
#[derive(Debug, Clone, Copy)]
pub enum IdOwner<'a> {
    /// Opened in this (namespaced) session: the raw `lsid` document.
    Session(&'a [u8]),
    /// Opened without a session, by one client connection of one gateway process.
    Connection {
        /// The process's `serviceId`, unique per process.
        process: [u8; 12],
        /// The connection's gateway-local id.
        connection: i64,
    },
}

/// The mask of `owner`'s cursor ids; 0 when `key` was not configured.
pub fn mask(key: &SessionKey, owner: IdOwner<'_>) -> i64 {
    if !key.is_configured() {
        return 0;
    }
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(b"mongomux cursor id v1\0");
    match owner {
        IdOwner::Session(lsid) => {
            mac.update(b"s");
            mac.update(&(lsid.len() as u64).to_be_bytes());
            mac.update(lsid);
        }
        IdOwner::Connection {
            process,
            connection,
        } => {
            mac.update(b"c");
            mac.update(&process);
            mac.update(&connection.to_be_bytes());
        }
    }
    let digest = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // Non-negative, so masked ids of non-negative upstream ids stay non-negative.
    i64::from_le_bytes(first) & i64::MAX
}

/// Masks or unmasks `id` (the same operation); 0, "no cursor", stays 0.
pub fn apply(id: i64, mask: i64) -> i64 {
    if id == 0 {
        0
    } else {
        id ^ mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongomux_auth::Secret;

    fn shared() -> SessionKey {
        SessionKey::parse(&Secret::new("00112233445566778899aabbccddeeff")).unwrap()
    }

    #[test]
    fn one_session_unmasks_its_own_ids_on_every_gateway_and_no_other() {
        let (a, b) = (shared(), shared());
        let mine = mask(&a, IdOwner::Session(b"lsid-a"));
        assert_eq!(
            mine,
            mask(&b, IdOwner::Session(b"lsid-a")),
            "same key, same mask"
        );
        let upstream = 1_804_164_985;
        let seen = apply(upstream, mine);
        assert_ne!(seen, upstream);
        assert!(seen > 0);
        assert_eq!(apply(seen, mask(&b, IdOwner::Session(b"lsid-a"))), upstream);
        let other = apply(seen, mask(&b, IdOwner::Session(b"lsid-b")));
        assert_ne!(other, upstream);
        assert_eq!(apply(0, mine), 0);
    }

    #[test]
    fn connections_and_unconfigured_keys() {
        let key = shared();
        let conn = |process: u8, connection| IdOwner::Connection {
            process: [process; 12],
            connection,
        };
        assert_ne!(mask(&key, conn(1, 7)), mask(&key, conn(2, 7)));
        assert_ne!(mask(&key, conn(1, 7)), mask(&key, conn(1, 8)));
        let drawn = SessionKey::generate();
        assert_eq!(mask(&drawn, IdOwner::Session(b"lsid-a")), 0);
        assert_eq!(apply(42, 0), 42);
    }
}
