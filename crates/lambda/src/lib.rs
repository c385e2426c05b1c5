//! The Lambda kit: a MongoDB client for AWS Lambda functions that talk to a database through
//! the mongomux gateway.
//!
//! A Lambda execution environment lives for many invocations, is frozen between them and may
//! run several at once (Lambda Managed Instances). A function that builds a `mongodb::Client`
//! per invocation pays a connection, a handshake and an authentication (with IAM, an STS call
//! at the gateway) every time, and leaves connections behind. The kit gives each environment
//! exactly one client, created on first use and shared by every invocation, with options
//! tuned for functions.
//!
//! # The pattern
//!
//! `main` creates one [`Kit`] and moves clones of it into the handler; nothing is global. The
//! first invocation creates the client, every later one (and every concurrent one) reuses it.
//!
//! ```no_run
//! use lambda_runtime::{service_fn, Error, LambdaEvent};
//! use mongomux_lambda::{mongodb::bson::{doc, Document}, Kit, LambdaOptions};
//! use serde_json::{json, Value};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Error> {
//!     lambda_runtime::tracing::init_default_subscriber();
//!     // The connection string comes from MONGOMUX_URI (or MONGODB_URI), e.g.
//!     // mongodb://gateway.internal:27018/app?loadBalanced=true : no password, so IAM is
//!     // used on Lambda.
//!     let kit = Kit::new(LambdaOptions::default());
//!     // run_concurrent takes several invocations at once on Lambda Managed Instances and
//!     // behaves like run() elsewhere; the kit is safe either way.
//!     lambda_runtime::run_concurrent(service_fn(move |ev| handler(kit.clone(), ev))).await
//! }
//!
//! async fn handler(kit: Kit, event: LambdaEvent<Value>) -> Result<Value, Error> {
//!     let events = kit.default_database().await?.collection::<Document>("events");
//!     let n = events.count_documents(doc! {}).await?;
//!     Ok(json!({ "count": n, "request": event.context.request_id }))
//! }
//! ```
//!
//! Complete functions, one per authentication style, are in `examples/lambda-iam` and
//! `examples/lambda-password`; `deploy/template.yaml` deploys them beside the gateway.
//!
//! # Pointing it at the gateway
//!
//! The connection string is, in order: [`LambdaOptions::uri`], `MONGOMUX_URI`,
//! `MONGODB_URI`. Give it the gateway's load-balancer address, one host, no `replicaSet`, with
//! `loadBalanced=true`, as `deploy/template.yaml` does:
//! `mongodb://gateway.internal:27018/app?loadBalanced=true`. A database in the path becomes
//! [`Kit::default_database`].
//!
//! Why `loadBalanced=true`: several gateways stand behind one balancer, which picks one per
//! TCP connection. In load-balanced mode the driver keeps each cursor and each transaction on
//! the connection that opened it, so on one gateway, and opens no monitoring connection (one
//! environment, one gateway connection, one IAM login). A plain `mongodb://host/` string works
//! too (the gateway answers as a mongos, and gateways that share a `session_key` continue each
//! other's sessions and cursors), but a cursor read from a secondary, for one, cannot move
//! between gateways: `docs/deploy.md`, "What cannot continue on another gateway".
//!
//! # Authentication
//!
//! [`Auth::Auto`] (the default, or `MONGOMUX_AUTH=auto|iam|uri`): a connection string that
//! names a user or a mechanism is used as it is (a password from the environment, e.g. set
//! from Secrets Manager); one with no credentials on Lambda uses IAM (MONGODB-AWS) with the
//! function's own role, whose temporary credentials Lambda puts in `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`. IAM needs the `aws-auth` feature (on by
//! default).
//!
//! # The defaults, and why
//!
//! Each can be overridden with a [`LambdaOptions`] method or in the connection string
//! (`?maxPoolSize=4`); a method wins over the string, the string over the default.
//!
//! | setting | default | why |
//! |---|---|---|
//! | `max_pool_size` | 2 ([`DEFAULT_MAX_POOL_SIZE`]); `AWS_LAMBDA_MAX_CONCURRENCY` clamped to 2..=8 | one invocation at a time needs one connection; every connection is a gateway client and, with IAM, an STS call |
//! | `min_pool_size` | 0 | no background connections that a frozen environment cannot use and a thaw would open for nothing |
//! | `server_selection_timeout` | 5 s (driver: 30 s) | fail with a real error well inside the function's timeout instead of being killed by it |
//! | `connect_timeout` | 3 s (driver: 10 s) | the gateway is in the same VPC; leaves time for a second attempt within server selection |
//! | `max_idle_time` | 240 s | below the 350 s after which an NLB or NAT gateway silently forgets an idle flow, so a thawed function never reuses a dead socket |
//! | `server_monitoring_mode` | poll | streaming keeps a `hello` pending on the server that a frozen environment can neither answer nor cancel |
//! | `retry_writes`, `retry_reads` | on | the first operation after a thaw may meet a dropped connection; one retry on a fresh one hides it |
//! | `app_name` | `AWS_LAMBDA_FUNCTION_NAME` | the gateway's logs show which function a connection is |
//!
//! Anything else: [`LambdaOptions::customize`].
//!
//! # Observing it
//!
//! Creating the client logs one line at INFO, `mongomux-lambda: created client (...)`, with
//! the effective settings (never a password), and [`Kit::clients_created`] counts it: in a
//! healthy environment both say 1, however many invocations ran. Each pooled connection the
//! driver opens or closes is logged too (`connection ready ... in N ms`, `connection closed
//! ... reason=...`; see [`LambdaOptions::log_connections`]), which shows what a cold start
//! spent on connecting and authenticating.
//!
//! # Seeing it work in CloudWatch
//!
//! Wrap each invocation in [`Kit::begin_invocation`] and [`Invocation::finish`]: every
//! invocation then logs whether the client was created (a cold start) or reused, how many
//! connections it opened and how long they took, and how many MONGODB-AWS logins it made, and
//! prints the same as one CloudWatch Embedded Metric Format line (namespace `mongomux/lambda`):
//! `ClientReused` near 1 and `ConnectionsOpened` near 0 is the advice taking effect.
//!
//! # The HTTP Data API instead of a connection
//!
//! [`DataApi`] is a small client for the gateway's Data API (`POST /action/findOne`, ...):
//! one per execution environment like the [`Kit`], keep-alive connections, canonical Extended
//! JSON both ways, an API key (`MONGOMUX_DATA_API_KEY`) or the role's credentials signed
//! afresh per request. `examples/lambda-data-api` is a complete function; docs/lambda.md has
//! its settings.

#![forbid(unsafe_code)]

pub mod data_api;
mod env;
mod error;
mod kit;
mod options;
mod report;

pub use data_api::{DataApi, DataApiAuth};
pub use env::LambdaEnv;
pub use error::Error;
pub use kit::Kit;
pub use options::{
    Auth, AuthKind, LambdaOptions, Resolved, DEFAULT_APP_NAME, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_IDLE_TIME, DEFAULT_MAX_POOL_SIZE, DEFAULT_MIN_POOL_SIZE,
    DEFAULT_SERVER_SELECTION_TIMEOUT, MAX_CONCURRENCY_POOL_CAP,
};
pub use report::{ConnectionStats, Invocation, InvocationReport};

/// The driver the kit is built on, so a function uses the same version (and `bson` through it).
pub use mongodb;
