//! Who owns each open cursor. All upstream connections authenticate as the same gateway user,
//! so the upstream cannot tell clients apart; this table is what keeps one client from
//! continuing or killing another's cursor.
//!
//! A cursor belongs to the logical session (`lsid`) it was opened under, because a driver's pool
//! may send the `getMore` on any of its connections but always with the cursor's session; with
//! client authentication the lsid is already namespaced per identity, so two identities never
//! share a key. Cursors opened without a session belong to the one client connection that opened
//! them.

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

/// One open cursor.
#[derive(Debug)]
pub struct Cursor {
    /// Who may use it.
    pub owner: Owner,
    /// `db.collection`, for killing it upstream.
    pub ns: String,
    /// The upstream connection it was opened on.
    pub conn: Arc<ConnMeta>,
}

/// Open cursors by id.
#[derive(Debug, Default)]
pub struct Cursors {
    by_id: HashMap<i64, Cursor>,
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

    /// Records a cursor; returns the entry it replaced, if the id was somehow in use.
    pub fn insert(&mut self, id: i64, cursor: Cursor) -> Option<Cursor> {
        self.by_id.insert(id, cursor)
    }

    /// Forgets a cursor.
    pub fn remove(&mut self, id: i64) -> Option<Cursor> {
        self.by_id.remove(&id)
    }

    /// Removes and returns the cursors of a departed connection and of departed sessions.
    pub fn take_orphans(&mut self, connection: i64, gone: &HashSet<Vec<u8>>) -> Vec<(i64, Cursor)> {
        let ids: Vec<i64> = self
            .by_id
            .iter()
            .filter(|(_, c)| match &c.owner {
                Owner::Connection(id) => *id == connection,
                Owner::Session(s) => gone.contains(s),
            })
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.by_id.remove(&id).map(|c| (id, c)))
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
        Cursor {
            owner,
            ns: "db.c".into(),
            conn: Arc::default(),
        }
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
            .take_orphans(7, &gone)
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
