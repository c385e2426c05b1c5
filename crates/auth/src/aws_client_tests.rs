//! Tests of the MONGODB-AWS client: the payload shapes, every check on the server's reply
//! (the spec's host and region table), and a cross-check against this crate's own server side:
//! what the client signs, the server accepts, and the request the server rebuilds for STS
//! carries exactly the signature of the request the client signed.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bson::{rawdoc, spec::BinarySubtype, Binary, Document};

use super::*;
use crate::aws::{server_first, StsRequest};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "FQoGZXIvYXdzEJr//////////wEaDEXAMPLETOKEN+abc/def=";

fn creds(token: bool) -> AwsCredentials {
    AwsCredentials {
        access_key_id: "AKIDEXAMPLE12345".into(),
        secret_access_key: Secret::new(SECRET),
        session_token: token.then(|| Secret::new(TOKEN)),
    }
}

fn server_reply(s: Vec<u8>, h: &str) -> Vec<u8> {
    rawdoc! { "s": Binary { subtype: BinarySubtype::Generic, bytes: s }, "h": h }.into_bytes()
}

#[test]
fn client_first_has_a_32_byte_nonce_and_no_channel_binding() {
    let (_, payload) = AwsClient::start();
    let doc: Document = bson::from_slice(&payload).unwrap();
    assert_eq!(doc.len(), 2);
    assert_eq!(doc.get_binary_generic("r").unwrap().len(), 32);
    assert_eq!(doc.get_i32("p").unwrap(), 110);
    let (_, other) = AwsClient::start();
    assert_ne!(payload, other, "each conversation has its own nonce");
}

#[test]
fn refuses_a_bad_server_nonce() {
    let (client, _) = AwsClient::with_nonce([7; 32]);
    let mut good = vec![7; 32];
    good.extend([9; 32]);
    assert!(client
        .challenge(&server_reply(good.clone(), "sts.amazonaws.com"))
        .is_ok());
    for bad in [good[..63].to_vec(), [good.clone(), vec![1]].concat(), {
        let mut b = good.clone();
        b[0] = 8;
        b
    }] {
        let err = client
            .challenge(&server_reply(bad, "sts.amazonaws.com"))
            .unwrap_err();
        assert!(matches!(err, AuthError::AwsServerReply(_)), "{err:?}");
    }
    let no_nonce = rawdoc! { "h": "sts.amazonaws.com" }.into_bytes();
    assert!(client.challenge(&no_nonce).is_err());
    let no_host = rawdoc! { "s": Binary { subtype: BinarySubtype::Generic, bytes: good } };
    assert!(client.challenge(no_host.as_bytes()).is_err());
    assert!(client.challenge(b"not bson").is_err());
}

#[test]
fn hosts_and_regions_follow_the_spec_table() {
    for (host, region) in [
        ("sts.amazonaws.com", "us-east-1"),
        ("sts.us-west-2.amazonaws.com", "us-west-2"),
        ("sts.us-west-2.amazonaws.com.ch", "us-west-2"),
        ("example.com", "com"),
        ("localhost", "us-east-1"),
    ] {
        assert_eq!(sts_region(host).unwrap(), region, "{host}");
    }
    let long = format!("{}.com", "a".repeat(252));
    assert_eq!(long.len(), 256);
    for bad in [
        "sts..com",
        ".amazonaws.com",
        "sts.amazonaws.",
        "",
        long.as_str(),
        "sts.amazonaws.com\r\nx-evil: 1",
        "sts amazonaws.com",
    ] {
        assert!(sts_region(bad).is_err(), "{bad:?}");
    }
    assert!(sts_region(&long[1..]).is_ok(), "255 bytes is the limit");
}

/// Signs the headers of `req` again (without the ones the signer adds) at `now`; the
/// Authorization header that results.
fn resign(req: &StsRequest, c: &AwsCredentials, region: &str, now: SystemTime) -> String {
    let added = ["authorization", "x-amz-date", "x-amz-security-token"];
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter(|(n, _)| !added.contains(&n.as_str()))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let identity = aws_credential_types::Credentials::new(
        c.access_key_id.clone(),
        c.secret_access_key.expose(),
        c.session_token.as_ref().map(|t| t.expose().to_string()),
        None,
        "test",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        "/",
        headers.into_iter(),
        SignableBody::Bytes(req.body.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let auth = instructions
        .headers()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .unwrap()
        .1
        .to_string();
    auth
}

fn header<'a>(req: &'a StsRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_server_side_accepts_what_the_client_signs_and_rebuilds_the_same_request() {
    for (host, token) in [
        ("sts.amazonaws.com", true),
        ("sts.amazonaws.com", false),
        ("sts.eu-west-1.amazonaws.com", true),
    ] {
        let now = SystemTime::now();
        let (client, first) = AwsClient::start();
        let (server, reply) = server_first(&first, host).unwrap();
        let challenge = client.challenge(&reply).unwrap();
        assert_eq!(challenge.host(), host);
        let c = creds(token);
        let fin = challenge.client_final(&c, now).unwrap();
        let req = server.sts_request(&fin, now).unwrap();

        let doc: Document = bson::from_slice(&fin).unwrap();
        let a = doc.get_str("a").unwrap();
        assert!(a.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE12345/{}/{}/sts/aws4_request",
            &doc.get_str("d").unwrap()[..8],
            challenge.region()
        )));
        assert_eq!(doc.get_str("t").ok(), token.then_some(TOKEN));
        assert_eq!(doc.len(), if token { 3 } else { 2 });
        assert_eq!(header(&req, "authorization"), Some(a));
        assert_eq!(header(&req, "x-amz-security-token"), token.then_some(TOKEN));
        // STS will check the signature against the request the server rebuilt: signing that
        // request again must give the very signature the client sent.
        assert_eq!(
            resign(&req, &c, challenge.region(), now),
            a,
            "{host} {token}"
        );
    }
}

#[test]
fn a_request_signed_for_another_conversation_does_not_verify() {
    let now = SystemTime::now();
    let c = creds(true);
    let (client, first) = AwsClient::start();
    let (_, reply) = server_first(&first, "sts.amazonaws.com").unwrap();
    let fin = client
        .challenge(&reply)
        .unwrap()
        .client_final(&c, now)
        .unwrap();
    // A second conversation with the same client nonce still has a new server nonce.
    let (other, _) = server_first(&first, "sts.amazonaws.com").unwrap();
    let req = other.sts_request(&fin, now).unwrap();
    let a = bson::from_slice::<Document>(&fin).unwrap();
    assert_ne!(resign(&req, &c, "us-east-1", now), a.get_str("a").unwrap());
}

#[test]
fn the_date_is_the_signing_time_and_the_server_checks_its_skew() {
    let (client, first) = AwsClient::start();
    let (server, reply) = server_first(&first, "sts.amazonaws.com").unwrap();
    let challenge = client.challenge(&reply).unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
    let fin = challenge.client_final(&creds(false), at).unwrap();
    let doc: Document = bson::from_slice(&fin).unwrap();
    assert_eq!(doc.get_str("d").unwrap(), "20261130T005320Z");
    assert!(server.sts_request(&fin, at).is_ok());
    assert!(server
        .sts_request(&fin, at + Duration::from_secs(20 * 60))
        .is_err());
}

#[test]
fn no_secret_in_debug_or_errors() {
    let c = creds(true);
    let (client, first) = AwsClient::start();
    let (_, reply) = server_first(&first, "sts.amazonaws.com").unwrap();
    let challenge = client.challenge(&reply).unwrap();
    for text in [
        format!("{c:?}"),
        format!("{challenge:?}"),
        format!("{client:?}"),
    ] {
        assert!(!text.contains(SECRET) && !text.contains(TOKEN), "{text}");
    }
    let err = client
        .challenge(&server_reply(vec![0; 64], "sts.amazonaws.com"))
        .unwrap_err();
    assert!(!err.to_string().contains(SECRET));
}

/// The HTTP Data API's header: what the client signs, the server's checks accept once rebuilt
/// for STS with the same signature; a tampered, padded, stale or foreign header is refused.
#[test]
fn http_header_round_trips_and_refuses_tampering() {
    use crate::aws::http_sts_request;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let now = SystemTime::now();
    let host = "sts.us-east-1.amazonaws.com";
    let challenge = AwsChallenge::for_http(host).unwrap();
    for token in [false, true] {
        let header = challenge.http_header(&creds(token), now).unwrap();
        let req: StsRequest = http_sts_request(&header, host, now).unwrap();
        let has = |name: &str| req.headers.iter().any(|(k, _)| k == name);
        assert_eq!(has("x-amz-security-token"), token);
        assert!(has("x-mongodb-server-nonce") && req.signature.len() == 64);
    }
    let header = challenge.http_header(&creds(false), now).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&b64.decode(&header).unwrap()).unwrap();
    let encode = |v: &serde_json::Value| b64.encode(v.to_string());
    // Another region's host, a stale date, a short nonce, an unknown key, a CR/LF.
    assert!(http_sts_request(&header, "sts.eu-west-1.amazonaws.com", now).is_err());
    assert!(http_sts_request(&header, host, now + Duration::from_secs(20 * 60)).is_err());
    let mut short = json.clone();
    short["X-MongoDB-Server-Nonce"] = b64.encode([0u8; 32]).into();
    assert!(http_sts_request(&encode(&short), host, now).is_err());
    let mut extra = json.clone();
    extra["Host"] = "evil.example".into();
    assert!(http_sts_request(&encode(&extra), host, now).is_err());
    let mut crlf = json.clone();
    crlf["X-Amz-Date"] = format!("{}\r\nX-Evil: 1", json["X-Amz-Date"].as_str().unwrap()).into();
    assert!(http_sts_request(&encode(&crlf), host, now).is_err());
    // A key given twice is refused, whichever value would win.
    let text = json.to_string();
    let doubled = text.replacen('{', &format!("{{\"X-Amz-Date\":{},", json["X-Amz-Date"]), 1);
    assert!(http_sts_request(&b64.encode(doubled), host, now).is_err());
    assert!(http_sts_request("not base64!", host, now).is_err());
    assert!(http_sts_request(&"A".repeat(20_000), host, now).is_err());
}
