//! The cursor ids clients see, when several gateways share one `session_key`.
//!
//! Behind a load balancer a plain driver sends a cursor's `getMore` on any of its connections,
//! so through any gateway of the deployment; the upstream keeps the cursor (FerretDB and
//! MongoDB both serve a `getMore` on any connection), but only the opening gateway's table
//! knows whose it is. The other gateways derive ownership instead of sharing a table: a client
//! sees its cursor's upstream id *enciphered* under a key of its owner (the session the cursor
//! was opened in, or the connection for a cursor opened without one), and a request is
//! deciphered under the key of *its* owner. In the opening session that gives back the
//! upstream id on any gateway; in any other session, of any identity, it gives an unrelated
//! 64-bit number that names no cursor. So a gateway may continue a cursor it has never seen,
//! and the check needs nothing a client can guess.
//!
//! # Why a keyed permutation, not a mask
//! Upstream ids are small and sequential on FerretDB. With an XOR mask, a client holding `M`
//! could send `M ^ d` in its own session and reach upstream id `u ^ d`, another user's cursor.
//! A pseudo-random permutation keyed per owner maps the neighbours of `M` to ids scattered over
//! the whole 64-bit space, so knowing one's own ids says nothing of anyone else's. It is a
//! 4-round Feistel network on 64 bits (Luby–Rackoff: a pseudo-random permutation when the
//! round function is a PRF) whose round function is HMAC-SHA256 under the owner's key, and
//! cycle-walking keeps the sign: a positive id maps to a positive one, a negative to a
//! negative one, and 0 ("no cursor") to 0, which no other id ever becomes.
//!
//! The owner's key is an HMAC under the shared `session_key`, derived once per owner
//! ([`IdCipher::for_owner`]); the rounds reuse its keyed state. Without a configured key each
//! gateway has its own, cursors cannot move between gateways, and ids are passed through
//! unchanged: the table alone decides.
//!
//! This module never decides who may use a cursor (the table and the upstream do); it only
//! makes sure that an id a client sends names the cursor it was given, or nothing.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::identity::session_key::SessionKey;

/// Feistel rounds: four make a strong pseudo-random permutation (Luby–Rackoff).
const ROUNDS: u8 = 4;

/// Whose a cursor is, as far as its id's key goes.
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

/// One owner's permutation of cursor ids: [`IdCipher::hide`] turns an upstream id into the
/// one the client sees, [`IdCipher::reveal`] turns it back. Holds only the owner's keyed
/// HMAC state, never printed.
#[derive(Clone)]
pub struct IdCipher {
    /// The round function's keyed state; None: ids pass through unchanged.
    round: Option<Hmac<Sha256>>,
}

impl fmt::Debug for IdCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdCipher")
            .field("keyed", &self.round.is_some())
            .finish_non_exhaustive()
    }
}

impl IdCipher {
    /// `owner`'s permutation under `key`; the identity when `key` was not configured.
    pub fn for_owner(key: &SessionKey, owner: IdOwner<'_>) -> IdCipher {
        if !key.is_configured() {
            return IdCipher { round: None };
        }
        let mut mac = new_mac(key.expose());
        mac.update(b"mongomux cursor id v2\0");
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
        let owner_key = mac.finalize().into_bytes();
        IdCipher {
            round: Some(new_mac(&owner_key)),
        }
    }

    /// A cipher that passes ids through unchanged.
    pub fn identity() -> IdCipher {
        IdCipher { round: None }
    }

    /// The id a client sees for upstream cursor `id`.
    pub fn hide(&self, id: i64) -> i64 {
        self.walk(id, |x| self.encipher(x))
    }

    /// The upstream id a client's `seen` id stands for (for an id this owner never saw, an
    /// unrelated number).
    pub fn reveal(&self, seen: i64) -> i64 {
        self.walk(seen, |x| self.decipher(x))
    }

    /// Cycle-walking: applies `step` (a permutation of all 64-bit values) until the result is
    /// of `id`'s sign again. That restricts the permutation to the positive ids, and to the
    /// negative ones, and inverts exactly with the inverse step. It ends, since `id`'s own
    /// cycle comes back to `id`; each step lands in the same sign with probability about 1/2,
    /// so two steps are expected and 64 have a chance of 2^-64. 0 is its own class: it never
    /// moves and nothing else becomes it.
    fn walk(&self, id: i64, step: impl Fn(u64) -> u64) -> i64 {
        if id == 0 || self.round.is_none() {
            return id;
        }
        let sign = id.signum();
        let mut x = id as u64;
        loop {
            x = step(x);
            if (x as i64).signum() == sign {
                return x as i64;
            }
        }
    }

    fn encipher(&self, x: u64) -> u64 {
        let (mut left, mut right) = ((x >> 32) as u32, x as u32);
        for round in 0..ROUNDS {
            (left, right) = (right, left ^ self.f(round, right));
        }
        (u64::from(left) << 32) | u64::from(right)
    }

    fn decipher(&self, x: u64) -> u64 {
        let (mut left, mut right) = ((x >> 32) as u32, x as u32);
        for round in (0..ROUNDS).rev() {
            (left, right) = (right ^ self.f(round, left), left);
        }
        (u64::from(left) << 32) | u64::from(right)
    }

    /// The round function: HMAC-SHA256 under the owner's key of (round, half), cut to 32 bits.
    fn f(&self, round: u8, half: u32) -> u32 {
        let mut mac = self.round.clone().expect("only keyed ciphers run rounds");
        mac.update(&[round]);
        mac.update(&half.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
    }
}

fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length")
}

#[cfg(test)]
#[path = "cursor_ids_tests.rs"]
mod tests;
