//! The upstream `mongodb://` URI: where and as whom the gateway connects.
//!
//! A small parser for the one-host subset of the connection-string spec the gateway accepts
//! (another issue replaces it with a maintained parser when replica sets arrive). Errors never
//! echo the URI, since it may carry a password.

use std::path::PathBuf;

use mongomux_auth::{Mechanism, Secret};

use super::ConfigError;
pub use crate::upstream::UpstreamConfig;
use crate::upstream::{AwsStatic, UpstreamAuth};

/// Parses `mongodb://[user[:pass]@]host[:port][/db][?options]` (connection-string spec).
/// Errors never echo the URI, since it may carry a password.
pub fn parse_uri(uri: &str) -> Result<UpstreamConfig, ConfigError> {
    let rest = uri
        .strip_prefix("mongodb://")
        .ok_or_else(|| ConfigError::Invalid("upstream URI must start with mongodb://".into()))?;
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(u) => {
            let (user, pass) = match u.split_once(':') {
                Some((a, b)) => (a, Some(b)),
                None => (u, None),
            };
            (
                Some(percent_decode(user)?),
                pass.map(|p| percent_decode(p).map(Secret::new))
                    .transpose()?,
            )
        }
        None => (None, None),
    };
    if hosts.is_empty() {
        return Err(ConfigError::Invalid("upstream URI has no host".into()));
    }
    let seeds: Vec<String> = hosts
        .split(',')
        .map(|h| {
            if h.starts_with('[')
                || h.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                h.to_string()
            } else {
                format!("{h}:27017")
            }
        })
        .collect();
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, q),
        None => (tail, ""),
    };
    let default_db = path.trim_start_matches('/');
    let mut auth_source = None;
    let mut mechanism = None;
    let mut aws = false;
    let mut aws_token = None;
    let mut tls = false;
    let mut tls_ca_file = None;
    let mut topology = crate::upstream::TopologyOptions::default();
    let ms = |v: &str| -> Result<std::time::Duration, ConfigError> {
        v.parse::<u64>()
            .map(std::time::Duration::from_millis)
            .map_err(|_| ConfigError::Invalid("a *MS upstream URI option is not a number".into()))
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k.to_ascii_lowercase().as_str() {
            "authsource" => auth_source = Some(percent_decode(v)?),
            "authmechanism" if v == "MONGODB-AWS" => aws = true,
            "authmechanismproperties" => aws_token = Some(session_token(v)?),
            "authmechanism" => {
                mechanism = Some(Mechanism::from_name(v).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "unsupported upstream authMechanism {v:?}; use SCRAM-SHA-256 or SCRAM-SHA-1"
                    ))
                })?)
            }
            "tls" | "ssl" => tls = v.eq_ignore_ascii_case("true"),
            "tlscafile" => tls_ca_file = Some(PathBuf::from(percent_decode(v)?)),
            "replicaset" => topology.replica_set = Some(percent_decode(v)?),
            "directconnection" => topology.direct_connection = Some(v == "true"),
            "serverselectiontimeoutms" => topology.server_selection_timeout = ms(v)?,
            "heartbeatfrequencyms" => topology.heartbeat_frequency = ms(v)?,
            "localthresholdms" => topology.local_threshold = ms(v)?,
            "connecttimeoutms" => topology.connect_timeout = ms(v)?,
            "readpreference" => {
                let mode = crate::upstream::read_pref::ReadMode::from_name(v).ok_or_else(|| {
                    ConfigError::Invalid(format!("unknown upstream readPreference {v:?}"))
                })?;
                topology.read_preference = crate::upstream::read_pref::ReadPreference {
                    mode,
                    ..Default::default()
                };
            }
            // Options that describe client behaviour the gateway does not need.
            "appname" | "retrywrites" | "retryreads" | "w" | "maxpoolsize" => {}
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unsupported upstream URI option {other:?}"
                )))
            }
        }
    }
    let explicit_source = auth_source.clone();
    let auth_source = auth_source.unwrap_or_else(|| {
        if default_db.is_empty() {
            "admin".to_string()
        } else {
            default_db.to_string()
        }
    });
    let mut cfg = UpstreamConfig::single(String::new());
    cfg.seeds = crate::upstream::Seeds::Hosts(seeds);
    cfg.topology = topology;
    cfg.auth = match (username, password) {
        (username, password) if aws => {
            aws_auth(username, password, aws_token, explicit_source.as_deref())?
        }
        _ if aws_token.is_some() => {
            return Err(ConfigError::Invalid(
                "authMechanismProperties applies to authMechanism=MONGODB-AWS only".into(),
            ))
        }
        (Some(username), password) => UpstreamAuth::Scram {
            username,
            password: password.unwrap_or_else(|| Secret::new("")),
            source: auth_source,
            mechanism,
        },
        (None, _) => UpstreamAuth::None,
    };
    cfg.tls = tls || tls_ca_file.is_some();
    cfg.tls_ca_file = tls_ca_file;
    Ok(cfg)
}

/// `authMechanismProperties=AWS_SESSION_TOKEN:<token>`, the one property MONGODB-AWS has.
fn session_token(v: &str) -> Result<Secret, ConfigError> {
    let v = percent_decode(v)?;
    match v.split_once(':') {
        Some(("AWS_SESSION_TOKEN", token)) if !token.is_empty() => Ok(Secret::new(token)),
        _ => Err(ConfigError::Invalid(
            "upstream authMechanismProperties supports AWS_SESSION_TOKEN:<token> only".into(),
        )),
    }
}

/// MONGODB-AWS (auth.md): keys from the URI (user = access key id, password = secret key,
/// optional session token) or none at all, when the AWS provider chain supplies them; the
/// source is `$external`.
fn aws_auth(
    username: Option<String>,
    password: Option<Secret>,
    token: Option<Secret>,
    source: Option<&str>,
) -> Result<UpstreamAuth, ConfigError> {
    if source.is_some_and(|s| s != "$external") {
        return Err(ConfigError::Invalid(
            "authMechanism=MONGODB-AWS needs authSource=$external (or none)".into(),
        ));
    }
    let static_credentials = match (username, password, token) {
        (None, None, None) => None,
        (Some(access_key_id), Some(secret_access_key), session_token)
            if !access_key_id.is_empty() && !secret_access_key.expose().is_empty() =>
        {
            Some(AwsStatic {
                access_key_id,
                secret_access_key,
                session_token,
            })
        }
        _ => return Err(ConfigError::Invalid(
            "MONGODB-AWS in the upstream URI needs both an access key id (user) and a secret key (password), or neither".into(),
        )),
    };
    Ok(UpstreamAuth::Aws { static_credentials })
}

fn percent_decode(s: &str) -> Result<String, ConfigError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ConfigError::Invalid("bad percent-encoding in upstream URI".into())
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConfigError::Invalid("upstream URI is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_with_credentials() {
        let u = parse_uri("mongodb://us%40er:p%3Ass@127.0.0.1:27017/app?authSource=admin&authMechanism=SCRAM-SHA-1").unwrap();
        assert_eq!(
            u.seeds,
            crate::upstream::Seeds::Hosts(vec!["127.0.0.1:27017".into()])
        );
        let UpstreamAuth::Scram {
            username,
            password,
            source,
            mechanism,
        } = &u.auth
        else {
            panic!("{u:?}")
        };
        assert_eq!(username, "us@er");
        assert_eq!(password.expose(), "p:ss");
        assert_eq!(source, "admin");
        assert_eq!(*mechanism, Some(Mechanism::ScramSha1));
        assert!(!format!("{u:?}").contains("p:ss"));
    }

    #[test]
    fn uri_with_mongodb_aws() {
        let u = parse_uri("mongodb://h:1/?authMechanism=MONGODB-AWS&authSource=$external").unwrap();
        assert!(matches!(
            u.auth,
            UpstreamAuth::Aws {
                static_credentials: None
            }
        ));
        let u = parse_uri("mongodb://h:1/?authMechanism=MONGODB-AWS").unwrap();
        assert!(matches!(u.auth, UpstreamAuth::Aws { .. }));
        let u = parse_uri(
            "mongodb://AKIDEXAMPLE:se%2Fcret@h:1/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:to%2Bk%3Den",
        )
        .unwrap();
        let UpstreamAuth::Aws {
            static_credentials: Some(s),
        } = &u.auth
        else {
            panic!("{u:?}")
        };
        assert_eq!(s.access_key_id, "AKIDEXAMPLE");
        assert_eq!(s.secret_access_key.expose(), "se/cret");
        assert_eq!(s.session_token.as_ref().unwrap().expose(), "to+k=en");
        assert!(!format!("{u:?}").contains("se/cret") && !format!("{u:?}").contains("to+k"));
        for bad in [
            "mongodb://AKID@h/?authMechanism=MONGODB-AWS",
            "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:zzTOKzz",
            "mongodb://AKID:secretpw@h/?authMechanism=MONGODB-AWS&authSource=admin",
            "mongodb://AKID:secretpw@h/?authMechanism=MONGODB-AWS&authMechanismProperties=SERVICE_NAME:x",
            "mongodb://AKID:secretpw@h/?authMechanismProperties=AWS_SESSION_TOKEN:zzTOKzz",
        ] {
            let err = parse_uri(bad).unwrap_err().to_string();
            assert!(!err.contains("secretpw") && !err.contains("zzTOKzz"), "{err}");
        }
    }

    #[test]
    fn uri_defaults_and_errors() {
        let u = parse_uri("mongodb://db.example").unwrap();
        assert_eq!(
            u.seeds,
            crate::upstream::Seeds::Hosts(vec!["db.example:27017".into()])
        );
        assert!(matches!(u.auth, UpstreamAuth::None));
        let u = parse_uri("mongodb://u:p@h:1/app").unwrap();
        assert!(matches!(&u.auth, UpstreamAuth::Scram { source, .. } if source == "app"));
        assert!(parse_uri("http://h").is_err());
        let err = parse_uri("mongodb://u:secretpw@h/?bogus=1").unwrap_err();
        assert!(!err.to_string().contains("secretpw"));
    }
}
