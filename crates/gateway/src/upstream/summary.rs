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

/// Monitoring connections a gateway keeps to one member beside its pool: one that polls
/// `hello`, and a second for round-trip times while the member streams (MongoDB 4.4+). A
/// load-balanced upstream is not monitored.
pub fn monitoring_per_member(cfg: &UpstreamConfig) -> usize {
    if cfg.topology.load_balanced {
        0
    } else {
        2
    }
}

/// The connection budget `mongomux check-config --gateways N` prints: the most connections
/// `gateways` gateways with these settings open to each member and to the deployment, to
/// compare with the database's per-node connection limit (docs/deploy.md, "Connection
/// budget"). One line per fact, each starting with `budget`.
///
/// The members are those known before the gateway starts: the SRV records (`resolved`) or
/// the seed list. A replica set discovers its other members from the seeds, and each of them
/// gets the same per-member bound; the per-member figures do not depend on the count.
pub fn budget(
    cfg: &UpstreamConfig,
    resolved: Option<&Resolved>,
    pool_size: usize,
    max_upstream_connections: Option<usize>,
    gateways: usize,
) -> Vec<String> {
    let (members, source) = match (resolved, &cfg.seeds) {
        (Some(r), _) => (r.hosts.len(), "the SRV records"),
        (None, Seeds::Hosts(hosts)) => (
            hosts.len(),
            "the seed list; members found later add to the totals",
        ),
        (None, Seeds::Srv { .. }) => (0, "SRV not resolved"),
    };
    let cfg = resolved.map_or(cfg, |r| &r.config);
    let monitoring = monitoring_per_member(cfg);
    // Pooled connections to one member: its own cap, and never more than the total cap.
    let pooled_member = max_upstream_connections.map_or(pool_size, |m| m.min(pool_size));
    let pooled_all =
        max_upstream_connections.map_or(members * pool_size, |m| m.min(members * pool_size));
    let member_one = pooled_member + monitoring;
    let all_one = pooled_all + members * monitoring;
    let mut out = vec![
        format!("budget gateways: {gateways}"),
        format!("budget members: {members} ({source})"),
        format!("budget pool_size: {pool_size} per member"),
        format!(
            "budget max_upstream_connections: {}",
            max_upstream_connections.map_or_else(
                || "none".to_string(),
                |m| format!("{m} per gateway, all members together")
            )
        ),
    ];
    out.push(if monitoring == 0 {
        "budget monitoring connections: 0 per member (load-balanced upstream)".to_string()
    } else {
        format!("budget monitoring connections: {monitoring} per member (counted as streaming; 1 if the member polls)")
    });
    out.push(format!(
        "budget per member, one gateway: {member_one} ({pooled_member} pooled + {monitoring} monitoring)"
    ));
    out.push(format!(
        "budget per member, {gateways} gateways: {}",
        gateways * member_one
    ));
    out.push(format!(
        "budget all members, one gateway: {all_one} ({pooled_all} pooled + {} monitoring)",
        members * monitoring
    ));
    out.push(format!(
        "budget all members, {gateways} gateways: {}",
        gateways * all_one
    ));
    out.push(format!(
        "budget: keep {} below the database's per-node connection limit, less what other clients use \
         (Atlas M10: 1500, M20 and M30: 3000; check your tier)",
        gateways * member_one
    ));
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

    fn line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in {lines:#?}"))
    }

    #[test]
    fn budget_per_member_and_total() {
        let cfg = crate::settings::parse_uri("mongodb://a:1,b:2,c:3/?replicaSet=rs").unwrap();
        let b = budget(&cfg, None, 10, None, 3);
        assert_eq!(
            line(&b, "budget members:"),
            "budget members: 3 (the seed list; members found later add to the totals)"
        );
        assert_eq!(
            line(&b, "budget per member, one gateway:"),
            "budget per member, one gateway: 12 (10 pooled + 2 monitoring)"
        );
        assert_eq!(
            line(&b, "budget per member, 3 gateways:"),
            "budget per member, 3 gateways: 36"
        );
        assert_eq!(
            line(&b, "budget all members, one gateway:"),
            "budget all members, one gateway: 36 (30 pooled + 6 monitoring)"
        );
        assert_eq!(
            line(&b, "budget all members, 3 gateways:"),
            "budget all members, 3 gateways: 108"
        );
    }

    #[test]
    fn budget_with_a_total_cap() {
        let cfg = crate::settings::parse_uri("mongodb://a:1,b:2,c:3/?replicaSet=rs").unwrap();
        // docs/configuration.md's example: pool 10, total 15, three members.
        let b = budget(&cfg, None, 10, Some(15), 2);
        assert_eq!(
            line(&b, "budget per member, 2 gateways:"),
            "budget per member, 2 gateways: 24"
        );
        assert_eq!(
            line(&b, "budget all members, one gateway:"),
            "budget all members, one gateway: 21 (15 pooled + 6 monitoring)"
        );
        assert_eq!(
            line(&b, "budget all members, 2 gateways:"),
            "budget all members, 2 gateways: 42"
        );
        // A cap below the pool size bounds each member too.
        let b = budget(&cfg, None, 10, Some(4), 1);
        assert_eq!(
            line(&b, "budget per member, one gateway:"),
            "budget per member, one gateway: 6 (4 pooled + 2 monitoring)"
        );
        assert_eq!(
            line(&b, "budget all members, one gateway:"),
            "budget all members, one gateway: 10 (4 pooled + 6 monitoring)"
        );
    }

    #[test]
    fn budget_load_balanced_has_no_monitoring() {
        let cfg = crate::settings::parse_uri("mongodb://lb:27017/?loadBalanced=true").unwrap();
        let b = budget(&cfg, None, 8, None, 5);
        assert_eq!(
            line(&b, "budget per member, one gateway:"),
            "budget per member, one gateway: 8 (8 pooled + 0 monitoring)"
        );
        assert_eq!(
            line(&b, "budget all members, 5 gateways:"),
            "budget all members, 5 gateways: 40"
        );
    }
}
