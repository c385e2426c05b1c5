//! A human-readable summary of an [`UpstreamConfig`] (and of its SRV resolution), as
//! `mongomux check-config` prints it. It names users and files but never prints a password,
//! secret key or session token: it reads the credential's kind and user name only.

use super::read_pref::ReadMode;
use super::srv::Resolved;
use super::{Seeds, UpstreamAuth, UpstreamConfig};

/// One line per fact, each starting with `upstream`.
pub fn summary(cfg: &UpstreamConfig, resolved: Option<&Resolved>) -> Vec<String> {
    let mut out = Vec::new();
    let cfg = resolved.map_or(cfg, |r| &r.config);
    match &cfg.seeds {
        Seeds::Hosts(hosts) => out.push(format!("upstream seeds: {}", hosts.join(", "))),
        Seeds::Srv {
            host, max_hosts, ..
        } => {
            let srv_name = resolved.map_or_else(String::new, |r| format!(" (SRV {})", r.srv_name));
            out.push(format!("upstream: mongodb+srv {host}{srv_name}"));
            if let Some(n) = max_hosts {
                out.push(format!("upstream srvMaxHosts: {n}"));
            }
        }
    }
    if let Some(r) = resolved {
        let mut hosts = r.hosts.clone();
        hosts.sort();
        out.push(format!("upstream members: {}", hosts.join(", ")));
        if r.found != r.hosts.len() {
            out.push(format!("upstream SRV hosts found: {}", r.found));
        }
        let txt: Vec<String> = r
            .txt
            .pairs()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !txt.is_empty() {
            out.push(format!("upstream TXT options: {}", txt.join("&")));
        }
    }
    out.push(format!("upstream auth: {}", auth(&cfg.auth)));
    let t = &cfg.topology;
    let mut opts = vec![format!("tls={}", cfg.tls)];
    if let Some(rs) = &t.replica_set {
        opts.push(format!("replicaSet={rs}"));
    }
    if let Some(d) = t.direct_connection {
        opts.push(format!("directConnection={d}"));
    }
    if t.load_balanced {
        opts.push("loadBalanced=true".into());
    }
    if t.read_preference.mode != ReadMode::Primary {
        opts.push(format!("readPreference={}", t.read_preference.mode.name()));
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts.push(format!("tlsCAFile={}", ca.display()));
    }
    if cfg.tls_allow_invalid_hostnames {
        opts.push("tlsAllowInvalidHostnames=true".into());
    }
    if !cfg.compressors.is_empty() {
        opts.push(format!("compressors={}", cfg.compressors.join(",")));
    }
    if let Some(app) = &cfg.app_name {
        opts.push(format!("appName={app}"));
    }
    out.push(format!("upstream options: {}", opts.join(" ")));
    out
}

fn auth(auth: &UpstreamAuth) -> String {
    match auth {
        UpstreamAuth::None => "none".into(),
        UpstreamAuth::Scram {
            username,
            source,
            mechanism,
            ..
        } => {
            let m = mechanism.map_or("SCRAM (negotiated)", |m| m.name());
            format!("{m} as {username} (authSource {source})")
        }
        UpstreamAuth::Aws {
            static_credentials: None,
        } => "MONGODB-AWS with the AWS credential chain".into(),
        UpstreamAuth::Aws {
            static_credentials: Some(s),
        } => format!(
            "MONGODB-AWS with access key id {} from the URI",
            s.access_key_id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_secrets() {
        for uri in [
            "mongodb://gw:Sup3rSecret@a:1,b:2/?replicaSet=rs&tls=true",
            "mongodb://AKID:Sup3rSecret@h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:Sup3rSecret",
            "mongodb+srv://gw:Sup3rSecret@c.example.com/",
        ] {
            let cfg = crate::settings::parse_uri(uri).unwrap();
            let text = summary(&cfg, None).join("\n");
            assert!(!text.contains("Sup3rSecret"), "{text}");
            assert!(text.contains("upstream auth:"), "{text}");
        }
    }
}
