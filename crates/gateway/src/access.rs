//! The IP access list: which source addresses may open a connection at all.
//!
//! Owns address and CIDR parsing, optional expiry (like Atlas's temporary access entries) and
//! the check made on every accepted socket before a single byte of it is read. The default is
//! loopback only; a list that admits every address of a family (`0.0.0.0/0`, `::/0`, or
//! entries whose union is that, such as `0.0.0.0/1` plus `128.0.0.0/1`) must be allowed
//! explicitly, because that is exactly the "open to the world" setup this gateway exists to
//! avoid.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::Deserialize;

use crate::config_error::ConfigError;

/// One entry as written in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEntryConfig {
    /// An address (`10.1.2.3`, `::1`) or CIDR block (`10.0.0.0/8`, `fd00::/8`).
    pub cidr: String,
    /// RFC 3339 time after which the entry no longer admits anyone.
    pub expires: Option<String>,
    /// Free text for operators.
    pub comment: Option<String>,
}

/// A parsed network block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Result<IpBlock, ConfigError> {
        let bad =
            || ConfigError::Invalid(format!("invalid access-list address or CIDR block {s:?}"));
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(IpBlock { addr, prefix })
    }

    /// Whether `ip` is inside the block. IPv4-mapped IPv6 sources match IPv4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// Whether the block admits every address of its family.
    pub fn is_any(&self) -> bool {
        self.prefix == 0
    }

    /// The block as an inclusive range of addresses of its family (IPv4 as the low 32 bits).
    fn range(&self) -> (u128, u128) {
        let (bits, value) = match self.addr {
            IpAddr::V4(a) => (32u32, u128::from(u32::from(a))),
            IpAddr::V6(a) => (128u32, u128::from(a)),
        };
        let host_bits = bits - u32::from(self.prefix);
        let span = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let start = value & !span;
        (start, start | span)
    }
}

/// Whether `blocks` together admit every address of one family: `0.0.0.0/1` plus
/// `128.0.0.0/1` is as open as `0.0.0.0/0`, so the guard judges the union, not single entries.
pub(crate) fn union_admits_any(blocks: &[IpBlock]) -> bool {
    [(true, u128::from(u32::MAX)), (false, u128::MAX)]
        .into_iter()
        .any(|(v4, last)| {
            let mut ranges: Vec<(u128, u128)> = blocks
                .iter()
                .filter(|b| b.addr.is_ipv4() == v4)
                .map(IpBlock::range)
                .collect();
            ranges.sort_unstable();
            // `next` is the first address not yet covered; None once everything is.
            let mut next = Some(0u128);
            for (start, end) in ranges {
                match next {
                    Some(n) if start > n => return false,
                    Some(n) if end >= n => next = end.checked_add(1).filter(|_| end < last),
                    _ => {}
                }
                if next.is_none() {
                    return true;
                }
            }
            next.is_none()
        })
}

#[derive(Debug, Clone)]
struct Entry {
    block: IpBlock,
    expires: Option<SystemTime>,
}

/// The access list in force.
#[derive(Debug, Clone)]
pub struct AccessList {
    entries: Vec<Entry>,
}

impl Default for AccessList {
    /// Loopback only.
    fn default() -> Self {
        AccessList {
            entries: ["127.0.0.0/8", "::1/128"]
                .iter()
                .map(|s| Entry {
                    block: IpBlock::parse(s).expect("valid literal"),
                    expires: None,
                })
                .collect(),
        }
    }
}

impl AccessList {
    /// Builds the list from configuration; an empty configuration means loopback only.
    /// A catch-all block is refused unless `allow_any` is set.
    pub fn from_config(
        entries: &[AccessEntryConfig],
        allow_any: bool,
    ) -> Result<AccessList, ConfigError> {
        if entries.is_empty() {
            return Ok(AccessList::default());
        }
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let block = IpBlock::parse(&e.cidr)?;
            let expires = e
                .expires
                .as_deref()
                .map(|t| {
                    humantime::parse_rfc3339_weak(t).map_err(|_| {
                        ConfigError::Invalid(format!(
                            "access-list entry {:?}: expiry {t:?} is not an RFC 3339 time",
                            e.cidr
                        ))
                    })
                })
                .transpose()?;
            out.push(Entry { block, expires });
        }
        let list = AccessList { entries: out };
        if list.admits_any() && !allow_any {
            let what = match list.entries.iter().position(|e| e.block.is_any()) {
                Some(i) => format!("access-list entry {:?} admits", entries[i].cidr),
                None => {
                    let cidrs: Vec<&str> = entries.iter().map(|e| e.cidr.as_str()).collect();
                    format!("access-list entries {cidrs:?} together admit")
                }
            };
            return Err(ConfigError::Invalid(format!(
                "{what} every address; set allow_any_address = true (or --allow-any-address) if that is really intended"
            )));
        }
        Ok(list)
    }

    /// Whether `ip` may connect at `now`.
    pub fn allows(&self, ip: IpAddr, now: SystemTime) -> bool {
        self.entries
            .iter()
            .any(|e| e.expires.is_none_or(|t| now < t) && e.block.contains(ip))
    }

    /// The first moment after `now` at which an entry expires, when the list changes by itself;
    /// connections admitted by that entry must be judged again then.
    pub fn next_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        self.entries
            .iter()
            .filter_map(|e| e.expires)
            .filter(|t| now < *t)
            .min()
    }

    /// Whether the entries together admit every address of a family.
    pub fn admits_any(&self) -> bool {
        let blocks: Vec<IpBlock> = self.entries.iter().map(|e| e.block).collect();
        union_admits_any(&blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(cidr: &str, expires: Option<&str>) -> AccessEntryConfig {
        AccessEntryConfig {
            cidr: cidr.into(),
            expires: expires.map(String::from),
            comment: None,
        }
    }

    #[test]
    fn blocks_match_v4_and_v6() {
        let b = IpBlock::parse("10.1.0.0/16").unwrap();
        assert!(b.contains("10.1.200.3".parse().unwrap()));
        assert!(!b.contains("10.2.0.1".parse().unwrap()));
        assert!(b.contains("::ffff:10.1.2.3".parse().unwrap()));
        let b = IpBlock::parse("fd00::/8").unwrap();
        assert!(b.contains("fd12::1".parse().unwrap()));
        assert!(!b.contains("fe80::1".parse().unwrap()));
        assert!(!b.contains("10.1.2.3".parse().unwrap()));
        let host = IpBlock::parse("127.0.0.1").unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "nonsense", "1.2.3.4/x", ""] {
            assert!(IpBlock::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_is_loopback_only() {
        let l = AccessList::default();
        let now = SystemTime::now();
        assert!(l.allows("127.0.0.2".parse().unwrap(), now));
        assert!(l.allows("::1".parse().unwrap(), now));
        assert!(!l.allows("192.0.2.1".parse().unwrap(), now));
    }

    #[test]
    fn catch_all_needs_explicit_flag() {
        assert!(AccessList::from_config(&[entry("0.0.0.0/0", None)], false).is_err());
        assert!(AccessList::from_config(&[entry("::/0", None)], false).is_err());
        let l = AccessList::from_config(&[entry("0.0.0.0/0", None)], true).unwrap();
        assert!(l.admits_any());
    }

    #[test]
    fn the_union_of_entries_is_judged() {
        let list = |cidrs: &[&str]| {
            let e: Vec<_> = cidrs.iter().map(|c| entry(c, None)).collect();
            AccessList::from_config(&e, false)
        };
        for open in [
            &["0.0.0.0/1", "128.0.0.0/1"][..],
            &["128.0.0.0/1", "10.0.0.0/8", "0.0.0.0/1"],
            &["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"],
            &["::/1", "8000::/1"],
            &["0.0.0.0/1", "0.0.0.0/2", "128.0.0.0/1"],
        ] {
            assert!(list(open).is_err(), "{open:?}");
        }
        for closed in [
            &["0.0.0.0/1", "128.0.0.0/2"][..],
            &["0.0.0.0/1", "::/1", "8000::/2"],
            &["0.0.0.0/1"],
            &["10.0.0.0/8", "192.168.0.0/16"],
            &["0.0.0.0/1", "128.0.0.1/32"],
            &["255.255.255.255/32", "0.0.0.0/1"],
        ] {
            assert!(!list(closed).unwrap().admits_any(), "{closed:?}");
        }
        let e = [entry("0.0.0.0/1", None), entry("128.0.0.0/1", None)];
        assert!(AccessList::from_config(&e, true).unwrap().admits_any());
    }

    #[test]
    fn expired_entries_admit_no_one() {
        let l = AccessList::from_config(&[entry("127.0.0.1", Some("2030-01-01T00:00:00Z"))], false)
            .unwrap();
        let before = humantime::parse_rfc3339("2029-12-31T23:59:59Z").unwrap();
        let after = before + Duration::from_secs(2);
        assert!(l.allows("127.0.0.1".parse().unwrap(), before));
        assert!(!l.allows("127.0.0.1".parse().unwrap(), after));
        assert!(AccessList::from_config(&[entry("127.0.0.1", Some("tomorrow"))], false).is_err());
    }

    #[test]
    fn the_next_expiry_is_the_earliest_still_ahead() {
        let e = [
            entry("10.0.0.1", Some("2030-01-01T00:00:00Z")),
            entry("10.0.0.2", Some("2030-06-01T00:00:00Z")),
            entry("10.0.0.3", None),
        ];
        let l = AccessList::from_config(&e, false).unwrap();
        let at = |t| humantime::parse_rfc3339(t).unwrap();
        let first = at("2030-01-01T00:00:00Z");
        assert_eq!(l.next_expiry(at("2029-01-01T00:00:00Z")), Some(first));
        assert_eq!(
            l.next_expiry(first),
            Some(at("2030-06-01T00:00:00Z")),
            "an entry expiring now is already out"
        );
        assert_eq!(l.next_expiry(at("2031-01-01T00:00:00Z")), None);
        assert_eq!(AccessList::default().next_expiry(first), None);
    }
}
