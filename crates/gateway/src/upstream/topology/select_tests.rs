use std::time::{Duration, SystemTime};

use bson::{doc, oid::ObjectId, Document};

use super::*;
use crate::upstream::read_pref::{ReadMode, ReadPreference};

const HB: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_millis(15);

fn member(reply: Document, address: &str, rtt_ms: u64, write_ago_s: u64) -> ServerDescription {
    let mut reply = reply;
    let when = SystemTime::now() - Duration::from_secs(write_ago_s);
    reply.insert(
        "lastWrite",
        doc! {"lastWriteDate": bson::DateTime::from_system_time(when)},
    );
    reply.insert("me", address);
    reply.insert("setName", "rs");
    reply.insert("maxWireVersion", 21);
    ServerDescription::from_hello(address, &reply, Some(Duration::from_millis(rtt_ms)))
}

/// p (primary, 1 ms), s1 (secondary dc=east, 1 ms), s2 (secondary dc=west, 100 ms, 200 s behind).
fn set() -> TopologyDescription {
    let hosts = ["p:1", "s1:1", "s2:1"];
    let mut t = TopologyDescription::new(
        &hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        Some("rs".into()),
        false,
        false,
    );
    let p = doc! {"ok": 1, "isWritablePrimary": true, "hosts": hosts.to_vec(),
    "electionId": ObjectId::new(), "setVersion": 1};
    t.apply(member(p, "p:1", 1, 0));
    t.apply(member(
        doc! {"ok": 1, "secondary": true, "tags": {"dc": "east"}},
        "s1:1",
        1,
        0,
    ));
    t.apply(member(
        doc! {"ok": 1, "secondary": true, "tags": {"dc": "west"}},
        "s2:1",
        100,
        200,
    ));
    t
}

fn names(t: &TopologyDescription, need: Need<'_>) -> Vec<String> {
    let mut v: Vec<String> = suitable(t, need, HB, WINDOW)
        .unwrap()
        .into_iter()
        .map(|s| s.address.clone())
        .collect();
    v.sort();
    v
}

fn rp(mode: ReadMode) -> ReadPreference {
    ReadPreference::new(mode, vec![], None).unwrap()
}

#[test]
fn writes_and_each_mode() {
    let t = set();
    assert_eq!(names(&t, Need::Write), ["p:1"]);
    assert_eq!(names(&t, Need::Read(&rp(ReadMode::Primary))), ["p:1"]);
    assert_eq!(
        names(&t, Need::Read(&rp(ReadMode::PrimaryPreferred))),
        ["p:1"]
    );
    // s2 is outside the latency window (100 ms vs 1 ms + 15 ms).
    assert_eq!(names(&t, Need::Read(&rp(ReadMode::Secondary))), ["s1:1"]);
    assert_eq!(
        names(&t, Need::Read(&rp(ReadMode::SecondaryPreferred))),
        ["s1:1"]
    );
    assert_eq!(
        names(&t, Need::Read(&rp(ReadMode::Nearest))),
        ["p:1", "s1:1"]
    );
}

#[test]
fn tags_pick_the_first_matching_set() {
    let t = set();
    let west = ReadPreference::new(
        ReadMode::Secondary,
        vec![
            vec![("dc".into(), "north".into())],
            vec![("dc".into(), "west".into())],
        ],
        None,
    )
    .unwrap();
    assert_eq!(names(&t, Need::Read(&west)), ["s2:1"]);
    let none = ReadPreference::new(
        ReadMode::Secondary,
        vec![vec![("dc".into(), "x".into())]],
        None,
    )
    .unwrap();
    assert!(names(&t, Need::Read(&none)).is_empty());
    let fallback = ReadPreference::new(
        ReadMode::SecondaryPreferred,
        vec![vec![("dc".into(), "x".into())]],
        None,
    )
    .unwrap();
    assert_eq!(
        names(&t, Need::Read(&fallback)),
        ["p:1"],
        "no tagged secondary: the primary"
    );
}

#[test]
fn max_staleness_excludes_a_lagging_secondary() {
    let t = set();
    let west = vec![vec![("dc".into(), "west".into())]];
    let fresh = ReadPreference::new(
        ReadMode::Secondary,
        west.clone(),
        Some(Duration::from_secs(90)),
    )
    .unwrap();
    assert!(
        names(&t, Need::Read(&fresh)).is_empty(),
        "s2 is ~210 s stale"
    );
    let lax =
        ReadPreference::new(ReadMode::Secondary, west, Some(Duration::from_secs(300))).unwrap();
    assert_eq!(names(&t, Need::Read(&lax)), ["s2:1"]);
    let hb_too_big = suitable(&t, Need::Read(&fresh), Duration::from_secs(85), WINDOW);
    assert!(matches!(hb_too_big, Err(NoMember::Invalid(_))));
}

#[test]
fn without_a_primary_writes_wait_and_preferred_reads_fall_back() {
    let mut t = set();
    t.mark_unknown("p:1", "stepped down".into());
    assert!(names(&t, Need::Write).is_empty());
    assert!(names(&t, Need::Read(&rp(ReadMode::Primary))).is_empty());
    assert_eq!(
        names(&t, Need::Read(&rp(ReadMode::PrimaryPreferred))),
        ["s1:1"]
    );
}

#[test]
fn routers_share_the_window_and_single_takes_anything_known() {
    let mut t = TopologyDescription::new(
        &["m1:1".into(), "m2:1".into(), "m3:1".into()],
        None,
        false,
        false,
    );
    for (a, rtt) in [("m1:1", 1), ("m2:1", 5), ("m3:1", 50)] {
        t.apply(ServerDescription::from_hello(
            a,
            &doc! {"ok": 1, "msg": "isdbgrid"},
            Some(Duration::from_millis(rtt)),
        ));
    }
    assert_eq!(names(&t, Need::Write), ["m1:1", "m2:1"]);
    let mut single = TopologyDescription::new(&["x:1".into()], None, true, false);
    assert!(names(&single, Need::Write).is_empty());
    single.apply(ServerDescription::from_hello(
        "x:1",
        &doc! {"ok": 1, "setName": "rs", "secondary": true},
        None,
    ));
    assert_eq!(
        names(&single, Need::Write),
        ["x:1"],
        "direct connection: whatever it is"
    );
}

#[test]
fn a_session_picks_one_router_the_same_way_everywhere() {
    let routers = |order: &[&str]| {
        let mut t = TopologyDescription::new(
            &order.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            None,
            false,
            false,
        );
        for a in order {
            t.apply(ServerDescription::from_hello(
                a,
                &doc! {"ok": 1, "msg": "isdbgrid"},
                Some(Duration::from_millis(1)),
            ));
        }
        t
    };
    let (a, b) = (
        routers(&["m1:1", "m2:1", "m3:1"]),
        routers(&["m3:1", "m1:1", "m2:1"]),
    );
    let mut used = std::collections::HashSet::new();
    for key in 0u32..64 {
        let key = key.to_be_bytes();
        let picked = router_for_session(&a, &key).unwrap();
        assert_eq!(
            Some(picked),
            router_for_session(&b, &key),
            "discovery order does not matter"
        );
        used.insert(picked.to_string());
    }
    assert_eq!(used.len(), 3, "sessions spread over the routers");
    assert_eq!(
        router_for_session(&set(), b"k"),
        None,
        "a replica set has its primary"
    );
}
