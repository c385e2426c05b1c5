//! Arbitrary OP_MSGs through the gateway's request pipeline up to authorization:
//! `CommandView::parse` (the classifier: command table row, routing fields, every namespace)
//! and then `authz::check`, for no identity and for a few fixed users.
//!
//! Input layout: one control byte, then the payload.
//!
//! - control bit 0 clear: the payload is a whole message; its messageLength is fixed up and
//!   its opCode forced to OP_MSG so the fuzzer gets past the header without learning it.
//! - control bit 0 set: the payload starts with a BSON body (as long as its own length prefix
//!   says, clipped to the input); an OP_MSG is built around it. Control bit 1 adds a kind-1
//!   section whose identifier is picked by bits 2-4 and whose documents are the rest of the
//!   payload; bit 5 sets moreToCome. This reaches the namespace walk with well-framed bodies
//!   the fuzzer only has to vary inside.
//!
//! Properties: nothing panics, and whatever authorization lets through respects the policy of
//! command/authz.rs, judged here only from the view's public fields: with no identity only
//! `Open` commands pass; a user scoped to `app` passes only if every namespace is in `app`,
//! the request names at least one (unless it names none by design), and no `system.*`
//! collection is written or read beyond `system.views` / `system.js`; a read-only user never
//! passes a write.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use mongomux_gateway::command::authz;
use mongomux_gateway::command::table::Ns;
use mongomux_gateway::command::{Access, CommandView};
use mongomux_gateway::identity::users::{Role, User, UserConfig, UserStore};
use mongomux_wire::{OpMsg, HEADER_LEN};

const SCOPE: &str = "app";
const READABLE_SYSTEM: [&str; 2] = ["system.views", "system.js"];
const SEQUENCE_IDS: [&[u8]; 8] = [
    b"documents",
    b"updates",
    b"deletes",
    b"ops",
    b"nsInfo",
    b"pipeline",
    b"",
    b"x",
];

struct Users {
    store: UserStore,
    scoped: Arc<User>,
    scoped_read: Arc<User>,
    everywhere: Arc<User>,
}

fn aws_user(role: &str, access: Role, databases: &[&str]) -> UserConfig {
    UserConfig {
        name: format!("arn:aws:iam::123456789012:role/{role}"),
        db: "$external".into(),
        role: access,
        databases: databases.iter().map(|d| d.to_string()).collect(),
        scram: Vec::new(),
        aws: true,
    }
}

fn users() -> &'static Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| {
        let store = UserStore::from_config(&[
            aws_user("scoped", Role::ReadWrite, &[SCOPE]),
            aws_user("reader", Role::Read, &[SCOPE]),
            aws_user("everywhere", Role::ReadWrite, &[]),
        ])
        .expect("fixed users are valid");
        let get = |role: &str| {
            store
                .get(
                    "$external",
                    &format!("arn:aws:iam::123456789012:role/{role}"),
                )
                .expect("fixed user exists")
        };
        let (scoped, scoped_read, everywhere) = (get("scoped"), get("reader"), get("everywhere"));
        Users {
            store,
            scoped,
            scoped_read,
            everywhere,
        }
    })
}

/// An OP_MSG around `body`, with an optional kind-1 section.
fn build(control: u8, payload: &[u8]) -> Vec<u8> {
    let declared = payload
        .get(..4)
        .map(|p| i32::from_le_bytes(p.try_into().expect("4 bytes")))
        .unwrap_or(0);
    let body_len = usize::try_from(declared).unwrap_or(0).min(payload.len());
    let (body, rest) = payload.split_at(body_len);
    let flags: u32 = if control & 0x20 != 0 { 2 } else { 0 };
    let mut out = vec![0u8; HEADER_LEN];
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    out.extend_from_slice(body);
    if control & 2 != 0 {
        let ident = SEQUENCE_IDS[usize::from((control >> 2) & 7)];
        let size = 4 + ident.len() + 1 + rest.len();
        out.push(1);
        out.extend_from_slice(&(size as i32).to_le_bytes());
        out.extend_from_slice(ident);
        out.push(0);
        out.extend_from_slice(rest);
    }
    fix_header(&mut out);
    out
}

/// messageLength = the length, requestID 1, opCode OP_MSG.
fn fix_header(message: &mut [u8]) {
    let len = message.len() as i32;
    message[0..4].copy_from_slice(&len.to_le_bytes());
    message[4..8].copy_from_slice(&1i32.to_le_bytes());
    message[12..16].copy_from_slice(&2013i32.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, payload)) = data.split_first() else {
        return;
    };
    let message = if control & 1 == 0 {
        if payload.len() < HEADER_LEN {
            return;
        }
        let mut m = payload.to_vec();
        fix_header(&mut m);
        m
    } else {
        build(control, payload)
    };
    let Ok(msg) = OpMsg::parse(&message) else {
        return;
    };
    let Ok(view) = CommandView::parse(&message, &msg) else {
        return;
    };
    // The accessors the session uses after authorization must not panic either.
    let _ = (
        view.ends_transaction(),
        view.has_session_ids(),
        format!("{view:?}"),
    );
    judge(&view);
});

fn judge(view: &CommandView) {
    let u = users();
    let access = view.access();
    if authz::check(&u.store, None, view).is_ok() {
        assert_eq!(
            view.spec.access,
            Access::Open,
            "{} passed unauthenticated",
            view.name
        );
    }
    if authz::check(&u.store, Some(&u.scoped), view).is_ok() {
        assert_scoped(view, access);
    }
    if authz::check(&u.store, Some(&u.scoped_read), view).is_ok() {
        assert_scoped(view, access);
        assert_ne!(
            access,
            Access::Write,
            "{} passed for a read-only user",
            view.name
        );
    }
    if authz::check(&u.store, Some(&u.everywhere), view).is_ok() {
        assert_no_forbidden_system(view, access);
    }
}

/// What passing for the user scoped to `app` must imply.
fn assert_scoped(view: &CommandView, access: Access) {
    assert!(
        !matches!(access, Access::Admin | Access::Unreviewed),
        "{} passed for a scoped user although its access is {access:?}",
        view.name
    );
    if !matches!(access, Access::Read | Access::Write) {
        return;
    }
    assert_ne!(
        view.spec.ns,
        Ns::Server,
        "{}: server-wide for a scoped user",
        view.name
    );
    assert!(
        view.server_stage.is_none(),
        "{}: server-wide stage",
        view.name
    );
    assert!(
        !view.namespaces.is_empty(),
        "{}: passed naming no namespace",
        view.name
    );
    for ns in &view.namespaces {
        assert_eq!(
            ns.db, SCOPE,
            "{}: namespace {ns:?} outside the scope",
            view.name
        );
    }
    assert_no_forbidden_system(view, access);
}

/// No `system.*` collection is written, and only the database's own ones are read.
fn assert_no_forbidden_system(view: &CommandView, access: Access) {
    for ns in &view.namespaces {
        if let Some(coll) = ns.coll.as_deref().filter(|c| c.starts_with("system.")) {
            assert!(
                access != Access::Write && READABLE_SYSTEM.contains(&coll),
                "{}: system collection {ns:?} passed with {access:?}",
                view.name
            );
        }
    }
}
