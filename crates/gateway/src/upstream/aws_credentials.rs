//! Where the gateway's own AWS credentials come from when the upstream URI names none: the
//! standard AWS provider chain of `aws-config` (environment, shared profile, web identity,
//! ECS/Fargate container credentials, EC2 instance profile), behind one cache.
//!
//! Owns: one [`AwsCredentialSource`] per upstream configuration, built when the settings are
//! built at start-up and shared (`Arc`) by every connection the pool opens, so temporary
//! credentials are fetched once per lifetime, not once per connection. The caching rules are the
//! auth spec's ("MONGODB-AWS", "Caching Credentials"):
//!
//! - credentials with an expiry are reused while more than [`REFRESH_AHEAD`] (five minutes,
//!   or half their lifetime when they live shorter than ten) is left, then fetched again;
//! - credentials without an expiry (environment variables) are never cached: they are read
//!   again at every login, so a process that rotates them is followed;
//! - credentials are checked again at the moment of signing: less than [`MIN_VALIDITY`] left
//!   forces a fresh fetch, and if that is no better the login fails, so an expired credential
//!   is never used;
//! - a failed login clears the cache ([`AwsCredentialSource::invalidate`]);
//! - no lock is held while fetching (the spec forbids serialising logins behind one fetch);
//!   only the cache slot is written, atomically, under a short mutex.
//!
//! Why not the SDK's own identity cache: it lives inside an SDK client's runtime components and
//! has no "check again at use" step; the provider chain itself is the SDK's, unchanged.
//!
//! Never: a secret in `Debug`, a log line or an error (credentials are [`AwsCredentials`], whose
//! secrets are [`mongomux_auth::Secret`]s), and no global: the chain is built lazily by the
//! source that owns it.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use mongomux_auth::{AwsCredentials, Secret};
use tokio::sync::OnceCell;

use super::error::UpstreamError;

/// Cached credentials are fetched again this long before they expire (auth.md: valid while
/// "more than five minutes away from expiring").
pub const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
/// A credential must stay valid at least this long after it signs a login: long enough for the
/// upstream to verify the signature with STS.
pub const MIN_VALIDITY: Duration = Duration::from_secs(5);

/// Credentials as fetched, with when they stop working.
#[derive(Debug, Clone)]
struct Cached {
    credentials: AwsCredentials,
    expires: SystemTime,
    fetched: SystemTime,
}

impl Cached {
    /// Whether these may still be handed out at `now` without fetching: more than
    /// [`REFRESH_AHEAD`] left, or, for credentials that live less than twice that, more than
    /// half their lifetime (else short-lived ones would be fetched for every login).
    fn fresh_at(&self, now: SystemTime) -> bool {
        let lifetime = self
            .expires
            .duration_since(self.fetched)
            .unwrap_or_default();
        let ahead = REFRESH_AHEAD.min(lifetime / 2).max(MIN_VALIDITY);
        left_at(self.expires, now) > ahead
    }
}

/// How long until `expires`, zero once it has passed.
fn left_at(expires: SystemTime, now: SystemTime) -> Duration {
    expires.duration_since(now).unwrap_or_default()
}

/// The credential source of one upstream configuration.
pub struct AwsCredentialSource {
    /// The provider chain, built on first use (building it reads the environment and may
    /// resolve a region, which is async).
    provider: OnceCell<SharedCredentialsProvider>,
    cache: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for AwsCredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentialSource")
            .field("chain_built", &self.provider.initialized())
            .finish_non_exhaustive()
    }
}

impl AwsCredentialSource {
    /// The standard AWS provider chain. Nothing is read or fetched until the first login.
    pub fn default_chain() -> Self {
        AwsCredentialSource {
            provider: OnceCell::new(),
            cache: Mutex::new(None),
        }
    }

    /// A source over a given provider (tests, and callers that build their own chain).
    pub fn with_provider(provider: impl ProvideCredentials + 'static) -> Self {
        AwsCredentialSource {
            provider: OnceCell::new_with(Some(SharedCredentialsProvider::new(provider))),
            cache: Mutex::new(None),
        }
    }

    async fn provider(&self) -> &SharedCredentialsProvider {
        self.provider
            .get_or_init(|| async {
                // The region comes from AWS_REGION / AWS_DEFAULT_REGION only: the default region
                // chain would ask the EC2 metadata service, a slow timeout off EC2. Web identity
                // is the one provider that needs it, and EKS and Fargate set AWS_REGION.
                let chain = DefaultCredentialsChain::builder()
                    .region(EnvironmentVariableRegionProvider::new())
                    .build()
                    .await;
                SharedCredentialsProvider::new(chain)
            })
            .await
    }

    /// Credentials to sign a login with at the returned time: from the cache while fresh,
    /// otherwise fetched; at least [`MIN_VALIDITY`] left at that time, or an error after one
    /// forced refresh.
    pub async fn for_signing(&self) -> Result<(AwsCredentials, SystemTime), UpstreamError> {
        let mut forced = false;
        loop {
            let (credentials, expires) = match self.cached(SystemTime::now()) {
                Some(c) if !forced => c,
                _ => self.fetch().await?,
            };
            let now = SystemTime::now();
            if expires.is_none_or(|e| left_at(e, now) >= MIN_VALIDITY) {
                return Ok((credentials, now));
            }
            self.invalidate();
            if forced {
                return Err(UpstreamError::AwsCredentials {
                    reason: "the provider chain returned credentials that are expired or expire within 5 seconds",
                    source: None,
                });
            }
            forced = true;
        }
    }

    /// Forgets the cached credentials: the next login fetches.
    pub fn invalidate(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        // The slot is only ever replaced whole, so a panic elsewhere cannot leave it torn.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, now: SystemTime) -> Option<Sourced> {
        let slot = self.lock();
        let c = slot.as_ref().filter(|c| c.fresh_at(now))?;
        Some((c.credentials.clone(), Some(c.expires)))
    }

    /// Asks the chain (no lock held meanwhile); caches what has an expiry.
    async fn fetch(&self) -> Result<Sourced, UpstreamError> {
        let c = self
            .provider()
            .await
            .provide_credentials()
            .await
            .map_err(|source| UpstreamError::AwsCredentials {
                reason: "the AWS credential provider chain failed",
                source: Some(source),
            })?;
        let credentials = AwsCredentials {
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: Secret::new(c.secret_access_key()),
            session_token: c.session_token().map(Secret::new),
        };
        *self.lock() = c.expiry().map(|expires| Cached {
            credentials: credentials.clone(),
            expires,
            fetched: SystemTime::now(),
        });
        // Without an expiry (environment variables, static profiles) nothing is cached
        // (auth.md): they are read again at the next login.
        Ok((credentials, c.expiry()))
    }
}

/// Credentials and when they expire (`None`: they do not).
type Sourced = (AwsCredentials, Option<SystemTime>);

#[cfg(test)]
#[path = "aws_credentials_tests.rs"]
mod tests;
