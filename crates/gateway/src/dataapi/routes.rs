//! The Data API's HTTP surface: `POST /action/{name}` (also under the retired API's prefix
//! `/app/{id}/endpoint/data/v1`), `GET /openapi.json`, and JSON errors for everything else.
//!
//! A request is checked in the order that costs least first: the action's name, `Accept`,
//! `Content-Type`, the credentials, then the body (read up to `data_api_max_body_bytes`, never
//! more), its fields, and only then the database. This module is the one place where an error
//! becomes an HTTP status and a JSON body ([`Problem`]).

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use super::actions::{self, Action};
use super::auth;
use super::ejson::{self, Format};
use super::exec;
use crate::context::Shared;
use crate::error::GatewayError;
use crate::upstream::UpstreamError;

/// The OpenAPI document of this API, served as it is.
const OPENAPI: &str = include_str!("openapi.json");

/// What a connection's requests are served with.
#[derive(Clone)]
pub struct Api {
    /// The gateway's shared parts.
    pub shared: Shared,
    /// The client's address (from a PROXY header when one was trusted).
    pub client: SocketAddr,
}

/// The router of one connection.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/action/{action}", any(action))
        .route("/app/{app}/endpoint/data/v1/action/{action}", any(action))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .with_state(api)
}

/// An error answer: status, `error_code`, message, and the database's code when it refused.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    message: String,
    mongo_code: Option<i32>,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            message: message.into(),
            mongo_code: None,
        }
    }

    /// The one mapping of a gateway error to an HTTP answer.
    fn of(e: GatewayError) -> Problem {
        use StatusCode as S;
        let (status, code) = match &e {
            GatewayError::AuthenticationFailed | GatewayError::NoCredentials(_) => {
                (S::UNAUTHORIZED, "InvalidSession")
            }
            GatewayError::Unauthorized(_) => (S::FORBIDDEN, "Forbidden"),
            GatewayError::DataApiRefused { code, .. } => {
                let mut p = Problem::new(S::BAD_REQUEST, "MongoDBError", e.to_string());
                p.mongo_code = Some(*code);
                return p;
            }
            GatewayError::Draining | GatewayError::Paused(_) => {
                (S::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            GatewayError::Upstream(u) if unavailable(u) => {
                (S::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            GatewayError::Upstream(_) | GatewayError::Io(_) => {
                (S::INTERNAL_SERVER_ERROR, "InternalServerError")
            }
            _ => (S::BAD_REQUEST, "BadRequest"),
        };
        let message = match &e {
            GatewayError::AuthenticationFailed => {
                "invalid session: the apiKey or X-MongoMux-AWS-STS credential was not accepted"
                    .to_string()
            }
            other => other.message(),
        };
        Problem::new(status, code, message)
    }
}

/// Upstream conditions that pass: no member yet, the pool busy, a member going away.
fn unavailable(e: &UpstreamError) -> bool {
    use UpstreamError as U;
    matches!(
        e,
        U::CheckoutTimeout(_)
            | U::PinTimeout(_)
            | U::PoolClosed
            | U::NoPrimary(_)
            | U::NoMember(_)
            | U::MemberGone(_)
            | U::MemberUnavailable { .. }
            | U::ConnectTimeout { .. }
            | U::Connect { .. }
    )
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message, "error_code": self.code });
        if let Some(code) = self.mongo_code {
            body["code"] = code.into();
        }
        let mut resp = (self.status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "no such endpoint; the Data API answers POST {base}/action/{name} and GET /openapi.json",
    )
    .into_response()
}

/// The response format `Accept` asks for; absent or `*/*` is JSON.
fn format_of(headers: &HeaderMap) -> Result<Format, Problem> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(Format::Json);
    };
    let text = accept.to_str().unwrap_or("");
    for part in text.split(',') {
        let media = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/ejson" => return Ok(Format::Ejson),
            "application/json" | "*/*" | "application/*" | "" => return Ok(Format::Json),
            _ => {}
        }
    }
    Err(Problem::new(
        StatusCode::NOT_ACCEPTABLE,
        "NotAcceptable",
        "Accept must allow application/json or application/ejson",
    ))
}

/// `Content-Type` must be JSON or Extended JSON (parameters such as charset allowed).
fn check_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match media.as_deref() {
        Some("application/json" | "application/ejson") => Ok(()),
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "Content-Type must be application/json or application/ejson",
        )),
    }
}

/// The action named by the path's last segment.
fn action_of(path: &str) -> Result<Action, Problem> {
    let name = path.rsplit_once("/action/").map_or("", |(_, n)| n);
    Action::parse(name).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "unknown action {:?}; the actions are findOne, find, insertOne, insertMany, updateOne, updateMany, replaceOne, deleteOne, deleteMany, aggregate",
                crate::text::bounded_prefix(name, 64)
            ),
        )
    })
}

async fn action(State(api): State<Api>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let label = Action::parse(
        req.uri()
            .path()
            .rsplit_once("/action/")
            .map_or("", |(_, n)| n),
    )
    .map_or("unknown", Action::name);
    let response = match handle(&api, req).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    };
    let metrics = &api.shared.metrics;
    metrics.count_data_api(label, response.status().as_u16());
    metrics.data_api_latency.observe(started.elapsed());
    response
}

async fn handle(api: &Api, req: Request) -> Result<Response, Problem> {
    let action = action_of(req.uri().path())?;
    if req.method() != Method::POST {
        return Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "actions take POST",
        ));
    }
    let (parts, body) = req.into_parts();
    let format = format_of(&parts.headers)?;
    check_content_type(&parts.headers)?;
    let caller = auth::identify(&api.shared, api.client, &parts.headers)
        .await
        .map_err(Problem::of)?;
    let (limit, max_documents, deadline) = {
        let s = api.shared.live.settings.load();
        (
            s.data_api_max_body_bytes,
            s.data_api_max_find_limit,
            s.message_timeout,
        )
    };
    let bytes = read_body(body, limit, deadline).await?;
    let doc = ejson::parse_body(&bytes).map_err(Problem::of)?;
    let plan = actions::plan(action, doc, max_documents).map_err(Problem::of)?;
    let reply = exec::run(&api.shared, &caller.user, &plan.command, plan.reads)
        .await
        .map_err(Problem::of)?;
    let (status, out) = actions::answer(&plan, &reply).map_err(Problem::of)?;
    let status = StatusCode::from_u16(status).expect("the answer's statuses are valid");
    Ok((
        status,
        [(header::CONTENT_TYPE, format.content_type())],
        ejson::render(out, format),
    )
        .into_response())
}

/// The body, at most `limit` bytes (a longer one is refused without reading the rest), in
/// full within `deadline` (`message_timeout`, as for a wire message): a client trickling a body
/// cannot hold a connection and a task for ever.
async fn read_body(body: Body, limit: usize, deadline: Duration) -> Result<bytes::Bytes, Problem> {
    match tokio::time::timeout(deadline, to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("the request body is larger than {limit} bytes (data_api_max_body_bytes)"),
        )),
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            format!("the request body did not arrive within {deadline:?} (message_timeout)"),
        )),
    }
}
