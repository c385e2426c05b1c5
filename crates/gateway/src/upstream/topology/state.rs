//! The topology description and the rules that update it when a member's check completes: the
//! Server Discovery and Monitoring specification's state machine (topology types, `setName`
//! checks, members added and removed as the primary's `hosts` change, the `electionId` /
//! `setVersion` rules that ignore a stale primary, `topologyVersion` ordering).
//!
//! Pure data and functions, no I/O and no clock beyond the descriptions' timestamps, so every
//! rule is unit-tested alone; `mod.rs` applies the result (starts and stops monitors and pools).

use std::collections::BTreeMap;

use bson::oid::ObjectId;

use super::server::{normalize, ServerDescription, ServerType};

/// The deployment's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyType {
    /// Not yet known.
    Unknown,
    /// One server, talked to directly.
    Single,
    /// A replica set whose primary is known.
    ReplicaSetWithPrimary,
    /// A replica set with no known primary.
    ReplicaSetNoPrimary,
    /// Routers of a sharded cluster.
    Sharded,
    /// One load balancer in front of routers.
    LoadBalanced,
}

impl TopologyType {
    /// The name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            TopologyType::Unknown => "Unknown",
            TopologyType::Single => "Single",
            TopologyType::ReplicaSetWithPrimary => "ReplicaSetWithPrimary",
            TopologyType::ReplicaSetNoPrimary => "ReplicaSetNoPrimary",
            TopologyType::Sharded => "Sharded",
            TopologyType::LoadBalanced => "LoadBalanced",
        }
    }
}

/// Most members the gateway follows; a `hosts` list longer than this is cut (MongoDB allows 50
/// members per set).
pub const MAX_MEMBERS: usize = 64;

/// The whole deployment as last seen.
#[derive(Debug, Clone)]
pub struct TopologyDescription {
    /// Its shape.
    pub kind: TopologyType,
    /// The replica set name, configured or discovered.
    pub set_name: Option<String>,
    /// The highest `setVersion` a primary reported.
    pub max_set_version: Option<i64>,
    /// The highest `electionId` a primary reported.
    pub max_election_id: Option<ObjectId>,
    /// Members by address.
    pub servers: BTreeMap<String, ServerDescription>,
}

impl TopologyDescription {
    /// The starting description: every seed Unknown, the type the URI implies.
    pub fn new(
        seeds: &[String],
        set_name: Option<String>,
        direct: bool,
        load_balanced: bool,
    ) -> Self {
        let kind = if load_balanced {
            TopologyType::LoadBalanced
        } else if direct {
            TopologyType::Single
        } else if set_name.is_some() {
            TopologyType::ReplicaSetNoPrimary
        } else {
            TopologyType::Unknown
        };
        let servers = seeds
            .iter()
            .take(MAX_MEMBERS)
            .map(|s| (normalize(s), ServerDescription::unknown(s, None)))
            .collect();
        TopologyDescription {
            kind,
            set_name,
            max_set_version: None,
            max_election_id: None,
            servers,
        }
    }

    /// The primary, if one is known.
    pub fn primary(&self) -> Option<&ServerDescription> {
        self.servers
            .values()
            .find(|s| s.server_type == ServerType::RsPrimary)
    }

    /// Applies a member's new description. Returns false when the description was ignored
    /// (the member is no longer part of the topology, or the reply is older than what is
    /// known).
    pub fn apply(&mut self, sd: ServerDescription) -> bool {
        let Some(current) = self.servers.get(&sd.address) else {
            return false;
        };
        if let (Some(new), Some(old)) = (&sd.topology_version, &current.topology_version) {
            if new.is_older_than(old) {
                return false;
            }
        }
        let address = sd.address.clone();
        let server_type = sd.server_type;
        self.servers.insert(address.clone(), sd);
        match self.kind {
            TopologyType::Single | TopologyType::LoadBalanced => {}
            TopologyType::Unknown => self.update_unknown(&address, server_type),
            TopologyType::Sharded => {
                if !matches!(server_type, ServerType::Unknown | ServerType::Mongos) {
                    self.servers.remove(&address);
                }
            }
            TopologyType::ReplicaSetNoPrimary | TopologyType::ReplicaSetWithPrimary => {
                self.in_replica_set(&address, server_type)
            }
        }
        true
    }

    fn update_unknown(&mut self, address: &str, server_type: ServerType) {
        match server_type {
            ServerType::Standalone => {
                if self.servers.len() == 1 {
                    self.kind = TopologyType::Single;
                } else {
                    self.servers.remove(address);
                }
            }
            ServerType::Mongos => self.kind = TopologyType::Sharded,
            ServerType::RsPrimary => {
                self.kind = TopologyType::ReplicaSetNoPrimary;
                self.update_from_primary(address);
            }
            ServerType::RsSecondary | ServerType::RsArbiter | ServerType::RsOther => {
                self.kind = TopologyType::ReplicaSetNoPrimary;
                self.update_from_member(address);
            }
            _ => {}
        }
    }

    fn in_replica_set(&mut self, address: &str, server_type: ServerType) {
        match server_type {
            ServerType::Standalone | ServerType::Mongos | ServerType::LoadBalancer => {
                self.servers.remove(address);
            }
            ServerType::RsPrimary => self.update_from_primary(address),
            ServerType::RsSecondary | ServerType::RsArbiter | ServerType::RsOther => {
                self.update_from_member(address)
            }
            ServerType::Unknown | ServerType::RsGhost => {}
        }
        self.check_if_has_primary();
    }

    /// A non-primary member's view: its set name must match, its `me` must be its address; with
    /// no primary known its member list adds members.
    fn update_from_member(&mut self, address: &str) {
        let Some(sd) = self.servers.get(address).cloned() else {
            return;
        };
        if !self.accept_set_name(sd.set_name.clone()) {
            self.servers.remove(address);
            return;
        }
        if sd.me.as_deref().is_some_and(|me| me != address) {
            self.servers.remove(address);
            return;
        }
        if self.primary().is_none() {
            let members = sd.members.clone();
            self.add_members(&members);
        }
    }

    /// A primary's view, unless it is stale: it demotes any other primary, and its member
    /// list is the set's membership.
    fn update_from_primary(&mut self, address: &str) {
        let Some(sd) = self.servers.get(address).cloned() else {
            return;
        };
        if !self.accept_set_name(sd.set_name.clone()) {
            self.servers.remove(address);
            return;
        }
        if self.is_stale_primary(&sd) {
            let stale = ServerDescription::unknown(
                address,
                Some("primary marked stale: an older electionId/setVersion than one seen".into()),
            );
            self.servers.insert(address.to_string(), stale);
            return;
        }
        for (other, desc) in self.servers.iter_mut() {
            if other != address && desc.server_type == ServerType::RsPrimary {
                *desc = ServerDescription::unknown(other, Some("another member is primary".into()));
            }
        }
        self.add_members(&sd.members);
        if !sd.members.is_empty() {
            self.servers
                .retain(|a, _| a == address || sd.members.iter().any(|m| m == a));
        }
    }

    /// The rules of the specification: from 6.0 (wire version 17) the election id decides
    /// first; before it, the set version does.
    fn is_stale_primary(&mut self, sd: &ServerDescription) -> bool {
        if sd.max_wire_version >= 17 {
            let new = (sd.election_id, sd.set_version);
            let max = (self.max_election_id, self.max_set_version);
            // `None` orders below any value, as the specification's null does.
            if max > new {
                return true;
            }
            self.max_election_id = sd.election_id;
            self.max_set_version = sd.set_version;
            return false;
        }
        if let (Some(v), Some(e)) = (sd.set_version, sd.election_id) {
            if let (Some(mv), Some(me)) = (self.max_set_version, self.max_election_id) {
                if mv > v || (mv == v && me > e) {
                    return true;
                }
            }
            self.max_election_id = Some(e);
        }
        if let Some(v) = sd.set_version {
            if self.max_set_version.is_none_or(|mv| v > mv) {
                self.max_set_version = Some(v);
            }
        }
        false
    }

    /// Adopts the first set name seen; afterwards a member naming another set is removed.
    fn accept_set_name(&mut self, name: Option<String>) -> bool {
        match (&self.set_name, name) {
            (None, Some(n)) => {
                self.set_name = Some(n);
                true
            }
            (Some(ours), Some(n)) => *ours == n,
            (_, None) => false,
        }
    }

    fn add_members(&mut self, members: &[String]) {
        for m in members {
            if self.servers.len() >= MAX_MEMBERS {
                break;
            }
            self.servers
                .entry(m.clone())
                .or_insert_with(|| ServerDescription::unknown(m, None));
        }
    }

    fn check_if_has_primary(&mut self) {
        self.kind = if self.primary().is_some() {
            TopologyType::ReplicaSetWithPrimary
        } else {
            TopologyType::ReplicaSetNoPrimary
        };
    }

    /// Marks a member Unknown after an operation or monitoring failure (it stays a member).
    pub fn mark_unknown(&mut self, address: &str, error: String) {
        let Some(old) = self.servers.get(address) else {
            return;
        };
        let mut sd = ServerDescription::unknown(address, Some(error));
        // Keep the version: a later reply from the same process is judged against it.
        sd.topology_version = old.topology_version;
        sd.rtt = old.rtt;
        self.servers.insert(address.to_string(), sd);
        if matches!(
            self.kind,
            TopologyType::ReplicaSetWithPrimary | TopologyType::ReplicaSetNoPrimary
        ) {
            self.check_if_has_primary();
        }
    }

    /// Replaces the member list of a sharded or unknown topology with what an SRV rescan found:
    /// new names start Unknown, vanished ones go, known ones keep their state.
    pub fn replace_seeds(&mut self, hosts: &[String]) {
        let wanted: Vec<String> = hosts
            .iter()
            .take(MAX_MEMBERS)
            .map(|h| normalize(h))
            .collect();
        self.servers.retain(|a, _| wanted.contains(a));
        for h in &wanted {
            self.servers
                .entry(h.clone())
                .or_insert_with(|| ServerDescription::unknown(h, None));
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
