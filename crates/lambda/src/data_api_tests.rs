//! What the Data API client decides without a server: configuration, the credential header,
//! answers and errors, and that no secret reaches a message.

use std::collections::HashMap;

use base64::Engine;

use super::*;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN";
const KEY: &str = "mmx_k_0123456789abcdef";

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

const ROLE: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE"),
    ("AWS_SECRET_ACCESS_KEY", SECRET),
    ("AWS_SESSION_TOKEN", TOKEN),
];

#[tokio::test]
async fn an_api_key_wins_and_is_sent_as_is() {
    let api = DataApi::from_lookup(env(&[
        ("MONGOMUX_DATA_API_URL", "http://10.0.0.5:8080/"),
        ("MONGOMUX_DATA_API_KEY", KEY),
    ]))
    .unwrap();
    assert_eq!(api.inner.base, "http://10.0.0.5:8080");
    let (name, value) = api.auth_header(env(ROLE)).unwrap();
    assert_eq!((name, value.to_str().unwrap()), ("apiKey", KEY));
    assert!(value.is_sensitive());
    assert!(!format!("{api:?}").contains(KEY));
}

#[tokio::test]
async fn without_a_key_each_request_is_signed_afresh_with_the_role() {
    let api = DataApi::from_lookup(env(&[("MONGOMUX_DATA_API_URL", "http://gw:8080")])).unwrap();
    assert!(matches!(api.auth(), DataApiAuth::Iam { sts_host } if sts_host == DEFAULT_STS_HOST));
    let (name, first) = api.auth_header(env(ROLE)).unwrap();
    let (_, second) = api.auth_header(env(ROLE)).unwrap();
    assert_eq!(name, "X-MongoMux-AWS-STS");
    // A fresh nonce every time: the gateway accepts each signed header once.
    assert_ne!(first, second);
    let json: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(first.to_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["X-Amz-Security-Token"], TOKEN);
    assert!(json["Authorization"]
        .as_str()
        .unwrap()
        .contains("Credential=ASIAEXAMPLE/"));
    assert!(!json.to_string().contains(SECRET));
    // Credentials are read at each request: without them, a clear error naming the variable.
    let err = api
        .auth_header(env(&[("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE")]))
        .unwrap_err();
    assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
}

#[test]
fn the_sts_host_is_checked_at_start() {
    let api = DataApi::from_lookup(env(&[
        ("MONGOMUX_DATA_API_URL", "http://gw:8080"),
        ("MONGOMUX_DATA_API_STS_HOST", "sts.eu-west-1.amazonaws.com"),
    ]));
    assert!(
        matches!(api.unwrap().auth(), DataApiAuth::Iam { sts_host } if sts_host.contains("eu-west-1"))
    );
    let bad = DataApi::from_lookup(env(&[
        ("MONGOMUX_DATA_API_URL", "http://gw:8080"),
        ("MONGOMUX_DATA_API_STS_HOST", "sts..amazonaws.com"),
    ]));
    assert!(bad.is_err());
}

#[test]
fn bad_addresses_are_refused_without_repeating_them() {
    assert!(matches!(
        DataApi::from_lookup(env(&[])),
        Err(Error::NoDataApiUrl)
    ));
    for (url, why) in [
        ("https://gw:8443", "https is not supported"),
        ("gw:8080", "must start with http://"),
        ("http://", "no host"),
        ("http://user:pw-SECRET@gw:8080", "user info"),
        ("http://gw:8080/?x=1", "query"),
    ] {
        let err = DataApi::from_lookup(env(&[("MONGOMUX_DATA_API_URL", url)])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(why), "{url}: {text}");
        assert!(!text.contains("SECRET"), "{text}");
    }
    let api = DataApi::new(
        "http://gw:8080/app/data-x/endpoint/data/v1",
        DataApiAuth::ApiKey(Secret::new(KEY)),
    );
    assert_eq!(
        api.unwrap().inner.base,
        "http://gw:8080/app/data-x/endpoint/data/v1"
    );
}

#[test]
fn answers_and_errors() {
    let ok = answer(
        "findOne",
        200,
        br#"{"document":{"_id":{"$oid":"65a0a0a0a0a0a0a0a0a0a0a0"}}}"#,
    );
    assert_eq!(
        ok.unwrap()["document"]["_id"]["$oid"],
        "65a0a0a0a0a0a0a0a0a0a0a0"
    );
    let err = answer(
        "findOne",
        401,
        br#"{"error":"invalid session","error_code":"InvalidSession"}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Data API findOne: HTTP 401 InvalidSession: invalid session"
    );
    let html = answer("insertOne", 502, &[b'x'; 5000])
        .unwrap_err()
        .to_string();
    assert!(html.contains("HTTP 502") && html.len() < 400, "{html}");
    assert!(answer("find", 200, b"[1]").is_err());
    assert!(answer("find", 200, b"not json").is_err());
}

#[test]
fn no_secret_in_any_message() {
    let errors = [
        role_credentials(env(&[
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", TOKEN),
        ]))
        .unwrap_err(),
        Error::InvalidDataApiKey,
        answer(
            "findOne",
            401,
            br#"{"error":"invalid session","error_code":"InvalidSession"}"#,
        )
        .unwrap_err(),
    ];
    for err in errors {
        for text in [err.to_string(), format!("{err:?}")] {
            for secret in [SECRET, TOKEN, KEY] {
                assert!(!text.contains(secret), "{text}");
            }
        }
    }
    let creds = role_credentials(env(ROLE)).unwrap();
    let shown = format!("{creds:?}");
    assert!(!shown.contains(SECRET) && !shown.contains(TOKEN), "{shown}");
    let api = DataApi::new("http://gw:8080", DataApiAuth::ApiKey(Secret::new(KEY))).unwrap();
    assert!(!format!("{api:?}").contains(KEY));
}

#[test]
fn convenience_bodies_name_the_source_database_and_collection() {
    let b = body("lambda", "events", "filter", json!({"_id": 1}));
    assert_eq!(
        b,
        json!({"dataSource": "mongomux", "database": "lambda", "collection": "events", "filter": {"_id": 1}})
    );
}

#[tokio::test]
async fn an_action_name_cannot_change_the_path() {
    let api = DataApi::new("http://127.0.0.1:9", DataApiAuth::ApiKey(Secret::new(KEY))).unwrap();
    for name in ["", "../admin", "find One", "findOne?x=1"] {
        let err = api.action(name, json!({})).await.unwrap_err();
        assert!(err.to_string().contains("not an action name"), "{err}");
    }
    assert_eq!(api.requests_sent(), 0);
}
