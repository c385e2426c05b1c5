//! Verifying MONGODB-AWS logins with AWS STS: one `GetCallerIdentity` call per login.
//!
//! Owns the HTTP exchange with STS (HTTPS to the regional endpoint by default, or a configured
//! endpoint such as a VPC endpoint or a local test server) and the bound on how many such
//! calls run at once. AWS allows roughly 600 GetCallerIdentity calls per second per account
//! and region, and a cold-start storm asks for one per new connection: the semaphore turns a
//! storm into a queue with a deadline, instead of a throttling storm that fails everyone.
//! Nothing is cached: a signature can only be verified by STS, and the server nonce makes every
//! request unique, so a cache could only ever admit a replay.
//!
//! The HTTP client is deliberately minimal (one request per connection, `Connection: close`,
//! bounded response size, one deadline) because STS is its only peer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongomux_auth::aws::{arn_from_response, StsRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config_error::ConfigError;
use crate::error::GatewayError;
use crate::identity::replay::ReplayGuard;
use crate::metrics::Metrics;

/// Largest STS response read.
const MAX_RESPONSE: usize = 64 * 1024;

/// Where STS requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsEndpoint {
    /// Connect with TLS.
    pub https: bool,
    /// Host to connect to.
    pub host: String,
    /// Port to connect to.
    pub port: u16,
}

impl StsEndpoint {
    /// Parses `http://host[:port]` or `https://host[:port]`, with an optional trailing `/`.
    pub fn parse(url: &str) -> Result<StsEndpoint, ConfigError> {
        let bad = || ConfigError::Invalid(format!("invalid STS endpoint {url:?}"));
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(bad());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.to_string(), p.parse().map_err(|_| bad())?)
            }
            _ => (rest.to_string(), if https { 443 } else { 80 }),
        };
        Ok(StsEndpoint { https, host, port })
    }
}

/// The STS client.
#[derive(Debug)]
pub struct Sts {
    endpoint: StsEndpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    permits: Semaphore,
    /// Nanoseconds; a reload may change it while logins are running.
    timeout: AtomicU64,
    metrics: Arc<Metrics>,
    /// Signatures already sent: a replay is refused without a call.
    replays: ReplayGuard,
}

impl Sts {
    /// A client for `endpoint` (with `tls` when it is HTTPS) running at most `concurrency`
    /// calls at once, each bounded by `timeout` including its wait for a slot.
    pub fn new(
        endpoint: StsEndpoint,
        tls: Option<Arc<rustls::ClientConfig>>,
        concurrency: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Sts {
        Sts {
            endpoint,
            tls,
            permits: Semaphore::new(concurrency.max(1)),
            timeout: AtomicU64::new(nanos(timeout)),
            metrics,
            replays: ReplayGuard::default(),
        }
    }

    /// Changes the deadline of verifications that start from now on.
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout.store(nanos(timeout), Ordering::Relaxed);
    }

    /// Sends the rebuilt request and returns the caller's ARN, or AuthenticationFailed for any
    /// refusal, error or timeout (the reason goes to the debug log, never to the client).
    pub async fn verify(&self, request: &StsRequest) -> Result<String, GatewayError> {
        if !self.replays.first_use(&request.signature) {
            tracing::debug!(
                "a MONGODB-AWS signed request was replayed; refused without an STS call"
            );
            self.refused();
            return Err(GatewayError::AuthenticationFailed);
        }
        let started = Instant::now();
        let deadline = Duration::from_nanos(self.timeout.load(Ordering::Relaxed));
        let outcome = tokio::time::timeout(deadline, async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| "closed".to_string())?;
            self.metrics.sts_queue_wait.observe(started.elapsed());
            let call = Instant::now();
            self.metrics.sts_in_flight.inc();
            let r = self.exchange(request).await;
            self.metrics.sts_in_flight.dec();
            self.metrics.sts_call.observe(call.elapsed());
            r
        })
        .await;
        self.metrics.sts_latency.observe(started.elapsed());
        let result = match outcome {
            Err(_) => Err(("timeout", "STS did not answer in time".to_string())),
            Ok(Err(e)) => Err(("error", e)),
            Ok(Ok((200, body))) => match arn_from_response(&body) {
                Some(arn) => Ok(arn.to_string()),
                None => Err(("error", "STS answered 200 without an Arn".to_string())),
            },
            Ok(Ok((status, body))) if status == 429 || body.contains("Throttl") => {
                Err(("throttled", format!("STS throttled the request ({status})")))
            }
            Ok(Ok((status, _))) => Err(("denied", format!("STS refused the signature ({status})"))),
        };
        match result {
            Ok(arn) => {
                self.metrics.count_sts("ok");
                Ok(arn)
            }
            Err((kind, why)) => {
                self.metrics.count_sts(kind);
                tracing::debug!(result = kind, "{why}");
                Err(GatewayError::AuthenticationFailed)
            }
        }
    }

    /// Counts a login refused by the gateway's own checks, before any STS call.
    pub fn refused(&self) {
        self.metrics.count_sts("refused");
    }

    async fn exchange(&self, request: &StsRequest) -> Result<(u16, String), String> {
        let ep = &self.endpoint;
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("connect to STS: {e}"))?;
        let mut head = String::from("POST / HTTP/1.1\r\n");
        for (k, v) in &request.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("connection: close\r\n\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(request.body.as_bytes());
        let response = match &self.tls {
            None => roundtrip(tcp, &raw).await,
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
                    .map_err(|_| "bad STS host name".to_string())?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with STS: {e}"))?;
                roundtrip(tls, &raw).await
            }
        }?;
        parse_response(&response)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn roundtrip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> Result<Vec<u8>, String> {
    s.write_all(request)
        .await
        .map_err(|e| format!("send to STS: {e}"))?;
    let mut out = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("read from STS: {e}"))?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > MAX_RESPONSE {
            return Err("STS response too large".into());
        }
        out.extend_from_slice(&buf[..n]);
        // The slot covers the whole connection, until the server closes it (the request says
        // `Connection: close`), so STS never sees more connections than the bound. Stopping at
        // the end of the response would free the slot sooner but leave closing connections
        // beyond it.
    }
}

/// Status code and body of an HTTP/1.1 response (plain or chunked body).
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("malformed STS response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("malformed STS status line")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            StsEndpoint::parse("http://127.0.0.1:5000/").unwrap(),
            StsEndpoint {
                https: false,
                host: "127.0.0.1".into(),
                port: 5000
            }
        );
        assert_eq!(
            StsEndpoint::parse("https://sts.us-west-2.amazonaws.com")
                .unwrap()
                .port,
            443
        );
        assert!(StsEndpoint::parse("ftp://x").is_err());
        assert!(StsEndpoint::parse("http://x/path").is_err());
    }

    #[test]
    fn responses() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n<Arn>a</Arn>";
        assert_eq!(parse_response(plain).unwrap().0, 200);
        let chunked =
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (403, "hello".to_string()));
        assert!(parse_response(b"garbage").is_err());
    }
}
