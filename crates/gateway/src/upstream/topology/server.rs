//! One member as its last `hello` described it: the server description of the Server Discovery
//! and Monitoring specification, built from a reply in one place so that the rules that judge
//! it (`state.rs`) and the selection that uses it (`select.rs`) read typed fields only.

use std::time::{Duration, SystemTime};

use bson::oid::ObjectId;
use bson::Document;
use tokio::time::Instant;

use crate::upstream::read_pref::TagSet;

/// What kind of server a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerType {
    /// Not yet known, or its last check failed.
    Unknown,
    /// A server without replication.
    Standalone,
    /// A router of a sharded cluster.
    Mongos,
    /// The primary of a replica set.
    RsPrimary,
    /// A secondary of a replica set.
    RsSecondary,
    /// An arbiter (holds no data).
    RsArbiter,
    /// A member in another state (recovering, startup, hidden, ...).
    RsOther,
    /// A member that is not yet part of a configured set.
    RsGhost,
    /// A load balancer in front of routers (`loadBalanced=true`).
    LoadBalancer,
}

impl ServerType {
    /// The name used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            ServerType::Unknown => "unknown",
            ServerType::Standalone => "standalone",
            ServerType::Mongos => "mongos",
            ServerType::RsPrimary => "primary",
            ServerType::RsSecondary => "secondary",
            ServerType::RsArbiter => "arbiter",
            ServerType::RsOther => "other",
            ServerType::RsGhost => "ghost",
            ServerType::LoadBalancer => "load_balancer",
        }
    }

    /// Every type, for metrics that must reset the other states of a member.
    pub const ALL: [ServerType; 9] = [
        ServerType::Unknown,
        ServerType::Standalone,
        ServerType::Mongos,
        ServerType::RsPrimary,
        ServerType::RsSecondary,
        ServerType::RsArbiter,
        ServerType::RsOther,
        ServerType::RsGhost,
        ServerType::LoadBalancer,
    ];

    /// Whether the member holds data and can serve operations.
    pub fn is_data_bearing(self) -> bool {
        matches!(
            self,
            ServerType::Standalone
                | ServerType::Mongos
                | ServerType::RsPrimary
                | ServerType::RsSecondary
                | ServerType::LoadBalancer
        )
    }
}

/// A server's `topologyVersion`: which process answered and how many state changes it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologyVersion {
    /// Changes when the server restarts.
    pub process_id: ObjectId,
    /// Grows with each state change.
    pub counter: i64,
}

impl TopologyVersion {
    /// Whether `self` is older than `other` (then a reply carrying `self` is stale).
    pub fn is_older_than(&self, other: &TopologyVersion) -> bool {
        self.process_id == other.process_id && self.counter < other.counter
    }

    /// As the awaitable `hello` wants it back.
    pub fn to_document(self) -> Document {
        bson::doc! { "processId": self.process_id, "counter": self.counter }
    }
}

/// Bounds on what a server's reply may make the gateway hold (the reply is not trusted input:
/// a member could be misconfigured or impersonated).
const MAX_HOSTS: usize = 100;
const MAX_TAGS: usize = 64;

/// One member as last seen.
#[derive(Debug, Clone)]
pub struct ServerDescription {
    /// `host:port` as the topology knows it (lower-cased host).
    pub address: String,
    /// Its type.
    pub server_type: ServerType,
    /// Smoothed round-trip time of `hello`, once measured.
    pub rtt: Option<Duration>,
    /// When this description was made.
    pub last_update: Instant,
    /// `lastWrite.lastWriteDate`, for staleness.
    pub last_write: Option<SystemTime>,
    /// The last check's error, if it failed.
    pub error: Option<String>,
    /// `setName`.
    pub set_name: Option<String>,
    /// `setVersion` (primaries).
    pub set_version: Option<i64>,
    /// `electionId` (primaries).
    pub election_id: Option<ObjectId>,
    /// `primary`: who this member thinks is primary.
    pub primary: Option<String>,
    /// `me`.
    pub me: Option<String>,
    /// `hosts`, `passives` and `arbiters` together.
    pub members: Vec<String>,
    /// `tags`.
    pub tags: Vec<(String, String)>,
    /// `topologyVersion`.
    pub topology_version: Option<TopologyVersion>,
    /// `minWireVersion`.
    pub min_wire_version: i32,
    /// `maxWireVersion`.
    pub max_wire_version: i32,
    /// `logicalSessionTimeoutMinutes`.
    pub session_timeout_minutes: Option<i32>,
}

/// Host names compare case-insensitively; the topology keys members by the lower-cased form.
pub fn normalize(address: &str) -> String {
    address.to_ascii_lowercase()
}

impl ServerDescription {
    /// A member not yet checked, or whose check failed with `error`.
    pub fn unknown(address: &str, error: Option<String>) -> Self {
        ServerDescription {
            address: normalize(address),
            server_type: ServerType::Unknown,
            rtt: None,
            last_update: Instant::now(),
            last_write: None,
            error,
            set_name: None,
            set_version: None,
            election_id: None,
            primary: None,
            me: None,
            members: Vec::new(),
            tags: Vec::new(),
            topology_version: None,
            min_wire_version: 0,
            max_wire_version: 0,
            session_timeout_minutes: None,
        }
    }

    /// The description a `hello` reply gives; `rtt` is the smoothed round-trip time.
    pub fn from_hello(address: &str, reply: &Document, rtt: Option<Duration>) -> Self {
        let mut sd = ServerDescription::unknown(address, None);
        sd.rtt = rtt;
        if !ok(reply) {
            sd.error = Some("hello failed".into());
            return sd;
        }
        let flag = |k: &str| reply.get_bool(k).unwrap_or(false);
        let text = |k: &str| reply.get_str(k).ok().map(str::to_string);
        sd.set_name = text("setName");
        sd.server_type = if flag("isreplicaset") {
            ServerType::RsGhost
        } else if reply.get_str("msg") == Ok("isdbgrid") {
            ServerType::Mongos
        } else if sd.set_name.is_some() {
            if flag("isWritablePrimary") || flag("ismaster") {
                ServerType::RsPrimary
            } else if flag("secondary") {
                ServerType::RsSecondary
            } else if flag("arbiterOnly") {
                ServerType::RsArbiter
            } else {
                ServerType::RsOther
            }
        } else {
            ServerType::Standalone
        };
        sd.set_version = int(reply, "setVersion");
        sd.election_id = reply.get_object_id("electionId").ok();
        sd.primary = text("primary").map(|p| normalize(&p));
        sd.me = text("me").map(|m| normalize(&m));
        for key in ["hosts", "passives", "arbiters"] {
            if let Ok(list) = reply.get_array(key) {
                let names = list.iter().filter_map(|h| h.as_str()).map(normalize);
                sd.members.extend(names);
            }
        }
        sd.members.truncate(MAX_HOSTS);
        if let Ok(tags) = reply.get_document("tags") {
            sd.tags = tags
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .take(MAX_TAGS)
                .collect();
        }
        sd.last_write = reply
            .get_document("lastWrite")
            .ok()
            .and_then(|w| w.get_datetime("lastWriteDate").ok())
            .map(|d| d.to_system_time());
        sd.topology_version = reply.get_document("topologyVersion").ok().and_then(|tv| {
            Some(TopologyVersion {
                process_id: tv.get_object_id("processId").ok()?,
                counter: int(tv, "counter")?,
            })
        });
        sd.min_wire_version = int(reply, "minWireVersion").unwrap_or(0) as i32;
        sd.max_wire_version = int(reply, "maxWireVersion").unwrap_or(0) as i32;
        sd.session_timeout_minutes = int(reply, "logicalSessionTimeoutMinutes").map(|m| m as i32);
        sd
    }

    /// Whether the member's tags satisfy every pair of `set`.
    pub fn matches(&self, set: &TagSet) -> bool {
        set.iter()
            .all(|(k, v)| self.tags.iter().any(|(tk, tv)| tk == k && tv == v))
    }

    /// Whether this is a replica-set member (of any state).
    pub fn is_rs_member(&self) -> bool {
        matches!(
            self.server_type,
            ServerType::RsPrimary
                | ServerType::RsSecondary
                | ServerType::RsArbiter
                | ServerType::RsOther
                | ServerType::RsGhost
        )
    }
}

fn ok(reply: &Document) -> bool {
    match reply.get("ok") {
        Some(bson::Bson::Double(d)) => *d == 1.0,
        Some(bson::Bson::Int32(i)) => *i == 1,
        Some(bson::Bson::Int64(i)) => *i == 1,
        Some(bson::Bson::Boolean(b)) => *b,
        _ => false,
    }
}

fn int(doc: &Document, key: &str) -> Option<i64> {
    match doc.get(key)? {
        bson::Bson::Int32(i) => Some(i64::from(*i)),
        bson::Bson::Int64(i) => Some(*i),
        bson::Bson::Double(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

/// Folds a new round-trip sample into the average as the specification says (weight 0.2).
pub fn smooth_rtt(previous: Option<Duration>, sample: Duration) -> Duration {
    match previous {
        None => sample,
        Some(old) => old.mul_f64(0.8) + sample.mul_f64(0.2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn types_from_hello() {
        let t = |d: Document| ServerDescription::from_hello("h:1", &d, None).server_type;
        assert_eq!(
            t(doc! {"ok": 1, "isWritablePrimary": true}),
            ServerType::Standalone
        );
        assert_eq!(t(doc! {"ok": 1, "msg": "isdbgrid"}), ServerType::Mongos);
        assert_eq!(
            t(doc! {"ok": 1, "setName": "rs", "ismaster": true}),
            ServerType::RsPrimary
        );
        assert_eq!(
            t(doc! {"ok": 1, "setName": "rs", "secondary": true}),
            ServerType::RsSecondary
        );
        assert_eq!(
            t(doc! {"ok": 1, "setName": "rs", "arbiterOnly": true}),
            ServerType::RsArbiter
        );
        assert_eq!(t(doc! {"ok": 1, "setName": "rs"}), ServerType::RsOther);
        assert_eq!(t(doc! {"ok": 1, "isreplicaset": true}), ServerType::RsGhost);
        assert_eq!(t(doc! {"ok": 0}), ServerType::Unknown);
    }

    #[test]
    fn fields_and_bounds() {
        let hosts: Vec<String> = (0..500).map(|i| format!("H{i}:1")).collect();
        let sd = ServerDescription::from_hello(
            "A:1",
            &doc! {"ok": 1.0, "setName": "rs", "secondary": true, "hosts": hosts,
            "me": "A:1", "primary": "B:1", "tags": {"dc": "east", "n": 1},
            "topologyVersion": {"processId": ObjectId::new(), "counter": 3_i64}},
            Some(Duration::from_millis(2)),
        );
        assert_eq!(sd.address, "a:1");
        assert_eq!(sd.members.len(), MAX_HOSTS);
        assert_eq!(sd.members[0], "h0:1");
        assert_eq!(sd.primary.as_deref(), Some("b:1"));
        assert_eq!(sd.tags, vec![("dc".to_string(), "east".to_string())]);
        assert_eq!(sd.topology_version.unwrap().counter, 3);
        assert!(sd.matches(&vec![("dc".into(), "east".into())]));
        assert!(!sd.matches(&vec![("dc".into(), "west".into())]));
        assert!(sd.matches(&vec![]));
    }
}
