//! Server selection (the Server Selection specification): which members may serve an operation,
//! given the topology, whether the operation writes, and its read preference; then one of them
//! at random among those within the latency window.
//!
//! Pure: it reads a [`TopologyDescription`] and returns addresses, so every rule is tested
//! without a server. Waiting for a suitable member is the caller's job (`mod.rs`).

use std::time::{Duration, SystemTime};

use rand::seq::SliceRandom;

use super::server::{ServerDescription, ServerType};
use super::state::{TopologyDescription, TopologyType};
use crate::upstream::read_pref::{ReadMode, ReadPreference};

/// What an operation needs from a member.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// A write, a command, or a transaction: the primary (or any router).
    Write,
    /// A read that follows this preference.
    Read(&'a ReadPreference),
}

/// The writes the server periodically makes, which staleness must allow for (`idleWritePeriodMS`).
const IDLE_WRITE_PERIOD: Duration = Duration::from_secs(10);

/// Why no member can be selected yet (shown to the client once selection times out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoMember {
    /// No member fits the need now; one may after the next check.
    NoneSuitable,
    /// The read preference can never be satisfied with this configuration.
    Invalid(String),
}

/// The members that fit `need`, within the latency window.
pub fn suitable<'t>(
    t: &'t TopologyDescription,
    need: Need<'_>,
    heartbeat: Duration,
    local_threshold: Duration,
) -> Result<Vec<&'t ServerDescription>, NoMember> {
    let candidates: Vec<&ServerDescription> = match t.kind {
        TopologyType::Unknown => Vec::new(),
        TopologyType::Single | TopologyType::LoadBalanced => t
            .servers
            .values()
            .filter(|s| s.server_type != ServerType::Unknown)
            .collect(),
        TopologyType::Sharded => t
            .servers
            .values()
            .filter(|s| s.server_type == ServerType::Mongos)
            .collect(),
        TopologyType::ReplicaSetNoPrimary | TopologyType::ReplicaSetWithPrimary => match need {
            Need::Write => t.primary().into_iter().collect(),
            Need::Read(rp) => replica_set_read(t, rp, heartbeat)?,
        },
    };
    Ok(within_window(candidates, local_threshold))
}

/// Picks one of `members` at random (the specification's choice within the window).
pub fn pick<'a>(members: &[&'a ServerDescription]) -> Option<&'a ServerDescription> {
    members.choose(&mut rand::thread_rng()).copied()
}

fn replica_set_read<'t>(
    t: &'t TopologyDescription,
    rp: &ReadPreference,
    heartbeat: Duration,
) -> Result<Vec<&'t ServerDescription>, NoMember> {
    if let Some(max) = rp.max_staleness {
        if max < heartbeat + IDLE_WRITE_PERIOD {
            return Err(NoMember::Invalid(format!(
                "maxStalenessSeconds must be at least heartbeatFrequencyMS + 10 s ({} s)",
                (heartbeat + IDLE_WRITE_PERIOD).as_secs()
            )));
        }
    }
    let primary: Vec<&ServerDescription> = t.primary().into_iter().collect();
    let secondaries = || {
        let fresh = fresh_secondaries(t, rp.max_staleness, heartbeat);
        by_tags(fresh, rp)
    };
    Ok(match rp.mode {
        ReadMode::Primary => primary,
        ReadMode::PrimaryPreferred if !primary.is_empty() => primary,
        ReadMode::PrimaryPreferred | ReadMode::Secondary => secondaries(),
        ReadMode::SecondaryPreferred => {
            let s = secondaries();
            if s.is_empty() {
                primary
            } else {
                s
            }
        }
        ReadMode::Nearest => {
            let mut all = fresh_secondaries(t, rp.max_staleness, heartbeat);
            all.extend(primary);
            by_tags(all, rp)
        }
    })
}

/// Secondaries not staler than `max_staleness` (all of them when it is unset).
fn fresh_secondaries(
    t: &TopologyDescription,
    max_staleness: Option<Duration>,
    heartbeat: Duration,
) -> Vec<&ServerDescription> {
    let secondaries = t
        .servers
        .values()
        .filter(|s| s.server_type == ServerType::RsSecondary);
    let Some(max) = max_staleness else {
        return secondaries.collect();
    };
    let primary = t.primary();
    let newest = t
        .servers
        .values()
        .filter(|s| s.server_type == ServerType::RsSecondary)
        .filter_map(|s| s.last_write)
        .max();
    secondaries
        .filter(|s| staleness(s, primary, newest, heartbeat).is_none_or(|st| st <= max))
        .collect()
}

/// A secondary's estimated staleness; `None` when it cannot be estimated.
fn staleness(
    s: &ServerDescription,
    primary: Option<&ServerDescription>,
    newest: Option<SystemTime>,
    heartbeat: Duration,
) -> Option<Duration> {
    let s_write = s.last_write?;
    match primary {
        Some(p) => {
            let p_write = p.last_write?;
            // (S.lastUpdate - S.lastWrite) - (P.lastUpdate - P.lastWrite) + heartbeat. The update
            // times are monotonic instants, the write dates wall-clock times: each term is
            // (now - lastWrite) - (now - lastUpdate), both measured from now.
            let s_age = secs_since(s_write) - secs(s.last_update.elapsed());
            let p_age = secs_since(p_write) - secs(p.last_update.elapsed());
            Some(Duration::from_secs_f64((s_age - p_age).max(0.0)) + heartbeat)
        }
        None => {
            let newest = newest?;
            let behind = newest.duration_since(s_write).unwrap_or_default();
            Some(behind + heartbeat)
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Seconds from `t` to now on the wall clock (negative if `t` is in the future).
fn secs_since(t: SystemTime) -> f64 {
    match SystemTime::now().duration_since(t) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The members matching the first tag set that matches any; all of them without tag sets.
fn by_tags<'t>(
    members: Vec<&'t ServerDescription>,
    rp: &ReadPreference,
) -> Vec<&'t ServerDescription> {
    if rp.tag_sets.is_empty() {
        return members;
    }
    for set in &rp.tag_sets {
        let matching: Vec<_> = members.iter().copied().filter(|s| s.matches(set)).collect();
        if !matching.is_empty() {
            return matching;
        }
    }
    Vec::new()
}

/// The members whose round-trip time is within `threshold` of the fastest.
fn within_window(members: Vec<&ServerDescription>, threshold: Duration) -> Vec<&ServerDescription> {
    let Some(fastest) = members.iter().filter_map(|s| s.rtt).min() else {
        return members;
    };
    members
        .into_iter()
        .filter(|s| s.rtt.is_none_or(|r| r <= fastest + threshold))
        .collect()
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;

/// The router a transaction of the session with `key` goes to in a sharded cluster: one of the
/// known mongos, picked by a stable hash of the key over them in address order, so that every
/// gateway of a deployment sends one transaction to one router (a mongos cannot continue
/// another's transaction). `None` outside a sharded cluster or with no router known.
pub fn router_for_session<'a>(desc: &'a TopologyDescription, key: &[u8]) -> Option<&'a str> {
    if desc.kind != TopologyType::Sharded {
        return None;
    }
    let routers: Vec<&str> = desc
        .servers
        .values()
        .filter(|s| s.server_type == ServerType::Mongos)
        .map(|s| s.address.as_str())
        .collect();
    if routers.is_empty() {
        return None;
    }
    // FNV-1a: stable across processes and builds, unlike the std hasher's promise.
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    Some(routers[(hash % routers.len() as u64) as usize])
}
