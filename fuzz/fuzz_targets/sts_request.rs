//! Arbitrary MONGODB-AWS client payloads into the STS request builder of `mongomux-auth`
//! (`aws::server_first`, then `AwsServerFirst::sts_request`).
//!
//! Input layout: one control byte, then the payload. Control bit 0 clear: the payload is the
//! client's final message as it is (raw BSON). Bit 0 set: the payload is up to three strings
//! separated by NUL, `a` (Authorization), `d` (X-Amz-Date) and, when present, `t` (session
//! token), encoded into the `{a, d, t?}` document a driver sends, so the fuzzer varies the
//! values rather than the BSON framing. Bit 1 picks the configured STS host (global or
//! regional); bit 2 sets the `p` flag of the client's first message to something other than
//! `n`, which must be refused.
//!
//! Properties: nothing panics, and every request produced satisfies the rules the gateway
//! relies on when it sends it: only the headers of the MONGODB-AWS request, each once; no
//! control character (CR/LF above all) in any value; the host exactly the configured one; the
//! body exactly GetCallerIdentity's, with its length; the date within the allowed skew of the
//! clock given; the server nonce ours; the signature the one in the Authorization header.
#![no_main]

use std::time::{Duration, SystemTime};

use base64::Engine;
use bson::{doc, spec::BinarySubtype, Binary, Document};
use libfuzzer_sys::fuzz_target;
use mongomux_auth::aws::{self, StsRequest, MAX_CLOCK_SKEW, STS_BODY};

const HOSTS: [&str; 2] = ["sts.amazonaws.com", "sts.eu-west-1.amazonaws.com"];
/// 2026-11-29T12:00:00Z: the clock the builder is given; the seeds are dated that day.
const NOW_SECS: u64 = 1_795_953_600;
const CLIENT_NONCE: [u8; 32] = [7; 32];

const ALLOWED_HEADERS: [&str; 8] = [
    "authorization",
    "content-length",
    "content-type",
    "host",
    "x-amz-date",
    "x-amz-security-token",
    "x-mongodb-gs2-cb-flag",
    "x-mongodb-server-nonce",
];

/// `{a, d, t?}` from NUL-separated strings; `None` when a part is not UTF-8.
fn structured(payload: &[u8]) -> Option<Vec<u8>> {
    let mut parts = payload.splitn(3, |b| *b == 0);
    let a = std::str::from_utf8(parts.next()?).ok()?;
    let d = std::str::from_utf8(parts.next().unwrap_or_default()).ok()?;
    let mut document = doc! { "a": a, "d": d };
    if let Some(t) = parts.next() {
        document.insert("t", std::str::from_utf8(t).ok()?);
    }
    bson::to_vec(&document).ok()
}

fn header<'r>(request: &'r StsRequest, name: &str) -> Option<&'r str> {
    request
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, payload)) = data.split_first() else {
        return;
    };
    let host = HOSTS[usize::from(control & 2 != 0)];
    let flag = if control & 4 == 0 { 110 } else { 121 };
    let client_first: Document = doc! {
        "r": Binary { subtype: BinarySubtype::Generic, bytes: CLIENT_NONCE.to_vec() },
        "p": flag,
    };
    let first = bson::to_vec(&client_first).expect("fixed document encodes");
    let started = aws::server_first(&first, host);
    if flag != 110 {
        assert!(started.is_err(), "channel binding other than 'n' accepted");
        return;
    }
    let (server, reply) = started.expect("a valid client-first is accepted");
    let reply = bson::Document::from_reader(reply.as_slice()).expect("server-first is BSON");
    let nonce = match reply.get("s") {
        Some(bson::Bson::Binary(b)) => b.bytes.clone(),
        other => panic!("server-first without a binary nonce: {other:?}"),
    };
    assert_eq!(nonce.len(), 64);
    assert_eq!(&nonce[..32], &CLIENT_NONCE);
    assert_eq!(reply.get_str("h").ok(), Some(host));

    let client_final = if control & 1 == 0 {
        payload.to_vec()
    } else {
        match structured(payload) {
            Some(bytes) => bytes,
            None => return,
        }
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let Ok(request) = server.sts_request(&client_final, now) else {
        return;
    };
    let _ = format!("{request:?}");
    check(&request, host, &nonce, now);
});

fn check(request: &StsRequest, host: &str, nonce: &[u8], now: SystemTime) {
    for (i, (name, value)) in request.headers.iter().enumerate() {
        assert!(
            ALLOWED_HEADERS.contains(&name.as_str()),
            "header {name:?} not allowed"
        );
        assert!(
            request.headers[..i].iter().all(|(k, _)| k != name),
            "header {name:?} twice"
        );
        assert!(
            value.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "header {name:?} has a control or non-ASCII byte: {value:?}"
        );
    }
    assert_eq!(header(request, "host"), Some(host));
    assert_eq!(request.body, STS_BODY);
    assert_eq!(
        header(request, "content-length"),
        Some(STS_BODY.len().to_string().as_str())
    );
    assert_eq!(header(request, "x-mongodb-gs2-cb-flag"), Some("n"));
    let ours = base64::engine::general_purpose::STANDARD.encode(nonce);
    assert_eq!(
        header(request, "x-mongodb-server-nonce"),
        Some(ours.as_str())
    );
    let authorization = header(request, "authorization").expect("authorization header");
    assert!(authorization.ends_with(&format!("Signature={}", request.signature)));
    assert_eq!(request.signature.len(), 64);
    let date = header(request, "x-amz-date").expect("x-amz-date header");
    let when = parse_date(date).expect("a produced date parses");
    let skew = match now.duration_since(when) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(skew <= MAX_CLOCK_SKEW, "date {date} outside the skew");
}

/// `yyyymmddThhmmssZ` to a time, independently of the builder (days since the epoch by the
/// civil calendar).
fn parse_date(d: &str) -> Option<SystemTime> {
    let n = |a: usize, b: usize| d.get(a..b)?.parse::<u64>().ok();
    let (y, mo, day) = (n(0, 4)?, n(4, 6)?, n(6, 8)?);
    let (h, mi, s) = (n(9, 11)?, n(11, 13)?, n(13, 15)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return None;
    }
    let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut days: u64 = (1970..y).map(|y| if leap(y) { 366 } else { 365 }).sum();
    days += month_days[..(mo - 1) as usize].iter().sum::<u64>();
    if mo > 2 && leap(y) {
        days += 1;
    }
    days += day - 1;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + mi * 60 + s))
}
