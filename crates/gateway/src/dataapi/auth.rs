//! Who a Data API request acts as: an API key (header `apiKey`, as the retired API) or an AWS
//! IAM principal (header `X-MongoMux-AWS-STS`: a signed STS GetCallerIdentity request, the
//! scheme of HashiCorp Vault's AWS auth), verified through the same STS client, replay guard,
//! identity mapping and failed-login throttle as MONGODB-AWS logins on the wire protocol.
//!
//! Exactly one credential, given once: two headers of one kind, or one of each, are refused
//! rather than guessed between. Failures are answered with one message whatever the cause, so
//! a prober learns nothing; the cause goes to the debug log.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::HeaderMap;

use crate::context::Shared;
use crate::error::GatewayError;
use crate::identity::users::User;

/// The header of an API key.
pub const API_KEY: &str = "apikey";
/// The header of a signed STS request.
pub const AWS_STS: &str = "x-mongomux-aws-sts";

/// Who the request acts as, for logs: the key's name or the principal's ARN.
pub struct Caller {
    /// The gateway user.
    pub user: Arc<User>,
    /// `API-KEY` or `MONGODB-AWS`.
    pub mechanism: &'static str,
}

fn only_one<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, GatewayError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| GatewayError::AuthenticationFailed),
        _ => Err(GatewayError::BadCommand(format!(
            "the {name} header is given more than once"
        ))),
    }
}

/// Authenticates the request from `client`.
pub async fn identify(
    shared: &Shared,
    client: SocketAddr,
    headers: &HeaderMap,
) -> Result<Caller, GatewayError> {
    let key = only_one(headers, API_KEY)?;
    let aws = only_one(headers, AWS_STS)?;
    let limiter = &shared.edge.limiter;
    let ip = client.ip();
    let attempt = match (key, aws) {
        (None, None) => {
            return Err(GatewayError::NoCredentials(
                "no credentials: send an apiKey header or an X-MongoMux-AWS-STS header".into(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(GatewayError::BadCommand(
                "send either an apiKey or an X-MongoMux-AWS-STS header, not both".into(),
            ))
        }
        _ => {
            // The same throttle as failed logins on the wire: a source that keeps failing
            // waits, and a long queue fails at once.
            let wait = limiter
                .reserve_source(ip)
                .ok_or(GatewayError::AuthenticationFailed)?;
            // A zero sleep still waits for the timer's next tick (a millisecond).
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            match (key, aws) {
                (Some(k), _) => by_key(shared, k),
                (_, Some(a)) => Box::pin(by_aws(shared, a)).await,
                _ => unreachable!("one credential"),
            }
        }
    };
    match &attempt {
        Ok(caller) => {
            tracing::debug!(peer = %client, user = %caller.user.name.escape_debug(), mechanism = caller.mechanism, "Data API request authenticated");
        }
        Err(e) => {
            limiter.failed(ip, None);
            let mechanism = if key.is_some() {
                "API-KEY"
            } else {
                "MONGODB-AWS"
            };
            tracing::info!(event = "auth_failed", peer = %client, mechanism, interface = "data_api", "Data API authentication failed");
            tracing::debug!(peer = %client, error = %e, "Data API authentication failure cause");
        }
    }
    attempt.map_err(|_| GatewayError::AuthenticationFailed)
}

fn by_key(shared: &Shared, key: &str) -> Result<Caller, GatewayError> {
    let settings = shared.live.settings.load();
    let found = settings
        .api_keys
        .find(key.trim())
        .ok_or(GatewayError::AuthenticationFailed)?;
    // The user may have been changed or removed by the same reload as the key.
    if !settings.users.still_valid(&found.user) {
        return Err(GatewayError::AuthenticationFailed);
    }
    Ok(Caller {
        user: found.user.clone(),
        mechanism: "API-KEY",
    })
}

async fn by_aws(shared: &Shared, header: &str) -> Result<Caller, GatewayError> {
    let (host, users) = {
        let s = shared.live.settings.load();
        (s.aws_sts_host.clone(), s.users.clone())
    };
    let sts = &shared.edge.sts;
    let request =
        match mongomux_auth::aws::http_sts_request(header, &host, std::time::SystemTime::now()) {
            Ok(r) => r,
            Err(_) => {
                sts.refused();
                return Err(GatewayError::AuthenticationFailed);
            }
        };
    let arn = sts.verify(&request).await?;
    let principal = mongomux_auth::aws::principal_arn(&arn);
    let user = users
        .get("$external", &principal)
        .ok_or(GatewayError::AuthenticationFailed)?;
    Ok(Caller {
        user,
        mechanism: "MONGODB-AWS",
    })
}
