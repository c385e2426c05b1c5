//! A client's cursor ids on the way in and out: `getMore` and `killCursors` ids are revealed
//! (deciphered) to upstream ids and checked against the cursor table, replies' `cursor.id`
//! hidden ([`crate::route::cursor_ids`]). A `getMore` or `killCursors` in a session, for a
//! cursor this gateway has never seen, is one another gateway of the deployment opened: with a
//! shared `session_key` it is forwarded (its revealed id names the cursor only if the session
//! is the one that opened it) and the cursor is adopted into this gateway's table.
//!
//! The owner's cipher is derived once and kept for the connection's next request of the same
//! owner (a cursor is iterated in one session), so a `getMore` costs the rounds only.

use std::sync::Arc;

use bson::{doc, Bson};
use bytes::BytesMut;

use super::reply::Outcome;
use super::Session;
use crate::command::CommandView;
use crate::error::GatewayError;
use crate::route::cursor_ids::{IdCipher, IdOwner};
use crate::upstream::topology::select::Need;

/// The cipher of the last owner whose cursor ids a connection handled.
#[derive(Debug)]
pub(super) struct LastCipher {
    /// The owner: the raw lsid, or None for the connection itself.
    lsid: Option<Box<[u8]>>,
    cipher: Arc<IdCipher>,
}

impl Session {
    /// The cipher of the cursor ids of `view`'s owner: its session, or this connection.
    pub(super) fn cursor_cipher(&mut self, view: &CommandView) -> Arc<IdCipher> {
        let lsid = view.lsid.as_ref().map(|l| l.as_bytes());
        let key = &self.shared.edge.session_key;
        if let Some(last) = &self.last_cipher {
            // Without a shared key every owner's cipher is the identity: one serves them all.
            if last.lsid.as_deref() == lsid || !key.is_configured() {
                return last.cipher.clone();
            }
        }
        let owner = match lsid {
            Some(lsid) => IdOwner::Session(lsid),
            None => IdOwner::Connection {
                process: self.shared.ids.service_id.bytes(),
                connection: self.connection_id,
            },
        };
        let cipher = Arc::new(IdCipher::for_owner(key, owner));
        self.last_cipher = Some(Box::new(LastCipher {
            lsid: lsid.map(Box::from),
            cipher: cipher.clone(),
        }));
        cipher
    }

    /// Whether upstream cursor `id`, unknown here, may be continued as another gateway's: only
    /// in a session, and only when the gateways share a key (so the id was hidden for it).
    pub(super) fn may_adopt_cursor(&self, id: i64, view: &CommandView) -> bool {
        view.lsid.is_some()
            && self.shared.edge.session_key.is_configured()
            && self.shared.routes.cursor_member(id).is_none()
    }

    /// getMore: the id revealed, then forwarded if the cursor is the client's (here or, by its
    /// id, from another gateway).
    pub(super) async fn get_more(
        &mut self,
        mut frame: BytesMut,
        view: &mut CommandView,
    ) -> Outcome {
        let Some(seen) = view.cursor_id else {
            return self.replier().error(
                view.request_id,
                GatewayError::BadCommand("getMore needs an integer cursor id".into()),
                false,
            );
        };
        let id = self.cursor_cipher(view).reveal(seen);
        view.set_cursor_id(&mut frame, id);
        if self.may_use_cursor(id, view) || self.may_adopt_cursor(id, view) {
            return self.forward(frame, view).await;
        }
        self.replier()
            .error(view.request_id, GatewayError::CursorNotFound(seen), false)
    }

    /// killCursors: only the client's own cursors reach the upstream; the others are reported
    /// as not found, exactly as a server reports unknown ids. Ids go out revealed and come
    /// back hidden.
    pub(super) async fn kill_cursors(&mut self, view: &CommandView) -> Outcome {
        let Some(seen) = &view.kill_cursor_ids else {
            return self.replier().error(
                view.request_id,
                GatewayError::BadCommand("killCursors needs a cursors array".into()),
                false,
            );
        };
        let cipher = self.cursor_cipher(view);
        let (owned, foreign): (Vec<i64>, Vec<i64>) = seen
            .iter()
            .map(|s| cipher.reveal(*s))
            .partition(|id| self.may_use_cursor(*id, view) || self.may_adopt_cursor(*id, view));
        let hidden = |ids: Vec<i64>| -> Vec<Bson> {
            ids.into_iter()
                .map(|id| Bson::Int64(cipher.hide(id)))
                .collect()
        };
        // Cursors of one killCursors come from one find or aggregate: one member.
        let member = owned
            .first()
            .and_then(|id| self.shared.routes.cursor_member(*id));
        for id in &owned {
            self.shared.routes.remove_cursor(*id);
        }
        let mut not_found = hidden(foreign);
        let (mut killed, mut alive, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        if !owned.is_empty() {
            let coll = view.collection.clone().unwrap_or_default();
            let kill = doc! { "killCursors": coll, "cursors": owned, "$db": &view.db };
            let conn = match &member {
                Some(m) => self.shared.upstream.checkout_on(m).await,
                None => self.shared.upstream.checkout(Need::Write).await,
            };
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => return self.replier().error(view.request_id, e.into(), false),
            };
            let limit = self.shared.live.settings.load().upstream_timeout;
            let up = match conn.conn().command_within(&kill, limit).await {
                Ok(up) => up,
                Err(e) => return self.replier().error(view.request_id, e.into(), false),
            };
            conn.release();
            let ids = |key: &str| -> Vec<i64> {
                up.get_array(key)
                    .map(|a| a.iter().filter_map(Bson::as_i64).collect())
                    .unwrap_or_default()
            };
            killed = hidden(ids("cursorsKilled"));
            not_found.extend(hidden(ids("cursorsNotFound")));
            alive = hidden(ids("cursorsAlive"));
            unknown = hidden(ids("cursorsUnknown"));
        }
        let reply = doc! {
            "cursorsKilled": killed, "cursorsNotFound": not_found, "cursorsAlive": alive,
            "cursorsUnknown": unknown, "ok": 1.0,
        };
        if view.more_to_come {
            return Outcome::Silent;
        }
        self.replier().reply(view.request_id, &reply)
    }
}

impl Session {
    /// Hides the upstream cursor id at offset `at` of a reply. Most replies carry 0 (a short
    /// `find` returns everything at once), and without a shared key ids pass unchanged: in
    /// neither case is the owner's cipher derived.
    pub(super) fn hide_reply_cursor(&mut self, reply: &mut [u8], at: usize, view: &CommandView) {
        let Some(bytes) = reply.get(at..at.saturating_add(8)) else {
            return;
        };
        let id = i64::from_le_bytes(bytes.try_into().expect("a range of 8 bytes"));
        if id == 0 || !self.shared.edge.session_key.is_configured() {
            return;
        }
        let hidden = self.cursor_cipher(view).hide(id);
        reply[at..at + 8].copy_from_slice(&hidden.to_le_bytes());
    }
}
