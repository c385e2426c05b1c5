//! The command table: for every command name the gateway knows, what the gateway does with it
//! ([`Kind`]) and what access it needs ([`Access`]). It is the single source of truth for both
//! the dispatcher and the authorizer; a name that is not in it is forwarded only to anonymous
//! gateways and refused for authenticated users, because a new server command must be reviewed
//! before clients can reach it through the gateway's shared upstream identity.
//!
//! The table is written sorted by name for readers (a unit test checks it). It is consulted once
//! per request, so lookups use a copy sorted at compile time by length, and scan only the few
//! names of the request's length.

/// What the gateway does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `hello` / `isMaster`: answered by the gateway as a mongos.
    Hello,
    /// `ping`: answered by the gateway.
    Ping,
    /// `saslStart` / `saslContinue`: edge authentication, answered by the gateway.
    Sasl,
    /// `authenticate`: the gateway offers no mechanism that uses it; refused, never forwarded.
    Authenticate,
    /// `logout`: answered `ok` at the edge, where it logs the *client connection* out (its
    /// identity and what it held are dropped), as a mongos does. Forwarded, it would log out a
    /// pooled upstream connection that every other client then reuses.
    Logout,
    /// Commands that read or change the state of the upstream connection itself (nonces for
    /// removed authentication mechanisms, the per-connection last error). Upstream connections
    /// are shared, so such state would leak between clients or break the connection for the
    /// next one: refused, never forwarded.
    ConnectionState,
    /// Forwarded as it is; a cursor in the reply is recorded for its owner.
    Forward,
    /// `getMore`: forwarded only for the cursor's owner.
    GetMore,
    /// `killCursors`: the owner's cursors are forwarded, the others reported not found.
    KillCursors,
    /// `endSessions`: forwarded, always answered `ok`.
    EndSessions,
}

/// What an authenticated user needs to run a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Handshake, authentication and liveness: allowed before authentication.
    Open,
    /// Reads data or metadata of `$db`.
    Read,
    /// Changes data or metadata of `$db`.
    Write,
    /// Session and transaction bookkeeping that carries no data; not bound to `$db`.
    Session,
    /// Administers the deployment or the shared upstream user: never allowed.
    Admin,
    /// Not reviewed: refused for authenticated users.
    Unreviewed,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// What the gateway does with it.
    pub kind: Kind,
    /// What access it needs.
    pub access: Access,
}

/// The row of a command that is not in the table.
pub const UNKNOWN: Spec = Spec {
    kind: Kind::Forward,
    access: Access::Unreviewed,
};

const fn row(name: &'static str, kind: Kind, access: Access) -> (&'static str, Spec) {
    (name, Spec { kind, access })
}

use Access::{Admin, Open, Read, Session, Write};
use Kind::{
    Authenticate, ConnectionState, EndSessions, Forward, GetMore, Hello, KillCursors, Logout, Ping,
    Sasl,
};

/// Every known command, sorted by name (byte order).
pub static TABLE: &[(&str, Spec)] = ROWS;

/// How many commands the table knows.
const ROW_COUNT: usize = ROWS.len();

const ROWS: &[(&str, Spec)] = &[
    row("abortTransaction", Forward, Session),
    row("addShard", Forward, Admin),
    row("addShardToZone", Forward, Admin),
    row("aggregate", Forward, Read),
    row("applyOps", Forward, Admin),
    row("authenticate", Authenticate, Open),
    row("balancerStart", Forward, Admin),
    row("balancerStatus", Forward, Admin),
    row("balancerStop", Forward, Admin),
    row("buildInfo", Forward, Open),
    row("buildinfo", Forward, Open),
    row("bulkWrite", Forward, Write),
    row("cleanupOrphaned", Forward, Admin),
    row("clone", Forward, Admin),
    row("cloneCollection", Forward, Admin),
    row("cloneCollectionAsCapped", Forward, Write),
    row("collMod", Forward, Write),
    row("collStats", Forward, Read),
    row("commitTransaction", Forward, Session),
    row("compact", Forward, Admin),
    row("connPoolStats", Forward, Admin),
    row("connPoolSync", Forward, Admin),
    row("connectionStatus", Forward, Read),
    row("convertToCapped", Forward, Write),
    row("copydb", Forward, Admin),
    row("copydbgetnonce", ConnectionState, Open),
    row("copydbsaslstart", ConnectionState, Open),
    row("count", Forward, Read),
    row("create", Forward, Write),
    row("createIndexes", Forward, Write),
    row("createRole", Forward, Admin),
    row("createSearchIndexes", Forward, Write),
    row("createUser", Forward, Admin),
    row("currentOp", Forward, Admin),
    row("dataSize", Forward, Read),
    row("dbStats", Forward, Read),
    row("delete", Forward, Write),
    row("distinct", Forward, Read),
    row("drop", Forward, Write),
    row("dropAllRolesFromDatabase", Forward, Admin),
    row("dropAllUsersFromDatabase", Forward, Admin),
    row("dropConnections", Forward, Admin),
    row("dropDatabase", Forward, Write),
    row("dropIndexes", Forward, Write),
    row("dropRole", Forward, Admin),
    row("dropSearchIndex", Forward, Write),
    row("dropUser", Forward, Admin),
    row("enableSharding", Forward, Admin),
    row("endSessions", EndSessions, Session),
    row("eval", Forward, Admin),
    row("explain", Forward, Read),
    row("find", Forward, Read),
    row("findAndModify", Forward, Write),
    row("findandmodify", Forward, Write),
    row("flushRouterConfig", Forward, Admin),
    row("fsync", Forward, Admin),
    row("fsyncUnlock", Forward, Admin),
    row("getCmdLineOpts", Forward, Admin),
    row("getLastError", ConnectionState, Open),
    row("getLog", Forward, Admin),
    row("getMore", GetMore, Read),
    row("getMoreSearch", Forward, Read),
    row("getParameter", Forward, Read),
    row("getPrevError", ConnectionState, Open),
    row("getnonce", ConnectionState, Open),
    row("grantPrivilegesToRole", Forward, Admin),
    row("grantRolesToRole", Forward, Admin),
    row("grantRolesToUser", Forward, Admin),
    row("hello", Hello, Open),
    row("hostInfo", Forward, Read),
    row("insert", Forward, Write),
    row("isMaster", Hello, Open),
    row("ismaster", Hello, Open),
    row("killAllSessions", Forward, Admin),
    row("killAllSessionsByPattern", Forward, Admin),
    row("killCursors", KillCursors, Read),
    row("killOp", Forward, Admin),
    row("killSessions", Forward, Admin),
    row("listCollections", Forward, Read),
    // Command names and their help text (mongosh's db.listCommands()), which a real server gives
    // every user whatever its privileges; nothing about the deployment or the shared identity.
    row("listCommands", Forward, Read),
    row("listDatabases", Forward, Read),
    row("listIndexes", Forward, Read),
    row("listSearchIndexes", Forward, Read),
    row("logRotate", Forward, Admin),
    row("logout", Logout, Open),
    row("mapReduce", Forward, Read),
    row("mergeChunks", Forward, Admin),
    row("moveChunk", Forward, Admin),
    row("movePrimary", Forward, Admin),
    row("moveRange", Forward, Admin),
    row("ping", Ping, Open),
    row("profile", Forward, Admin),
    row("refineCollectionShardKey", Forward, Admin),
    row("refreshSessions", Forward, Session),
    row("removeShard", Forward, Admin),
    row("renameCollection", Forward, Write),
    row("repairDatabase", Forward, Admin),
    row("replSetFreeze", Forward, Admin),
    row("replSetGetConfig", Forward, Admin),
    row("replSetGetStatus", Forward, Admin),
    row("replSetInitiate", Forward, Admin),
    row("replSetMaintenance", Forward, Admin),
    row("replSetReconfig", Forward, Admin),
    row("replSetStepDown", Forward, Admin),
    row("replSetSyncFrom", Forward, Admin),
    row("resetError", ConnectionState, Open),
    row("reshardCollection", Forward, Admin),
    row("resync", Forward, Admin),
    row("revokePrivilegesFromRole", Forward, Admin),
    row("revokeRolesFromRole", Forward, Admin),
    row("revokeRolesFromUser", Forward, Admin),
    row("rolesInfo", Forward, Admin),
    row("saslContinue", Sasl, Open),
    row("saslStart", Sasl, Open),
    row("serverStatus", Forward, Read),
    row("setDefaultRWConcern", Forward, Admin),
    row("setFeatureCompatibilityVersion", Forward, Admin),
    row("setIndexCommitQuorum", Forward, Admin),
    row("setParameter", Forward, Admin),
    row("shardCollection", Forward, Admin),
    row("shutdown", Forward, Admin),
    row("split", Forward, Admin),
    row("splitChunk", Forward, Admin),
    row("startSession", Forward, Session),
    row("top", Forward, Admin),
    row("update", Forward, Write),
    row("updateRole", Forward, Admin),
    row("updateSearchIndex", Forward, Write),
    row("updateUser", Forward, Admin),
    row("updateZoneKeyRange", Forward, Admin),
    row("usersInfo", Forward, Admin),
    row("validate", Forward, Read),
    row("whatsmyuri", Forward, Read),
];

/// The rows in lookup order: by length, then by bytes.
static BY_LENGTH: [(&str, Spec); ROW_COUNT] = sort_by_length(ROWS);

/// Length first, then bytes; usable at compile time.
const fn shorter_or_before(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return a.len() < b.len();
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    false
}

/// Insertion sort, run once by the compiler.
const fn sort_by_length(table: &[(&'static str, Spec)]) -> [(&'static str, Spec); ROW_COUNT] {
    let mut rows = [("", UNKNOWN); ROW_COUNT];
    let mut i = 0;
    while i < ROW_COUNT {
        rows[i] = table[i];
        i += 1;
    }
    let mut i = 1;
    while i < ROW_COUNT {
        let mut j = i;
        while j > 0 && shorter_or_before(rows[j].0, rows[j - 1].0) {
            let t = rows[j];
            rows[j] = rows[j - 1];
            rows[j - 1] = t;
            j -= 1;
        }
        i += 1;
    }
    rows
}

/// Longer than any command name the table knows (a unit test checks it).
const MAX_NAME: usize = 40;

/// For each name length, the range of [`BY_LENGTH`] holding the names of that length.
static LENGTH_RANGES: [(usize, usize); MAX_NAME] = length_ranges(&BY_LENGTH);

const fn length_ranges(rows: &[(&str, Spec); ROW_COUNT]) -> [(usize, usize); MAX_NAME] {
    let mut out = [(0, 0); MAX_NAME];
    let mut i = 0;
    while i < ROW_COUNT {
        let len = rows[i].0.len();
        if out[len].1 == 0 {
            out[len].0 = i;
        }
        out[len].1 = i + 1;
        i += 1;
    }
    out
}

/// Byte equality of two names of the same length, inline: the names are short, and most
/// candidates differ in their first byte.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// The row for `name`, or [`UNKNOWN`]: a scan of the few names of the same length.
pub fn lookup(name: &str) -> Spec {
    let Some(&(start, end)) = LENGTH_RANGES.get(name.len()) else {
        return UNKNOWN;
    };
    BY_LENGTH[start..end]
        .iter()
        .find(|(n, _)| same_bytes(n.as_bytes(), name.as_bytes()))
        .map_or(UNKNOWN, |(_, spec)| *spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_unique() {
        for pair in TABLE.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn lookup_order_is_by_length_then_bytes() {
        for pair in BY_LENGTH.windows(2) {
            assert!(
                shorter_or_before(pair[0].0, pair[1].0),
                "{} before {}",
                pair[0].0,
                pair[1].0
            );
        }
    }

    #[test]
    fn every_row_is_found() {
        for (name, spec) in TABLE {
            assert_eq!(lookup(name), *spec, "{name}");
        }
        assert_eq!(lookup("somethingNew"), UNKNOWN);
        assert_eq!(lookup(&"x".repeat(MAX_NAME + 5)), UNKNOWN);
        assert!(TABLE.iter().all(|(n, _)| n.len() < MAX_NAME));
        assert_eq!(lookup(""), UNKNOWN);
    }

    #[test]
    fn answered_kinds_are_open() {
        for (name, spec) in TABLE {
            if matches!(spec.kind, Kind::Hello | Kind::Ping | Kind::Sasl) {
                assert_eq!(spec.access, Access::Open, "{name}");
            }
        }
    }

    /// Commands that change the upstream connection itself are answered or refused by the
    /// gateway: none of them may ever be forwarded, whoever sends them.
    #[test]
    fn connection_state_commands_are_never_forwarded() {
        for name in [
            "logout",
            "authenticate",
            "saslStart",
            "saslContinue",
            "getnonce",
            "copydbgetnonce",
            "copydbsaslstart",
            "getLastError",
            "getPrevError",
            "resetError",
        ] {
            let spec = lookup(name);
            assert!(
                !matches!(
                    spec.kind,
                    Kind::Forward | Kind::GetMore | Kind::KillCursors | Kind::EndSessions
                ),
                "{name} would be forwarded"
            );
            // Open, so the dispatcher gives its own answer even before authentication.
            assert_eq!(spec.access, Access::Open, "{name}");
        }
    }
}
