//! [`DataApi`]: a small client for the gateway's HTTP Data API, for functions that would rather
//! send one HTTP request per operation than hold a MongoDB connection.
//!
//! Owns: the base address, the choice of credential (an API key, else IAM with the function's
//! role), the pooled keep-alive HTTP connections, and turning answers into values or [`Error`]s.
//! Like [`crate::Kit`] it is created once per execution environment (in `main`) and cloned into
//! every invocation: the clone shares the connection pool, so a warm function skips the TCP
//! handshake.
//!
//! Why IAM signs per request: the gateway accepts each signed STS header once (a replay
//! guard), and Lambda may rotate the role's credentials between invocations, so the header is
//! signed afresh, from the environment as it is at that moment, for every request.
//!
//! Plain `http://` only: the gateway's Data API listener sits beside the function in the VPC
//! (behind a load balancer that may terminate TLS). No TLS stack is built into the kit for it.
//!
//! ```no_run
//! # async fn f() -> Result<(), mongomux_lambda::Error> {
//! use mongomux_lambda::DataApi;
//! use serde_json::json;
//! // In main, once per execution environment; clones go to the invocations.
//! let api = DataApi::from_env()?;
//! let id = api.insert_one("app", "events", json!({ "n": 1 })).await?;
//! let doc = api.find_one("app", "events", json!({ "_id": id })).await?;
//! let count = api
//!     .action(
//!         "aggregate",
//!         json!({ "dataSource": "mongomux", "database": "app", "collection": "events",
//!                 "pipeline": [{ "$count": "n" }] }),
//!     )
//!     .await?;
//! # let _ = (doc, count);
//! # Ok(())
//! # }
//! ```
//!
//! Must never: put the API key, the secret key or the session token into an error, a log line
//! or `Debug` output. Keys are held as [`Secret`]; errors carry statuses, the gateway's own
//! messages and variable names only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use mongomux_auth::aws_client::{AwsChallenge, AwsCredentials};
use mongomux_auth::Secret;
use serde_json::{json, Value};

use crate::Error;

/// Canonical Extended JSON, both ways: every BSON type survives (an ObjectId stays one).
const EJSON: &str = "application/ejson";
/// The header the gateway reads an API key from.
const API_KEY_HEADER: &str = "apiKey";
/// The header the gateway reads a signed STS GetCallerIdentity request from.
const IAM_HEADER: &str = "X-MongoMux-AWS-STS";
/// The gateway's default `aws_sts_host`.
pub const DEFAULT_STS_HOST: &str = "sts.amazonaws.com";
/// How long one request may take: well inside a function's timeout, so it fails with an
/// error the function can report instead of being killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections are dropped after this: below the 350 s after which an NLB or
/// NAT gateway forgets an idle flow (the same reasoning as the kit's `max_idle_time`).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(240);
/// `dataSource` of the convenience methods: the gateway requires the field but has one source.
const DATA_SOURCE: &str = "mongomux";

/// How requests are authenticated.
#[derive(Clone, Debug)]
pub enum DataApiAuth {
    /// `apiKey: <key>` (from `mongomux api-key add`).
    ApiKey(Secret),
    /// The function's role: a fresh SigV4-signed STS GetCallerIdentity per request, for the
    /// gateway's `aws_sts_host`.
    Iam {
        /// The STS host the gateway verifies with (default [`DEFAULT_STS_HOST`]).
        sts_host: String,
    },
}

/// The Data API client. Cheap to clone; clones share the connection pool and the counters.
#[derive(Clone)]
pub struct DataApi {
    inner: Arc<Inner>,
    timeout: Duration,
}

struct Inner {
    /// `http://host:port[/prefix]`, no trailing slash.
    base: String,
    auth: DataApiAuth,
    http: Client<HttpConnector, Full<Bytes>>,
    /// Requests sent so far (answered or not): lets a function tell a fresh client from a
    /// reused one.
    requests: AtomicU64,
}

impl std::fmt::Debug for DataApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // DataApiAuth's Debug prints a key as *** (Secret).
        f.debug_struct("DataApi")
            .field("base", &self.inner.base)
            .field("auth", &self.inner.auth)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl DataApi {
    /// From the function's environment: `MONGOMUX_DATA_API_URL` (required),
    /// `MONGOMUX_DATA_API_KEY` (optional; without it IAM with the role's credentials), and
    /// `MONGOMUX_DATA_API_STS_HOST` (default `sts.amazonaws.com`).
    pub fn from_env() -> Result<DataApi, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`DataApi::from_env`] with the variables read through `get` (tests, or a function that
    /// keeps its settings elsewhere).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<DataApi, Error> {
        let set = |name: &str| get(name).filter(|v| !v.is_empty());
        let base = set("MONGOMUX_DATA_API_URL").ok_or(Error::NoDataApiUrl)?;
        let auth = match set("MONGOMUX_DATA_API_KEY") {
            Some(key) => DataApiAuth::ApiKey(Secret::new(key)),
            None => DataApiAuth::Iam {
                sts_host: set("MONGOMUX_DATA_API_STS_HOST")
                    .unwrap_or_else(|| DEFAULT_STS_HOST.to_owned()),
            },
        };
        Self::build(&base, auth, "MONGOMUX_DATA_API_URL")
    }

    /// A client for `base` (`http://host:port`, optionally with a path prefix) with `auth`.
    pub fn new(base: &str, auth: DataApiAuth) -> Result<DataApi, Error> {
        Self::build(base, auth, "DataApi::new")
    }

    fn build(base: &str, auth: DataApiAuth, origin: &'static str) -> Result<DataApi, Error> {
        let base =
            check_base(base).map_err(|reason| Error::InvalidDataApiUrl { origin, reason })?;
        if let DataApiAuth::Iam { sts_host } = &auth {
            // Fail at start-up, not at the first request, on a host with no region.
            AwsChallenge::for_http(sts_host)?;
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(DataApi {
            inner: Arc::new(Inner {
                base,
                auth,
                http,
                requests: AtomicU64::new(0),
            }),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// This handle with another per-request timeout (default [`DEFAULT_TIMEOUT`]); it still
    /// shares the connection pool with the others.
    pub fn with_timeout(mut self, timeout: Duration) -> DataApi {
        self.timeout = timeout;
        self
    }

    /// How requests are authenticated.
    pub fn auth(&self) -> &DataApiAuth {
        &self.inner.auth
    }

    /// Requests sent through this client and its clones so far. 0 at the start of an
    /// invocation means the client is new (a cold start); more means it was reused.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// `POST {base}/action/{name}` with `body` (canonical Extended JSON: the caller fills in
    /// `dataSource`, `database`, `collection` and the action's fields), answering the gateway's
    /// JSON answer, also canonical Extended JSON.
    pub async fn action(&self, name: &str, body: Value) -> Result<Value, Error> {
        // The name becomes a path segment: anything but a plain word would change the path.
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(transport(
                name,
                "not an action name (findOne, insertOne, ...)",
            ));
        }
        let (header, value) = self.auth_header(|n| std::env::var(n).ok())?;
        let request = hyper::Request::post(format!("{}/action/{name}", self.inner.base))
            .header(CONTENT_TYPE, EJSON)
            .header(ACCEPT, EJSON)
            .header(header, value)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| transport(name, e))?;
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let exchange = async {
            let response = self.inner.http.request(request).await.map_err(|e| {
                // The legacy client's Display is just "client error (Connect)"; the source
                // says why (connection refused, ...). Neither quotes request headers.
                let why = std::error::Error::source(&e)
                    .map(|s| format!("{e}: {s}"))
                    .unwrap_or_else(|| e.to_string());
                transport(name, why)
            })?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(name, e))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| transport(name, format!("timed out after {:?}", self.timeout)))??;
        answer(name, status, &bytes)
    }

    /// `findOne` in `database.collection`: the first document matching `filter` (Extended
    /// JSON), or `None`.
    pub async fn find_one(
        &self,
        database: &str,
        collection: &str,
        filter: Value,
    ) -> Result<Option<Value>, Error> {
        let mut out = self
            .action("findOne", body(database, collection, "filter", filter))
            .await?;
        Ok(match out.get_mut("document").map(Value::take) {
            None | Some(Value::Null) => None,
            Some(doc) => Some(doc),
        })
    }

    /// `insertOne` of `document` into `database.collection`: the inserted `_id`, in canonical
    /// Extended JSON (`{"$oid": "..."}` when the gateway made one).
    pub async fn insert_one(
        &self,
        database: &str,
        collection: &str,
        document: Value,
    ) -> Result<Value, Error> {
        let mut out = self
            .action(
                "insertOne",
                body(database, collection, "document", document),
            )
            .await?;
        out.get_mut("insertedId")
            .map(Value::take)
            .ok_or_else(|| Error::DataApiAnswer {
                action: "insertOne".into(),
                status: 201,
                reason: "no insertedId".into(),
            })
    }

    /// The credential header for one request: the API key, or an STS request signed now with
    /// the role's credentials as `get` reads them.
    fn auth_header(
        &self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(&'static str, HeaderValue), Error> {
        let (name, text) = match &self.inner.auth {
            DataApiAuth::ApiKey(key) => (API_KEY_HEADER, key.expose().to_owned()),
            DataApiAuth::Iam { sts_host } => {
                let credentials = role_credentials(get)?;
                let header = AwsChallenge::for_http(sts_host)?
                    .http_header(&credentials, SystemTime::now())?;
                (IAM_HEADER, header)
            }
        };
        let mut value = HeaderValue::from_str(&text).map_err(|_| Error::InvalidDataApiKey)?;
        // Keeps it out of any HTTP-level debug output (hyper's, or a proxy library's).
        value.set_sensitive(true);
        Ok((name, value))
    }
}

/// The role's temporary credentials as Lambda puts them in the environment, read now.
fn role_credentials(get: impl Fn(&str) -> Option<String>) -> Result<AwsCredentials, Error> {
    let set = |name: &str| get(name).filter(|v| !v.is_empty());
    let access_key_id = set("AWS_ACCESS_KEY_ID").ok_or(Error::NoDataApiCredentials {
        missing: "AWS_ACCESS_KEY_ID",
    })?;
    let secret = set("AWS_SECRET_ACCESS_KEY").ok_or(Error::NoDataApiCredentials {
        missing: "AWS_SECRET_ACCESS_KEY",
    })?;
    Ok(AwsCredentials {
        access_key_id,
        secret_access_key: Secret::new(secret),
        session_token: set("AWS_SESSION_TOKEN").map(Secret::new),
    })
}

/// `http://host[:port][/prefix]` without a trailing slash, or why not.
fn check_base(base: &str) -> Result<String, &'static str> {
    let base = base.trim();
    let Some(rest) = base.strip_prefix("http://") else {
        return Err(if base.starts_with("https://") {
            "https is not supported by the kit's Data API client: use http:// inside the VPC"
        } else {
            "must start with http://"
        });
    };
    let rest = rest.trim_end_matches('/');
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err("no host");
    }
    if authority.contains('@') {
        return Err("must not carry user info: use MONGOMUX_DATA_API_KEY or IAM");
    }
    if rest.contains(['?', '#']) {
        return Err("must not have a query or fragment");
    }
    let base = format!("http://{rest}");
    base.parse::<hyper::Uri>().map_err(|_| "not a valid URL")?;
    Ok(base)
}

fn body(database: &str, collection: &str, field: &str, value: Value) -> Value {
    let mut body = json!({
        "dataSource": DATA_SOURCE,
        "database": database,
        "collection": collection,
    });
    body[field] = value;
    body
}

fn transport(action: &str, reason: impl std::fmt::Display) -> Error {
    Error::DataApiTransport {
        action: action.to_owned(),
        reason: reason.to_string(),
    }
}

/// The gateway's answer: the JSON object on 2xx, else an error with its `error`/`error_code`.
fn answer(action: &str, status: u16, bytes: &[u8]) -> Result<Value, Error> {
    let parsed: Result<Value, _> = serde_json::from_slice(bytes);
    if (200..300).contains(&status) {
        return match parsed {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(unreadable(action, status, "not a JSON object".into())),
            Err(e) => Err(unreadable(action, status, e.to_string())),
        };
    }
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(clip);
    let (error, error_code) = match &parsed {
        Ok(v) => (
            field(v, "error").unwrap_or_default(),
            field(v, "error_code").unwrap_or_default(),
        ),
        // A load balancer's HTML page, say: a little of it helps, all of it does not.
        Err(_) => (clip(&String::from_utf8_lossy(bytes)), String::new()),
    };
    Err(Error::DataApi {
        action: action.to_owned(),
        status,
        error_code,
        error,
    })
}

fn unreadable(action: &str, status: u16, reason: String) -> Error {
    Error::DataApiAnswer {
        action: action.to_owned(),
        status,
        reason,
    }
}

/// At most 300 characters of a message from the other side.
fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}

#[cfg(test)]
#[path = "data_api_tests.rs"]
mod tests;
