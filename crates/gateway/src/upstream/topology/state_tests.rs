use bson::{doc, oid::ObjectId, Document};

use super::*;

fn hello(address: &str, reply: Document) -> ServerDescription {
    ServerDescription::from_hello(address, &reply, None)
}

fn primary(me: &str, hosts: &[&str], election: ObjectId, set_version: i64) -> Document {
    doc! {"ok": 1, "setName": "rs", "isWritablePrimary": true, "hosts": hosts, "me": me,
    "electionId": election, "setVersion": set_version, "maxWireVersion": 21}
}

fn secondary(me: &str, hosts: &[&str]) -> Document {
    doc! {"ok": 1, "setName": "rs", "secondary": true, "hosts": hosts, "me": me, "maxWireVersion": 21}
}

fn seeds(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn one_seed_discovers_the_whole_set() {
    let mut t = TopologyDescription::new(&seeds(&["a:1"]), None, false, false);
    assert_eq!(t.kind, TopologyType::Unknown);
    assert!(t.apply(hello("a:1", secondary("a:1", &["a:1", "b:1", "c:1"]))));
    assert_eq!(t.kind, TopologyType::ReplicaSetNoPrimary);
    assert_eq!(t.servers.len(), 3);
    assert_eq!(t.set_name.as_deref(), Some("rs"));
    t.apply(hello(
        "b:1",
        primary("b:1", &["a:1", "b:1", "c:1"], ObjectId::new(), 1),
    ));
    assert_eq!(t.kind, TopologyType::ReplicaSetWithPrimary);
    assert_eq!(t.primary().unwrap().address, "b:1");
}

#[test]
fn the_primary_decides_membership() {
    let mut t = TopologyDescription::new(
        &seeds(&["a:1", "b:1", "c:1"]),
        Some("rs".into()),
        false,
        false,
    );
    t.apply(hello(
        "a:1",
        primary("a:1", &["a:1", "b:1", "d:1"], ObjectId::new(), 1),
    ));
    let names: Vec<&str> = t.servers.keys().map(String::as_str).collect();
    assert_eq!(names, ["a:1", "b:1", "d:1"], "c removed, d added");
}

#[test]
fn a_stale_primary_is_ignored_and_a_newer_one_demotes_the_old() {
    let old = ObjectId::from_bytes([1; 12]);
    let new = ObjectId::from_bytes([2; 12]);
    let mut t = TopologyDescription::new(&seeds(&["a:1", "b:1"]), Some("rs".into()), false, false);
    let hosts = ["a:1", "b:1"];
    t.apply(hello("a:1", primary("a:1", &hosts, new, 2)));
    t.apply(hello("b:1", primary("b:1", &hosts, old, 1)));
    assert_eq!(t.primary().unwrap().address, "a:1", "b's claim is older");
    assert_eq!(t.servers["b:1"].server_type, ServerType::Unknown);
    let newer = ObjectId::from_bytes([3; 12]);
    t.apply(hello("b:1", primary("b:1", &hosts, newer, 2)));
    assert_eq!(t.primary().unwrap().address, "b:1");
    assert_eq!(
        t.servers["a:1"].server_type,
        ServerType::Unknown,
        "old primary demoted"
    );
}

#[test]
fn wrong_set_name_and_wrong_me_are_removed() {
    let mut t = TopologyDescription::new(
        &seeds(&["a:1", "b:1", "c:1"]),
        Some("rs".into()),
        false,
        false,
    );
    let mut other = secondary("a:1", &["a:1"]);
    other.insert("setName", "other");
    t.apply(hello("a:1", other));
    assert!(!t.servers.contains_key("a:1"));
    t.apply(hello("b:1", secondary("x:9", &["b:1"])));
    assert!(!t.servers.contains_key("b:1"));
    assert!(t.servers.contains_key("c:1"));
}

#[test]
fn standalone_and_mongos_shapes() {
    let mut t = TopologyDescription::new(&seeds(&["a:1"]), None, false, false);
    t.apply(hello("a:1", doc! {"ok": 1, "isWritablePrimary": true}));
    assert_eq!(t.kind, TopologyType::Single);

    let mut t = TopologyDescription::new(&seeds(&["a:1", "b:1"]), None, false, false);
    t.apply(hello("a:1", doc! {"ok": 1, "isWritablePrimary": true}));
    assert!(
        !t.servers.contains_key("a:1"),
        "a standalone among several seeds is dropped"
    );

    let mut t = TopologyDescription::new(&seeds(&["a:1", "b:1"]), None, false, false);
    t.apply(hello("a:1", doc! {"ok": 1, "msg": "isdbgrid"}));
    assert_eq!(t.kind, TopologyType::Sharded);
    t.apply(hello("b:1", secondary("b:1", &["b:1"])));
    assert!(
        !t.servers.contains_key("b:1"),
        "a replica-set member among routers is dropped"
    );
    t.replace_seeds(&seeds(&["a:1", "c:1"]));
    let names: Vec<&str> = t.servers.keys().map(String::as_str).collect();
    assert_eq!(names, ["a:1", "c:1"]);
    assert_eq!(
        t.servers["a:1"].server_type,
        ServerType::Mongos,
        "known state kept"
    );
}

#[test]
fn an_older_topology_version_is_ignored_and_unknown_keeps_members() {
    let pid = ObjectId::new();
    let mut t = TopologyDescription::new(&seeds(&["a:1", "b:1"]), Some("rs".into()), false, false);
    let mut p = primary("a:1", &["a:1", "b:1"], ObjectId::new(), 1);
    p.insert("topologyVersion", doc! {"processId": pid, "counter": 5_i64});
    t.apply(hello("a:1", p));
    let mut old = secondary("a:1", &["a:1", "b:1"]);
    old.insert("topologyVersion", doc! {"processId": pid, "counter": 4_i64});
    assert!(!t.apply(hello("a:1", old)));
    assert_eq!(t.primary().unwrap().address, "a:1");
    t.mark_unknown("a:1", "not primary".into());
    assert_eq!(t.kind, TopologyType::ReplicaSetNoPrimary);
    assert_eq!(t.servers.len(), 2);
}
