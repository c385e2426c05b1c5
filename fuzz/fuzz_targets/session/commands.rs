//! The commands of the op language: a small typed choice of what a driver sends (the command,
//! its database and collection, a session, a transaction, a cursor id), plus arbitrary extra
//! fields of arbitrary BSON, turned into the body of an OP_MSG.
//!
//! The typed part keeps most inputs on the paths a real session takes (cursors that really
//! exist, sessions that really repeat); the extra fields reach everything else, including the
//! fields the typed part sets (an extra `lsid` or `$db` replaces the typed one).

use arbitrary::Arbitrary;
use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};

/// Deeper BSON than this becomes `null`: the gateway's own depth limits are tested elsewhere,
/// and unbounded recursion here would only overflow the fuzzer's stack.
const MAX_DEPTH: usize = 6;

/// A command to send.
#[derive(Arbitrary, Debug)]
pub struct Cmd {
    pub kind: Kind,
    pub db: Db,
    /// Collection `c0`..`c2`.
    pub coll: u8,
    /// Session `0`..`2`, or none.
    pub lsid: Option<u8>,
    pub txn: Option<Txn>,
    pub cursor: CursorPick,
    /// Batches after the first that the stand-in gives a new cursor (0 closes it at once).
    pub batches: u8,
    pub extra: Vec<(Key, Value)>,
}

#[derive(Arbitrary, Debug)]
pub enum Kind {
    Find,
    Aggregate,
    Insert,
    GetMore,
    KillCursors,
    Commit,
    Abort,
    EndSessions,
    Ping,
    Count,
    Delete,
    ListCollections,
    Named(String),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Db {
    App,
    Other,
    Admin,
}

/// Transaction fields: `txnNumber`, `autocommit: false`, and `startTransaction` on the first.
#[derive(Arbitrary, Debug)]
pub struct Txn {
    pub number: u8,
    pub start: bool,
}

/// Which cursor id a `getMore`/`killCursors` names.
#[derive(Arbitrary, Debug)]
pub enum CursorPick {
    /// One this client has seen (by index, modulo how many).
    Mine(u8),
    /// One any client has seen.
    Anyones(u8),
    /// Any number.
    Number(i64),
}

#[derive(Arbitrary, Debug)]
pub enum Key {
    Known(Known),
    Named(String),
}

/// Field names the gateway or the upstream reads.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Known {
    Lsid,
    TxnNumber,
    Autocommit,
    StartTransaction,
    Db,
    Filter,
    BatchSize,
    Limit,
    Cursor,
    Pipeline,
    Documents,
    ReadPreference,
    ReadConcern,
    WriteConcern,
    MaxTimeMs,
    Comment,
    ClusterTime,
    ApiVersion,
    Collection,
    Cursors,
    Exhaust,
    Compression,
}

impl Known {
    fn name(self) -> &'static str {
        match self {
            Known::Lsid => "lsid",
            Known::TxnNumber => "txnNumber",
            Known::Autocommit => "autocommit",
            Known::StartTransaction => "startTransaction",
            Known::Db => "$db",
            Known::Filter => "filter",
            Known::BatchSize => "batchSize",
            Known::Limit => "limit",
            Known::Cursor => "cursor",
            Known::Pipeline => "pipeline",
            Known::Documents => "documents",
            Known::ReadPreference => "$readPreference",
            Known::ReadConcern => "readConcern",
            Known::WriteConcern => "writeConcern",
            Known::MaxTimeMs => "maxTimeMS",
            Known::Comment => "comment",
            Known::ClusterTime => "$clusterTime",
            Known::ApiVersion => "apiVersion",
            Known::Collection => "collection",
            Known::Cursors => "cursors",
            Known::Exhaust => "exhaust",
            Known::Compression => "compression",
        }
    }
}

/// Arbitrary BSON.
#[derive(Arbitrary, Debug)]
pub enum Value {
    Int(i32),
    Long(i64),
    Double(f64),
    Str(String),
    Bool(bool),
    Null,
    Doc(Vec<(Key, Value)>),
    Array(Vec<Value>),
    Binary(u8, Vec<u8>),
    ObjectId([u8; 12]),
    Timestamp(u32, u32),
    DateTime(i64),
    Decimal([u8; 16]),
    Regex(String, String),
    MinKey,
    MaxKey,
    Undefined,
}

impl Value {
    fn to_bson(&self, depth: usize) -> Bson {
        if depth > MAX_DEPTH {
            return Bson::Null;
        }
        match self {
            Value::Int(v) => Bson::Int32(*v),
            Value::Long(v) => Bson::Int64(*v),
            Value::Double(v) => Bson::Double(*v),
            Value::Str(s) => Bson::String(s.clone()),
            Value::Bool(b) => Bson::Boolean(*b),
            Value::Null => Bson::Null,
            Value::Doc(fields) => Bson::Document(fields_to_doc(fields, depth + 1)),
            Value::Array(items) => {
                Bson::Array(items.iter().map(|v| v.to_bson(depth + 1)).collect())
            }
            Value::Binary(subtype, bytes) => Bson::Binary(Binary {
                subtype: BinarySubtype::from(*subtype),
                bytes: bytes.clone(),
            }),
            Value::ObjectId(b) => Bson::ObjectId(bson::oid::ObjectId::from_bytes(*b)),
            Value::Timestamp(time, increment) => Bson::Timestamp(bson::Timestamp {
                time: *time,
                increment: *increment,
            }),
            Value::DateTime(ms) => Bson::DateTime(bson::DateTime::from_millis(*ms)),
            Value::Decimal(b) => Bson::Decimal128(bson::Decimal128::from_bytes(*b)),
            // A NUL in a regex or key cannot be encoded; such values are dropped to null.
            Value::Regex(p, o) if !p.contains('\0') && !o.contains('\0') => {
                Bson::RegularExpression(bson::Regex {
                    pattern: p.clone(),
                    options: o.clone(),
                })
            }
            Value::Regex(..) => Bson::Null,
            Value::MinKey => Bson::MinKey,
            Value::MaxKey => Bson::MaxKey,
            Value::Undefined => Bson::Undefined,
        }
    }
}

fn key_name(key: &Key) -> Option<&str> {
    match key {
        Key::Known(k) => Some(k.name()),
        Key::Named(s) if !s.contains('\0') => Some(s),
        Key::Named(_) => None,
    }
}

fn fields_to_doc(fields: &[(Key, Value)], depth: usize) -> Document {
    let mut d = Document::new();
    for (k, v) in fields {
        if let Some(name) = key_name(k) {
            d.insert(name, v.to_bson(depth));
        }
    }
    d
}

/// The `lsid` document of session `n`.
pub fn lsid(n: u8) -> Document {
    doc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![n % 3 + 1; 16] } }
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::App => "app",
            Db::Other => "other",
            Db::Admin => "admin",
        }
    }
}

impl Cmd {
    /// The body to send; `cursor_id` is the id chosen for `cursor`, `mark` the request's tag.
    pub fn body(&self, cursor_id: i64, mark: &str) -> Document {
        let coll = format!("c{}", self.coll % 3);
        let batches = i32::from(self.batches % 4);
        let mut d = match &self.kind {
            Kind::Find => doc! { "find": &coll, "filter": {}, "fuzzBatches": batches },
            Kind::Aggregate => {
                doc! { "aggregate": &coll, "pipeline": [], "cursor": {}, "fuzzBatches": batches }
            }
            Kind::Insert => doc! { "insert": &coll, "documents": [{ "_id": 1 }] },
            Kind::GetMore => doc! { "getMore": cursor_id, "collection": &coll },
            Kind::KillCursors => doc! { "killCursors": &coll, "cursors": [cursor_id] },
            Kind::Commit => doc! { "commitTransaction": 1 },
            Kind::Abort => doc! { "abortTransaction": 1 },
            Kind::EndSessions => doc! { "endSessions": [lsid(self.lsid.unwrap_or(0))] },
            Kind::Ping => doc! { "ping": 1 },
            Kind::Count => doc! { "count": &coll, "query": {} },
            Kind::Delete => doc! { "delete": &coll, "deletes": [{ "q": {}, "limit": 0 }] },
            Kind::ListCollections => doc! { "listCollections": 1, "cursor": {} },
            Kind::Named(n) if !n.is_empty() && !n.contains('\0') => {
                let mut d = Document::new();
                d.insert(n.as_str(), 1);
                d
            }
            Kind::Named(_) => doc! { "ping": 1 },
        };
        let db = match self.kind {
            Kind::Commit | Kind::Abort | Kind::EndSessions | Kind::Ping => Db::Admin,
            _ => self.db,
        };
        d.insert("$db", db.name());
        if let Some(n) = self.lsid {
            d.insert("lsid", lsid(n));
        }
        if let Some(t) = &self.txn {
            d.insert("txnNumber", i64::from(t.number % 4) + 1);
            d.insert("autocommit", false);
            if t.start {
                d.insert("startTransaction", true);
            }
        }
        for (k, v) in fields_to_doc(&self.extra, 1) {
            d.insert(k, v);
        }
        d.insert("fuzzMark", mark);
        d
    }

    /// Whether the reply is a cursor the client may continue.
    pub fn opens_cursor(&self) -> bool {
        matches!(self.kind, Kind::Find | Kind::Aggregate)
    }

    /// Whether the reply is a batch of an existing cursor.
    pub fn continues_cursor(&self) -> bool {
        matches!(self.kind, Kind::GetMore)
    }
}
