//! Who owns each open cursor. All upstream connections authenticate as the same gateway user,
//! so the upstream cannot tell clients apart; this table is what keeps one client from
//! continuing or killing another's cursor.
//!
//! A cursor belongs to the logical session (`lsid`) it was opened under, because a driver's pool
//! may send the `getMore` on any of its connections but always with the cursor's session; with
//! client authentication the lsid is already namespaced per identity, so two identities never
//! share a key. Cursors opened without a session belong to the one client connection that opened
//! them.
//!
//! The table also bounds how many cursors one client connection and one user may hold open
//! ([`CursorLimits`]): every open cursor holds server resources, and all clients share the
//! upstream. Counts are kept per opener, so a bound is checked without a scan; the count maps
//! hold an entry only while it is non-zero, so they never outgrow the cursor table itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::upstream::ConnMeta;

/// Who may use a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Requests carrying this lsid (raw bytes of the lsid document).
    Session(Vec<u8>),
    /// The client connection with this gateway-local id (cursor opened without a session).
    Connection(i64),
}

/// Who opened a cursor, for the bounds: the client connection, and its user when the gateway
/// authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opener {
    /// The client connection's gateway-local id.
    pub connection: i64,
    /// The authenticated user's qualified name (`db.name`), if any.
    pub user: Option<String>,
}

/// The bounds on open cursors (settings `max_cursors_per_client`, `max_cursors_per_user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorLimits {
    /// Most cursors one client connection may hold open.
    pub per_client: usize,
    /// Most cursors one user may hold open, over all its connections to this gateway.
    pub per_user: usize,
}

/// A bound a new cursor would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorLimit {
    /// The client connection's bound, with its value.
    Client(usize),
    /// The user's bound, with its value.
    User(usize),
}

/// One open cursor.
#[derive(Debug)]
pub struct Cursor {
    /// Who may use it.
    pub owner: Owner,
    /// Who opened it (counted against their bounds).
    pub opener: Opener,
    /// `db.collection`, for killing it upstream.
    pub ns: String,
    /// The upstream connection it was opened on.
    pub conn: Arc<ConnMeta>,
}

/// Open cursors by id, and how many each opener holds.
#[derive(Debug, Default)]
pub struct Cursors {
    by_id: HashMap<i64, Cursor>,
    per_connection: HashMap<i64, usize>,
    per_user: HashMap<String, usize>,
}

/// Counts one more (`up`) or one fewer cursor for `key`, dropping the entry at zero.
fn count<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, up: bool) {
    if up {
        *map.entry(key).or_insert(0) += 1;
        return;
    }
    if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

impl Cursors {
    /// Whether a request may use cursor `id`: one carrying the cursor's session, or one without
    /// a session (drivers send killCursors for a dropped cursor that way) on a client connection
    /// that has used the cursor's session, and so belongs to the same driver client.
    pub fn may_use(
        &self,
        id: i64,
        lsid: Option<&[u8]>,
        connection: i64,
        connection_sessions: &HashSet<Vec<u8>>,
    ) -> bool {
        match self.by_id.get(&id).map(|c| &c.owner) {
            Some(Owner::Session(s)) => match lsid {
                Some(l) => l == s.as_slice(),
                None => connection_sessions.contains(s),
            },
            Some(Owner::Connection(c)) => *c == connection,
            None => false,
        }
    }

    /// Whether `opener` may open one more cursor under `limits`.
    pub fn admit(&self, opener: &Opener, limits: CursorLimits) -> Result<(), CursorLimit> {
        let held = self.per_connection.get(&opener.connection).copied();
        if held.unwrap_or(0) >= limits.per_client {
            return Err(CursorLimit::Client(limits.per_client));
        }
        if let Some(user) = &opener.user {
            if self.per_user.get(user).copied().unwrap_or(0) >= limits.per_user {
                return Err(CursorLimit::User(limits.per_user));
            }
        }
        Ok(())
    }

    /// Records a cursor; returns the entry it replaced, if the id was somehow in use.
    pub fn insert(&mut self, id: i64, cursor: Cursor) -> Option<Cursor> {
        let replaced = self.remove(id);
        count(&mut self.per_connection, cursor.opener.connection, true);
        if let Some(user) = &cursor.opener.user {
            count(&mut self.per_user, user.clone(), true);
        }
        self.by_id.insert(id, cursor);
        replaced
    }

    /// Forgets a cursor.
    /// The member cursor `id` lives on, if it is tracked.
    pub fn member_of(&self, id: i64) -> Option<Arc<str>> {
        self.by_id.get(&id).map(|c| c.conn.address.clone())
    }

    /// Forgets cursor `id`.
    pub fn remove(&mut self, id: i64) -> Option<Cursor> {
        let cursor = self.by_id.remove(&id)?;
        count(&mut self.per_connection, cursor.opener.connection, false);
        if let Some(user) = &cursor.opener.user {
            count(&mut self.per_user, user.clone(), false);
        }
        Some(cursor)
    }

    /// Cursors `connection` opened that are still open.
    pub fn held_by_connection(&self, connection: i64) -> usize {
        self.per_connection.get(&connection).copied().unwrap_or(0)
    }

    /// Cursors `user` opened that are still open.
    pub fn held_by_user(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    /// Removes and returns the cursors of a departed connection and of departed sessions;
    /// with `opened`, also every cursor that connection opened, whatever its session.
    pub fn take_orphans(
        &mut self,
        connection: i64,
        gone: &HashSet<Vec<u8>>,
        opened: bool,
    ) -> Vec<(i64, Cursor)> {
        let ids: Vec<i64> = self
            .by_id
            .iter()
            .filter(|(_, c)| match &c.owner {
                Owner::Connection(id) => *id == connection,
                Owner::Session(s) => {
                    gone.contains(s) || (opened && c.opener.connection == connection)
                }
            })
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.remove(id).map(|c| (id, c)))
            .collect()
    }

    /// Cursors open now.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no cursor is open.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(owner: Owner) -> Cursor {
        opened_by(owner, 0, None)
    }

    fn opened_by(owner: Owner, connection: i64, user: Option<&str>) -> Cursor {
        Cursor {
            owner,
            opener: Opener {
                connection,
                user: user.map(str::to_string),
            },
            ns: "db.c".into(),
            conn: Arc::default(),
        }
    }

    #[test]
    fn bounds_per_client_and_per_user() {
        let mut t = Cursors::default();
        let limits = CursorLimits {
            per_client: 2,
            per_user: 3,
        };
        let on = |connection| Opener {
            connection,
            user: Some("admin.u".into()),
        };
        for id in 1..=2 {
            assert_eq!(t.admit(&on(1), limits), Ok(()));
            t.insert(id, opened_by(Owner::Connection(1), 1, Some("admin.u")));
        }
        assert_eq!(t.admit(&on(1), limits), Err(CursorLimit::Client(2)));
        assert_eq!(t.admit(&on(2), limits), Ok(()), "another connection");
        t.insert(3, opened_by(Owner::Connection(2), 2, Some("admin.u")));
        assert_eq!(
            t.admit(&on(3), limits),
            Err(CursorLimit::User(3)),
            "the user's bound spans its connections"
        );
        let stranger = Opener {
            connection: 3,
            user: Some("admin.v".into()),
        };
        assert_eq!(
            t.admit(&stranger, limits),
            Ok(()),
            "other users are not affected"
        );
        let anonymous = Opener {
            connection: 4,
            user: None,
        };
        assert_eq!(t.admit(&anonymous, limits), Ok(()));
        // Closing a cursor frees its place; the count maps shrink back to nothing.
        t.remove(1);
        assert_eq!(
            t.admit(&on(1), limits),
            Ok(()),
            "closing a cursor frees its place"
        );
        t.remove(3);
        assert_eq!((t.held_by_connection(1), t.held_by_user("admin.u")), (1, 1));
        let gone = t.take_orphans(1, &HashSet::new(), false);
        assert_eq!(gone.len(), 1);
        assert!(t.per_connection.is_empty() && t.per_user.is_empty());
        // A replaced id is counted once.
        t.insert(9, opened_by(Owner::Connection(5), 5, None));
        t.insert(9, opened_by(Owner::Connection(5), 5, None));
        assert_eq!(t.held_by_connection(5), 1);
    }

    #[test]
    fn session_cursors_follow_their_session() {
        let mut t = Cursors::default();
        t.insert(1, cursor(Owner::Session(b"A".to_vec())));
        let mine: HashSet<Vec<u8>> = [b"A".to_vec()].into();
        let other: HashSet<Vec<u8>> = [b"B".to_vec()].into();
        assert!(
            t.may_use(1, Some(b"A"), 7, &other),
            "same lsid, any connection"
        );
        assert!(!t.may_use(1, Some(b"B"), 7, &mine), "another lsid never");
        assert!(
            t.may_use(1, None, 7, &mine),
            "no lsid, on a connection that used A"
        );
        assert!(
            !t.may_use(1, None, 7, &other),
            "no lsid, on a stranger's connection"
        );
        assert!(!t.may_use(2, Some(b"A"), 7, &mine), "unknown cursor");
    }

    #[test]
    fn connection_cursors_stay_on_their_connection() {
        let mut t = Cursors::default();
        t.insert(5, cursor(Owner::Connection(7)));
        let none = HashSet::new();
        assert!(t.may_use(5, None, 7, &none));
        assert!(!t.may_use(5, None, 8, &none));
        assert!(!t.may_use(5, Some(b"A"), 8, &none));
    }

    #[test]
    fn orphans_of_a_connection_and_of_gone_sessions() {
        let mut t = Cursors::default();
        t.insert(1, cursor(Owner::Connection(7)));
        t.insert(2, cursor(Owner::Connection(8)));
        t.insert(3, cursor(Owner::Session(b"A".to_vec())));
        t.insert(4, cursor(Owner::Session(b"B".to_vec())));
        let gone: HashSet<Vec<u8>> = [b"A".to_vec()].into();
        let mut ids: Vec<i64> = t
            .take_orphans(7, &gone, false)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(t.len(), 2);
        assert!(t.remove(2).is_some());
        assert!(t.remove(2).is_none());
    }
}
