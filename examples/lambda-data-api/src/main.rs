//! A Lambda function that stores and reads documents through the mongomux gateway's HTTP Data
//! API: no MongoDB connection, no driver handshake, one HTTP request per operation.
//!
//! The client ([`DataApi`]) is created once, in `main`, and every invocation uses a clone of
//! it, so a warm execution environment reuses its keep-alive connection. Authentication is the
//! function's execution role (a fresh STS GetCallerIdentity signature per request, from the
//! credentials Lambda puts in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`), or an API key when `MONGOMUX_DATA_API_KEY` is set.
//!
//! Environment:
//!
//! - `MONGOMUX_DATA_API_URL`: the gateway's Data API listener, e.g. `http://10.0.0.5:8080`.
//! - `MONGOMUX_DATA_API_KEY` (optional): an API key instead of IAM.
//! - `MONGOMUX_DATA_API_STS_HOST` (optional): the gateway's `aws_sts_host`.
//! - `MONGOMUX_DATA_API_DATABASE` (optional): the database, default `lambda`.
//!
//! Event: `{"action": "put", "value": X}` inserts `{value: X, at: <now>}` into `events`, reads
//! it back by its `_id` and answers `{"insertedId", "found", "reused"}`, where `reused` says the
//! client had already served an earlier invocation of this environment.
//!
//! Run it locally under the Lambda Runtime Interface Emulator as
//! `tests/python/test_lambda_data_api.py` does.

#![forbid(unsafe_code)]

use std::sync::Arc;

use lambda_runtime::{service_fn, Diagnostic, Error, LambdaEvent};
use mongomux_lambda::mongodb::bson::{Bson, DateTime};
use mongomux_lambda::DataApi;
use serde::Deserialize;
use serde_json::{json, Value};

/// The collection every `put` writes to.
const COLLECTION: &str = "events";

/// What an invocation asks for.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Put { value: Value },
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    // Once per execution environment: a bad address fails the init, not every invocation.
    let api = DataApi::from_env()?;
    let database: Arc<str> = std::env::var("MONGOMUX_DATA_API_DATABASE")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "lambda".to_owned())
        .into();
    tracing::info!(?api, %database, "lambda-data-api: client ready");
    lambda_runtime::run_concurrent(service_fn(move |event| {
        handler(api.clone(), database.clone(), event)
    }))
    .await
}

async fn handler(
    api: DataApi,
    database: Arc<str>,
    event: LambdaEvent<Value>,
) -> Result<Value, Diagnostic> {
    // Requests sent before this invocation started: only possible if the client outlived one.
    let reused = api.requests_sent() > 0;
    let Request::Put { value } =
        serde_json::from_value(event.payload).map_err(|e| diagnostic("InvalidEvent", e))?;
    let now = Bson::DateTime(DateTime::now()).into_canonical_extjson();
    let id = api
        .insert_one(&database, COLLECTION, json!({ "value": value, "at": now }))
        .await
        .map_err(|e| diagnostic("DataApi", e))?;
    let found = api
        .find_one(&database, COLLECTION, json!({ "_id": id }))
        .await
        .map_err(|e| diagnostic("DataApi", e))?;
    tracing::info!(reused, "lambda-data-api: put and read back one document");
    Ok(json!({ "insertedId": id, "found": found, "reused": reused }))
}

/// A Lambda error with a type a caller can match on (lambda_runtime would otherwise report the
/// Rust type name, `&alloc::boxed::Box<dyn ...>`). The kit's messages carry no secrets.
fn diagnostic(error_type: &str, error: impl std::fmt::Display) -> Diagnostic {
    Diagnostic {
        error_type: error_type.to_owned(),
        error_message: error.to_string(),
    }
}
