//! Authorization: what an identity may run through the shared upstream user.
//!
//! Every upstream connection is authenticated as the gateway's own (usually powerful) user, so
//! the gateway must refuse, for every client, the commands that would act on that user or on the
//! deployment itself, and must enforce each client's own scope. Commands are classified by
//! name into read, write, open (allowed before authentication) and forbidden; names not listed
//! anywhere are refused, because a new server command should be reviewed before clients can
//! reach it through a shared identity.

use bson::RawDocument;

use crate::error::GatewayError;
use crate::users::{Role, User};

/// How a command is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Handshake, authentication and liveness: allowed without authentication.
    Open,
    /// Reads data or metadata.
    Read,
    /// Changes data or metadata.
    Write,
    /// Session and transaction bookkeeping that carries no data of its own; not bound to `$db`.
    Session,
    /// Never allowed through the gateway.
    Forbidden,
}

const OPEN: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "saslStart",
    "saslContinue",
    "ping",
    "buildInfo",
    "buildinfo",
    "logout",
    "getnonce",
];

const READ: &[&str] = &[
    "find",
    "getMore",
    "killCursors",
    "aggregate",
    "count",
    "distinct",
    "listCollections",
    "listIndexes",
    "listDatabases",
    "dbStats",
    "collStats",
    "explain",
    "dataSize",
    "listSearchIndexes",
    "connectionStatus",
    "whatsmyuri",
    "getLastError",
    "getMoreSearch",
    "mapReduce",
    "validate",
    "hostInfo",
    "serverStatus",
    "getParameter",
    // Command names and their help text (mongosh's db.listCommands()), which a real server gives
    // every user whatever its privileges; nothing about the deployment or the shared identity.
    "listCommands",
];

const WRITE: &[&str] = &[
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
    "create",
    "drop",
    "dropDatabase",
    "createIndexes",
    "dropIndexes",
    "renameCollection",
    "collMod",
    "convertToCapped",
    "bulkWrite",
    "createSearchIndexes",
    "dropSearchIndex",
    "updateSearchIndex",
    "cloneCollectionAsCapped",
];

const SESSION: &[&str] = &[
    "endSessions",
    "startSession",
    "refreshSessions",
    "commitTransaction",
    "abortTransaction",
];

/// Explicitly refused, named here so that the reason in the error is specific. Anything not
/// in the lists above is refused as well.
const FORBIDDEN: &[&str] = &[
    // Users and roles of the shared upstream identity.
    "createUser",
    "updateUser",
    "dropUser",
    "dropAllUsersFromDatabase",
    "grantRolesToUser",
    "revokeRolesFromUser",
    "usersInfo",
    "createRole",
    "updateRole",
    "dropRole",
    "dropAllRolesFromDatabase",
    "grantPrivilegesToRole",
    "revokePrivilegesFromRole",
    "grantRolesToRole",
    "revokeRolesFromRole",
    "rolesInfo",
    "authenticate",
    // The deployment itself.
    "shutdown",
    "fsync",
    "fsyncUnlock",
    "setParameter",
    "getCmdLineOpts",
    "getLog",
    "logRotate",
    "setFeatureCompatibilityVersion",
    "compact",
    "repairDatabase",
    "profile",
    "killOp",
    "currentOp",
    "top",
    "killAllSessions",
    "killAllSessionsByPattern",
    "killSessions",
    "setDefaultRWConcern",
    "dropConnections",
    "connPoolStats",
    "connPoolSync",
    "applyOps",
    "eval",
    "copydb",
    "clone",
    "cloneCollection",
    "resync",
    "setIndexCommitQuorum",
    // Replication and sharding administration.
    "replSetGetStatus",
    "replSetInitiate",
    "replSetReconfig",
    "replSetStepDown",
    "replSetFreeze",
    "replSetMaintenance",
    "replSetSyncFrom",
    "replSetGetConfig",
    "addShard",
    "removeShard",
    "enableSharding",
    "shardCollection",
    "reshardCollection",
    "movePrimary",
    "moveChunk",
    "moveRange",
    "splitChunk",
    "split",
    "mergeChunks",
    "balancerStart",
    "balancerStop",
    "balancerStatus",
    "flushRouterConfig",
    "cleanupOrphaned",
    "refineCollectionShardKey",
    "addShardToZone",
    "updateZoneKeyRange",
];

/// Classifies a command by name, looking into `aggregate` pipelines for writing stages and
/// into `mapReduce` for an output collection.
pub fn classify(command: &str, body: &RawDocument) -> Class {
    let has = |list: &[&str]| list.contains(&command);
    if has(FORBIDDEN) {
        Class::Forbidden
    } else if has(OPEN) {
        Class::Open
    } else if has(SESSION) {
        Class::Session
    } else if has(WRITE)
        || (command == "aggregate" && pipeline_writes(body))
        || (command == "mapReduce" && !map_reduce_inline(body))
    {
        Class::Write
    } else if has(READ) {
        Class::Read
    } else {
        Class::Forbidden
    }
}

fn pipeline_writes(body: &RawDocument) -> bool {
    let Ok(stages) = body.get_array("pipeline") else {
        return false;
    };
    stages.into_iter().flatten().any(|stage| {
        stage.as_document().is_some_and(|d| {
            d.iter()
                .flatten()
                .any(|(k, _)| k == "$out" || k == "$merge")
        })
    })
}

/// Databases other than `$db` that an `aggregate` pipeline reads or writes: `$out` and
/// `$merge` targets, and `$lookup` / `$unionWith` sources, when given as `{db, coll}`.
fn pipeline_databases(body: &RawDocument) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(stages) = body.get_array("pipeline") else {
        return out;
    };
    for stage in stages.into_iter().flatten() {
        let Some(stage) = stage.as_document() else {
            continue;
        };
        for (name, spec) in stage.iter().flatten() {
            let Some(spec) = spec.as_document() else {
                continue;
            };
            let target = match name {
                "$out" => Some(spec),
                "$merge" => spec.get_document("into").ok(),
                "$lookup" => spec.get_document("from").ok(),
                "$unionWith" => spec.get_document("coll").ok(),
                _ => None,
            };
            if let Some(db) = target.and_then(|t| t.get_str("db").ok()) {
                out.push(db.to_string());
            }
        }
    }
    out
}

fn map_reduce_inline(body: &RawDocument) -> bool {
    match body.get_document("out") {
        Ok(out) => out.get("inline").ok().flatten().is_some(),
        Err(_) => false,
    }
}

/// Checks that `user` may run `command` on database `db`.
pub fn authorize(
    user: &User,
    command: &str,
    db: &str,
    body: &RawDocument,
) -> Result<(), GatewayError> {
    let deny = |why: String| Err(GatewayError::Unauthorized(why));
    match classify(command, body) {
        Class::Open | Class::Session => Ok(()),
        Class::Forbidden if FORBIDDEN.contains(&command) => deny(format!(
            "command {command} is not allowed through mongomux: it administers the deployment or the gateway's shared upstream user"
        )),
        Class::Forbidden => deny(format!(
            "command {command} is not on mongomux's list of reviewed commands and is refused"
        )),
        class => {
            // listDatabases runs on admin but reveals only names; the reply is not filtered,
            // so it needs access to every database.
            let scope_ok = if command == "listDatabases" {
                user.databases.is_empty()
            } else {
                user.may_use(db)
            };
            if !scope_ok {
                return deny(format!(
                    "not authorized on {db} to execute command {{ {command}: ... }}"
                ));
            }
            if command == "aggregate" {
                if let Some(other) = pipeline_databases(body).into_iter().find(|d| !user.may_use(d)) {
                    return deny(format!(
                        "not authorized on {other}: the pipeline reads or writes that database"
                    ));
                }
            }
            if class == Class::Write && user.role == Role::Read {
                return deny(format!(
                    "user is read-only: not authorized on {db} to execute command {{ {command}: ... }}"
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn classes() {
        let empty = rawdoc! {};
        assert_eq!(classify("find", &empty), Class::Read);
        assert_eq!(classify("insert", &empty), Class::Write);
        assert_eq!(classify("hello", &empty), Class::Open);
        assert_eq!(classify("listCommands", &empty), Class::Read);
        assert_eq!(classify("getCmdLineOpts", &empty), Class::Forbidden);
        assert_eq!(classify("createUser", &empty), Class::Forbidden);
        assert_eq!(classify("shutdown", &empty), Class::Forbidden);
        assert_eq!(classify("replSetGetStatus", &empty), Class::Forbidden);
        assert_eq!(classify("somethingNew", &empty), Class::Forbidden);
        let out = rawdoc! { "aggregate": "c", "pipeline": [ { "$match": {} }, { "$out": "x" } ] };
        assert_eq!(classify("aggregate", &out), Class::Write);
        let plain = rawdoc! { "aggregate": "c", "pipeline": [ { "$match": {} } ] };
        assert_eq!(classify("aggregate", &plain), Class::Read);
        let inline = rawdoc! { "mapReduce": "c", "out": { "inline": 1 } };
        assert_eq!(classify("mapReduce", &inline), Class::Read);
        let cross = rawdoc! { "aggregate": "c", "pipeline": [ { "$merge": { "into": { "db": "b", "coll": "x" } } } ] };
        assert_eq!(pipeline_databases(&cross), vec!["b".to_string()]);
        let out_db =
            rawdoc! { "aggregate": "c", "pipeline": [ { "$out": { "db": "z", "coll": "x" } } ] };
        assert_eq!(pipeline_databases(&out_db), vec!["z".to_string()]);
        let to_coll = rawdoc! { "mapReduce": "c", "out": "x" };
        assert_eq!(classify("mapReduce", &to_coll), Class::Write);
    }
}
