//! Test conveniences over [`RawConn`]: a command whose `ok: 0` becomes a value to compare, and
//! whole-collection reads, used to check results against the upstream directly.
//!
//! These panic on I/O errors: they are for tests, where a broken connection is a failed test
//! and the message should say which command broke.

use bson::{doc, Bson, Document};

use crate::client::{RawConn, DEFAULT_LIMIT};
use crate::frame::is_ok;

/// An error reply: code and errmsg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub code: i32,
    pub message: String,
}

impl ServerError {
    fn from_doc(d: &Document) -> ServerError {
        ServerError {
            code: d.get_i32("code").unwrap_or(-1),
            message: d.get_str("errmsg").unwrap_or_default().to_string(),
        }
    }
}

impl RawConn {
    /// Run `cmd` on `db` (`$db` set here), turning `ok: 0` into a [`ServerError`]; I/O errors
    /// and timeouts ([`DEFAULT_LIMIT`]) panic.
    pub async fn run(&mut self, db: &str, mut cmd: Document) -> Result<Document, ServerError> {
        let name = cmd.keys().next().cloned().unwrap_or_default();
        cmd.insert("$db", db);
        let reply = self
            .command(&cmd, DEFAULT_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("direct {name}: {e}"));
        if is_ok(&reply) {
            Ok(reply)
        } else {
            Err(ServerError::from_doc(&reply))
        }
    }

    /// Every document of `db.coll` matching `filter` (find + getMore to the end).
    pub async fn find_all(&mut self, db: &str, coll: &str, filter: Document) -> Vec<Document> {
        let first = doc! {"find": coll, "filter": filter, "batchSize": 10_000};
        let reply = self
            .run(db, first)
            .await
            .unwrap_or_else(|e| panic!("direct find on {db}.{coll}: {e:?}"));
        let (mut docs, mut id) = batch(&reply, "firstBatch");
        while id != 0 {
            let more = doc! {"getMore": id, "collection": coll, "batchSize": 10_000};
            let reply = self
                .run(db, more)
                .await
                .unwrap_or_else(|e| panic!("direct getMore on {db}.{coll}: {e:?}"));
            let (next, next_id) = batch(&reply, "nextBatch");
            docs.extend(next);
            id = next_id;
        }
        docs
    }

    /// Number of documents of `db.coll` matching `filter`.
    pub async fn count(&mut self, db: &str, coll: &str, filter: Document) -> i64 {
        let reply = self
            .run(db, doc! {"count": coll, "query": filter})
            .await
            .unwrap_or_else(|e| panic!("direct count on {db}.{coll}: {e:?}"));
        match reply.get("n") {
            Some(Bson::Int32(n)) => *n as i64,
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Double(n)) => *n as i64,
            other => panic!("count reply without n: {other:?}"),
        }
    }
}

/// The documents of a cursor reply's `field` and the cursor id.
fn batch(reply: &Document, field: &str) -> (Vec<Document>, i64) {
    let cursor = reply.get_document("cursor").expect("reply has a cursor");
    let docs = cursor
        .get_array(field)
        .unwrap_or_else(|_| panic!("cursor without {field}"))
        .iter()
        .map(|d| d.as_document().expect("batch holds documents").clone())
        .collect();
    (docs, cursor.get_i64("id").expect("cursor id"))
}

/// The first entry of `writeErrors` in a write command's reply, if any.
pub fn first_write_error(reply: &Document) -> Option<ServerError> {
    let e = reply
        .get_array("writeErrors")
        .ok()?
        .first()?
        .as_document()?;
    Some(ServerError::from_doc(e))
}
