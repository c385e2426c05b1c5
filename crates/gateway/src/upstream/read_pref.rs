//! Read preferences: the gateway default from the URI and the `$readPreference` a client sends,
//! decoded and validated once into [`ReadPreference`], which server selection consumes.
//!
//! The rules are the server selection specification's: `primary` takes no tags and no
//! staleness; `maxStalenessSeconds` is -1 (none) or at least 90 s; tag sets are documents of
//! string values, tried in order, `{}` matching any member. `hedge` is accepted and ignored.

use std::time::Duration;

use bson::{RawBsonRef, RawDocument};

/// The five modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Only the primary.
    #[default]
    Primary,
    /// The primary, else a secondary.
    PrimaryPreferred,
    /// Only secondaries.
    Secondary,
    /// Secondaries, else the primary.
    SecondaryPreferred,
    /// Any data-bearing member within the latency window.
    Nearest,
}

impl ReadMode {
    /// Parses a mode name as drivers send it (case-sensitive, as mongos is).
    pub fn from_name(name: &str) -> Option<ReadMode> {
        Some(match name {
            "primary" => ReadMode::Primary,
            "primaryPreferred" => ReadMode::PrimaryPreferred,
            "secondary" => ReadMode::Secondary,
            "secondaryPreferred" => ReadMode::SecondaryPreferred,
            "nearest" => ReadMode::Nearest,
            _ => return None,
        })
    }

    /// The name as it appears on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ReadMode::Primary => "primary",
            ReadMode::PrimaryPreferred => "primaryPreferred",
            ReadMode::Secondary => "secondary",
            ReadMode::SecondaryPreferred => "secondaryPreferred",
            ReadMode::Nearest => "nearest",
        }
    }
}

/// One tag set: every pair must match a member's tags. Empty matches any member.
pub type TagSet = Vec<(String, String)>;

/// The smallest `maxStalenessSeconds` the specification allows.
pub const MIN_MAX_STALENESS: Duration = Duration::from_secs(90);

/// Upper bounds on what a client's `$readPreference` may hold (it is client input).
const MAX_TAG_SETS: usize = 32;
const MAX_TAGS_PER_SET: usize = 32;

/// A validated read preference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadPreference {
    /// The mode.
    pub mode: ReadMode,
    /// Tag sets in order of preference; empty means no tag constraint.
    pub tag_sets: Vec<TagSet>,
    /// `maxStalenessSeconds`, if set.
    pub max_staleness: Option<Duration>,
}

/// Why a read preference was refused; the message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid read preference: {0}")]
pub struct ReadPrefError(pub String);

fn bad(msg: impl Into<String>) -> ReadPrefError {
    ReadPrefError(msg.into())
}

impl ReadPreference {
    /// The primary, no tags (the default everywhere).
    pub fn primary() -> Self {
        ReadPreference::default()
    }

    /// Whether any member other than the primary may serve the read.
    pub fn allows_secondary(&self) -> bool {
        self.mode != ReadMode::Primary
    }

    /// Builds and checks a preference from its parts (the URI's options use this).
    pub fn new(
        mode: ReadMode,
        tag_sets: Vec<TagSet>,
        max_staleness: Option<Duration>,
    ) -> Result<Self, ReadPrefError> {
        let has_tags = tag_sets.iter().any(|t| !t.is_empty());
        if mode == ReadMode::Primary && (has_tags || max_staleness.is_some()) {
            return Err(bad(
                "mode primary cannot be combined with tags or maxStalenessSeconds",
            ));
        }
        if let Some(s) = max_staleness {
            if s < MIN_MAX_STALENESS {
                return Err(bad("maxStalenessSeconds must be at least 90"));
            }
        }
        if tag_sets.len() > MAX_TAG_SETS || tag_sets.iter().any(|t| t.len() > MAX_TAGS_PER_SET) {
            return Err(bad("too many tag sets or tags"));
        }
        Ok(ReadPreference {
            mode,
            tag_sets,
            max_staleness,
        })
    }

    /// Decodes a client's `$readPreference` document. Duplicate fields and unknown fields
    /// other than `hedge` are refused, as are values of the wrong type.
    pub fn from_document(doc: &RawDocument) -> Result<Self, ReadPrefError> {
        let mut mode = None;
        let mut tag_sets = None;
        let mut staleness = None;
        for item in doc {
            let (key, value) = item.map_err(|_| bad("malformed document"))?;
            match key {
                "mode" => {
                    let name = value.as_str().ok_or_else(|| bad("mode must be a string"))?;
                    let m = ReadMode::from_name(name).ok_or_else(|| bad("unknown mode"))?;
                    if mode.replace(m).is_some() {
                        return Err(bad("mode given twice"));
                    }
                }
                "tags" => {
                    if tag_sets.replace(decode_tag_sets(value)?).is_some() {
                        return Err(bad("tags given twice"));
                    }
                }
                "maxStalenessSeconds" => {
                    let secs =
                        number(value).ok_or_else(|| bad("maxStalenessSeconds must be a number"))?;
                    if staleness.replace(secs).is_some() {
                        return Err(bad("maxStalenessSeconds given twice"));
                    }
                }
                "hedge" => {}
                _ => return Err(bad("unknown field")),
            }
        }
        let mode = mode.ok_or_else(|| bad("mode is required"))?;
        let max_staleness = match staleness {
            None | Some(-1) => None,
            Some(s) if s <= 0 => return Err(bad("maxStalenessSeconds must be positive or -1")),
            Some(s) => Some(Duration::from_secs(s.unsigned_abs())),
        };
        ReadPreference::new(mode, tag_sets.unwrap_or_default(), max_staleness)
    }
}

fn number(value: RawBsonRef<'_>) -> Option<i64> {
    match value {
        RawBsonRef::Int32(i) => Some(i64::from(i)),
        RawBsonRef::Int64(i) => Some(i),
        RawBsonRef::Double(d) if d.fract() == 0.0 && d.abs() < 1e15 => Some(d as i64),
        _ => None,
    }
}

fn decode_tag_sets(value: RawBsonRef<'_>) -> Result<Vec<TagSet>, ReadPrefError> {
    let array = value
        .as_array()
        .ok_or_else(|| bad("tags must be an array of documents"))?;
    let mut sets = Vec::new();
    for set in array {
        let set = set.map_err(|_| bad("malformed tags"))?;
        let set = set
            .as_document()
            .ok_or_else(|| bad("tags must be an array of documents"))?;
        let mut tags = TagSet::new();
        for pair in set {
            let (k, v) = pair.map_err(|_| bad("malformed tags"))?;
            let v = v
                .as_str()
                .ok_or_else(|| bad("tag values must be strings"))?;
            if tags.iter().any(|(seen, _)| seen == k) {
                return Err(bad("a tag is given twice in one tag set"));
            }
            tags.push((k.to_string(), v.to_string()));
            if tags.len() > MAX_TAGS_PER_SET {
                return Err(bad("too many tags"));
            }
        }
        sets.push(tags);
        if sets.len() > MAX_TAG_SETS {
            return Err(bad("too many tag sets"));
        }
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn decodes_modes_tags_and_staleness() {
        let rp = ReadPreference::from_document(&rawdoc! {
            "mode": "secondary", "tags": [{"dc": "east"}, {}], "maxStalenessSeconds": 120,
            "hedge": {"enabled": true},
        })
        .unwrap();
        assert_eq!(rp.mode, ReadMode::Secondary);
        assert_eq!(
            rp.tag_sets,
            vec![vec![("dc".into(), "east".into())], vec![]]
        );
        assert_eq!(rp.max_staleness, Some(Duration::from_secs(120)));
        let rp =
            ReadPreference::from_document(&rawdoc! {"mode": "nearest", "maxStalenessSeconds": -1})
                .unwrap();
        assert_eq!(rp.max_staleness, None);
    }

    #[test]
    fn refuses_what_a_mongos_refuses() {
        for doc in [
            rawdoc! {},
            rawdoc! {"mode": "Primary"},
            rawdoc! {"mode": 1},
            rawdoc! {"mode": "primary", "tags": [{"a": "b"}]},
            rawdoc! {"mode": "primary", "maxStalenessSeconds": 120},
            rawdoc! {"mode": "secondary", "maxStalenessSeconds": 10},
            rawdoc! {"mode": "secondary", "maxStalenessSeconds": 0},
            rawdoc! {"mode": "secondary", "tags": [{"a": 1}]},
            rawdoc! {"mode": "secondary", "tags": {"a": "b"}},
            rawdoc! {"mode": "secondary", "mode": "primary"},
            rawdoc! {"mode": "secondary", "bogus": 1},
        ] {
            assert!(ReadPreference::from_document(&doc).is_err(), "{doc:?}");
        }
    }
}
