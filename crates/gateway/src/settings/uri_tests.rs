//! The upstream URI: both schemes, every option class, the forbidden combinations, and that
//! no error shows a password or token, including the driver parser's own messages.

use std::time::Duration;

use mongomux_auth::Mechanism;

use super::*;
use crate::upstream::read_pref::ReadMode;

fn err(uri: &str) -> String {
    parse_uri(uri).unwrap_err().to_string()
}

#[test]
fn uri_with_credentials() {
    let u = parse_uri(
        "mongodb://us%40er:p%3Ass@127.0.0.1:27017/app?authSource=admin&authMechanism=SCRAM-SHA-1",
    )
    .unwrap();
    assert_eq!(u.seeds, Seeds::Hosts(vec!["127.0.0.1:27017".into()]));
    let UpstreamAuth::Scram {
        username,
        password,
        source,
        mechanism,
    } = &u.auth
    else {
        panic!("{u:?}")
    };
    assert_eq!(username, "us@er");
    assert_eq!(password.expose(), "p:ss");
    assert_eq!(source, "admin");
    assert_eq!(*mechanism, Some(Mechanism::ScramSha1));
    assert!(!format!("{u:?}").contains("p:ss"));
}

#[test]
fn uri_defaults() {
    let u = parse_uri("mongodb://db.example").unwrap();
    assert_eq!(u.seeds, Seeds::Hosts(vec!["db.example:27017".into()]));
    assert!(matches!(u.auth, UpstreamAuth::None));
    assert!(!u.tls);
    assert_eq!(u.topology, TopologyOptions::default());
    let u = parse_uri("mongodb://u:p@h:1/app").unwrap();
    assert!(matches!(&u.auth, UpstreamAuth::Scram { source, .. } if source == "app"));
    // A user without a password: the password may come from upstream_password.
    let u = parse_uri("mongodb://u@h").unwrap();
    assert!(
        matches!(&u.auth, UpstreamAuth::Scram { password, .. } if password.expose().is_empty())
    );
}

#[test]
fn the_three_examples() {
    let u = parse_uri("mongodb+srv://gw:pw@cluster0.abcde.mongodb.net/?retryWrites=true&w=majority&appName=Cluster0").unwrap();
    assert!(
        matches!(&u.seeds, Seeds::Srv { host, service_name, max_hosts: None, .. }
        if host == "cluster0.abcde.mongodb.net" && service_name == "mongodb")
    );
    assert!(u.tls, "mongodb+srv turns TLS on");
    assert_eq!(u.app_name.as_deref(), Some("Cluster0"));
    let (_, report) = parse_uri_report("mongodb+srv://gw:pw@cluster0.abcde.mongodb.net/?retryWrites=true&w=majority&appName=Cluster0").unwrap();
    assert_eq!(report.ignored, ["retryWrites", "w"]);

    let u = parse_uri("mongodb://gw:pw@a.example:27017,b.example:27017,c.example:27017/?replicaSet=atlas-xyz-shard-0&tls=true&authSource=admin").unwrap();
    assert_eq!(
        u.seeds,
        Seeds::Hosts(vec![
            "a.example:27017".into(),
            "b.example:27017".into(),
            "c.example:27017".into()
        ])
    );
    assert_eq!(u.topology.replica_set.as_deref(), Some("atlas-xyz-shard-0"));
    assert!(u.tls);

    let u = parse_uri(
        "mongodb://a.example:27017/?authMechanism=MONGODB-AWS&authSource=$external&tls=true",
    )
    .unwrap();
    assert!(matches!(
        u.auth,
        UpstreamAuth::Aws {
            static_credentials: None
        }
    ));
}

#[test]
fn aws_static_credentials() {
    let u = parse_uri("mongodb://AKIDEXAMPLE:s%2Fecret@h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok3n").unwrap();
    let UpstreamAuth::Aws {
        static_credentials: Some(s),
    } = &u.auth
    else {
        panic!("{u:?}")
    };
    assert_eq!(s.access_key_id, "AKIDEXAMPLE");
    assert_eq!(s.secret_access_key.expose(), "s/ecret");
    assert_eq!(s.session_token.as_ref().map(|t| t.expose()), Some("tok3n"));
    assert!(!format!("{u:?}").contains("tok3n"));
    assert!(err("mongodb://h/?authMechanism=MONGODB-AWS&authSource=admin").contains("$external"));
    assert!(err("mongodb://AKID@h/?authMechanism=MONGODB-AWS").contains("password"));
    assert!(
        err("mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=SERVICE_NAME:x")
            .contains("SERVICE_NAME")
    );
}

#[test]
fn topology_and_read_preference_options() {
    let u = parse_uri("mongodb://a,b/?replicaSet=rs&heartbeatFrequencyMS=2000&localThresholdMS=30&serverSelectionTimeoutMS=5000&connectTimeoutMS=3000&readPreference=secondary&readPreferenceTags=dc:east,rack:1&readPreferenceTags=&maxStalenessSeconds=120").unwrap();
    let t = &u.topology;
    assert_eq!(t.heartbeat_frequency, Duration::from_secs(2));
    assert_eq!(t.local_threshold, Duration::from_millis(30));
    assert_eq!(t.server_selection_timeout, Duration::from_secs(5));
    assert_eq!(t.connect_timeout, Duration::from_secs(3));
    assert_eq!(t.read_preference.mode, ReadMode::Secondary);
    assert_eq!(
        t.read_preference.tag_sets,
        vec![
            vec![("dc".into(), "east".into()), ("rack".into(), "1".into())],
            vec![]
        ]
    );
    assert_eq!(
        t.read_preference.max_staleness,
        Some(Duration::from_secs(120))
    );
    let u = parse_uri("mongodb://h/?directConnection=true&loadBalanced=false").unwrap();
    assert_eq!(u.topology.direct_connection, Some(true));
    let u = parse_uri("mongodb://lb/?loadBalanced=true").unwrap();
    assert!(u.topology.load_balanced);
}

#[test]
fn tls_compressors_and_srv_options() {
    let u = parse_uri("mongodb://h/?tlsCAFile=/ca.pem&tlsCertificateKeyFile=/c.pem&tlsAllowInvalidHostnames=true&compressors=zstd,snappy&appName=gw").unwrap();
    assert!(u.tls);
    assert_eq!(
        u.tls_ca_file.as_deref(),
        Some(std::path::Path::new("/ca.pem"))
    );
    assert_eq!(
        u.tls_certificate_key_file.as_deref(),
        Some(std::path::Path::new("/c.pem"))
    );
    assert!(u.tls_allow_invalid_hostnames);
    assert_eq!(u.compressors, ["zstd", "snappy"]);
    let u = parse_uri("mongodb+srv://c.example.com/?srvServiceName=custom&srvMaxHosts=2&ssl=false")
        .unwrap();
    assert!(
        matches!(&u.seeds, Seeds::Srv { service_name, max_hosts: Some(2), .. } if service_name == "custom")
    );
    assert!(!u.tls, "tls=false turns the srv default off");
    let u = parse_uri("mongodb+srv://c.example.com/?srvMaxHosts=0&authSource=x&loadBalanced=false")
        .unwrap();
    assert!(matches!(
        &u.seeds,
        Seeds::Srv {
            max_hosts: None,
            uri_auth_source: true,
            uri_load_balanced: true,
            ..
        }
    ));
    let u = parse_uri("mongodb://[::1]:27019,[fe80::1]/").unwrap();
    assert_eq!(
        u.seeds,
        Seeds::Hosts(vec!["[::1]:27019".into(), "[fe80::1]:27017".into()])
    );
}

#[test]
fn client_only_options_are_ignored() {
    let (u, report) = parse_uri_report("mongodb://h/?retryWrites=true&retryReads=false&w=majority&wTimeoutMS=100&journal=true&readConcernLevel=majority&maxPoolSize=5&minPoolSize=1&maxIdleTimeMS=10&waitQueueTimeoutMS=10&socketTimeoutMS=10&maxConnecting=2&timeoutMS=10&zlibCompressionLevel=3&uuidRepresentation=javaLegacy").unwrap();
    assert_eq!(report.ignored.len(), 15);
    assert_eq!(u.topology, TopologyOptions::default());
}

#[test]
fn refused_options_and_mechanisms_are_named() {
    for (uri, named) in [
        ("mongodb://h/?bogus=1", "bogus"),
        ("mongodb://h/?tlsInsecure=true", "tlsInsecure"),
        (
            "mongodb://h/?tlsAllowInvalidCertificates=true",
            "tlsAllowInvalidCertificates",
        ),
        ("mongodb://h/?proxyHost=p", "proxyHost"),
        ("mongodb://u:p@h/?authMechanism=PLAIN", "PLAIN"),
        ("mongodb://u@h/?authMechanism=GSSAPI", "GSSAPI"),
        ("mongodb://h/?authMechanism=MONGODB-X509", "MONGODB-X509"),
        ("mongodb://h/?authMechanism=MONGODB-OIDC", "MONGODB-OIDC"),
        ("mongodb://h/?compressors=lz4", "lz4"),
        (
            "mongodb://h/?tlsAllowInvalidHostnames=yes",
            "tlsAllowInvalidHostnames",
        ),
    ] {
        let e = err(uri);
        assert!(e.contains(named), "{uri}: {e}");
    }
}

#[test]
fn forbidden_combinations() {
    for uri in [
        "http://h",
        "mongodb://",
        "mongodb+srv://a.example.com,b.example.com/",
        "mongodb+srv://c.example.com:27017/",
        "mongodb+srv://c.example.com/?directConnection=true",
        "mongodb://h/?srvServiceName=x",
        "mongodb://h/?srvMaxHosts=2",
        "mongodb+srv://c.example.com/?srvMaxHosts=2&replicaSet=rs",
        "mongodb+srv://c.example.com/?srvMaxHosts=2&loadBalanced=true",
        "mongodb://a,b/?directConnection=true",
        "mongodb://a,b/?loadBalanced=true",
        "mongodb://a/?loadBalanced=true&replicaSet=rs",
        "mongodb://a/?loadBalanced=true&directConnection=true",
        "mongodb://h/?readPreference=primary&maxStalenessSeconds=120",
        "mongodb://h/?readPreference=secondary&maxStalenessSeconds=30",
        "mongodb://h/?readPreference=bogus",
        "mongodb://h/?heartbeatFrequencyMS=100",
        "mongodb://h/?connectTimeoutMS=0",
        "mongodb://h/?serverSelectionTimeoutMS=0",
        "mongodb://h/?tls=false&tlsAllowInvalidHostnames=true",
        "mongodb://h/?tls=maybe",
        "mongodb://h/?appName=a&appName=b",
        "mongodb://h/?compressors=zstd&compressors=snappy",
        "mongodb://h/?tls=true&tlsAllowInvalidHostnames=true&TLSallowInvalidHostnames=false",
        "mongodb://u:p@h/?authMechanismProperties=SERVICE_NAME:x",
    ] {
        assert!(parse_uri(uri).is_err(), "{uri} was accepted");
    }
}

/// Every error, from the gateway's checks or the driver's parser, for URIs whose password is
/// misplaced or unencoded in every way we could think of.
#[test]
fn no_error_echoes_the_password() {
    let pw = "Zq9sEcReT";
    let token = "TokSecret77";
    for uri in [
        format!("mongodb://u:{pw}@h/?bogus=1"),
        format!("mongodb://u:{pw}@h/?authMechanism=PLAIN"),
        format!("mongodb://u:{pw}@h:notaport/"),
        format!("mongodb://u:{pw}?x@h/"),
        format!("mongodb://u:{pw}?x=1@h/"),
        format!("mongodb://u:{pw}?{pw}=1@h/"),
        format!("mongodb://u:{pw}/x@h/"),
        format!("mongodb://u:{pw}@@h/"),
        format!("mongodb://u:{pw}:{pw}@h/"),
        format!("mongodb://u:{pw}%zz@h/"),
        format!("mongodb://u:{pw}@[::1/"),
        format!("mongodb://u:{pw}@h,/"),
        format!("mongodb+srv://u:{pw}@h:1/"),
        format!("mongodb://u:{pw}@h/?readPreference={pw}"),
        format!("mongodb://u:{pw}@h/?readPreferenceTags={pw}"),
        format!("mongodb://u:{pw}@h/?authMechanism=MONGODB-AWS&authMechanismProperties={token}"),
        format!("mongodb://u:{pw}@h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:{token},X:{token}"),
        format!("mongodb://u:{pw}@h/?authMechanismProperties=AWS_SESSION_TOKEN:{token}"),
        format!("mongodb://u:{pw}@h/?authMechanism=MONGODB-AWS&authSource=admin"),
        format!("mongodb://u:{pw}@h/{pw}$x"),
        format!("mongodbx://u:{pw}@h/"),
    ] {
        let Err(e) = parse_uri(&uri) else {
            panic!("{uri} was accepted")
        };
        let text = e.to_string();
        for secret in [pw, token] {
            for frag in secret.as_bytes().windows(4) {
                let frag = std::str::from_utf8(frag).unwrap();
                let frag = frag.to_lowercase();
                assert!(!text.to_lowercase().contains(&frag), "{uri}: {text}");
            }
        }
    }
}
