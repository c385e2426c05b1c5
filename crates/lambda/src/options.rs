//! Serverless defaults, and how a function's client options are put together.
//!
//! Owns: the defaults (each constant says why it has its value), the order in which settings
//! win (an explicit [`LambdaOptions`] setting, then the connection string, then the kit's
//! default), the reading of the Lambda environment ([`LambdaEnv`]) and the choice of
//! authentication ([`Auth`]).
//!
//! Must never: open a connection (building options is pure, apart from the DNS look-ups a
//! `mongodb+srv://` string needs), read the process environment anywhere but
//! [`LambdaEnv::from_process`] (tests hand in their own), or let a password reach a log line or
//! `Debug` output.

use std::{fmt, sync::Arc, time::Duration};

use mongodb::{
    event::{cmap::CmapEvent, EventHandler},
    options::{ClientOptions, ServerMonitoringMode},
};

use crate::env::LambdaEnv;
use crate::error::{redact_uri_password, redacted_uri, Error};
use crate::report::ConnectionStats;

/// Most connections the driver opens to the gateway per execution environment (unless
/// `AWS_LAMBDA_MAX_CONCURRENCY` says the environment runs several invocations at once).
///
/// Why 2: a classic Lambda environment runs one invocation at a time, which needs one
/// connection; the second covers a handler that overlaps two operations (two queries joined
/// with `tokio::join!`, or a cursor still open while it writes). Every connection is a client
/// of the gateway and, with IAM, costs one STS call at the gateway when it opens: a thousand
/// environments with the driver's default of 10 would be ten thousand connections and STS
/// calls for no gain. The gateway, not the function, holds the pool to the database.
pub const DEFAULT_MAX_POOL_SIZE: u32 = 2;

/// Upper bound of the pool when sized from `AWS_LAMBDA_MAX_CONCURRENCY` (Lambda Managed
/// Instances run that many invocations in one environment). Beyond this, invocations wait
/// briefly for a connection instead of each opening one: the gateway multiplexes anyway.
pub const MAX_CONCURRENCY_POOL_CAP: u32 = 8;

/// Connections the driver keeps open in the background: none.
///
/// Why 0: a minimum makes the driver open connections from a background task, which cannot
/// run while the environment is frozen and would open connections that no invocation asked
/// for (each an STS call at the gateway with IAM) right after every thaw.
pub const DEFAULT_MIN_POOL_SIZE: u32 = 0;

/// How long an operation waits for a usable server before it fails.
///
/// Why 5 s (the driver's default is 30 s): a function's timeout is often a few seconds, and an
/// invocation killed by its timeout reports nothing useful and is billed in full. Failing after
/// 5 s returns a real error ("no gateway reachable at …") well inside a typical timeout, and is
/// still far longer than a gateway in the same VPC takes to answer.
pub const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening one TCP connection (and TLS) may take.
///
/// Why 3 s (the driver's default is 10 s): the gateway sits behind a load balancer in the same
/// VPC, where a connect takes milliseconds; 3 s is generous for that and leaves time within
/// [`DEFAULT_SERVER_SELECTION_TIMEOUT`] for a second attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled connection idle longer than this is closed at check-out instead of reused.
///
/// Why 240 s: a frozen environment's sockets stay open on its side, but the network path can
/// forget them: a Network Load Balancer and a NAT gateway both drop a TCP flow idle for 350 s
/// without telling either end, and the next write then fails. 240 s keeps every reused
/// connection well inside that, so a thawed function opens a fresh connection instead of
/// discovering a dead one (and retrying); it is long enough that a function invoked every few
/// minutes still reuses its connection (with IAM, each new connection is an STS call). The
/// gateway itself does not close idle client connections (its `--idle-timeout` is about its
/// own upstream connections).
pub const DEFAULT_MAX_IDLE_TIME: Duration = Duration::from_secs(240);

/// Application name sent in the handshake when the function has no name (outside Lambda).
pub const DEFAULT_APP_NAME: &str = "mongomux-lambda";

/// The handshake limits `appName` to 128 bytes.
const MAX_APP_NAME_BYTES: usize = 128;

/// How the function authenticates to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    /// The connection string decides when it names a user or a mechanism; otherwise IAM when
    /// the environment has AWS credentials (always true on Lambda) and the `aws-auth` feature is
    /// on; otherwise no authentication (a local gateway with no users).
    #[default]
    Auto,
    /// MONGODB-AWS with the function's own credentials (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, read by the driver through the AWS SDK's
    /// default chain). The connection string must not name a user.
    Iam,
    /// Exactly what the connection string says (a SCRAM user and password, or nothing).
    Uri,
}

impl Auth {
    fn parse(value: &str) -> Result<Auth, Error> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Auth::Auto),
            "iam" | "aws" | "mongodb-aws" => Ok(Auth::Iam),
            "uri" | "password" | "scram" => Ok(Auth::Uri),
            _ => Err(Error::InvalidAuthMode(value.to_owned())),
        }
    }
}

/// How the built options authenticate, for the log line and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// MONGODB-AWS.
    Iam,
    /// A user name from the connection string (SCRAM, or the mechanism it names).
    Password,
    /// No credential at all.
    None,
}

impl AuthKind {
    /// `iam`, `password` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::Iam => "iam",
            AuthKind::Password => "password",
            AuthKind::None => "none",
        }
    }
}

/// Changes applied to the driver's options after everything else, for settings the kit has no
/// method for.
type Customizer = Arc<dyn Fn(&mut ClientOptions) + Send + Sync>;

/// What a function may override. Every setting left unset comes from the connection string
/// when it names it there, and otherwise from the kit's default (the `DEFAULT_*` constants).
///
/// ```
/// use std::time::Duration;
/// use mongomux_lambda::{Auth, LambdaOptions};
///
/// let options = LambdaOptions::default()
///     .max_pool_size(4)
///     .server_selection_timeout(Duration::from_secs(2))
///     .auth(Auth::Iam)
///     .customize(|o| o.heartbeat_freq = Some(Duration::from_secs(30)));
/// ```
#[derive(Clone, Default)]
pub struct LambdaOptions {
    uri: Option<String>,
    auth: Option<Auth>,
    max_pool_size: Option<u32>,
    min_pool_size: Option<u32>,
    server_selection_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    max_idle_time: Option<Duration>,
    server_monitoring_mode: Option<ServerMonitoringMode>,
    retry_writes: Option<bool>,
    retry_reads: Option<bool>,
    app_name: Option<String>,
    log_connections: Option<bool>,
    customize: Option<Customizer>,
}

impl fmt::Debug for LambdaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LambdaOptions")
            .field("uri", &self.uri.as_deref().map(redacted_uri))
            .field("auth", &self.auth)
            .field("max_pool_size", &self.max_pool_size)
            .field("min_pool_size", &self.min_pool_size)
            .field("server_selection_timeout", &self.server_selection_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_idle_time", &self.max_idle_time)
            .field("server_monitoring_mode", &self.server_monitoring_mode)
            .field("retry_writes", &self.retry_writes)
            .field("retry_reads", &self.retry_reads)
            .field("app_name", &self.app_name)
            .field("log_connections", &self.log_connections)
            .field("customize", &self.customize.as_ref().map(|_| "Fn"))
            .finish()
    }
}

/// The driver options the kit built, with what it decided about authentication.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Ready for `mongodb::Client::with_options`.
    pub client_options: ClientOptions,
    /// How the client will authenticate.
    pub auth: AuthKind,
    /// Where the connection string came from.
    pub uri_origin: &'static str,
}

impl LambdaOptions {
    /// The connection string, instead of `MONGOMUX_URI` / `MONGODB_URI`. Point it at the
    /// gateway (its load balancer), e.g.
    /// `mongodb://gateway.internal:27018/app?loadBalanced=true` (see the crate docs for why).
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = Some(uri.into());
        self
    }

    /// How to authenticate (default [`Auth::Auto`], or `MONGOMUX_AUTH`).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// See [`DEFAULT_MAX_POOL_SIZE`].
    pub fn max_pool_size(mut self, n: u32) -> Self {
        self.max_pool_size = Some(n);
        self
    }

    /// See [`DEFAULT_MIN_POOL_SIZE`].
    pub fn min_pool_size(mut self, n: u32) -> Self {
        self.min_pool_size = Some(n);
        self
    }

    /// See [`DEFAULT_SERVER_SELECTION_TIMEOUT`].
    pub fn server_selection_timeout(mut self, d: Duration) -> Self {
        self.server_selection_timeout = Some(d);
        self
    }

    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// See [`DEFAULT_MAX_IDLE_TIME`].
    pub fn max_idle_time(mut self, d: Duration) -> Self {
        self.max_idle_time = Some(d);
        self
    }

    /// Default [`ServerMonitoringMode::Poll`]: the streaming protocol keeps a `hello` waiting on
    /// the server for the client's whole life, which a frozen environment can neither answer
    /// nor cancel; polling sends one `hello` per heartbeat and nothing in between. The driver
    /// picks polling by itself when it sees `AWS_LAMBDA_RUNTIME_API`; the kit sets it
    /// explicitly so the behaviour does not hang on that detection (and is the same under the
    /// Lambda emulator, in containers and in tests).
    pub fn server_monitoring_mode(mut self, mode: ServerMonitoringMode) -> Self {
        self.server_monitoring_mode = Some(mode);
        self
    }

    /// Default on: the first operation after a thaw may meet a connection the network dropped
    /// during the freeze; one retry on a fresh connection hides that. The gateway answers as a
    /// mongos with sessions, so retryable writes are safe (each carries a `txnNumber`).
    pub fn retry_writes(mut self, on: bool) -> Self {
        self.retry_writes = Some(on);
        self
    }

    /// Default on, for the same reason as [`LambdaOptions::retry_writes`].
    pub fn retry_reads(mut self, on: bool) -> Self {
        self.retry_reads = Some(on);
        self
    }

    /// Default `AWS_LAMBDA_FUNCTION_NAME` (then [`DEFAULT_APP_NAME`]): the name shows in the
    /// gateway's logs and tells which function a connection belongs to.
    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = Some(name.into());
        self
    }

    /// Default on: log each pooled connection the driver opens (`mongomux-lambda: connection
    /// ready ... in N ms`, the time of TCP connect, handshake and authentication together) and
    /// closes (with the reason: idle, stale, error...), at INFO. A healthy warm environment
    /// logs one "ready" and nothing more; more of them explain a slow invocation (a
    /// reconnect after a freeze) or a count of STS calls at the gateway. Installed only when
    /// no CMAP event handler is set already.
    pub fn log_connections(mut self, on: bool) -> Self {
        self.log_connections = Some(on);
        self
    }

    /// Any other driver setting: `f` runs on the finished options, last, so it wins over
    /// everything above.
    pub fn customize(mut self, f: impl Fn(&mut ClientOptions) + Send + Sync + 'static) -> Self {
        self.customize = Some(Arc::new(f));
        self
    }

    /// Build the driver's options for `env`. Opens no connection (a `mongodb+srv://` string
    /// does need DNS look-ups).
    pub async fn resolve(&self, env: &LambdaEnv) -> Result<Resolved, Error> {
        self.resolve_with(env, None).await
    }

    /// [`LambdaOptions::resolve`], counting the connections the client opens into `stats`
    /// (the kit's per-invocation report) unless [`LambdaOptions::customize`] installs its own
    /// connection-pool event handler.
    pub async fn resolve_with(
        &self,
        env: &LambdaEnv,
        stats: Option<Arc<ConnectionStats>>,
    ) -> Result<Resolved, Error> {
        let (uri, origin) = self.pick_uri(env)?;
        let mut opts = ClientOptions::parse(uri)
            .await
            .map_err(|e| Error::InvalidUri {
                origin,
                reason: redact_uri_password(&e.to_string(), uri),
            })?;
        let auth = self.apply_auth(&mut opts, env)?;
        self.apply_defaults(&mut opts, env, stats);
        if let Some(f) = &self.customize {
            f(&mut opts);
        }
        Ok(Resolved {
            client_options: opts,
            auth,
            uri_origin: origin,
        })
    }

    fn pick_uri<'a>(&'a self, env: &'a LambdaEnv) -> Result<(&'a str, &'static str), Error> {
        if let Some(uri) = self.uri.as_deref() {
            return Ok((uri, "LambdaOptions::uri"));
        }
        for var in ["MONGOMUX_URI", "MONGODB_URI"] {
            if let Some(uri) = env.get(var) {
                return Ok((uri, var));
            }
        }
        Err(Error::NoUri)
    }

    fn apply_auth(&self, opts: &mut ClientOptions, env: &LambdaEnv) -> Result<AuthKind, Error> {
        let mode = match self.auth {
            Some(a) => a,
            None => env
                .get("MONGOMUX_AUTH")
                .map(Auth::parse)
                .transpose()?
                .unwrap_or_default(),
        };
        let named = opts
            .credential
            .as_ref()
            .is_some_and(|c| c.username.is_some() || c.mechanism.is_some());
        match mode {
            Auth::Uri => Ok(kind_of(opts)),
            Auth::Iam => {
                if opts
                    .credential
                    .as_ref()
                    .is_some_and(|c| c.username.is_some())
                {
                    return Err(Error::IamWithUriCredentials);
                }
                set_iam(opts)?;
                Ok(AuthKind::Iam)
            }
            Auth::Auto if named => Ok(kind_of(opts)),
            Auth::Auto if env.has_aws_credentials() && cfg!(feature = "aws-auth") => {
                set_iam(opts)?;
                Ok(AuthKind::Iam)
            }
            Auth::Auto => {
                if env.has_aws_credentials() {
                    tracing::warn!(
                        "mongomux-lambda: the connection string has no credentials and AWS \
                         credentials are in the environment, but this build lacks the aws-auth \
                         feature: connecting without authentication"
                    );
                }
                Ok(AuthKind::None)
            }
        }
    }

    fn apply_defaults(
        &self,
        opts: &mut ClientOptions,
        env: &LambdaEnv,
        stats: Option<Arc<ConnectionStats>>,
    ) {
        let pool_default = env
            .get("AWS_LAMBDA_MAX_CONCURRENCY")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map_or(DEFAULT_MAX_POOL_SIZE, |n| {
                n.clamp(DEFAULT_MAX_POOL_SIZE, MAX_CONCURRENCY_POOL_CAP)
            });
        // Each: this builder's setting, else the connection string's, else the kit's default.
        opts.max_pool_size = self
            .max_pool_size
            .or(opts.max_pool_size)
            .or(Some(pool_default));
        opts.min_pool_size = self
            .min_pool_size
            .or(opts.min_pool_size)
            .or(Some(DEFAULT_MIN_POOL_SIZE));
        opts.server_selection_timeout = self
            .server_selection_timeout
            .or(opts.server_selection_timeout)
            .or(Some(DEFAULT_SERVER_SELECTION_TIMEOUT));
        opts.connect_timeout = self
            .connect_timeout
            .or(opts.connect_timeout)
            .or(Some(DEFAULT_CONNECT_TIMEOUT));
        opts.max_idle_time = self
            .max_idle_time
            .or(opts.max_idle_time)
            .or(Some(DEFAULT_MAX_IDLE_TIME));
        opts.server_monitoring_mode = self
            .server_monitoring_mode
            .clone()
            .or(opts.server_monitoring_mode.take())
            .or(Some(ServerMonitoringMode::Poll));
        opts.retry_writes = self.retry_writes.or(opts.retry_writes).or(Some(true));
        opts.retry_reads = self.retry_reads.or(opts.retry_reads).or(Some(true));
        let name = self
            .app_name
            .clone()
            .or(opts.app_name.take())
            .or_else(|| env.get("AWS_LAMBDA_FUNCTION_NAME").map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_APP_NAME.to_owned());
        opts.app_name = Some(truncate_utf8(name, MAX_APP_NAME_BYTES));
        let log = self.log_connections.unwrap_or(true);
        if (log || stats.is_some()) && opts.cmap_event_handler.is_none() {
            opts.cmap_event_handler = Some(EventHandler::callback(move |event| {
                if let Some(s) = &stats {
                    s.note(&event);
                }
                if log {
                    log_connection_event(event);
                }
            }));
        }
    }
}

/// The connection log lines of [`LambdaOptions::log_connections`].
fn log_connection_event(event: CmapEvent) {
    match event {
        CmapEvent::ConnectionReady(e) => tracing::info!(
            "mongomux-lambda: connection ready address={} id={} in {} ms \
             (connect, handshake and authentication)",
            e.address,
            e.connection_id,
            e.duration.as_millis()
        ),
        CmapEvent::ConnectionClosed(e) => tracing::info!(
            "mongomux-lambda: connection closed address={} id={} reason={:?}",
            e.address,
            e.connection_id,
            e.reason
        ),
        _ => {}
    }
}

fn kind_of(opts: &ClientOptions) -> AuthKind {
    match &opts.credential {
        #[cfg(feature = "aws-auth")]
        Some(c) if c.mechanism == Some(mongodb::options::AuthMechanism::MongoDbAws) => {
            AuthKind::Iam
        }
        Some(c) if c.username.is_some() || c.mechanism.is_some() => AuthKind::Password,
        _ => AuthKind::None,
    }
}

#[cfg(feature = "aws-auth")]
fn set_iam(opts: &mut ClientOptions) -> Result<(), Error> {
    use mongodb::options::{AuthMechanism, Credential};
    // No user name or password: the driver then asks the AWS SDK's default credential chain,
    // which on Lambda reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.
    // Keep mechanism properties the connection string may have set.
    let properties = opts.credential.take().and_then(|c| c.mechanism_properties);
    opts.credential = Some(
        Credential::builder()
            .mechanism(AuthMechanism::MongoDbAws)
            .source("$external".to_owned())
            .mechanism_properties(properties)
            .build(),
    );
    Ok(())
}

#[cfg(not(feature = "aws-auth"))]
fn set_iam(_opts: &mut ClientOptions) -> Result<(), Error> {
    Err(Error::IamUnavailable)
}

fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
