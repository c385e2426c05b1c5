//! A Lambda function that reaches MongoDB through the mongomux gateway with a password: the
//! "other authentication" counterpart of `examples/lambda-iam`.
//!
//! The gateway user's SCRAM password reaches the function through its environment, never its
//! code: `MONGODB_URI` holds the whole connection string, which the deployment fills from a
//! Secrets Manager secret (`deploy/template.yaml` does, with a dynamic reference), or which an
//! operator sets by hand. Prefer `examples/lambda-iam` where the gateway can use IAM: a
//! password has to be stored, rotated and kept out of logs; a role does not.
//!
//! Environment:
//!
//! - `MONGODB_URI`: the gateway with the user, password and database, e.g.
//!   `mongodb://orders-fn:PASSWORD@gateway.internal:27018/app?authSource=admin`
//!   (percent-encode the password). `MONGOMUX_URI` is read first if set.
//! - `APP_COLLECTION` (optional): the collection, default `events`.
//!
//! Events (JSON): `{"op":"insert","doc":{...}}` inserts one document and answers its id;
//! `{"op":"count"}` (optionally with `"filter":{...}`) answers the number of documents;
//! `{"op":"ping"}` checks the connection. Every answer carries `clients_created`, which stays 1
//! for the life of the execution environment.
//!
//! Build for Lambda with `cargo lambda build --release -p lambda-password` (the binary becomes
//! `bootstrap`). `tests/python/test_lambda.py` runs it under the Lambda Runtime Interface
//! Emulator against a real gateway and checks that 100 invocations share one client.

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use mongomux_lambda::{
    mongodb::bson::{self, doc, Document},
    Auth, Kit, LambdaOptions,
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

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    // Created once per execution environment; the client inside is created on first use.
    // Auth::Uri: exactly the user and password of the connection string, even though Lambda
    // also puts the role's AWS credentials in the environment.
    let kit = Kit::new(LambdaOptions::default().auth(Auth::Uri));
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

async fn handler(
    kit: Kit,
    collection: Arc<str>,
    event: LambdaEvent<Value>,
) -> Result<Value, Error> {
    let request: Request = serde_json::from_value(event.payload)?;
    let events = kit
        .default_database()
        .await?
        .collection::<Document>(&collection);
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
