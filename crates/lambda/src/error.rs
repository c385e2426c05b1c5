//! The kit's one error type, and the redaction that keeps passwords out of it.
//!
//! Owns: every way building the shared client (or the Data API client, and its requests) can
//! fail, each with a message a function author can act on. Must never: put a password, secret key or session token into a message. A
//! connection string can carry a password, so any text derived from one (the driver's parse
//! errors included) goes through [`redact_uri_password`] first.

/// Why the kit could not give a function its client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection string in the options nor in `MONGOMUX_URI` / `MONGODB_URI`.
    #[error(
        "no connection string: set MONGOMUX_URI (or MONGODB_URI) in the function's environment, \
         or pass LambdaOptions::uri"
    )]
    NoUri,

    /// The connection string did not parse; `reason` has any password replaced by `***`.
    #[error("invalid connection string from {origin}: {reason}")]
    InvalidUri {
        /// Where it came from: `LambdaOptions::uri`, `MONGOMUX_URI` or `MONGODB_URI`.
        origin: &'static str,
        /// The driver's explanation, redacted.
        reason: String,
    },

    /// IAM authentication was asked for, but the kit was built without its `aws-auth` feature.
    #[error(
        "IAM (MONGODB-AWS) authentication needs the `aws-auth` feature of mongomux-lambda \
         (on by default; this build turned it off)"
    )]
    IamUnavailable,

    /// IAM authentication was asked for explicitly, but the connection string names a user.
    #[error(
        "IAM authentication takes its credentials from the function's environment: remove the \
         user name and password from the connection string, or use Auth::Uri"
    )]
    IamWithUriCredentials,

    /// `MONGOMUX_AUTH` holds something other than `auto`, `iam` or `uri`.
    #[error("MONGOMUX_AUTH={0:?} is not one of auto, iam, uri")]
    InvalidAuthMode(String),

    /// [`crate::Kit::default_database`] was called but the connection string names no database.
    #[error(
        "the connection string names no database (mongodb://host/DATABASE); use Kit::database"
    )]
    NoDefaultDatabase,

    /// The driver refused the options (for example `maxPoolSize=0`).
    #[error("MongoDB driver: {0}")]
    Driver(#[from] mongodb::error::Error),

    /// [`crate::DataApi::from_env`]: `MONGOMUX_DATA_API_URL` is not set.
    #[error(
        "no Data API address: set MONGOMUX_DATA_API_URL in the function's environment \
         (e.g. http://gateway.internal:8080)"
    )]
    NoDataApiUrl,

    /// The Data API base address is not `http://host[:port][/prefix]`. The address itself is not
    /// repeated: it could carry user info.
    #[error("invalid Data API address in {origin}: {reason}")]
    InvalidDataApiUrl {
        /// Where it came from (`MONGOMUX_DATA_API_URL` or `DataApi::new`).
        origin: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// `MONGOMUX_DATA_API_KEY` holds characters an HTTP header cannot carry (the key itself
    /// is not repeated).
    #[error("MONGOMUX_DATA_API_KEY is not a valid HTTP header value (a stray newline?)")]
    InvalidDataApiKey,

    /// The Data API client has no API key and the function's environment holds no AWS
    /// credentials to sign an IAM request with.
    #[error(
        "no Data API credentials: set MONGOMUX_DATA_API_KEY, or run with a role \
         (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY missing: {missing})"
    )]
    NoDataApiCredentials {
        /// Which variable is missing (a name, never a value).
        missing: &'static str,
    },

    /// Signing the IAM (STS GetCallerIdentity) header failed; the auth crate's messages carry no
    /// key material.
    #[error("signing the Data API IAM header: {0}")]
    DataApiSigning(#[from] mongomux_auth::AuthError),

    /// The request did not get an answer: connection refused or reset, timeout. `reason` is the
    /// HTTP client's explanation, which never quotes request headers.
    #[error("Data API {action}: no answer: {reason}")]
    DataApiTransport {
        /// The action (`findOne`, `insertOne`, ...).
        action: String,
        /// Why.
        reason: String,
    },

    /// The gateway answered with an error status. `error` and `error_code` are the answer's
    /// fields (e.g. `InvalidSession`), `error_code` empty when it had none.
    #[error("Data API {action}: HTTP {status} {error_code}: {error}")]
    DataApi {
        /// The action (`findOne`, `insertOne`, ...).
        action: String,
        /// The HTTP status.
        status: u16,
        /// The answer's `error_code`.
        error_code: String,
        /// The answer's `error` message.
        error: String,
    },

    /// The gateway answered 2xx with something that is not a JSON object.
    #[error("Data API {action}: HTTP {status} with an unreadable answer: {reason}")]
    DataApiAnswer {
        /// The action.
        action: String,
        /// The HTTP status.
        status: u16,
        /// What was wrong with it.
        reason: String,
    },
}

/// `text` with the password of `uri` (as written, and percent-decoded) replaced by `***`.
///
/// Used on the driver's messages about a connection string, which may quote parts of it.
pub(crate) fn redact_uri_password(text: &str, uri: &str) -> String {
    let Some(password) = uri_password(uri) else {
        return text.to_owned();
    };
    let mut out = text.replace(password, "***");
    let decoded = percent_decode(password);
    if !decoded.is_empty() && decoded != password {
        out = out.replace(&decoded, "***");
    }
    out
}

/// The connection string with its password replaced by `***`: safe for logs and `Debug`.
pub(crate) fn redacted_uri(uri: &str) -> String {
    match uri_password(uri) {
        Some(password) => uri.replacen(&format!(":{password}@"), ":***@", 1),
        None => uri.to_owned(),
    }
}

/// The raw (still percent-encoded) password in `scheme://user:password@hosts/...`, if any.
fn uri_password(uri: &str) -> Option<&str> {
    let rest = &uri[uri.find("://")? + 3..];
    // The user info ends at the last '@' before the path: '@' is not allowed unescaped in a
    // password, but be generous and take the last one so nothing of a password leaks.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let at = authority.rfind('@')?;
    let userinfo = &authority[..at];
    let colon = userinfo.find(':')?;
    let password = &userinfo[colon + 1..];
    (!password.is_empty()).then_some(password)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_redacts_the_password() {
        let uri = "mongodb://fn:s3cr%40t@gw.internal:27018/app?authSource=admin";
        assert_eq!(uri_password(uri), Some("s3cr%40t"));
        assert_eq!(
            redacted_uri(uri),
            "mongodb://fn:***@gw.internal:27018/app?authSource=admin"
        );
        let msg = "bad password s3cr%40t or s3cr@t";
        assert_eq!(redact_uri_password(msg, uri), "bad password *** or ***");
    }

    #[test]
    fn leaves_uris_without_a_password_alone() {
        for uri in [
            "mongodb://gw.internal:27018/",
            "mongodb://fn@gw.internal:27018/",
            "mongodb://fn:@gw.internal/",
            "not a uri",
        ] {
            assert_eq!(uri_password(uri), None, "{uri}");
            assert_eq!(redacted_uri(uri), uri);
        }
    }

    #[test]
    fn an_at_sign_in_the_query_is_not_user_info() {
        let uri = "mongodb://gw:27018/?appName=a:b@c";
        assert_eq!(uri_password(uri), None);
    }
}
