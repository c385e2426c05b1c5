//! The event handling both example functions share (`examples/lambda-iam` and
//! `examples/lambda-password` include this file with `#[path]`): they differ only in how the
//! kit authenticates, so the handler lives once, here.
//!
//! Events (JSON): `{"op":"insert","doc":{...}}` inserts one document and answers its id;
//! `{"op":"count"}` (optionally with `"filter":{...}`) answers the number of documents;
//! `{"op":"ping"}` checks the connection. Every answer carries `clients_created`, which stays 1
//! for the life of the execution environment.

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use mongomux_lambda::{
    mongodb::bson::{self, doc, Document},
    Kit,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// What an invocation asks for.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Insert {
        doc: Map<String, Value>,
    },
    Count {
        #[serde(default)]
        filter: Map<String, Value>,
    },
    Ping,
}

/// Serve invocations with `kit` (created once per execution environment by the caller's `main`;
/// the client inside is created on first use) until the runtime stops.
pub async fn run(kit: Kit) -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let collection: Arc<str> = std::env::var("APP_COLLECTION")
        .unwrap_or_else(|_| "events".to_owned())
        .into();
    // run_concurrent: several invocations at once on Lambda Managed Instances, one at a time
    // elsewhere. Every invocation gets a clone of the same kit, so the same client.
    lambda_runtime::run_concurrent(service_fn(move |event| {
        handler(kit.clone(), collection.clone(), event)
    }))
    .await
}

/// One invocation, reported (cold start or reuse, connections opened, IAM logins) whether it
/// succeeds or fails: the kit logs it and prints its CloudWatch metrics line.
async fn handler(
    kit: Kit,
    collection: Arc<str>,
    event: LambdaEvent<Value>,
) -> Result<Value, Error> {
    let invocation = kit.begin_invocation();
    let result = serve(&kit, &collection, event).await;
    let report = invocation.finish();
    let mut answer = result?;
    answer["cold_start"] = json!(report.cold_start);
    answer["connections_opened"] = json!(report.connections_opened);
    Ok(answer)
}

async fn serve(kit: &Kit, collection: &str, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let request: Request = serde_json::from_value(event.payload)?;
    let events = kit
        .default_database()
        .await?
        .collection::<Document>(collection);
    let mut answer = match request {
        Request::Insert { doc } => {
            let id = events
                .insert_one(bson::to_document(&doc)?)
                .await?
                .inserted_id;
            json!({ "op": "insert", "inserted_id": id.into_relaxed_extjson() })
        }
        Request::Count { filter } => {
            let n = events.count_documents(bson::to_document(&filter)?).await?;
            json!({ "op": "count", "count": n })
        }
        Request::Ping => {
            kit.client()
                .await?
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await?;
            json!({ "op": "ping" })
        }
    };
    answer["ok"] = json!(true);
    answer["clients_created"] = json!(kit.clients_created());
    Ok(answer)
}
