//! The Data API's actions: each request body, checked field by field, becomes one MongoDB
//! command, and the command's reply becomes the action's response, with the fields and HTTP
//! statuses of the retired Atlas Data API.
//!
//! Nothing here touches the network: [`plan`] is a pure function of the body and the limits,
//! [`answer`] of the reply, so every rule is unit-tested. Every body names `dataSource`,
//! `database` and `collection` (strings); an unknown field, a missing required one or a wrong
//! type is refused before anything is sent.

use bson::{doc, oid::ObjectId, Bson, Document};

use crate::error::GatewayError;

/// An action of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `findOne`.
    FindOne,
    /// `find`.
    Find,
    /// `insertOne`.
    InsertOne,
    /// `insertMany`.
    InsertMany,
    /// `updateOne`.
    UpdateOne,
    /// `updateMany`.
    UpdateMany,
    /// `replaceOne`.
    ReplaceOne,
    /// `deleteOne`.
    DeleteOne,
    /// `deleteMany`.
    DeleteMany,
    /// `aggregate`.
    Aggregate,
}

/// Every action, in the order of the API's documentation.
pub const ACTIONS: [Action; 10] = [
    Action::FindOne,
    Action::Find,
    Action::InsertOne,
    Action::InsertMany,
    Action::UpdateOne,
    Action::UpdateMany,
    Action::ReplaceOne,
    Action::DeleteOne,
    Action::DeleteMany,
    Action::Aggregate,
];

impl Action {
    /// The action named `name` (exactly, as the API spells it).
    pub fn parse(name: &str) -> Option<Action> {
        ACTIONS.into_iter().find(|a| a.name() == name)
    }

    /// The action's name.
    pub fn name(self) -> &'static str {
        match self {
            Action::FindOne => "findOne",
            Action::Find => "find",
            Action::InsertOne => "insertOne",
            Action::InsertMany => "insertMany",
            Action::UpdateOne => "updateOne",
            Action::UpdateMany => "updateMany",
            Action::ReplaceOne => "replaceOne",
            Action::DeleteOne => "deleteOne",
            Action::DeleteMany => "deleteMany",
            Action::Aggregate => "aggregate",
        }
    }

    /// The fields the body may have beyond `dataSource`, `database` and `collection`, and
    /// which of them are required.
    fn fields(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Action::FindOne => (&["filter", "projection"], &[]),
            Action::Find => (&["filter", "projection", "sort", "limit", "skip"], &[]),
            Action::InsertOne => (&["document"], &["document"]),
            Action::InsertMany => (&["documents"], &["documents"]),
            Action::UpdateOne | Action::UpdateMany => {
                (&["filter", "update", "upsert"], &["filter", "update"])
            }
            Action::ReplaceOne => (
                &["filter", "replacement", "upsert"],
                &["filter", "replacement"],
            ),
            Action::DeleteOne | Action::DeleteMany => (&["filter"], &["filter"]),
            Action::Aggregate => (&["pipeline"], &["pipeline"]),
        }
    }
}

/// The command for one request, and what the answer needs to know.
#[derive(Debug)]
pub struct Plan {
    /// The action.
    pub action: Action,
    /// The command (with `$db`).
    pub command: Document,
    /// Whether it only reads (it may go to a secondary by the deployment's read preference).
    pub reads: bool,
    /// The ids of inserted documents, in order (generated where a document had none).
    inserted_ids: Vec<Bson>,
    /// Most documents the answer may hold (`find` and `aggregate`).
    max_documents: usize,
}

fn bad(text: String) -> GatewayError {
    GatewayError::BadCommand(text)
}

fn kind(value: &Bson) -> &'static str {
    match value {
        Bson::Document(_) => "an object",
        Bson::Array(_) => "an array",
        Bson::String(_) => "a string",
        Bson::Boolean(_) => "a boolean",
        Bson::Null => "null",
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => "a number",
        _ => "an Extended JSON value",
    }
}

/// The body's fields, checked against the action's list.
struct Body {
    action: Action,
    fields: Document,
}

impl Body {
    fn take(&mut self, key: &str) -> Option<Bson> {
        self.fields.remove(key)
    }

    fn string(&mut self, key: &str) -> Result<String, GatewayError> {
        match self.take(key) {
            Some(Bson::String(s)) if !s.is_empty() && !s.contains('\0') => Ok(s),
            Some(other) => Err(bad(format!(
                "{key} must be a non-empty string, not {}",
                kind(&other)
            ))),
            None => Err(bad(format!("{key} is required"))),
        }
    }

    fn document(&mut self, key: &str) -> Result<Option<Document>, GatewayError> {
        match self.take(key) {
            Some(Bson::Document(d)) => Ok(Some(d)),
            Some(other) => Err(bad(format!(
                "{key} must be an object, not {}",
                kind(&other)
            ))),
            None => Ok(None),
        }
    }

    fn documents(&mut self, key: &str) -> Result<Option<Vec<Document>>, GatewayError> {
        let items = match self.take(key) {
            Some(Bson::Array(items)) => items,
            Some(other) => {
                return Err(bad(format!(
                    "{key} must be an array of objects, not {}",
                    kind(&other)
                )))
            }
            None => return Ok(None),
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Bson::Document(d) => Ok(d),
                other => Err(bad(format!(
                    "{key}[{i}] must be an object, not {}",
                    kind(&other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn count(&mut self, key: &str, min: i64) -> Result<Option<i64>, GatewayError> {
        let n = match self.take(key) {
            None => return Ok(None),
            Some(Bson::Int32(n)) => i64::from(n),
            Some(Bson::Int64(n)) => n,
            Some(Bson::Double(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => f as i64,
            Some(other) => {
                return Err(bad(format!(
                    "{key} must be an integer, not {}",
                    kind(&other)
                )))
            }
        };
        if n < min {
            return Err(bad(format!("{key} must be at least {min}")));
        }
        Ok(Some(n))
    }

    fn boolean(&mut self, key: &str) -> Result<bool, GatewayError> {
        match self.take(key) {
            None => Ok(false),
            Some(Bson::Boolean(b)) => Ok(b),
            Some(other) => Err(bad(format!(
                "{key} must be a boolean, not {}",
                kind(&other)
            ))),
        }
    }

    fn required_document(&mut self, key: &str) -> Result<Document, GatewayError> {
        self.document(key)?
            .ok_or_else(|| bad(format!("{key} is required for {}", self.action.name())))
    }
}

/// Checks the body of `action` and builds its command; `max_documents` bounds `find` and
/// `aggregate` (the `data_api_max_find_limit` setting).
pub fn plan(action: Action, body: Document, max_documents: usize) -> Result<Plan, GatewayError> {
    let (allowed, required) = action.fields();
    for key in body.keys() {
        let common = matches!(key.as_str(), "dataSource" | "database" | "collection");
        if !common && !allowed.contains(&key.as_str()) {
            return Err(bad(format!(
                "{} does not take the field {}",
                action.name(),
                crate::text::bounded_prefix(key, 64).escape_debug()
            )));
        }
    }
    for key in required {
        if !body.contains_key(*key) {
            return Err(bad(format!("{key} is required for {}", action.name())));
        }
    }
    let mut body = Body {
        action,
        fields: body,
    };
    body.string("dataSource")?;
    let db = body.string("database")?;
    let coll = body.string("collection")?;
    let mut plan = Plan {
        action,
        command: Document::new(),
        reads: matches!(action, Action::FindOne | Action::Find | Action::Aggregate),
        inserted_ids: Vec::new(),
        max_documents,
    };
    plan.command = match action {
        Action::FindOne | Action::Find => find(&mut body, &coll, max_documents, action)?,
        Action::InsertOne | Action::InsertMany => {
            let docs = match action {
                Action::InsertOne => vec![body.required_document("document")?],
                _ => body.documents("documents")?.unwrap_or_default(),
            };
            if docs.is_empty() {
                return Err(bad("documents must hold at least one document".into()));
            }
            let docs: Vec<Document> = docs.into_iter().map(with_id).collect();
            plan.inserted_ids = docs
                .iter()
                .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
                .collect();
            doc! { "insert": coll, "documents": docs, "ordered": true }
        }
        Action::UpdateOne | Action::UpdateMany | Action::ReplaceOne => {
            update(&mut body, &coll, action)?
        }
        Action::DeleteOne | Action::DeleteMany => {
            let filter = body.required_document("filter")?;
            let limit = i32::from(action == Action::DeleteOne);
            doc! { "delete": coll, "deletes": [ { "q": filter, "limit": limit } ], "ordered": true }
        }
        Action::Aggregate => aggregate(&mut body, &coll, max_documents, &mut plan.reads)?,
    };
    plan.command.insert("$db", db);
    Ok(plan)
}

/// A document with its `_id` first, generated when it has none (the answer reports it).
fn with_id(mut d: Document) -> Document {
    let id = d
        .remove("_id")
        .unwrap_or_else(|| Bson::ObjectId(ObjectId::new()));
    let mut out = doc! { "_id": id };
    out.extend(d);
    out
}

fn find(body: &mut Body, coll: &str, max: usize, action: Action) -> Result<Document, GatewayError> {
    let mut cmd = doc! { "find": coll, "filter": body.document("filter")?.unwrap_or_default() };
    if let Some(p) = body.document("projection")? {
        cmd.insert("projection", p);
    }
    let limit = if action == Action::FindOne {
        1
    } else {
        if let Some(s) = body.document("sort")? {
            cmd.insert("sort", s);
        }
        if let Some(skip) = body.count("skip", 0)? {
            cmd.insert("skip", skip);
        }
        match body.count("limit", 1)? {
            Some(n) if n as u64 > max as u64 => {
                return Err(bad(format!(
                    "limit {n} is above this gateway's maximum of {max} (data_api_max_find_limit)"
                )))
            }
            Some(n) => n,
            None => max as i64,
        }
    };
    // One batch, no cursor left open: the answer is complete or refused.
    cmd.insert("limit", limit);
    cmd.insert("batchSize", limit);
    cmd.insert("singleBatch", true);
    Ok(cmd)
}

fn update(body: &mut Body, coll: &str, action: Action) -> Result<Document, GatewayError> {
    let filter = body.required_document("filter")?;
    let upsert = body.boolean("upsert")?;
    let change = if action == Action::ReplaceOne {
        let r = body.required_document("replacement")?;
        if r.keys().any(|k| k.starts_with('$')) {
            return Err(bad("replacement must be a document without update operators; use updateOne to apply operators".into()));
        }
        Bson::Document(r)
    } else {
        match body.take("update") {
            Some(Bson::Document(u)) if !u.is_empty() && u.keys().all(|k| k.starts_with('$')) => {
                Bson::Document(u)
            }
            _ => {
                return Err(bad(
                    "update must be an object of update operators ($set, $inc, ...); use replaceOne to replace a document".into(),
                ))
            }
        }
    };
    let multi = action == Action::UpdateMany;
    Ok(doc! {
        "update": coll,
        "updates": [ { "q": filter, "u": change, "upsert": upsert, "multi": multi } ],
        "ordered": true,
    })
}

/// Stages that write the result and must stay last.
const WRITING_STAGES: [&str; 2] = ["$out", "$merge"];

fn aggregate(
    body: &mut Body,
    coll: &str,
    max: usize,
    reads: &mut bool,
) -> Result<Document, GatewayError> {
    let mut pipeline = body.documents("pipeline")?.unwrap_or_default();
    let writes = pipeline
        .last()
        .and_then(|s| s.keys().next())
        .is_some_and(|k| WRITING_STAGES.contains(&k.as_str()));
    if writes {
        *reads = false;
    } else {
        // One more than allowed: more than the maximum is refused rather than cut short.
        pipeline.push(doc! { "$limit": (max + 1) as i64 });
    }
    Ok(
        doc! { "aggregate": coll, "pipeline": pipeline, "cursor": { "batchSize": (max + 1) as i64 } },
    )
}

/// A refusal the database gave: its code and message, as `MongoDBError` (400).
fn refused(code: i32, message: &str) -> GatewayError {
    GatewayError::DataApiRefused {
        code,
        message: message.to_string(),
    }
}

/// The error a reply carries, if any: `ok: 0`, the first write error, a write concern error.
pub fn reply_error(reply: &Document) -> Option<GatewayError> {
    let ok = match reply.get("ok") {
        Some(Bson::Double(f)) => *f == 1.0,
        Some(Bson::Int32(n)) => *n == 1,
        Some(Bson::Int64(n)) => *n == 1,
        _ => false,
    };
    let code_of = |d: &Document| d.get_i32("code").unwrap_or(0);
    let msg_of = |d: &Document| d.get_str("errmsg").unwrap_or("").to_string();
    if !ok {
        return Some(refused(code_of(reply), &msg_of(reply)));
    }
    if let Ok(errors) = reply.get_array("writeErrors") {
        if let Some(Bson::Document(first)) = errors.first() {
            return Some(refused(code_of(first), &msg_of(first)));
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Some(refused(code_of(wce), &msg_of(wce)));
    }
    None
}

fn count(reply: &Document, key: &str) -> i64 {
    match reply.get(key) {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(f)) => *f as i64,
        _ => 0,
    }
}

/// The batch of a cursor reply, and whether the cursor is exhausted.
fn batch(reply: &Document) -> Result<(Vec<Bson>, bool), GatewayError> {
    let cursor = reply
        .get_document("cursor")
        .map_err(|_| GatewayError::BadCommand("the upstream's reply has no cursor".into()))?;
    let docs = cursor.get_array("firstBatch").cloned().unwrap_or_default();
    Ok((docs, count(cursor, "id") == 0))
}

/// The HTTP status and response document of a command's reply.
pub fn answer(plan: &Plan, reply: &Document) -> Result<(u16, Document), GatewayError> {
    if let Some(e) = reply_error(reply) {
        return Err(e);
    }
    Ok(match plan.action {
        Action::FindOne => {
            let (docs, _) = batch(reply)?;
            (
                200,
                doc! { "document": docs.into_iter().next().unwrap_or(Bson::Null) },
            )
        }
        Action::Find | Action::Aggregate => {
            let (docs, exhausted) = batch(reply)?;
            if docs.len() > plan.max_documents || !exhausted {
                return Err(bad(format!(
                    "the result holds more than {} documents (data_api_max_find_limit) or more than one reply can carry; narrow the filter or add a $limit stage",
                    plan.max_documents
                )));
            }
            (200, doc! { "documents": docs })
        }
        Action::InsertOne => (201, doc! { "insertedId": plan.inserted_ids[0].clone() }),
        Action::InsertMany => (201, doc! { "insertedIds": plan.inserted_ids.clone() }),
        Action::UpdateOne | Action::UpdateMany | Action::ReplaceOne => {
            let mut out = doc! { "matchedCount": count(reply, "n"), "modifiedCount": count(reply, "nModified") };
            let upserted = reply.get_array("upserted").ok().and_then(|u| u.first());
            if let Some(Bson::Document(u)) = upserted {
                // An upsert inserted one document; it matched none.
                out.insert("matchedCount", 0_i64);
                out.insert("upsertedId", u.get("_id").cloned().unwrap_or(Bson::Null));
            }
            (200, out)
        }
        Action::DeleteOne | Action::DeleteMany => (200, doc! { "deletedCount": count(reply, "n") }),
    })
}

/// The id and namespace of a cursor a reply left open (to kill it before the connection goes
/// back), if any.
pub fn open_cursor(reply: &Document) -> Option<(i64, String)> {
    let cursor = reply.get_document("cursor").ok()?;
    let id = count(cursor, "id");
    let ns = cursor.get_str("ns").ok()?;
    (id != 0).then(|| (id, ns.to_string()))
}

#[cfg(test)]
#[path = "actions_tests.rs"]
mod tests;
