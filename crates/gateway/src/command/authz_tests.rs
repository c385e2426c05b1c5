//! Authorization tests generated from the command table: for every row that reaches data, a
//! request inside a scoped user's database passes, and a request that reaches outside it through
//! each of the row's namespace sources is refused. The policy on system collections, the
//! server's own databases and server-wide commands is tested beside them.

use bson::{doc, Bson, Document, RawDocumentBuf};
use mongomux_auth::{Mechanism, MIN_ITERATIONS};
use mongomux_wire::{encode_op_msg, OpMsg};

use super::*;
use crate::command::namespaces;
use crate::command::table::{Access, Ns, TABLE};
use crate::identity::users::{UserConfig, UserStore};

/// A user scoped to database `a` (or to every database with `dbs` empty).
fn user(role: Role, dbs: &[&str]) -> std::sync::Arc<User> {
    let name = "u";
    let entry = UserConfig {
        name: name.into(),
        db: "admin".into(),
        role,
        databases: dbs.iter().map(|d| d.to_string()).collect(),
        scram: vec![mongomux_auth::ScramCredential::derive(
            Mechanism::ScramSha256,
            name,
            &mongomux_auth::Secret::new("pw"),
            MIN_ITERATIONS,
        )],
        aws: false,
    };
    UserStore::from_config(&[entry])
        .unwrap()
        .get("admin", name)
        .unwrap()
}

fn scoped() -> std::sync::Arc<User> {
    user(Role::ReadWrite, &["a"])
}

fn raw(d: &Document) -> Vec<u8> {
    RawDocumentBuf::from_document(d).unwrap().into_bytes()
}

/// The view of `body` sent with document `sequences`.
fn view(body: &Document, sequences: &[(&str, Vec<Document>)]) -> Result<CommandView, GatewayError> {
    let docs: Vec<Vec<Vec<u8>>> = sequences
        .iter()
        .map(|(_, ds)| ds.iter().map(raw).collect())
        .collect();
    let refs: Vec<Vec<&[u8]>> = docs
        .iter()
        .map(|ds| ds.iter().map(Vec::as_slice).collect())
        .collect();
    let seqs: Vec<(&str, &[&[u8]])> = sequences
        .iter()
        .zip(&refs)
        .map(|((id, _), ds)| (*id, ds.as_slice()))
        .collect();
    let bytes = encode_op_msg(1, 0, 0, &raw(body), &seqs);
    let msg = OpMsg::parse(&bytes).unwrap();
    CommandView::parse(&bytes, &msg)
}

fn judge(u: &User, body: &Document) -> Result<(), GatewayError> {
    authorize(u, &view(body, &[])?)
}

/// `{name: value, ...extra, $db: db}`.
fn cmd(name: &str, value: impl Into<Bson>, extra: Document, db: &str) -> Document {
    let mut d = doc! { name: value.into() };
    d.extend(extra);
    d.insert("$db", db);
    d
}

/// A request for row `name` that stays inside database `a`.
fn inside(name: &str, ns: Ns) -> Document {
    let lookup =
        doc! { "$lookup": { "from": "d", "localField": "x", "foreignField": "x", "as": "j" } };
    match ns {
        Ns::Db => cmd(name, 1, doc! {}, "a"),
        Ns::Collection => cmd(name, "c", doc! {}, "a"),
        Ns::CursorCollection => cmd(name, 5i64, doc! { "collection": "c" }, "a"),
        Ns::Pipeline => cmd(
            name,
            "c",
            doc! { "cursor": {}, "pipeline": [
                lookup.clone(),
                { "$unionWith": { "coll": "d", "pipeline": [ { "$match": {} } ] } },
                { "$facet": { "f": [ { "$lookup": { "from": { "db": "a", "coll": "d" }, "pipeline": [], "as": "j" } } ] } },
                { "$graphLookup": { "from": "d", "startWith": "$x", "connectFromField": "x", "connectToField": "y", "as": "g" } },
                { "$merge": { "into": { "db": "a", "coll": "o" } } },
            ] },
            "a",
        ),
        Ns::View => cmd(name, "v", doc! { "viewOn": "c", "pipeline": [lookup] }, "a"),
        Ns::CloneCapped => cmd(name, "c", doc! { "toCollection": "d", "size": 1 }, "a"),
        Ns::MapReduce => cmd(
            name,
            "c",
            doc! { "out": { "replace": "o", "db": "a" } },
            "a",
        ),
        Ns::Rename => cmd(name, "a.c", doc! { "to": "a.d" }, "admin"),
        Ns::FullName => cmd(name, "a.c", doc! {}, "a"),
        Ns::NsInfo => cmd(
            name,
            1,
            doc! { "ops": [], "nsInfo": [ { "ns": "a.c" } ] },
            "admin",
        ),
        Ns::Explain => cmd(
            name,
            doc! { "aggregate": "c", "pipeline": [lookup], "cursor": {} },
            doc! {},
            "a",
        ),
        Ns::Server | Ns::Nothing => unreachable!("no scoped request for {name}"),
    }
}

/// Requests for row `name` that reach outside database `a`, one per namespace source.
fn outside(name: &str, ns: Ns) -> Vec<Document> {
    let to_b = doc! { "db": "b", "coll": "x" };
    match ns {
        Ns::Db => vec![cmd(name, 1, doc! {}, "b"), cmd(name, 1, doc! {}, "config")],
        Ns::Collection => vec![
            cmd(name, "c", doc! {}, "b"),
            cmd(name, "system.users", doc! {}, "admin"),
            cmd(name, "system.profile", doc! {}, "a"),
        ],
        Ns::CursorCollection => vec![
            cmd(name, 5i64, doc! { "collection": "c" }, "b"),
            cmd(name, 5i64, doc! { "collection": "system.users" }, "a"),
        ],
        Ns::Pipeline => {
            let stages = [
                doc! { "$lookup": { "from": to_b.clone(), "pipeline": [], "as": "j" } },
                doc! { "$lookup": { "from": "d", "as": "j", "pipeline": [ { "$unionWith": to_b.clone() } ] } },
                doc! { "$lookup": { "from": "system.users", "localField": "x", "foreignField": "x", "as": "j" } },
                doc! { "$graphLookup": { "from": to_b.clone(), "startWith": "$x", "connectFromField": "x", "connectToField": "y", "as": "g" } },
                doc! { "$unionWith": to_b.clone() },
                doc! { "$unionWith": { "coll": "d", "pipeline": [ { "$lookup": { "from": to_b.clone(), "as": "j", "pipeline": [] } } ] } },
                doc! { "$out": to_b.clone() },
                doc! { "$merge": { "into": to_b.clone() } },
                doc! { "$merge": "system.js" },
                doc! { "$facet": { "f": [ { "$lookup": { "from": to_b.clone(), "as": "j", "pipeline": [] } } ] } },
                doc! { "$facet": { "f": [ { "$facet": { "g": [ { "$unionWith": to_b.clone() } ] } } ] } },
                doc! { "$currentOp": {} },
                doc! { "$changeStream": { "allChangesForCluster": true } },
            ];
            let mut out: Vec<Document> = stages
                .into_iter()
                .map(|s| cmd(name, "c", doc! { "cursor": {}, "pipeline": [s] }, "a"))
                .collect();
            out.push(cmd(name, "c", doc! { "cursor": {}, "pipeline": [] }, "b"));
            out.push(cmd(name, 1, doc! { "cursor": {}, "pipeline": [] }, "local"));
            out
        }
        Ns::View => vec![
            cmd(name, "v", doc! { "viewOn": "c" }, "b"),
            cmd(name, "v", doc! { "viewOn": "system.users" }, "admin"),
            cmd(
                name,
                "v",
                doc! { "viewOn": "c", "pipeline": [ { "$unionWith": to_b } ] },
                "a",
            ),
        ],
        Ns::CloneCapped => vec![
            cmd(name, "c", doc! { "toCollection": "d", "size": 1 }, "b"),
            cmd(
                name,
                "c",
                doc! { "toCollection": "system.js", "size": 1 },
                "a",
            ),
        ],
        Ns::MapReduce => vec![
            cmd(name, "c", doc! { "out": { "inline": 1 } }, "b"),
            cmd(
                name,
                "c",
                doc! { "out": { "replace": "o", "db": "b" } },
                "a",
            ),
            cmd(
                name,
                "c",
                doc! { "out": { "merge": "system.users", "db": "admin" } },
                "a",
            ),
        ],
        Ns::Rename => vec![
            cmd(name, "a.c", doc! { "to": "b.c" }, "admin"),
            cmd(name, "b.c", doc! { "to": "a.c" }, "admin"),
            cmd(name, "a.c", doc! { "to": "admin.system.users" }, "admin"),
        ],
        Ns::FullName => vec![
            cmd(name, "b.c", doc! {}, "a"),
            cmd(name, "admin.system.users", doc! {}, "a"),
        ],
        Ns::NsInfo => vec![
            cmd(
                name,
                1,
                doc! { "ops": [], "nsInfo": [ { "ns": "a.c" }, { "ns": "b.c" } ] },
                "admin",
            ),
            cmd(
                name,
                1,
                doc! { "ops": [], "nsInfo": [ { "ns": "admin.system.users" } ] },
                "admin",
            ),
        ],
        Ns::Explain => vec![
            cmd(name, doc! { "find": "c" }, doc! {}, "b"),
            cmd(
                name,
                doc! { "aggregate": "c", "pipeline": [ { "$lookup": { "from": to_b, "as": "j", "pipeline": [] } } ] },
                doc! {},
                "a",
            ),
            cmd(name, doc! { "find": "system.users" }, doc! {}, "admin"),
        ],
        Ns::Server | Ns::Nothing => unreachable!("no scoped request for {name}"),
    }
}

fn is_unauthorized(r: Result<(), GatewayError>) -> bool {
    matches!(r, Err(GatewayError::Unauthorized(_)))
}

#[test]
fn every_data_row_is_judged_on_every_namespace_source() {
    let u = scoped();
    let mut checked = 0;
    for (name, spec) in TABLE {
        if !matches!(spec.access, Access::Read | Access::Write) || spec.ns == Ns::Server {
            continue;
        }
        let ok = inside(name, spec.ns);
        assert!(
            judge(&u, &ok).is_ok(),
            "{name}: {ok} refused: {:?}",
            judge(&u, &ok)
        );
        for bad in outside(name, spec.ns) {
            assert!(
                is_unauthorized(judge(&u, &bad)),
                "{name}: {bad} not refused"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} outside requests generated");
}

/// Every `Admin` row is refused to the broadest data user there is: read-write on every
/// database (and on the server's own ones, named explicitly), on `admin` and elsewhere; and to
/// the gateway's operators, who administer the gateway, never the deployment.
#[test]
fn every_admin_row_is_refused_to_every_user() {
    let users = [
        user(Role::ReadWrite, &[]),
        user(Role::ReadWrite, &["admin", "local", "config", "a"]),
        user(Role::GatewayAdmin, &[]),
    ];
    let mut checked = 0;
    for (name, _) in TABLE.iter().filter(|(_, s)| s.access == Access::Admin) {
        for db in ["admin", "a", "local", "config"] {
            for value in [Bson::Int32(1), Bson::String("c".into())] {
                let body = cmd(name, value, doc! {}, db);
                for u in &users {
                    let verdict = judge(u, &body);
                    assert!(
                        matches!(verdict, Err(GatewayError::Unauthorized(_))),
                        "{name} on {db} for {:?} {:?}: {verdict:?}",
                        u.role,
                        u.databases
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 500, "only {checked} requests judged");
}

#[test]
fn server_wide_rows_only_for_users_of_every_database() {
    let all = user(Role::Read, &[]);
    for (name, _) in TABLE.iter().filter(|(_, s)| s.ns == Ns::Server) {
        let body = cmd(name, 1, doc! {}, "admin");
        assert!(is_unauthorized(judge(&scoped(), &body)), "{name}");
        assert!(judge(&all, &body).is_ok(), "{name}");
    }
}

#[test]
fn unknown_and_admin_commands_refused() {
    let all = user(Role::ReadWrite, &[]);
    for body in [
        cmd("somethingNew", "c", doc! {}, "a"),
        cmd("createUser", "x", doc! {}, "admin"),
        cmd("applyOps", Bson::Array(vec![]), doc! {}, "a"),
        // A bulkWrite without nsInfo names nothing to check: refused, not waved through.
        cmd("bulkWrite", 1, doc! { "ops": [] }, "admin"),
    ] {
        assert!(is_unauthorized(judge(&all, &body)), "{body}");
    }
}

#[test]
fn system_collections_and_server_databases() {
    let all = user(Role::ReadWrite, &[]);
    let refused = [
        cmd("find", "system.users", doc! {}, "admin"),
        cmd(
            "insert",
            "system.users",
            doc! { "documents": [ {} ] },
            "admin",
        ),
        cmd("find", "system.version", doc! {}, "admin"),
        cmd("insert", "system.views", doc! {}, "a"),
        cmd("find", "oplog.rs", doc! {}, "local"),
        cmd("find", "transactions", doc! {}, "config"),
        cmd("dropDatabase", 1, doc! {}, "admin"),
        cmd(
            "aggregate",
            1,
            doc! { "pipeline": [ { "$listSessions": {} } ] },
            "config",
        ),
        cmd(
            "aggregate",
            1,
            doc! { "pipeline": [ { "$currentOp": {} } ] },
            "admin",
        ),
    ];
    for body in refused {
        assert!(is_unauthorized(judge(&all, &body)), "{body}");
    }
    for body in [
        cmd("find", "system.views", doc! {}, "a"),
        cmd("find", "system.js", doc! {}, "a"),
        cmd("find", "c", doc! {}, "admin"),
        cmd("dropDatabase", 1, doc! {}, "a"),
        cmd("listDatabases", 1, doc! {}, "admin"),
    ] {
        assert!(judge(&all, &body).is_ok(), "{body}");
    }
    // A scope that names `config` explicitly reaches it.
    let config = user(Role::Read, &["config"]);
    assert!(judge(&config, &cmd("find", "c", doc! {}, "config")).is_ok());
}

#[test]
fn read_only_user_refused_writing_stages() {
    let ro = user(Role::Read, &["a"]);
    let out = cmd(
        "aggregate",
        "c",
        doc! { "pipeline": [ { "$facet": { "f": [ { "$out": "o" } ] } } ] },
        "a",
    );
    assert!(is_unauthorized(judge(&ro, &out)));
    let read = cmd(
        "aggregate",
        "c",
        doc! { "pipeline": [ { "$lookup": { "from": "d", "as": "j", "pipeline": [] } } ] },
        "a",
    );
    assert!(judge(&ro, &read).is_ok());
}

#[test]
fn odd_types_in_namespace_positions_are_refused() {
    for body in [
        cmd("find", 5, doc! {}, "a"),
        cmd("find", doc! { "c": 1 }, doc! {}, "a"),
        cmd("find", "", doc! {}, "a"),
        cmd("find", "c", doc! {}, "a.b"),
        cmd("renameCollection", "nodot", doc! { "to": "a.d" }, "admin"),
        cmd("renameCollection", "a.c", doc! { "to": ".d" }, "admin"),
        cmd(
            "renameCollection",
            "a.c",
            doc! { "to": { "db": "a" } },
            "admin",
        ),
        cmd("renameCollection", "a.c", doc! {}, "admin"),
        cmd(
            "renameCollection",
            "a.c",
            doc! { "to": "a.d", "to": "b.d" },
            "admin",
        ),
        cmd("dataSize", 7, doc! {}, "a"),
        cmd(
            "aggregate",
            "c",
            doc! { "pipeline": { "$lookup": {} } },
            "a",
        ),
        cmd(
            "aggregate",
            "c",
            doc! { "pipeline": [ { "$lookup": { "from": 1 } } ] },
            "a",
        ),
        cmd(
            "aggregate",
            "c",
            doc! { "pipeline": [ { "$out": { "db": 3, "coll": "x" } } ] },
            "a",
        ),
        cmd(
            "aggregate",
            "c",
            doc! { "pipeline": [ { "$unionWith": { "db": "b" } } ] },
            "a",
        ),
        cmd(
            "aggregate",
            "c",
            doc! { "pipeline": [ { "$merge": { "into": "x", "into": { "db": "b", "coll": "x" } } } ] },
            "a",
        ),
        cmd("aggregate", "c", doc! { "pipeline": [ 5 ] }, "a"),
        cmd(
            "mapReduce",
            "c",
            doc! { "out": { "replace": "o", "db": "" } },
            "a",
        ),
        cmd("mapReduce", "c", doc! { "out": 3 }, "a"),
        cmd("bulkWrite", 1, doc! { "nsInfo": [ { "ns": 1 } ] }, "admin"),
        cmd("bulkWrite", 1, doc! { "nsInfo": [ "a.c" ] }, "admin"),
        cmd("explain", doc! { "explain": { "find": "c" } }, doc! {}, "a"),
        cmd("explain", doc! { "find": "c", "$db": "b" }, doc! {}, "a"),
        cmd("getMore", 5i64, doc! {}, "a"),
    ] {
        let refused = view(&body, &[]).map(|v| authorize(&scoped(), &v));
        assert!(
            matches!(refused, Err(GatewayError::BadCommand(_)) | Ok(Err(_))),
            "{body}: {refused:?}"
        );
    }
}

#[test]
fn document_sequences_are_judged() {
    let u = scoped();
    let insert = cmd("insert", "c", doc! {}, "a");
    let docs = vec![doc! { "_id": 1 }];
    assert!(authorize(&u, &view(&insert, &[("documents", docs.clone())]).unwrap()).is_ok());
    // nsInfo as a sequence is read like the body's.
    let bulk = cmd("bulkWrite", 1, doc! {}, "admin");
    let ns = |n: &str| vec![doc! { "ns": n }];
    let ok = view(
        &bulk,
        &[
            ("ops", vec![doc! { "insert": 0, "document": {} }]),
            ("nsInfo", ns("a.c")),
        ],
    );
    assert!(authorize(&u, &ok.unwrap()).is_ok());
    let to_b = view(&bulk, &[("nsInfo", ns("b.c"))]).unwrap();
    assert!(is_unauthorized(authorize(&u, &to_b)));
    // A sequence the command does not take (a pipeline, a filter) is refused, as is one that
    // repeats a field of the body.
    let agg = cmd("aggregate", "c", doc! { "cursor": {} }, "a");
    let stage = vec![doc! { "$out": { "db": "b", "coll": "x" } }];
    assert!(view(&agg, &[("pipeline", stage)]).is_err());
    let twice = cmd("insert", "c", doc! { "documents": [] }, "a");
    assert!(view(&twice, &[("documents", docs)]).is_err());
    let nested = cmd("bulkWrite", 1, doc! { "nsInfo": [] }, "admin");
    assert!(view(&nested, &[("nsInfo", ns("b.c"))]).is_err());
}

#[test]
fn the_walk_is_bounded() {
    let mut stage = doc! { "$match": {} };
    for _ in 0..(namespaces::MAX_DEPTH + 2) {
        stage = doc! { "$facet": { "f": [stage] } };
    }
    let deep = cmd("aggregate", "c", doc! { "pipeline": [stage] }, "a");
    assert!(matches!(view(&deep, &[]), Err(GatewayError::BadCommand(_))));
    let many: Vec<Document> = (0..=namespaces::MAX_ITEMS)
        .map(|_| doc! { "$match": {} })
        .collect();
    let wide = cmd("aggregate", "c", doc! { "pipeline": many }, "a");
    assert!(matches!(view(&wide, &[]), Err(GatewayError::BadCommand(_))));
}

#[test]
fn connection_status_names_the_client() {
    let u = scoped();
    let reply = crate::command::answer::connection_status(Some(&u));
    let info = reply.get_document("authInfo").unwrap();
    let users = info.get_array("authenticatedUsers").unwrap();
    assert_eq!(
        users[0].as_document().unwrap().get_str("user").unwrap(),
        "u"
    );
    let roles = info.get_array("authenticatedUserRoles").unwrap();
    assert_eq!(roles[0].as_document().unwrap().get_str("db").unwrap(), "a");
    let anon = crate::command::answer::connection_status(None);
    let info = anon.get_document("authInfo").unwrap();
    assert!(info.get_array("authenticatedUsers").unwrap().is_empty());
}
