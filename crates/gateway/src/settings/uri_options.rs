//! The upstream URI's options before the driver's parser sees them: which the gateway uses,
//! which it accepts and ignores, which it refuses, and the redaction every URI error goes
//! through.
//!
//! The driver's parser (`mongodb::options::ConnectionString`) knows the options a *client*
//! takes, and refuses some a gateway wants (`tlsAllowInvalidHostnames` with rustls,
//! `compressors` without the driver's compression features, `timeoutMS`). So the query is
//! split into pairs the way the driver splits it (at the first `?`, then at `&`), each key and
//! value is decoded by `form_urlencoded`, and every key is checked against the lists below:
//! an unknown key, a refused key or a refused mechanism is an error naming it; the few keys the
//! gateway reads itself are taken out; the rest goes to the driver unchanged.
//!
//! This module must never let a password or token into an error: [`redact`] replaces any
//! message that shares a fragment with the URI's user-info or a mechanism property.

use url::form_urlencoded;

/// Options the gateway reads (lower case, as the connection-string spec compares them).
const USED: &[&str] = &[
    "appname",
    "authmechanism",
    "authmechanismproperties",
    "authsource",
    "compressors",
    "connecttimeoutms",
    "directconnection",
    "heartbeatfrequencyms",
    "loadbalanced",
    "localthresholdms",
    "maxstalenessseconds",
    "readpreference",
    "readpreferencetags",
    "replicaset",
    "serverselectiontimeoutms",
    "srvmaxhosts",
    "srvservicename",
    "ssl",
    "tls",
    "tlsallowinvalidhostnames",
    "tlscafile",
    "tlscertificatekeyfile",
];

/// Options that describe a client application's own behaviour (retries, write and read
/// concerns, its own pool): accepted so that a driver's URI works as it is, and ignored,
/// because the gateway's own pool settings govern and clients send their concerns per command.
pub const IGNORED: &[&str] = &[
    "retrywrites",
    "retryreads",
    "w",
    "wtimeoutms",
    "journal",
    "readconcernlevel",
    "maxpoolsize",
    "minpoolsize",
    "maxidletimems",
    "waitqueuetimeoutms",
    "sockettimeoutms",
    "maxconnecting",
    "timeoutms",
    "uuidrepresentation",
    "servermonitoringmode",
    "zlibcompressionlevel",
    "maxadaptiveretries",
];

/// Ignored options the driver's parser would refuse or does not know: taken out before it runs.
const IGNORED_NOT_FOR_DRIVER: &[&str] = &["timeoutms", "zlibcompressionlevel"];

/// Options refused, with the reason given to the operator.
const REFUSED: &[(&str, &str)] = &[
    ("tlsinsecure", "it turns off certificate checks; the gateway always verifies the upstream (use tlsCAFile for a private CA)"),
    ("tlsallowinvalidcertificates", "it turns off certificate checks; the gateway always verifies the upstream (use tlsCAFile for a private CA)"),
    ("tlsdisableocspendpointcheck", "it weakens certificate checks"),
    ("tlsdisablecertificaterevocationcheck", "it weakens certificate checks"),
    ("tlscertificatekeyfilepassword", "encrypted client keys are not supported; give a decrypted key file"),
    ("proxyhost", "SOCKS5 proxies are not supported"),
    ("proxyport", "SOCKS5 proxies are not supported"),
    ("proxyusername", "SOCKS5 proxies are not supported"),
    ("proxypassword", "SOCKS5 proxies are not supported"),
];

/// Mechanisms the gateway can authenticate upstream with.
const MECHANISMS: &[&str] = &["SCRAM-SHA-256", "SCRAM-SHA-1", "MONGODB-AWS"];

/// Compressors a MongoDB server can negotiate.
const COMPRESSORS: &[&str] = &["snappy", "zlib", "zstd"];

/// The URI after the gateway's own checks, and what they read.
#[derive(Debug, Default)]
pub(super) struct Prefiltered {
    /// The URI to hand to the driver's parser (gateway-only options taken out).
    pub driver_uri: String,
    /// `compressors`, in order.
    pub compressors: Vec<String>,
    /// `tlsAllowInvalidHostnames`.
    pub allow_invalid_hostnames: bool,
    /// Ignored options present, as written.
    pub ignored: Vec<String>,
    /// The URI names `authSource` (a TXT record may not override it).
    pub auth_source: bool,
    /// The URI names `loadBalanced` (likewise).
    pub load_balanced: bool,
}

/// Checks every option key of `uri` and takes out the ones the gateway reads itself. Errors
/// name the option, never its value (callers still pass them through [`redact`]).
pub(super) fn prefilter(uri: &str) -> Result<Prefiltered, String> {
    let mut out = Prefiltered::default();
    // The driver splits at the first `?` too, so what is checked here is what it parses.
    let Some((head, query)) = uri.split_once('?') else {
        out.driver_uri = uri.to_string();
        return Ok(out);
    };
    let mut kept = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for raw in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = form_urlencoded::parse(raw.as_bytes())
            .next()
            .unwrap_or_default();
        let key_lc = key.to_ascii_lowercase();
        // As the driver does for the options it sees (this covers the ones taken out here).
        if key_lc != "readpreferencetags" && seen.contains(&key_lc) {
            return Err(format!("upstream URI option {key} is given twice"));
        }
        seen.push(key_lc.clone());
        if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == key_lc) {
            return Err(format!("upstream URI option {key} is refused: {why}"));
        }
        match key_lc.as_str() {
            "compressors" => {
                out.compressors = compressors(&value)?;
                continue;
            }
            "tlsallowinvalidhostnames" => {
                out.allow_invalid_hostnames = boolean(&key, &value)?;
                continue;
            }
            "authmechanism" if !MECHANISMS.contains(&value.as_ref()) => {
                return Err(format!(
                    "upstream authMechanism {value} is not supported; use SCRAM-SHA-256, SCRAM-SHA-1 or MONGODB-AWS"
                ));
            }
            "authsource" => out.auth_source = true,
            "loadbalanced" => out.load_balanced = true,
            _ => {}
        }
        if IGNORED.contains(&key_lc.as_str()) {
            out.ignored.push(key.to_string());
            if IGNORED_NOT_FOR_DRIVER.contains(&key_lc.as_str()) {
                continue;
            }
        } else if !USED.contains(&key_lc.as_str()) {
            return Err(format!("unknown upstream URI option {key}"));
        }
        kept.push(raw);
    }
    let has = |k: &str| {
        kept.iter().any(|raw| {
            form_urlencoded::parse(raw.as_bytes())
                .next()
                .is_some_and(|(key, _)| key.eq_ignore_ascii_case(k))
        })
    };
    // The driver drops properties given without a mechanism; a property nobody reads is an error.
    if has("authMechanismProperties") && !has("authMechanism") {
        return Err("upstream URI option authMechanismProperties needs authMechanism".into());
    }
    out.driver_uri = match kept.is_empty() {
        true => head.to_string(),
        false => format!("{head}?{}", kept.join("&")),
    };
    Ok(out)
}

fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("upstream URI option {key} must be true or false")),
    }
}

fn compressors(list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in list.split(',').filter(|n| !n.is_empty()) {
        if !COMPRESSORS.contains(&name) {
            return Err(format!(
                "unknown compressor {name} in the upstream URI; use snappy, zlib or zstd"
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// The parts of `uri` that may be secret: the user-info (everything between `://` and the last
/// `@`, decoded and not) and the values of `authMechanismProperties` (an AWS session token).
/// Deliberately coarse: it must hold even for a URI the parser rejects.
pub(super) fn secret_fragments(uri: &str) -> Vec<String> {
    let mut out = Vec::new();
    let after_scheme = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    // The driver looks for `@` before the first `?`; a password holding an unencoded `?` is
    // only found by looking up to the last `@` of the whole string. Both are kept.
    let before_query = after_scheme
        .split_once('?')
        .map_or(after_scheme, |(h, _)| h);
    for zone in [before_query, after_scheme] {
        let Some((userinfo, _)) = zone.rsplit_once('@') else {
            continue;
        };
        let password = userinfo.split_once(':').map_or("", |(_, p)| p);
        for s in [userinfo, password] {
            out.push(s.to_string());
            out.push(
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
    }
    if let Some((_, query)) = uri.split_once('?') {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k.eq_ignore_ascii_case("authMechanismProperties") {
                // `KEY:value,KEY:value`: the values may be tokens, the keys are names.
                for item in v.split(',') {
                    out.push(item.split_once(':').map_or(item, |(_, v)| v).to_string());
                }
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The shortest shared run that counts as a leak (shorter secrets count whole).
const LEAK_RUN: usize = 4;

/// `message` unless it shares a run of [`LEAK_RUN`] characters with a secret fragment (or holds
/// a shorter secret as a word); then a message that says what to check instead.
pub(super) fn redact(message: String, secrets: &[String]) -> String {
    // Compared without case: the driver lower-cases some values it echoes.
    let lower = message.to_lowercase();
    let leaks = secrets.iter().any(|secret| {
        let secret = secret.to_lowercase();
        let chars: Vec<char> = secret.chars().collect();
        if chars.len() < LEAK_RUN {
            // Too short to look for inside words: only as a word of its own.
            return lower
                .split(|c: char| !c.is_alphanumeric())
                .any(|word| word == secret);
        }
        chars
            .windows(LEAK_RUN)
            .any(|w| lower.contains(&w.iter().collect::<String>()))
    });
    match leaks {
        false => message,
        true => "the upstream URI is malformed (details withheld: they would show part of the credentials); check that the user name and password are percent-encoded".to_string(),
    }
}
