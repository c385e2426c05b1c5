//! The operators' reports as JSON on the metrics listener (`GET /admin/status`, `/admin/pools`,
//! `/admin/clients`, `/admin/servers`, `/admin/stats`): the same values the admin commands
//! return, for tools that speak HTTP rather than the MongoDB protocol.
//!
//! Access is its own: a bearer token whose SHA-256 is configured (`admin_token_sha256`,
//! reloadable), compared in constant time. Without a configured hash the paths answer 404, so
//! the metrics port shows nothing but metrics unless an operator asked for more. The token is
//! never logged.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::admin::clients::ClientFilter;
use crate::admin::report;
use crate::context::Shared;
use crate::metrics::http::AdminJson;

/// Clients listed at most by `/admin/status` and `/admin/clients`.
const STATUS_CLIENTS: usize = 1000;
const ALL_CLIENTS: usize = 10_000;

fn error(text: &str) -> String {
    serde_json::json!({ "error": text }).to_string()
}

/// Whether `token` hashes to `want`.
fn token_matches(token: &str, want: &[u8; 32]) -> bool {
    let got = Sha256::digest(token.as_bytes());
    got.as_slice().ct_eq(want).into()
}

/// The handler for `/admin/...` on the metrics listener.
pub(super) fn handler(shared: &Shared) -> AdminJson {
    let shared = shared.clone();
    Arc::new(move |path, bearer| {
        let section = path.strip_prefix("/admin/")?;
        let Some(want) = shared.live.settings.load().admin_token_sha256 else {
            return Some((
                "404 Not Found",
                error("the admin endpoints are off; set admin_token_sha256 to turn them on"),
            ));
        };
        if !bearer.is_some_and(|t| token_matches(t, &want)) {
            tracing::debug!(
                event = "admin_http_denied",
                "admin endpoint request without the right bearer token"
            );
            return Some((
                "401 Unauthorized",
                error("a valid bearer token is required"),
            ));
        }
        let body = shared.with_report_parts(|p| {
            let json = match section {
                "status" => serde_json::to_string(&report::status(p, STATUS_CLIENTS)),
                "pools" => serde_json::to_string(&report::pools(p)),
                "servers" => serde_json::to_string(&report::servers(p)),
                "stats" => serde_json::to_string(&report::commands(p)),
                "clients" => serde_json::to_string(&report::clients(
                    p,
                    &ClientFilter::default(),
                    ALL_CLIENTS,
                )),
                _ => return None,
            };
            Some(json.expect("reports serialize to JSON"))
        });
        Some(match body {
            Some(json) => ("200 OK", json),
            None => (
                "404 Not Found",
                error("no such report; try status, pools, clients, servers or stats"),
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_their_hash() {
        let want: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert!(token_matches("s3cret", &want));
        assert!(!token_matches("s3cret ", &want));
        assert!(!token_matches("", &want));
    }
}
