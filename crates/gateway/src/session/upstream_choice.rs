//! Which upstream connection a request goes out on, and whether it may go out again: the
//! transaction's pinned connection, the member a cursor lives on, a member selected by read
//! preference; the bounds checked before anything is sent (sessions per connection and per
//! user, a transaction the gateway aborted); and the rules for sending a request a second time, which
//! must never apply a write twice.

use crate::command::{Access, CommandView, Kind};
use crate::error::GatewayError;
use crate::route::Pinned;
use crate::upstream::read_pref::ReadPreference;
use crate::upstream::topology::select::Need;
use crate::upstream::{PooledConn, UpstreamError};

use super::Session;

impl Session {
    /// Refuses a request whose session would be one more than `max_sessions_per_client` for
    /// this connection or `max_sessions_per_user` for its user, and a statement of a
    /// transaction the gateway aborted for idleness.
    ///
    /// The user's bound is checked here and the session counted once the upstream answered
    /// ([`Routes::note_session`](crate::route::Routes::note_session)), so connections of one
    /// user that start new sessions at the same moment may pass it together: by at most one
    /// session each, which their own per-connection bound also limits.
    pub(super) fn admissible(&self, view: &CommandView) -> Result<(), GatewayError> {
        let Some(lsid) = &view.lsid else {
            return Ok(());
        };
        if let (Some(txn), true, false) =
            (view.txn_number, view.in_transaction, view.start_transaction)
        {
            if self.shared.routes.was_reaped(lsid.as_bytes(), txn) {
                return Err(GatewayError::NoSuchTransaction(format!(
                    "transaction {txn} was aborted by the gateway after transaction_idle_timeout without a statement"
                )));
            }
        }
        let lsid = lsid.as_bytes();
        if self.used_sessions.keys().contains(lsid) {
            return Ok(());
        }
        let (per_client, per_user) = {
            let s = self.shared.live.settings.load();
            (s.max_sessions_per_client, s.max_sessions_per_user)
        };
        if !self.used_sessions.admits(lsid, per_client) {
            return Err(GatewayError::TooManySessions(format!(
                "this connection already uses {per_client} logical sessions (max_sessions_per_client); end some or open a new connection"
            )));
        }
        match self.user_key() {
            Some(user)
                if !self
                    .shared
                    .routes
                    .user_session_admits(lsid, &user, per_user) =>
            {
                Err(GatewayError::TooManySessions(format!(
                    "this user already has {per_user} logical sessions open (max_sessions_per_user); end some, or close connections, before starting more"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The authenticated user as the per-user bounds count it: length-prefixed, so that
    /// `a.b` + `c` and `a` + `b.c` are two users.
    pub(super) fn user_key(&self) -> Option<String> {
        self.auth
            .identity
            .as_ref()
            .map(|u| format!("{}:{}.{}", u.db.len(), u.db, u.name))
    }

    /// The connection a request goes out on: its transaction's pinned one, a newly pinned one
    /// (on the primary) for a transaction's first statement, one on the member a cursor lives
    /// on for `getMore` and `killCursors`, or one on a member selected for the request.
    pub(super) async fn connection_for(
        &self,
        view: &CommandView,
        on: Option<&str>,
    ) -> Result<PooledConn, UpstreamError> {
        let upstream = &self.shared.upstream;
        let pinned = match (&view.lsid, view.in_transaction) {
            (Some(lsid), true) => self.shared.routes.take_pinned(lsid.as_bytes()),
            _ => None,
        };
        if let Some(p) = pinned {
            return Ok(p.conn);
        }
        if view.in_transaction {
            if self.pins_transactions() {
                if view.start_transaction {
                    return upstream.checkout_pinned().await;
                }
            } else if let Some(lsid) = &view.lsid {
                return upstream.checkout_for_session(lsid.as_bytes()).await;
            }
        }
        if let Some(member) = on {
            return upstream.checkout_on(member).await;
        }
        if let Some(member) = view
            .cursor_id
            .and_then(|id| self.shared.routes.cursor_member(id))
        {
            return upstream.checkout_on(&member).await;
        }
        let default = upstream.default_read_preference();
        upstream.checkout(need_of(view, default)).await
    }

    /// Whether this client's transactions hold a pinned upstream connection from start to end.
    /// They do on a gateway of its own, and for load-balanced clients (whose driver pins a
    /// transaction to one connection, so to this gateway). With a shared `session_key`, a
    /// plain driver's statements move between gateways: each statement then goes to the
    /// transaction's member ([`Topology::checkout_for_session`]) on any connection, since the
    /// server keeps a transaction by session, and no gateway holds a connection for a
    /// transaction that may end elsewhere.
    ///
    /// [`Topology::checkout_for_session`]: crate::upstream::topology::Topology::checkout_for_session
    pub(super) fn pins_transactions(&self) -> bool {
        self.load_balanced == Some(true) || !self.shared.edge.session_key.is_configured()
    }

    /// After a clean exchange: keep a transaction's connection pinned until the transaction
    /// ends, otherwise return it to the pool.
    pub(super) fn keep_or_release(&mut self, conn: PooledConn, view: &CommandView) {
        match (&view.lsid, view.txn_number) {
            (Some(lsid), Some(txn_number))
                if view.in_transaction && !view.ends_transaction() && conn.is_pinned() =>
            {
                let pinned = Pinned {
                    conn,
                    txn_number,
                    since: std::time::Instant::now(),
                };
                if let Some(back) = self.shared.routes.pin(lsid.as_bytes(), pinned) {
                    back.conn.release();
                }
            }
            _ => conn.release(),
        }
    }
}

/// How many more members a request that never ran may try.
pub(super) const NOT_RUN_RETRIES: u32 = 2;

/// Uses up one of `left`; false when none is left.
pub(super) fn take_one(left: &mut u32) -> bool {
    let some = *left > 0;
    *left = left.saturating_sub(1);
    some
}

/// Whether running the request a second time cannot do anything twice: a read outside a
/// transaction, or a retryable write when the server deduplicates it by `lsid` and `txnNumber`
/// (`dedups`: FerretDB 1.x ignores `txnNumber`, so a write it may have applied is never sent
/// again by the gateway; the client gets the retryable error and decides).
pub(super) fn may_run_twice(view: &CommandView, dedups: bool) -> bool {
    // A cursor lives on one member: its getMore cannot move (drivers do not retry it either).
    if view.in_transaction || view.more_to_come || view.spec.kind != Kind::Forward {
        return false;
    }
    match view.spec.access {
        Access::Read => !view.writes,
        Access::Write => dedups && view.txn_number.is_some() && view.lsid.is_some(),
        _ => false,
    }
}

/// What a request needs from a member: reads follow their `$readPreference` (or the URI's
/// default); everything else, and reads that write (`$out`, `$merge`), needs the primary.
pub(super) fn need_of<'a>(view: &'a CommandView, default: &'a ReadPreference) -> Need<'a> {
    if view.spec.access != Access::Read || view.writes {
        return Need::Write;
    }
    Need::Read(view.read_preference.as_ref().unwrap_or(default))
}

#[cfg(test)]
#[path = "upstream_choice_tests.rs"]
mod tests;
