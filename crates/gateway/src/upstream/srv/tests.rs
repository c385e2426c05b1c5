//! The seedlist and polling rules without a network, and one lookup against a DNS server on
//! loopback (messages encoded and decoded by `hickory-proto`, the resolver's own codec).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, OpCode};
use hickory_resolver::proto::rr::rdata::{SRV, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use super::rules::*;
use super::{SrvError, SrvResolver};
use crate::settings::parse_uri;
use crate::upstream::{Seeds, UpstreamAuth};

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

#[test]
fn targets_must_share_the_domain() {
    let three = name("cluster0.abcde.mongodb.net");
    assert!(target_allowed(
        &three,
        &name("shard-00-00.abcde.mongodb.net.")
    ));
    assert!(target_allowed(&three, &name("A.ABCDE.MONGODB.NET")));
    assert!(!target_allowed(&three, &name("evil.example.net")));
    assert!(!target_allowed(&three, &name("abcde.mongodb.net")));
    assert!(!target_allowed(&three, &name("x.mongodb.net")));
    // Fewer than three labels: the target needs one more level under the whole host.
    let two = name("mongodb.local");
    assert!(target_allowed(&two, &name("a.mongodb.local")));
    assert!(!target_allowed(&two, &name("mongodb.local")));
    assert!(!target_allowed(&two, &name("a.evil.local")));
    let one = name("localhost");
    assert!(target_allowed(&one, &name("a.localhost")));
    assert!(!target_allowed(&one, &name("localhost")));
}

#[test]
fn srv_query_names() {
    let (q, host) = srv_query("cluster0.example.com", "mongodb").unwrap();
    assert_eq!(q.to_ascii(), "_mongodb._tcp.cluster0.example.com.");
    assert_eq!(host.to_ascii(), "cluster0.example.com.");
    // The specification's own example has an underscore in the first label.
    let (q, host) = srv_query("cluster_1.tests.mongodb.co.uk", "mongodb").unwrap();
    assert_eq!(q.to_ascii(), "_mongodb._tcp.cluster_1.tests.mongodb.co.uk.");
    assert!(target_allowed(&host, &name("h1.tests.mongodb.co.uk")));
    let (q, _) = srv_query("c.example.com", "customname").unwrap();
    assert_eq!(q.to_ascii(), "_customname._tcp.c.example.com.");
    for bad in ["", "a_b", "12", &"x".repeat(63)] {
        assert!(srv_query("c.example.com", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn txt_options_are_limited() {
    let txt = |s: &str| vec![vec![s.as_bytes().to_vec()]];
    let t = parse_txt(
        "h",
        &txt("replicaSet=rs0&authSource=admin&loadBalanced=false"),
    )
    .unwrap();
    assert_eq!(t.replica_set.as_deref(), Some("rs0"));
    assert_eq!(t.auth_source.as_deref(), Some("admin"));
    assert_eq!(t.load_balanced, Some(false));
    // Several strings of one record are concatenated.
    let split = vec![vec![b"replicaSet=r".to_vec(), b"s1&authSource=x".to_vec()]];
    let t = parse_txt("h", &split).unwrap();
    assert_eq!(t.replica_set.as_deref(), Some("rs1"));
    assert_eq!(parse_txt("h", &[]).unwrap(), TxtOptions::default());
    for bad in [
        "ssl=true",
        "tls=false",
        "connectTimeoutMS=300000",
        "loadBalanced=yes",
        "replicaSet=a&replicaSet=b",
        "authSource=",
    ] {
        assert!(parse_txt("h", &txt(bad)).is_err(), "{bad}");
    }
    let two = vec![
        vec![b"replicaSet=a".to_vec()],
        vec![b"authSource=b".to_vec()],
    ];
    let err = parse_txt("h", &two).unwrap_err().to_string();
    assert!(err.contains("2 records"), "{err}");
}

fn srv_cfg(uri: &str) -> crate::upstream::UpstreamConfig {
    parse_uri(uri).unwrap()
}

#[test]
fn uri_options_override_txt() {
    let txt = TxtOptions {
        auth_source: Some("txtdb".into()),
        replica_set: Some("txtrs".into()),
        load_balanced: None,
    };
    let folded = fold_txt(&srv_cfg("mongodb+srv://u:p@c.example.com/"), &txt, 3).unwrap();
    assert_eq!(folded.topology.replica_set.as_deref(), Some("txtrs"));
    assert!(matches!(&folded.auth, UpstreamAuth::Scram { source, .. } if source == "txtdb"));
    let cfg = srv_cfg("mongodb+srv://u:p@c.example.com/?authSource=mine&replicaSet=uri");
    let folded = fold_txt(&cfg, &txt, 3).unwrap();
    assert_eq!(folded.topology.replica_set.as_deref(), Some("uri"));
    assert!(matches!(&folded.auth, UpstreamAuth::Scram { source, .. } if source == "mine"));
    // MONGODB-AWS keeps $external.
    let cfg = srv_cfg("mongodb+srv://c.example.com/?authMechanism=MONGODB-AWS");
    let folded = fold_txt(&cfg, &txt, 3).unwrap();
    assert!(matches!(folded.auth, UpstreamAuth::Aws { .. }));
    // loadBalanced from the URI wins over the TXT record.
    let lb = TxtOptions {
        load_balanced: Some(true),
        ..TxtOptions::default()
    };
    let cfg = srv_cfg("mongodb+srv://c.example.com/?loadBalanced=false");
    assert!(!fold_txt(&cfg, &lb, 3).unwrap().topology.load_balanced);
    let cfg = srv_cfg("mongodb+srv://c.example.com/");
    assert!(fold_txt(&cfg, &lb, 1).unwrap().topology.load_balanced);
}

#[test]
fn combinations_refused_after_the_txt_record() {
    let rs = TxtOptions {
        replica_set: Some("rs".into()),
        ..TxtOptions::default()
    };
    let lb = TxtOptions {
        load_balanced: Some(true),
        ..TxtOptions::default()
    };
    let max = srv_cfg("mongodb+srv://c.example.com/?srvMaxHosts=2");
    assert!(fold_txt(&max, &rs, 3).is_err());
    assert!(fold_txt(&max, &lb, 1).is_err());
    let plain = srv_cfg("mongodb+srv://c.example.com/");
    assert!(
        fold_txt(&plain, &lb, 2).is_err(),
        "several hosts behind loadBalanced"
    );
    let both = TxtOptions {
        replica_set: Some("rs".into()),
        load_balanced: Some(true),
        ..TxtOptions::default()
    };
    assert!(fold_txt(&plain, &both, 1).is_err());
}

#[test]
fn srv_max_hosts_subsets() {
    let hosts: Vec<String> = (0..5).map(|i| format!("h{i}.example.com:27017")).collect();
    assert_eq!(choose_hosts(hosts.clone(), None), hosts);
    assert_eq!(choose_hosts(hosts.clone(), Some(9)).len(), 5);
    let two = choose_hosts(hosts.clone(), Some(2));
    assert_eq!(two.len(), 2);
    assert!(two.iter().all(|h| hosts.contains(h)) && two[0] != two[1]);
}

#[test]
fn rescans_keep_known_hosts() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let now = apply_rescan(&s(&["a", "b"]), &s(&["b", "c"]), None);
    assert_eq!(now, s(&["b", "c"]));
    let now = apply_rescan(&s(&["a", "b"]), &s(&["a", "b", "c", "d"]), Some(3));
    assert_eq!(now.len(), 3);
    assert_eq!(&now[..2], &s(&["a", "b"])[..]);
    let now = apply_rescan(&s(&["a", "b"]), &s(&["a", "b", "c"]), Some(2));
    assert_eq!(now, s(&["a", "b"]));
}

#[test]
fn rescan_interval_follows_the_polling_spec() {
    let hb = Duration::from_secs(10);
    let found = |s| ScanOutcome::Found {
        min_ttl: Some(Duration::from_secs(s)),
    };
    assert_eq!(
        rescan_interval(found(300), hb, None),
        Duration::from_secs(300)
    );
    assert_eq!(rescan_interval(found(5), hb, None), MIN_RESCAN);
    assert_eq!(
        rescan_interval(ScanOutcome::Found { min_ttl: None }, hb, None),
        MIN_RESCAN
    );
    assert_eq!(rescan_interval(ScanOutcome::Failed, hb, None), hb);
    let short = Duration::from_millis(500);
    assert_eq!(rescan_interval(found(300), hb, Some(short)), short);
}

type Zone = Arc<Mutex<Vec<Record>>>;

/// A DNS server on loopback answering from `zone`; NXDOMAIN for names it does not hold.
async fn dns_server(zone: Zone) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::response(req.metadata.id, OpCode::Query);
            resp.metadata.recursion_available = true;
            resp.metadata.recursion_desired = req.metadata.recursion_desired;
            resp.add_queries(req.queries.clone());
            let q = &req.queries[0];
            let answers: Vec<Record> = zone
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.name == *q.name() && r.record_type() == q.query_type())
                .cloned()
                .collect();
            let known = zone.lock().unwrap().iter().any(|r| r.name == *q.name());
            if !known {
                resp.metadata.response_code = hickory_resolver::proto::op::ResponseCode::NXDomain;
            }
            resp.add_answers(answers);
            let _ = socket.send_to(&resp.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

fn srv_record(owner: &str, ttl: u32, port: u16, target: &str) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::SRV(SRV::new(0, 0, port, name(target))),
    )
}

#[tokio::test]
async fn resolves_srv_and_txt_on_loopback() {
    let zone: Zone = Arc::new(Mutex::new(vec![
        srv_record(
            "_mongodb._tcp.cluster.test.local.",
            120,
            27017,
            "a.test.local.",
        ),
        srv_record(
            "_mongodb._tcp.cluster.test.local.",
            90,
            27018,
            "b.test.local.",
        ),
        Record::from_rdata(
            name("cluster.test.local."),
            300,
            RData::TXT(TXT::new(vec![
                "replicaSet=rs0&".into(),
                "authSource=admin".into(),
            ])),
        ),
    ]));
    let addr = dns_server(zone.clone()).await;
    let resolver = SrvResolver::new(Some(addr)).unwrap();
    let cfg = parse_uri("mongodb+srv://u:p@cluster.test.local/?tls=false").unwrap();
    let r = resolver.resolve(&cfg).await.unwrap();
    let mut hosts = r.hosts.clone();
    hosts.sort();
    assert_eq!(hosts, ["a.test.local:27017", "b.test.local:27018"]);
    assert_eq!(r.min_ttl, Some(Duration::from_secs(90)));
    assert_eq!(r.config.topology.replica_set.as_deref(), Some("rs0"));
    assert_eq!(r.srv_name, "_mongodb._tcp.cluster.test.local.");
    assert!(matches!(r.config.seeds, Seeds::Srv { .. }));

    // The records change while running: a rescan sees it, and drops a foreign target.
    zone.lock()
        .unwrap()
        .retain(|r| r.record_type() != RecordType::SRV);
    zone.lock().unwrap().extend([
        srv_record(
            "_mongodb._tcp.cluster.test.local.",
            60,
            27019,
            "c.test.local.",
        ),
        srv_record(
            "_mongodb._tcp.cluster.test.local.",
            60,
            27017,
            "evil.example.com.",
        ),
    ]);
    let scan = resolver.rescan(&cfg).await.unwrap();
    assert_eq!(scan.found, ["c.test.local:27019"]);
    assert_eq!(scan.rejected, ["evil.example.com:27017"]);
    // The initial lookup refuses the same answer outright.
    let err = resolver.resolve(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("evil.example.com"), "{err}");

    // An unknown name fails, naming the SRV name.
    let cfg = parse_uri("mongodb+srv://nothere.test.local/").unwrap();
    let err = resolver.resolve(&cfg).await.unwrap_err();
    assert!(matches!(err, SrvError::Lookup { .. }), "{err}");
    assert!(
        err.to_string().contains("_mongodb._tcp.nothere.test.local"),
        "{err}"
    );
}
