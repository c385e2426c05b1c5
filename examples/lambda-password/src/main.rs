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
//! - `MONGODB_URI`: the gateway's load balancer with the user, password and database, and
//!   `loadBalanced=true` as for `examples/lambda-iam`, e.g.
//!   `mongodb://orders-fn:PASSWORD@gateway.internal:27018/app?authSource=admin&loadBalanced=true`
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

#![forbid(unsafe_code)]

#[path = "../../shared/events.rs"]
mod events;

use lambda_runtime::Error;
use mongomux_lambda::{Auth, Kit, LambdaOptions};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Created once per execution environment; the client inside is created on first use.
    // Auth::Uri: exactly the user and password of the connection string, even though Lambda
    // also puts the role's AWS credentials in the environment.
    let kit = Kit::new(LambdaOptions::default().auth(Auth::Uri));
    events::run(kit).await
}
