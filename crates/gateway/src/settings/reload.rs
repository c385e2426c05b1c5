//! What a reload may change: the classification of every setting as live or restart, and the
//! comparison of running and new settings ([`SettingsChange::reconcile`]). Applying the result to
//! a running gateway is [`crate::reload`]'s job.
//!
//! A reload either builds a complete new [`Settings`] or fails and leaves the running one
//! untouched. Every setting is classified in [`FIELDS`], the one list of what a reload can
//! change: a live setting takes effect at once; a restart setting that differs is reported in
//! [`SettingsChange::needs_restart`] and keeps its running value in the stored `Settings`, so
//! the stored value always says what is in force and the next reload reports it again.
//!

use super::Settings;

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SettingsChange {
    /// Users defined after the reload.
    pub users: usize,
    /// Settings that differ and took effect.
    pub applied: Vec<&'static str>,
    /// Settings that differ but take effect only after a restart (their running value stays).
    pub needs_restart: Vec<&'static str>,
}

/// One setting: its name as in the file, whether it differs, and, for a setting that needs a
/// restart, how to carry the running value over into the new `Settings`.
struct Field {
    name: &'static str,
    differs: fn(&Settings, &Settings) -> bool,
    restart: Option<fn(&mut Settings, &Settings)>,
}

macro_rules! live {
    ($name:literal, $f:ident) => {
        Field {
            name: $name,
            differs: |a, b| a.$f != b.$f,
            restart: None,
        }
    };
}

macro_rules! restart {
    ($name:literal, $f:ident) => {
        Field {
            name: $name,
            differs: |a, b| a.$f != b.$f,
            restart: Some(|new, old| new.$f = old.$f.clone()),
        }
    };
}

/// Every scalar setting. Users, the access list and the TLS certificates are not listed: they
/// are live and always re-read, since a file's content may change under the same name.
const FIELDS: &[Field] = &[
    live!("max_clients", max_clients),
    live!("handshake_timeout", handshake_timeout),
    live!("drain_timeout", drain_timeout),
    live!("max_connections_per_source", max_connections_per_source),
    // Read on every accepted connection.
    live!("proxy_protocol", proxy_protocol),
    live!("proxy_protocol_sources", proxy_protocol_sources),
    live!("tls_mode", tls_mode),
    live!("load_balanced", load_balanced),
    live!("aws_sts_host", aws_sts_host),
    live!("sts_timeout", sts_timeout),
    // Read on every cursor reply and every new session of a client.
    live!("max_cursors_per_client", max_cursors_per_client),
    live!("max_cursors_per_user", max_cursors_per_user),
    live!("max_sessions_per_client", max_sessions_per_client),
    live!("max_sessions_per_user", max_sessions_per_user),
    // Read at every message, reply and reap.
    live!(
        "max_unauthenticated_message_bytes",
        max_unauthenticated_message_bytes
    ),
    live!("message_timeout", message_timeout),
    live!("client_write_timeout", client_write_timeout),
    live!("transaction_idle_timeout", transaction_idle_timeout),
    live!("slow_op_threshold", slow_op_threshold),
    // Read on every admin request.
    live!("admin_token_sha256", admin_token_sha256),
    // Read on every Data API request; the keys (like users) are always re-read.
    live!("data_api_max_body_bytes", data_api_max_body_bytes),
    live!("data_api_max_find_limit", data_api_max_find_limit),
    restart!("data_api_listen", data_api_listen),
    // The budget is one semaphore built at start; bytes held under the old size could not be
    // accounted against a new one.
    restart!("max_inflight_bytes", max_inflight_bytes),
    // The key in force is fixed at start (`Edge::session_key`): changing it would move every
    // open session to another upstream id.
    Field {
        name: "session_key",
        differs: |a, b| match (&a.session_key, &b.session_key) {
            (Some(x), Some(y)) => !x.same_as(y),
            (None, None) => false,
            _ => true,
        },
        restart: Some(|new, old| new.session_key = old.session_key.clone()),
    },
    restart!("listen", listen),
    restart!("metrics_listen", metrics_listen),
    Field {
        name: "upstream",
        differs: |a, b| !a.upstream.same_as(&b.upstream),
        restart: Some(|new, old| {
            new.upstream = old.upstream.clone();
            new.upstream_tls = old.upstream_tls.clone();
        }),
    },
    // The DNS client and the SRV poller are built with the pools, at start.
    restart!("upstream_resolver", upstream_resolver),
    restart!("upstream_srv_rescan_interval", upstream_srv_rescan_interval),
    // The pool grows at once and shrinks as connections come back (`Pool::resize`); its
    // timeouts are read on every use (`Pool::set_limits`).
    live!("pool_size", pool_size),
    live!("max_upstream_connections", max_upstream_connections),
    live!("max_pinned", max_pinned),
    live!("checkout_timeout", checkout_timeout),
    live!("connect_timeout", connect_timeout),
    // Read on every forwarded request.
    live!("upstream_timeout", upstream_timeout),
    live!("idle_timeout", idle_timeout),
    Field {
        name: "sts_endpoint",
        differs: |a, b| a.sts_endpoint != b.sts_endpoint,
        restart: Some(|new, old| {
            new.sts_endpoint = old.sts_endpoint.clone();
            new.sts_tls = old.sts_tls.clone();
        }),
    },
    restart!("sts_max_concurrency", sts_max_concurrency),
];

impl SettingsChange {
    /// Compares the running settings with new ones and carries restart settings over into
    /// `new`, which then holds exactly what will be in force.
    pub fn reconcile(old: &Settings, new: &mut Settings) -> SettingsChange {
        let mut change = SettingsChange {
            users: new.users.count(),
            ..SettingsChange::default()
        };
        for field in FIELDS {
            if !(field.differs)(old, new) {
                continue;
            }
            match field.restart {
                Some(keep) => {
                    keep(new, old);
                    change.needs_restart.push(field.name);
                }
                None => change.applied.push(field.name),
            }
        }
        // The upstream and STS TLS configurations are used only when the pool and the STS
        // client are built, at start: what runs is the old ones, whatever the CA file says now.
        new.upstream_tls = old.upstream_tls.clone();
        new.sts_tls = old.sts_tls.clone();
        change
    }
}
