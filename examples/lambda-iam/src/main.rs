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
//! - `MONGOMUX_URI`: the gateway's load balancer, without credentials, with the database to use
//!   and `loadBalanced=true` (several gateways behind one balancer: the driver keeps each
//!   cursor and transaction on one of them), e.g.
//!   `mongodb://gateway.internal:27018/app?loadBalanced=true`, as `deploy/template.yaml` sets it.
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

#![forbid(unsafe_code)]

#[path = "../../shared/events.rs"]
mod events;

use lambda_runtime::Error;
use mongomux_lambda::{Auth, Kit, LambdaOptions};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Created once per execution environment; the client inside is created on first use.
    // Auth::Iam says it outright: the connection string carries no credentials, the role does.
    let kit = Kit::new(LambdaOptions::default().auth(Auth::Iam));
    events::run(kit).await
}
