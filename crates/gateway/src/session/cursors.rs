//! A client's cursor ids on the way in and out: `getMore` and `killCursors` are unmasked to
//! upstream ids and checked against the cursor table, replies' `cursor.id` masked
//! ([`crate::route::cursor_ids`]). A `getMore` or `killCursors` in a session, for a cursor this
//! gateway has never seen, is one another gateway of the deployment opened: with a shared
//! `session_key` it is forwarded (its unmasked id names the cursor only if the session is the
//! one that opened it) and the cursor is adopted into this gateway's table.

use bson::{doc, Bson};
use bytes::BytesMut;

use super::reply::Outcome;
use super::Session;
use crate::command::CommandView;
use crate::error::GatewayError;
use crate::route::cursor_ids::{self, IdOwner};
use crate::upstream::topology::select::Need;

impl Session {
    /// The mask of the cursor ids of `view`'s owner: its session, or this connection.
    pub(super) fn cursor_mask(&self, view: &CommandView) -> i64 {
        if let Some(mask) = view.cursor_mask {
            return mask;
        }
        let key = &self.shared.edge.session_key;
        match &view.lsid {
            Some(lsid) => cursor_ids::mask(key, IdOwner::Session(lsid.as_bytes())),
            None => cursor_ids::mask(
                key,
                IdOwner::Connection {
                    process: self.shared.ids.service_id.bytes(),
                    connection: self.connection_id,
                },
            ),
        }
    }

    /// Whether upstream cursor `id`, unknown here, may be continued as another gateway's: only
    /// in a session, and only when the gateways share a key (so the id was masked for it).
    pub(super) fn may_adopt_cursor(&self, id: i64, view: &CommandView) -> bool {
        view.lsid.is_some()
            && self.shared.edge.session_key.is_configured()
            && self.shared.routes.cursor_member(id).is_none()
    }

    /// getMore: the id unmasked, then forwarded if the cursor is the client's (here or, by its
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
        let mask = self.cursor_mask(view);
        view.cursor_mask = Some(mask);
        let id = cursor_ids::apply(seen, mask);
        view.set_cursor_id(&mut frame, id);
        if self.may_use_cursor(id, view) || self.may_adopt_cursor(id, view) {
            return self.forward(frame, view).await;
        }
        self.replier()
            .error(view.request_id, GatewayError::CursorNotFound(seen), false)
    }

    /// killCursors: only the client's own cursors reach the upstream; the others are reported
    /// as not found, exactly as a server reports unknown ids. Ids go out unmasked and come
    /// back masked.
    pub(super) async fn kill_cursors(&mut self, view: &CommandView) -> Outcome {
        let Some(seen) = &view.kill_cursor_ids else {
            return self.replier().error(
                view.request_id,
                GatewayError::BadCommand("killCursors needs a cursors array".into()),
                false,
            );
        };
        let mask = self.cursor_mask(view);
        let (owned, foreign): (Vec<i64>, Vec<i64>) = seen
            .iter()
            .map(|s| cursor_ids::apply(*s, mask))
            .partition(|id| self.may_use_cursor(*id, view) || self.may_adopt_cursor(*id, view));
        let masked = |ids: Vec<i64>| -> Vec<Bson> {
            ids.into_iter()
                .map(|id| Bson::Int64(cursor_ids::apply(id, mask)))
                .collect()
        };
        // Cursors of one killCursors come from one find or aggregate: one member.
        let member = owned
            .first()
            .and_then(|id| self.shared.routes.cursor_member(*id));
        for id in &owned {
            self.shared.routes.remove_cursor(*id);
        }
        let mut not_found = masked(foreign);
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
            killed = masked(ids("cursorsKilled"));
            not_found.extend(masked(ids("cursorsNotFound")));
            alive = masked(ids("cursorsAlive"));
            unknown = masked(ids("cursorsUnknown"));
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

/// Masks the upstream cursor id at offset `at` of a reply.
pub(super) fn mask_reply_cursor(reply: &mut [u8], at: usize, mask: i64) {
    if mask == 0 || at + 8 > reply.len() {
        return;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&reply[at..at + 8]);
    let masked = cursor_ids::apply(i64::from_le_bytes(id), mask);
    reply[at..at + 8].copy_from_slice(&masked.to_le_bytes());
}
