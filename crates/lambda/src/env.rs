//! The Lambda environment as the kit sees it: the few variables it reads, captured once.
//!
//! Owns the only read of the process environment in the kit ([`LambdaEnv::from_process`]); tests
//! build their own with [`LambdaEnv::from_vars`]. Credentials and passwords in it never reach
//! `Debug` output.

use std::{collections::BTreeMap, fmt};

use crate::error::redacted_uri;

/// The environment variables the kit reads, captured once.
///
/// [`LambdaEnv::from_process`] reads the real environment; tests build one with
/// [`LambdaEnv::from_vars`] so they never have to change the process environment.
#[derive(Clone, Default)]
pub struct LambdaEnv {
    pub(crate) vars: BTreeMap<&'static str, String>,
}

/// Every variable the kit looks at.
const KNOWN_VARS: [&str; 7] = [
    "MONGOMUX_URI",
    "MONGODB_URI",
    "MONGOMUX_AUTH",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_MAX_CONCURRENCY",
    "AWS_ACCESS_KEY_ID",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
];

impl LambdaEnv {
    /// The current process environment (only [the variables the kit uses](KNOWN_VARS)).
    pub fn from_process() -> LambdaEnv {
        LambdaEnv::from_vars(
            KNOWN_VARS
                .iter()
                .filter_map(|k| Some((*k, std::env::var(k).ok()?))),
        )
    }

    /// An environment made of `vars`; names the kit does not use are ignored.
    pub fn from_vars<K: AsRef<str>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> LambdaEnv {
        let mut out = BTreeMap::new();
        for (k, v) in vars {
            if let Some(known) = KNOWN_VARS.iter().find(|n| **n == k.as_ref()) {
                out.insert(*known, v.into());
            }
        }
        LambdaEnv { vars: out }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Whether the AWS SDK's default chain would find credentials of a function or task.
    pub(crate) fn has_aws_credentials(&self) -> bool {
        self.get("AWS_ACCESS_KEY_ID").is_some()
            || self.get("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
    }
}

impl fmt::Debug for LambdaEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.vars {
            if k.starts_with("AWS_ACCESS") || k.starts_with("AWS_CONTAINER") {
                m.entry(k, &"***");
            } else if k.ends_with("_URI") {
                m.entry(k, &redacted_uri(v));
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}
