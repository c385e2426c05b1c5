//! Every namespace (database, and collection when there is one) a request names, read from the
//! places its row of the command table says ([`Ns`]): the command's value, fields such as `to`,
//! `out` or `nsInfo`, aggregation stages at any depth, and OP_MSG document sequences.
//! Authorization judges each of them, so a namespace that is missed here escapes a user's scope;
//! that is why anything unexpected in a namespace position (a number, a document where a string
//! belongs, a namespace without a dot, an empty name, a namespace field given twice, a document
//! sequence the command does not take) is refused rather than skipped.
//!
//! The walk is bounded in depth and in the number of stages and namespaces it visits, so a
//! crafted pipeline cannot make it expensive.

use bson::{RawBsonRef, RawDocument};
use mongomux_wire::DocSequence;

use super::table::{self, Access, Ns};
use crate::error::GatewayError;

/// Deepest nesting of sub-pipelines (`$facet`, `$lookup`, `$unionWith`) the walk follows.
pub const MAX_DEPTH: usize = 8;
/// Most stages and namespaces one request may name.
pub const MAX_ITEMS: usize = 1_000;

/// Aggregation stages that show server-wide state (other clients' operations and sessions, the
/// catalog of every database): refused for every gateway user, like `currentOp`.
const SERVER_STAGES: &[&str] = &[
    "$currentOp",
    "$listCatalog",
    "$listClusterCatalog",
    "$listLocalSessions",
    "$listSampledQueries",
    "$listSessions",
    "$queryStats",
    "$shardedDataDistribution",
];

/// One namespace a request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The database.
    pub db: String,
    /// The collection; `None` when the command acts on the database as a whole.
    pub coll: Option<String>,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Found {
    /// Every namespace, in the order met.
    pub namespaces: Vec<Namespace>,
    /// A stage or option that writes (`$out`, `$merge`, `mapReduce` to a collection).
    pub writes: bool,
    /// A stage that shows server-wide state, if any.
    pub server_stage: Option<String>,
}

/// Collects the namespaces of a command whose row says `ns`. `body` is the command document,
/// `db` its `$db`, `sequences` the message's document sequences.
pub fn collect(
    ns: Ns,
    body: &RawDocument,
    db: &str,
    sequences: &[DocSequence<'_>],
) -> Result<Found, GatewayError> {
    let mut walk = Walker {
        db,
        found: Found::default(),
        items: 0,
    };
    let (name, value) = first(body)?;
    walk.command(ns, name, value, body)?;
    for seq in sequences {
        walk.sequence(name, seq, body)?;
    }
    Ok(walk.found)
}

/// Document sequences a command may carry; each stands for a field of the command.
fn sequence_expected(command: &str, identifier: &str) -> bool {
    matches!(
        (command, identifier),
        ("insert", "documents")
            | ("update", "updates")
            | ("delete", "deletes")
            | ("bulkWrite", "ops")
            | ("bulkWrite", "nsInfo")
    )
}

fn odd(what: &str, expected: &str) -> GatewayError {
    GatewayError::BadCommand(format!("{what} must be {expected}"))
}

fn bad_bson(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::InvalidBson(e.to_string())
}

/// The first element of a document: a command's name and value.
fn first(doc: &RawDocument) -> Result<(&str, RawBsonRef<'_>), GatewayError> {
    match doc.iter().next() {
        Some(element) => element.map_err(bad_bson),
        None => Err(GatewayError::BadCommand("empty command document".into())),
    }
}

/// The value of `key` in `doc`, refusing a key given twice: the gateway would judge one value
/// and the server act on the other.
fn field<'a>(doc: &'a RawDocument, key: &str) -> Result<Option<RawBsonRef<'a>>, GatewayError> {
    let mut found = None;
    for element in doc.iter() {
        let (k, v) = element.map_err(bad_bson)?;
        if k == key {
            if found.is_some() {
                return Err(GatewayError::BadCommand(format!(
                    "field {} appears twice",
                    key.escape_debug()
                )));
            }
            found = Some(v);
        }
    }
    Ok(found)
}

fn document<'a>(v: RawBsonRef<'a>, what: &str) -> Result<&'a RawDocument, GatewayError> {
    v.as_document().ok_or_else(|| odd(what, "a document"))
}

/// A database name as the server would accept it.
fn db_name(name: &str, what: &str) -> Result<String, GatewayError> {
    let bad =
        name.is_empty() || name.len() > 64 || name.contains(['.', '/', '\\', ' ', '"', '$', '\0']);
    if bad {
        return Err(odd(what, "a valid database name"));
    }
    Ok(name.to_string())
}

/// A collection name: a non-empty string without `$` or NUL.
fn coll_name(v: RawBsonRef<'_>, what: &str) -> Result<String, GatewayError> {
    match v {
        RawBsonRef::String(s) if !s.is_empty() && !s.contains(['$', '\0']) => Ok(s.to_string()),
        _ => Err(odd(what, "a collection name (a non-empty string)")),
    }
}

/// A full namespace `db.collection`.
fn full_name(v: RawBsonRef<'_>, what: &str) -> Result<Namespace, GatewayError> {
    let RawBsonRef::String(s) = v else {
        return Err(odd(what, "a namespace string (db.collection)"));
    };
    let Some((db, coll)) = s.split_once('.') else {
        return Err(odd(what, "a namespace string (db.collection)"));
    };
    Ok(Namespace {
        db: db_name(db, what)?,
        coll: Some(coll_name(RawBsonRef::String(coll), what)?),
    })
}

fn is_one(v: RawBsonRef<'_>) -> bool {
    matches!(v, RawBsonRef::Int32(1) | RawBsonRef::Int64(1))
        || matches!(v, RawBsonRef::Double(f) if f == 1.0)
}

struct Walker<'a> {
    db: &'a str,
    found: Found,
    items: usize,
}

impl Walker<'_> {
    fn tick(&mut self) -> Result<(), GatewayError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(GatewayError::BadCommand(format!(
                "the request names more than {MAX_ITEMS} stages and namespaces"
            )));
        }
        Ok(())
    }

    fn push(&mut self, ns: Namespace) -> Result<(), GatewayError> {
        self.tick()?;
        self.found.namespaces.push(ns);
        Ok(())
    }

    /// `$db` itself, or one of its collections.
    fn here(&mut self, coll: Option<String>) -> Result<(), GatewayError> {
        let db = db_name(self.db, "$db")?;
        self.push(Namespace { db, coll })
    }

    fn here_coll(&mut self, v: RawBsonRef<'_>, what: &str) -> Result<(), GatewayError> {
        let coll = coll_name(v, what)?;
        self.here(Some(coll))
    }

    /// The sources of one command (the request's own, or the one an `explain` wraps).
    fn command(
        &mut self,
        ns: Ns,
        name: &str,
        value: RawBsonRef<'_>,
        body: &RawDocument,
    ) -> Result<(), GatewayError> {
        match ns {
            Ns::Nothing | Ns::Server => {}
            Ns::Db => self.here(None)?,
            Ns::Collection => self.here_coll(value, name)?,
            Ns::CursorCollection => match field(body, "collection")? {
                Some(v) => self.here_coll(v, "getMore's collection")?,
                None => return Err(odd("getMore's collection", "given")),
            },
            Ns::Pipeline => {
                if is_one(value) {
                    self.here(None)?;
                } else {
                    self.here_coll(value, name)?;
                }
                if let Some(p) = field(body, "pipeline")? {
                    self.pipeline(p, 0)?;
                }
            }
            Ns::View => {
                self.here_coll(value, name)?;
                if let Some(v) = field(body, "viewOn")? {
                    self.here_coll(v, "viewOn")?;
                }
                if let Some(p) = field(body, "pipeline")? {
                    self.pipeline(p, 0)?;
                }
            }
            Ns::CloneCapped => {
                self.here_coll(value, name)?;
                if let Some(v) = field(body, "toCollection")? {
                    self.here_coll(v, "toCollection")?;
                }
            }
            Ns::MapReduce => {
                self.here_coll(value, name)?;
                if let Some(out) = field(body, "out")? {
                    self.map_reduce_out(out)?;
                }
            }
            Ns::Rename => {
                let from = full_name(value, name)?;
                self.push(from)?;
                match field(body, "to")? {
                    Some(to) => {
                        let to = full_name(to, "to")?;
                        self.push(to)?;
                    }
                    None => return Err(odd("renameCollection's to", "given")),
                }
            }
            Ns::FullName => {
                let ns = full_name(value, name)?;
                self.push(ns)?;
            }
            Ns::NsInfo => {
                if let Some(list) = field(body, "nsInfo")? {
                    let list = list.as_array().ok_or_else(|| odd("nsInfo", "an array"))?;
                    for entry in list {
                        self.ns_info(entry.map_err(bad_bson)?)?;
                    }
                }
            }
            Ns::Explain => self.explain(value)?,
        }
        Ok(())
    }

    fn explain(&mut self, value: RawBsonRef<'_>) -> Result<(), GatewayError> {
        let inner = document(value, "explain")?;
        let (name, inner_value) = first(inner)?;
        let spec = table::lookup(name);
        let explainable = matches!(spec.access, Access::Read | Access::Write)
            && !matches!(spec.ns, Ns::Explain | Ns::Server | Ns::Nothing | Ns::Db);
        if !explainable || field(inner, "$db")?.is_some() {
            return Err(GatewayError::BadCommand(format!(
                "command {} cannot be explained through mongomux",
                name.escape_debug()
            )));
        }
        self.command(spec.ns, name, inner_value, inner)
    }

    fn ns_info(&mut self, entry: RawBsonRef<'_>) -> Result<(), GatewayError> {
        let entry = document(entry, "an nsInfo entry")?;
        match field(entry, "ns")? {
            Some(ns) => {
                let ns = full_name(ns, "nsInfo.ns")?;
                self.push(ns)
            }
            None => Err(odd("nsInfo.ns", "given")),
        }
    }

    fn map_reduce_out(&mut self, out: RawBsonRef<'_>) -> Result<(), GatewayError> {
        if let RawBsonRef::String(_) = out {
            self.found.writes = true;
            return self.here_coll(out, "mapReduce's out");
        }
        let out = document(out, "mapReduce's out")?;
        if field(out, "inline")?.is_some() {
            return Ok(());
        }
        self.found.writes = true;
        let mut coll = None;
        for action in ["replace", "merge", "reduce"] {
            if let Some(v) = field(out, action)? {
                if coll.is_some() {
                    return Err(odd("mapReduce's out", "one of replace, merge or reduce"));
                }
                coll = Some(coll_name(v, "mapReduce's out collection")?);
            }
        }
        let db = match field(out, "db")? {
            Some(RawBsonRef::String(db)) => db_name(db, "mapReduce's out.db")?,
            Some(_) => return Err(odd("mapReduce's out.db", "a database name")),
            None => db_name(self.db, "$db")?,
        };
        let coll = coll.ok_or_else(|| odd("mapReduce's out", "inline or a collection"))?;
        self.push(Namespace {
            db,
            coll: Some(coll),
        })
    }

    /// One OP_MSG document sequence: only the fields the command takes as sequences, never one
    /// also given in the body, and `nsInfo` read like the body's.
    fn sequence(
        &mut self,
        command: &str,
        seq: &DocSequence<'_>,
        body: &RawDocument,
    ) -> Result<(), GatewayError> {
        if !sequence_expected(command, seq.identifier) {
            return Err(GatewayError::BadCommand(format!(
                "command {} takes no document sequence {}",
                command.escape_debug(),
                seq.identifier.escape_debug()
            )));
        }
        if field(body, seq.identifier)?.is_some() {
            return Err(GatewayError::BadCommand(format!(
                "field {} is given both in the command and as a document sequence",
                seq.identifier.escape_debug()
            )));
        }
        if seq.identifier == "nsInfo" {
            for entry in seq.iter() {
                self.ns_info(RawBsonRef::Document(entry))?;
            }
        }
        Ok(())
    }

    /// A pipeline (an array of stages) at nesting `depth`.
    fn pipeline(&mut self, stages: RawBsonRef<'_>, depth: usize) -> Result<(), GatewayError> {
        if depth > MAX_DEPTH {
            return Err(GatewayError::BadCommand(format!(
                "pipelines nested deeper than {MAX_DEPTH} are refused"
            )));
        }
        let stages = stages
            .as_array()
            .ok_or_else(|| odd("a pipeline", "an array"))?;
        for stage in stages {
            let stage = document(stage.map_err(bad_bson)?, "a pipeline stage")?;
            for element in stage.iter() {
                let (name, spec) = element.map_err(bad_bson)?;
                self.tick()?;
                self.stage(name, spec, depth)?;
            }
        }
        Ok(())
    }

    fn stage(
        &mut self,
        name: &str,
        spec: RawBsonRef<'_>,
        depth: usize,
    ) -> Result<(), GatewayError> {
        match name {
            "$lookup" | "$graphLookup" => {
                let spec = document(spec, name)?;
                if let Some(from) = field(spec, "from")? {
                    self.target(from, "from")?;
                }
                if let Some(p) = field(spec, "pipeline")? {
                    self.pipeline(p, depth + 1)?;
                }
            }
            "$unionWith" => self.union_with(spec, depth)?,
            "$out" => {
                self.found.writes = true;
                self.target(spec, "$out")?;
            }
            "$merge" => {
                self.found.writes = true;
                if let RawBsonRef::String(_) = spec {
                    return self.target(spec, "$merge");
                }
                let spec = document(spec, name)?;
                match field(spec, "into")? {
                    Some(into) => self.target(into, "$merge.into")?,
                    None => return Err(odd("$merge.into", "given")),
                }
                if let Some(p @ RawBsonRef::Array(_)) = field(spec, "whenMatched")? {
                    self.pipeline(p, depth + 1)?;
                }
            }
            "$facet" => {
                for facet in document(spec, name)?.iter() {
                    let (_, p) = facet.map_err(bad_bson)?;
                    self.pipeline(p, depth + 1)?;
                }
            }
            "$changeStream" => {
                let spec = document(spec, name)?;
                if field(spec, "allChangesForCluster")? == Some(RawBsonRef::Boolean(true)) {
                    self.found.server_stage = Some(name.to_string());
                }
            }
            _ if SERVER_STAGES.contains(&name) => self.found.server_stage = Some(name.to_string()),
            _ => {}
        }
        Ok(())
    }

    fn union_with(&mut self, spec: RawBsonRef<'_>, depth: usize) -> Result<(), GatewayError> {
        if let RawBsonRef::String(_) = spec {
            return self.here_coll(spec, "$unionWith");
        }
        let spec = document(spec, "$unionWith")?;
        let db = match field(spec, "db")? {
            Some(RawBsonRef::String(db)) => Some(db_name(db, "$unionWith.db")?),
            Some(_) => return Err(odd("$unionWith.db", "a database name")),
            None => None,
        };
        match field(spec, "coll")? {
            Some(coll) => {
                let coll = coll_name(coll, "$unionWith.coll")?;
                let db = match db {
                    Some(db) => db,
                    None => db_name(self.db, "$db")?,
                };
                self.push(Namespace {
                    db,
                    coll: Some(coll),
                })?;
            }
            None if db.is_some() => return Err(odd("$unionWith.coll", "given with db")),
            None => {}
        }
        if let Some(p) = field(spec, "pipeline")? {
            self.pipeline(p, depth + 1)?;
        }
        Ok(())
    }

    /// A stage's target: a collection of `$db`, or `{db, coll}`.
    fn target(&mut self, v: RawBsonRef<'_>, what: &str) -> Result<(), GatewayError> {
        if let RawBsonRef::String(_) = v {
            return self.here_coll(v, what);
        }
        let target = document(v, what)?;
        let db = match field(target, "db")? {
            Some(RawBsonRef::String(db)) => db_name(db, what)?,
            Some(_) => return Err(odd(what, "{db: <string>, coll: <string>}")),
            None => db_name(self.db, "$db")?,
        };
        let coll = match field(target, "coll")? {
            Some(coll) => coll_name(coll, what)?,
            None => return Err(odd(what, "{db: <string>, coll: <string>}")),
        };
        self.push(Namespace {
            db,
            coll: Some(coll),
        })
    }
}
