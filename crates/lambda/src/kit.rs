//! [`Kit`]: the one MongoDB client of an execution environment.
//!
//! Owns: creating the client on first use, sharing it with every later and every concurrent
//! invocation, and saying so once in the log (`mongomux-lambda: created client`) and in a
//! counter ([`Kit::clients_created`]), which is how tests and operators check that an
//! environment never builds a second one.
//!
//! Must never: be a global. A function's `main` makes one `Kit` and moves clones of it into
//! the handler; everything it shares lives behind the `Arc` inside.
//!
//! # Concurrency note
//!
//! The client sits in a [`tokio::sync::OnceCell`]. On a multi-concurrency runtime (Lambda
//! Managed Instances, `AWS_LAMBDA_MAX_CONCURRENCY`) several invocations can ask for it before
//! it exists: `get_or_try_init` lets exactly one of them build it while the others wait, and
//! all of them get the same client. If building fails (a bad connection string), the cell
//! stays empty and the next caller tries again, so one bad cold start does not poison the
//! environment. Building a client opens no connection, so the wait is short; connecting and
//! authenticating happen in the driver's pool, shared the same way.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};
use std::time::Instant;

use mongodb::{Client, Database};
use tokio::sync::OnceCell;

use crate::report::{ConnectionStats, Invocation};
use crate::{env::LambdaEnv, error::Error, options::AuthKind, options::LambdaOptions};

/// The shared client of one execution environment. Cheap to clone: clones share the client.
///
/// ```no_run
/// # async fn demo() -> Result<(), mongomux_lambda::Error> {
/// use mongomux_lambda::{Kit, LambdaOptions};
///
/// let kit = Kit::new(LambdaOptions::default().max_pool_size(1));
/// let orders = kit.database("shop").await?.collection::<mongomux_lambda::mongodb::bson::Document>("orders");
/// # let _ = orders;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Kit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: LambdaOptions,
    env: LambdaEnv,
    client: OnceCell<Client>,
    created: AtomicU64,
    /// Connections the client opened, for the per-invocation report.
    stats: Arc<ConnectionStats>,
    /// Whether the client logs in with MONGODB-AWS.
    iam: AtomicBool,
}

impl Kit {
    /// A kit for this process, with `options` over the defaults. Reads the environment now;
    /// creates the client later, on first use.
    pub fn new(options: LambdaOptions) -> Kit {
        Kit::with_env(options, LambdaEnv::from_process())
    }

    /// A kit with every setting from the environment and the defaults (`MONGOMUX_URI` or
    /// `MONGODB_URI` for the connection string).
    pub fn from_env() -> Kit {
        Kit::new(LambdaOptions::default())
    }

    /// A kit that reads `env` instead of the process environment (for tests).
    pub fn with_env(options: LambdaOptions, env: LambdaEnv) -> Kit {
        Kit {
            inner: Arc::new(Inner {
                options,
                env,
                client: OnceCell::new(),
                created: AtomicU64::new(0),
                stats: Arc::default(),
                iam: AtomicBool::new(false),
            }),
        }
    }

    /// The environment's client, created on the first call. Every caller, concurrent or
    /// later, gets the same one.
    pub async fn client(&self) -> Result<&Client, Error> {
        self.inner
            .client
            .get_or_try_init(|| self.create_client())
            .await
    }

    /// A database of the shared client.
    pub async fn database(&self, name: &str) -> Result<Database, Error> {
        Ok(self.client().await?.database(name))
    }

    /// The database the connection string names (`mongodb://gateway:27018/DATABASE`).
    pub async fn default_database(&self) -> Result<Database, Error> {
        self.client()
            .await?
            .default_database()
            .ok_or(Error::NoDefaultDatabase)
    }

    /// How many clients this kit has created: 1 once the first call succeeded, and it must stay
    /// 1 for the life of the environment.
    pub fn clients_created(&self) -> u64 {
        self.inner.created.load(Ordering::SeqCst)
    }

    /// Starts an invocation's report ([`Invocation::finish`] logs it and prints its metrics).
    pub fn begin_invocation(&self) -> Invocation {
        Invocation {
            kit: self.clone(),
            started: Instant::now(),
            created_before: self.clients_created(),
            stats_before: self.inner.stats.snapshot(),
        }
    }

    pub(crate) fn connection_stats(&self) -> (u64, u64) {
        self.inner.stats.snapshot()
    }

    pub(crate) fn uses_iam(&self) -> bool {
        self.inner.iam.load(Ordering::Relaxed)
    }

    /// The function's name (`AWS_LAMBDA_FUNCTION_NAME`), the dimension of the metrics.
    pub(crate) fn function_name(&self) -> &str {
        self.inner
            .env
            .get("AWS_LAMBDA_FUNCTION_NAME")
            .unwrap_or("unknown")
    }

    async fn create_client(&self) -> Result<Client, Error> {
        let resolved = self
            .inner
            .options
            .resolve_with(&self.inner.env, Some(self.inner.stats.clone()))
            .await?;
        self.inner
            .iam
            .store(resolved.auth == AuthKind::Iam, Ordering::Relaxed);
        let o = &resolved.client_options;
        let hosts: Vec<String> = o.hosts.iter().map(ToString::to_string).collect();
        let summary = format!(
            "hosts={} load_balanced={} auth={} app_name={} max_pool_size={} min_pool_size={} \
             server_selection_timeout={:?} connect_timeout={:?} max_idle_time={:?} \
             monitoring={:?} retry_writes={} retry_reads={} uri_from={}",
            hosts.join(","),
            o.load_balanced.unwrap_or_default(),
            resolved.auth.as_str(),
            o.app_name.as_deref().unwrap_or(""),
            o.max_pool_size.unwrap_or_default(),
            o.min_pool_size.unwrap_or_default(),
            o.server_selection_timeout.unwrap_or_default(),
            o.connect_timeout.unwrap_or_default(),
            o.max_idle_time.unwrap_or_default(),
            o.server_monitoring_mode,
            o.retry_writes.unwrap_or_default(),
            o.retry_reads.unwrap_or_default(),
            resolved.uri_origin,
        );
        let client = Client::with_options(resolved.client_options)?;
        let n = self.inner.created.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(
            clients_created = n,
            "mongomux-lambda: created client ({summary})"
        );
        Ok(client)
    }
}
