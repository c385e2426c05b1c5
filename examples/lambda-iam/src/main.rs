//! A Lambda function that reaches MongoDB through the mongomux gateway with IAM
//! authentication (MONGODB-AWS): no password anywhere, not even in Secrets Manager.
//!
//! The function's execution role is its identity. Lambda hands the role's temporary
//! credentials to the function in `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! `AWS_SESSION_TOKEN`; the driver signs an STS `GetCallerIdentity` request with them, the
//! gateway has STS check it and admits the role if one of its users names the role's ARN.
//!
//! Environment:
//!
//! - `MONGOMUX_URI`: the gateway, without credentials, with the database to use, e.g.
//!   `mongodb://gateway.internal:27018/app`.
//! - `APP_COLLECTION` (optional): the collection, default `events`.
//!
//! Events (JSON): `{"op":"insert","doc":{...}}` inserts one document and answers its id;
//! `{"op":"count"}` (optionally with `"filter":{...}`) answers the number of documents;
//! `{"op":"ping"}` checks the connection. Every answer carries `clients_created`, which stays 1
//! for the life of the execution environment.
//!
//! Build for Lambda with `cargo lambda build --release -p lambda-iam` (the binary becomes
//! `bootstrap`); `deploy/template.yaml` deploys it. Run it locally under the Lambda Runtime
//! Interface Emulator as `tests/python/test_lambda.py` does.

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
    // Auth::Iam says it outright: the connection string carries no credentials, the role does.
    let kit = Kit::new(LambdaOptions::default().auth(Auth::Iam));
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
