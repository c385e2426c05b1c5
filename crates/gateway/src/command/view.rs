//! The typed view of one client request, built once per request by [`CommandView::parse`] and
//! read by authorization, dispatch, routing, metrics and logging. Nothing else in the gateway
//! looks at request bytes by offset: the view records where the session ids sit so that
//! [`CommandView::rewrite_session_ids`] can namespace them in place, and the rest of the message
//! is forwarded as the client's own bytes.
//!
//! The walk is byte-level ([`mongomux_wire::scan`]): only the fields routed on are decoded; the
//! filter, the documents and the rest of the command are never looked at. Top-level fields that
//! decide security or routing may appear only once: a second `$db`, `lsid`, `txnNumber`,
//! `$readPreference`, `autocommit` or `startTransaction` (or a second command name) is refused,
//! because a rewrite that reads the first and a server that reads the last would disagree.

use bson::RawDocument;
use mongomux_wire::scan::{self, Element};
use mongomux_wire::OpMsg;

use super::namespaces::{self, Namespace};
use super::table::{self, Access, Kind, Spec};
use crate::error::GatewayError;
use crate::upstream::read_pref::ReadPreference;

/// Length of a session UUID (`lsid.id`, binary subtype 4).
const UUID_LEN: usize = 16;
/// Most session ids one `endSessions` may list (the server's own limit is 10,000).
const MAX_END_SESSIONS: usize = 10_000;

/// A logical session id as the client sent it (after namespacing, as forwarded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lsid {
    /// The raw `lsid` document.
    pub doc: Vec<u8>,
    /// Offset of the 16-byte UUID inside `doc`, when `id` is a 16-byte binary.
    uuid_at: Option<usize>,
}

impl Lsid {
    /// The raw document bytes: the session's key in the routing table.
    pub fn as_bytes(&self) -> &[u8] {
        &self.doc
    }

    /// Whether `id` is a 16-byte binary, the only form session namespacing can rewrite.
    pub fn has_uuid(&self) -> bool {
        self.uuid_at.is_some()
    }
}

/// Everything the gateway needs to know about one OP_MSG request.
#[derive(Debug)]
pub struct CommandView {
    /// The client's requestID, echoed in the reply's responseTo.
    pub request_id: i32,
    /// The client expects no reply (`moreToCome`).
    pub more_to_come: bool,
    /// The command name: the first key of the body.
    pub name: String,
    /// The command's row in the command table.
    pub spec: Spec,
    /// `$db`.
    pub db: String,
    /// The logical session, if any.
    pub lsid: Option<Lsid>,
    /// `txnNumber`, present on retryable writes and transaction commands.
    pub txn_number: Option<i64>,
    /// `autocommit: false`: the command belongs to a multi-statement transaction.
    pub in_transaction: bool,
    /// `startTransaction: true`.
    pub start_transaction: bool,
    /// The cursor of a `getMore`.
    pub cursor_id: Option<i64>,
    /// The cursors a `killCursors` names (ids that are not integers are skipped); `None` when
    /// its `cursors` is not an array.
    pub kill_cursor_ids: Option<Vec<i64>>,
    /// The collection a `killCursors` names (read only where the gateway uses it, so the hot
    /// path allocates nothing for it).
    pub collection: Option<String>,
    /// Whether the command writes although its table row says read (`aggregate` with `$out` or
    /// `$merge`, `mapReduce` to a collection).
    pub writes: bool,
    /// Every namespace the request names, from the places its table row says
    /// ([`super::namespaces`]); collected for commands that read or write data.
    pub namespaces: Vec<Namespace>,
    /// An aggregation stage that shows server-wide state, if the pipeline has one.
    pub server_stage: Option<String>,
    /// Whether a `$readPreference` was given.
    pub has_read_preference: bool,
    /// The `$readPreference`, decoded and checked, when one was given.
    pub read_preference: Option<ReadPreference>,
    /// `maxTimeMS`, when it is a non-negative integer: the reply deadline follows it.
    pub max_time_ms: Option<u64>,
    /// Offsets in the message of the 16-byte UUIDs of `endSessions`.
    end_session_uuids: Vec<usize>,
    /// Offset in the message of the `lsid` document.
    lsid_at: usize,
    /// Offset in the message of a `getMore`'s cursor id, when it is an int64.
    cursor_id_at: Option<usize>,
}

/// Top-level fields that may appear once, as bits.
mod once {
    pub const DB: u8 = 1;
    pub const LSID: u8 = 2;
    pub const TXN_NUMBER: u8 = 4;
    pub const READ_PREFERENCE: u8 = 8;
    pub const AUTOCOMMIT: u8 = 16;
    pub const START_TRANSACTION: u8 = 32;
    /// `killCursors`' ids: checked for ownership on one copy, sent with both.
    pub const CURSORS: u8 = 64;
}

fn bad_bson(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::InvalidBson(e.to_string())
}

impl CommandView {
    /// Builds the view of a parsed message, all but its namespaces
    /// ([`CommandView::collect_namespaces`]). `message` is the whole message `msg` was parsed
    /// from; offsets are recorded relative to it.
    pub fn decode(message: &[u8], msg: &OpMsg<'_>) -> Result<CommandView, GatewayError> {
        let body = msg.body.as_bytes();
        let body_at = offset_in(message, body);
        let mut view = CommandView {
            request_id: msg.header.request_id,
            more_to_come: msg.flags.more_to_come(),
            name: String::new(),
            spec: table::UNKNOWN,
            db: String::new(),
            lsid: None,
            txn_number: None,
            in_transaction: false,
            start_transaction: false,
            cursor_id: None,
            kill_cursor_ids: None,
            collection: None,
            writes: false,
            namespaces: Vec::new(),
            server_stage: None,
            has_read_preference: false,
            read_preference: None,
            max_time_ms: None,
            end_session_uuids: Vec::new(),
            lsid_at: 0,
            cursor_id_at: None,
        };
        let mut seen = 0u8;
        let mut elements = scan::elements(body).map_err(bad_bson)?;
        let first = elements
            .next()
            .ok_or_else(|| GatewayError::BadCommand("empty command document".into()))?
            .map_err(bad_bson)?;
        view.command_element(&first, body_at, body)?;
        for element in elements {
            let element = element.map_err(bad_bson)?;
            let bit = match element.key {
                b"$db" => once::DB,
                b"lsid" => once::LSID,
                b"txnNumber" => once::TXN_NUMBER,
                b"$readPreference" => once::READ_PREFERENCE,
                b"autocommit" => once::AUTOCOMMIT,
                b"startTransaction" => once::START_TRANSACTION,
                b"cursors" => once::CURSORS,
                b"maxTimeMS" => {
                    view.max_time_ms = element.as_i64().and_then(|ms| u64::try_from(ms).ok());
                    continue;
                }
                key if key == first.key => {
                    return Err(GatewayError::BadCommand(format!(
                        "the command name {} appears twice",
                        view.name.escape_debug()
                    )))
                }
                _ => 0,
            };
            if bit == 0 {
                continue;
            }
            if seen & bit != 0 {
                return Err(GatewayError::BadCommand(format!(
                    "field {} appears twice in the command",
                    String::from_utf8_lossy(element.key).escape_debug()
                )));
            }
            seen |= bit;
            view.routing_field(&element, offset_in(message, element.value))?;
        }
        if view.db.is_empty() {
            return Err(GatewayError::BadCommand(
                "OP_MSG command is missing the $db field".into(),
            ));
        }
        view.command_details(msg.body)?;
        Ok(view)
    }

    /// [`CommandView::decode`] and [`CommandView::collect_namespaces`]: the whole view.
    pub fn parse(message: &[u8], msg: &OpMsg<'_>) -> Result<CommandView, GatewayError> {
        let mut view = CommandView::decode(message, msg)?;
        view.collect_namespaces(msg)?;
        Ok(view)
    }

    /// Reads every namespace the request names, for authorization. A gateway without users
    /// authorizes nothing and skips this walk, which is most of the view's cost.
    pub fn collect_namespaces(&mut self, msg: &OpMsg<'_>) -> Result<(), GatewayError> {
        if matches!(self.spec.access, Access::Read | Access::Write) {
            let found = namespaces::collect(self.spec.ns, msg.body, &self.db, &msg.sequences)?;
            self.namespaces = found.namespaces;
            self.writes = found.writes;
            self.server_stage = found.server_stage;
        }
        Ok(())
    }

    /// The first element: the command name, and its value where the view needs it.
    fn command_element(
        &mut self,
        first: &Element<'_>,
        body_at: usize,
        body: &[u8],
    ) -> Result<(), GatewayError> {
        self.name = std::str::from_utf8(first.key)
            .map_err(|_| GatewayError::InvalidBson("command name is not UTF-8".into()))?
            .to_string();
        self.spec = table::lookup(&self.name);
        if self.spec.kind == Kind::GetMore {
            self.cursor_id = first.as_i64();
            if first.kind == scan::kind::INT64 {
                self.cursor_id_at = Some(body_at + offset_in(body, first.value));
            }
        }
        if self.spec.kind == Kind::KillCursors {
            self.collection = first.as_str().map(str::to_string);
        }
        // `refreshSessions` lists session ids as `endSessions` does; both must name the
        // client's namespaced sessions, never the raw ids another identity could also send.
        if self.spec.kind == Kind::EndSessions || self.name == "refreshSessions" {
            let at = body_at + offset_in(body, first.value);
            self.end_session_uuids = end_session_uuids(first, at)?;
        }
        Ok(())
    }

    /// One of the once-only top-level fields; `at` is the offset of its value in the message.
    fn routing_field(&mut self, element: &Element<'_>, at: usize) -> Result<(), GatewayError> {
        match element.key {
            b"$db" => match element.as_str() {
                Some(db) => self.db = db.to_string(),
                None => return Err(GatewayError::BadCommand("$db must be a string".into())),
            },
            b"lsid" => {
                if let Some(doc) = element.as_document() {
                    self.lsid = Some(Lsid {
                        doc: doc.to_vec(),
                        uuid_at: uuid_in(doc)?,
                    });
                    self.lsid_at = at;
                }
            }
            b"txnNumber" => self.txn_number = element.as_i64(),
            b"autocommit" => self.in_transaction = element.as_bool() == Some(false),
            b"startTransaction" => self.start_transaction = element.as_bool() == Some(true),
            b"$readPreference" => {
                self.has_read_preference = true;
                let doc = element
                    .as_document()
                    .and_then(|d| bson::RawDocument::from_bytes(d).ok())
                    .ok_or_else(|| {
                        GatewayError::BadCommand("$readPreference must be a document".into())
                    })?;
                let rp = ReadPreference::from_document(doc)
                    .map_err(|e| GatewayError::BadCommand(e.to_string()))?;
                self.read_preference = Some(rp);
            }
            _ => {}
        }
        Ok(())
    }

    /// Fields that only some commands have, read with keyed lookups since they are rare.
    fn command_details(&mut self, body: &RawDocument) -> Result<(), GatewayError> {
        if self.spec.kind == Kind::KillCursors {
            if let Ok(ids) = body.get_array("cursors") {
                self.kill_cursor_ids = Some(
                    ids.into_iter()
                        .filter_map(|v| v.ok().and_then(super::reply::as_i64))
                        .collect(),
                );
            }
        }
        Ok(())
    }

    /// The access this request needs: the table's, raised to write for writing pipelines.
    pub fn access(&self) -> Access {
        match self.spec.access {
            Access::Read if self.writes => Access::Write,
            a => a,
        }
    }

    /// Whether this command ends the transaction it belongs to.
    pub fn ends_transaction(&self) -> bool {
        matches!(self.name.as_str(), "commitTransaction" | "abortTransaction")
    }

    /// Whether the request carries session ids that namespacing would rewrite.
    pub fn has_session_ids(&self) -> bool {
        self.lsid.as_ref().is_some_and(|l| l.uuid_at.is_some())
            || !self.end_session_uuids.is_empty()
    }

    /// Replaces a `getMore`'s cursor id by `id`, in `message` (when it is an int64 there) and in
    /// the view.
    pub fn set_cursor_id(&mut self, message: &mut [u8], id: i64) {
        if let Some(at) = self.cursor_id_at {
            message[at..at + 8].copy_from_slice(&id.to_le_bytes());
        }
        self.cursor_id = Some(id);
    }

    /// Replaces every 16-byte session UUID of the request (`lsid.id`, and each id `endSessions`
    /// lists) by `map(uuid)`, in `message` and in the view.
    pub fn rewrite_session_ids(
        &mut self,
        message: &mut [u8],
        mut map: impl FnMut(&[u8]) -> [u8; UUID_LEN],
    ) {
        if let Some(lsid) = &mut self.lsid {
            if let Some(at) = lsid.uuid_at {
                let mapped = map(&lsid.doc[at..at + UUID_LEN]);
                lsid.doc[at..at + UUID_LEN].copy_from_slice(&mapped);
                let in_message = self.lsid_at + at;
                message[in_message..in_message + UUID_LEN].copy_from_slice(&mapped);
            }
        }
        for &at in &self.end_session_uuids {
            let mapped = map(&message[at..at + UUID_LEN]);
            message[at..at + UUID_LEN].copy_from_slice(&mapped);
        }
    }
}

/// Offset of `inner` within `outer`; `inner` must be a sub-slice of `outer`.
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    let at = inner.as_ptr() as usize - outer.as_ptr() as usize;
    debug_assert!(at + inner.len() <= outer.len());
    at
}

/// Offset, inside an lsid document, of its `id` when that is a 16-byte binary.
fn uuid_in(doc: &[u8]) -> Result<Option<usize>, GatewayError> {
    for element in scan::elements(doc).map_err(bad_bson)? {
        let element = element.map_err(bad_bson)?;
        if element.key == b"id" {
            // Binary value: int32 length, subtype byte, bytes.
            if element.kind == 0x05 && element.value.len() == 5 + UUID_LEN {
                return Ok(Some(offset_in(doc, element.value) + 5));
            }
            return Ok(None);
        }
    }
    Ok(None)
}

/// Offsets in the message of the UUIDs of an `endSessions` (or `refreshSessions`) array whose
/// value starts at `at`.
fn end_session_uuids(array: &Element<'_>, at: usize) -> Result<Vec<usize>, GatewayError> {
    if array.kind != 0x04 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in scan::elements(array.value).map_err(bad_bson)? {
        let item = item.map_err(bad_bson)?;
        let Some(doc) = item.as_document() else {
            continue;
        };
        if let Some(uuid) = uuid_in(doc)? {
            if out.len() == MAX_END_SESSIONS {
                return Err(GatewayError::BadCommand(format!(
                    "endSessions lists more than {MAX_END_SESSIONS} sessions"
                )));
            }
            out.push(at + offset_in(array.value, doc) + uuid);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
