//! The command table: for every command name the gateway knows, what the gateway does with it
//! ([`Kind`]), what access it needs ([`Access`]) and where the namespaces it touches come from
//! ([`Ns`]): authorization checks every namespace a request names, so a command whose row does
//! not say where its namespaces are cannot be judged. It is the single source of truth for both
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
    /// `connectionStatus`: answered by the gateway with the client's own identity, because the
    /// upstream's answer names the gateway's shared upstream account.
    ConnectionStatus,
    /// The gateway's own admin commands (`mongomux*`): answered by the gateway, for its
    /// operators; never forwarded.
    Operate,
}

impl Kind {
    /// Whether a request of this kind can reach an upstream connection.
    pub fn is_forwarded(self) -> bool {
        matches!(
            self,
            Kind::Forward | Kind::GetMore | Kind::KillCursors | Kind::EndSessions
        )
    }
}

/// Where the namespaces a command touches come from ([`super::namespaces`] reads them). Every
/// row with [`Access::Read`] or [`Access::Write`] names one; the others touch no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// No data: handshake, sessions, and commands refused anyway.
    Nothing,
    /// `$db` as a whole (`dbStats`, `listCollections`, `dropDatabase`).
    Db,
    /// The whole server (`serverStatus`, `listDatabases`): only for users not restricted to
    /// some databases.
    Server,
    /// The command's value is a collection of `$db` (`find: "c"`).
    Collection,
    /// `getMore`: its `collection` field.
    CursorCollection,
    /// `aggregate`: the value (a collection, or 1 for `$db` itself) and every stage of
    /// `pipeline` that names a collection or database, nested ones included.
    Pipeline,
    /// `create` / `collMod`: the value, `viewOn` and `pipeline`.
    View,
    /// `cloneCollectionAsCapped`: the value and `toCollection`.
    CloneCapped,
    /// `mapReduce`: the value and `out` (a collection, or `{replace|merge|reduce, db}`).
    MapReduce,
    /// `renameCollection`: full namespaces in the value and `to`; `$db` is only `admin`.
    Rename,
    /// `dataSize`: a full namespace as the value.
    FullName,
    /// `bulkWrite`: each `nsInfo[].ns`, in the body or as a document sequence.
    NsInfo,
    /// `explain`: the explained command's own sources.
    Explain,
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
    /// Shows the gateway's own state (pools, clients, statistics): the `gatewayMonitor` and
    /// `gatewayAdmin` roles, on the `admin` database.
    GatewayMonitor,
    /// Steers the gateway (pause, resume, reload, close clients): the `gatewayAdmin` role, on
    /// the `admin` database.
    GatewayAdmin,
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
    /// Where its namespaces come from.
    pub ns: Ns,
}

/// The row of a command that is not in the table.
pub const UNKNOWN: Spec = Spec {
    kind: Kind::Forward,
    access: Access::Unreviewed,
    ns: Ns::Nothing,
};

const fn row(name: &'static str, kind: Kind, access: Access, ns: Ns) -> (&'static str, Spec) {
    (name, Spec { kind, access, ns })
}

use Access::{Admin, GatewayAdmin, GatewayMonitor, Open, Read, Session, Write};
use Kind::{
    Authenticate, ConnectionState, ConnectionStatus, EndSessions, Forward, GetMore, Hello,
    KillCursors, Logout, Operate, Ping, Sasl,
};
use Ns::{
    CloneCapped, Collection, CursorCollection, Db, Explain, FullName, MapReduce, Nothing, NsInfo,
    Pipeline, Rename, Server, View,
};

/// Every known command, sorted by name (byte order).
pub static TABLE: &[(&str, Spec)] = ROWS;

/// How many commands the table knows.
const ROW_COUNT: usize = ROWS.len();

const ROWS: &[(&str, Spec)] = &[
    row("abortTransaction", Forward, Session, Nothing),
    row("addShard", Forward, Admin, Nothing),
    row("addShardToZone", Forward, Admin, Nothing),
    row("aggregate", Forward, Read, Pipeline),
    row("applyOps", Forward, Admin, Nothing),
    row("authenticate", Authenticate, Open, Nothing),
    row("balancerStart", Forward, Admin, Nothing),
    row("balancerStatus", Forward, Admin, Nothing),
    row("balancerStop", Forward, Admin, Nothing),
    row("buildInfo", Forward, Open, Nothing),
    row("buildinfo", Forward, Open, Nothing),
    row("bulkWrite", Forward, Write, NsInfo),
    row("cleanupOrphaned", Forward, Admin, Nothing),
    row("clone", Forward, Admin, Nothing),
    row("cloneCollection", Forward, Admin, Nothing),
    row("cloneCollectionAsCapped", Forward, Write, CloneCapped),
    row("collMod", Forward, Write, View),
    row("collStats", Forward, Read, Collection),
    row("commitTransaction", Forward, Session, Nothing),
    row("compact", Forward, Admin, Nothing),
    row("connPoolStats", Forward, Admin, Nothing),
    row("connPoolSync", Forward, Admin, Nothing),
    row("connectionStatus", ConnectionStatus, Open, Nothing),
    row("convertToCapped", Forward, Write, Collection),
    row("copydb", Forward, Admin, Nothing),
    row("copydbgetnonce", ConnectionState, Open, Nothing),
    row("copydbsaslstart", ConnectionState, Open, Nothing),
    row("count", Forward, Read, Collection),
    row("create", Forward, Write, View),
    row("createIndexes", Forward, Write, Collection),
    row("createRole", Forward, Admin, Nothing),
    row("createSearchIndexes", Forward, Write, Collection),
    row("createUser", Forward, Admin, Nothing),
    row("currentOp", Forward, Admin, Nothing),
    row("dataSize", Forward, Read, FullName),
    row("dbStats", Forward, Read, Db),
    row("delete", Forward, Write, Collection),
    row("distinct", Forward, Read, Collection),
    row("drop", Forward, Write, Collection),
    row("dropAllRolesFromDatabase", Forward, Admin, Nothing),
    row("dropAllUsersFromDatabase", Forward, Admin, Nothing),
    row("dropConnections", Forward, Admin, Nothing),
    row("dropDatabase", Forward, Write, Db),
    row("dropIndexes", Forward, Write, Collection),
    row("dropRole", Forward, Admin, Nothing),
    row("dropSearchIndex", Forward, Write, Collection),
    row("dropUser", Forward, Admin, Nothing),
    row("enableSharding", Forward, Admin, Nothing),
    row("endSessions", EndSessions, Session, Nothing),
    row("eval", Forward, Admin, Nothing),
    row("explain", Forward, Read, Explain),
    row("find", Forward, Read, Collection),
    row("findAndModify", Forward, Write, Collection),
    row("findandmodify", Forward, Write, Collection),
    row("flushRouterConfig", Forward, Admin, Nothing),
    // Sets the connection's last error (a test command of the server).
    row("forceerror", ConnectionState, Open, Nothing),
    row("fsync", Forward, Admin, Nothing),
    row("fsyncUnlock", Forward, Admin, Nothing),
    row("getCmdLineOpts", Forward, Admin, Nothing),
    row("getLastError", ConnectionState, Open, Nothing),
    row("getLog", Forward, Admin, Nothing),
    row("getMore", GetMore, Read, CursorCollection),
    row("getMoreSearch", Forward, Read, Db),
    row("getParameter", Forward, Read, Server),
    row("getPrevError", ConnectionState, Open, Nothing),
    // The server's own lowercase aliases (names are matched exactly, as the server does).
    row("getlasterror", ConnectionState, Open, Nothing),
    row("getnonce", ConnectionState, Open, Nothing),
    row("getpreverror", ConnectionState, Open, Nothing),
    row("grantPrivilegesToRole", Forward, Admin, Nothing),
    row("grantRolesToRole", Forward, Admin, Nothing),
    row("grantRolesToUser", Forward, Admin, Nothing),
    row("hello", Hello, Open, Nothing),
    row("hostInfo", Forward, Read, Server),
    row("insert", Forward, Write, Collection),
    row("isMaster", Hello, Open, Nothing),
    row("ismaster", Hello, Open, Nothing),
    row("killAllSessions", Forward, Admin, Nothing),
    row("killAllSessionsByPattern", Forward, Admin, Nothing),
    row("killCursors", KillCursors, Read, Collection),
    row("killOp", Forward, Admin, Nothing),
    row("killSessions", Forward, Admin, Nothing),
    row("listCollections", Forward, Read, Db),
    // Command names and their help text (mongosh's db.listCommands()), which a real server gives
    // every user whatever its privileges; nothing about the deployment or the shared identity.
    row("listCommands", Forward, Read, Db),
    row("listDatabases", Forward, Read, Server),
    row("listIndexes", Forward, Read, Collection),
    row("listSearchIndexes", Forward, Read, Collection),
    row("logRotate", Forward, Admin, Nothing),
    row("logout", Logout, Open, Nothing),
    row("mapReduce", Forward, Read, MapReduce),
    row("mergeChunks", Forward, Admin, Nothing),
    // The gateway's own admin commands (on `admin`, for its operator roles): never forwarded.
    row("mongomuxClients", Operate, GatewayMonitor, Nothing),
    row("mongomuxKillClients", Operate, GatewayAdmin, Nothing),
    row("mongomuxPause", Operate, GatewayAdmin, Nothing),
    row("mongomuxPools", Operate, GatewayMonitor, Nothing),
    row("mongomuxReload", Operate, GatewayAdmin, Nothing),
    row("mongomuxResume", Operate, GatewayAdmin, Nothing),
    row("mongomuxServers", Operate, GatewayMonitor, Nothing),
    row("mongomuxStats", Operate, GatewayMonitor, Nothing),
    row("mongomuxStatus", Operate, GatewayMonitor, Nothing),
    row("moveChunk", Forward, Admin, Nothing),
    row("movePrimary", Forward, Admin, Nothing),
    row("moveRange", Forward, Admin, Nothing),
    row("ping", Ping, Open, Nothing),
    row("profile", Forward, Admin, Nothing),
    row("refineCollectionShardKey", Forward, Admin, Nothing),
    row("refreshSessions", Forward, Session, Nothing),
    row("removeShard", Forward, Admin, Nothing),
    row("renameCollection", Forward, Write, Rename),
    row("repairDatabase", Forward, Admin, Nothing),
    row("replSetFreeze", Forward, Admin, Nothing),
    row("replSetGetConfig", Forward, Admin, Nothing),
    row("replSetGetStatus", Forward, Admin, Nothing),
    row("replSetInitiate", Forward, Admin, Nothing),
    row("replSetMaintenance", Forward, Admin, Nothing),
    row("replSetReconfig", Forward, Admin, Nothing),
    row("replSetStepDown", Forward, Admin, Nothing),
    row("replSetSyncFrom", Forward, Admin, Nothing),
    row("resetError", ConnectionState, Open, Nothing),
    row("reseterror", ConnectionState, Open, Nothing),
    row("reshardCollection", Forward, Admin, Nothing),
    row("resync", Forward, Admin, Nothing),
    row("revokePrivilegesFromRole", Forward, Admin, Nothing),
    row("revokeRolesFromRole", Forward, Admin, Nothing),
    row("revokeRolesFromUser", Forward, Admin, Nothing),
    row("rolesInfo", Forward, Admin, Nothing),
    row("saslContinue", Sasl, Open, Nothing),
    row("saslStart", Sasl, Open, Nothing),
    row("serverStatus", Forward, Read, Server),
    row("setDefaultRWConcern", Forward, Admin, Nothing),
    row("setFeatureCompatibilityVersion", Forward, Admin, Nothing),
    row("setIndexCommitQuorum", Forward, Admin, Nothing),
    row("setParameter", Forward, Admin, Nothing),
    row("shardCollection", Forward, Admin, Nothing),
    row("shutdown", Forward, Admin, Nothing),
    row("split", Forward, Admin, Nothing),
    row("splitChunk", Forward, Admin, Nothing),
    row("startSession", Forward, Session, Nothing),
    row("top", Forward, Admin, Nothing),
    row("update", Forward, Write, Collection),
    row("updateRole", Forward, Admin, Nothing),
    row("updateSearchIndex", Forward, Write, Collection),
    row("updateUser", Forward, Admin, Nothing),
    row("updateZoneKeyRange", Forward, Admin, Nothing),
    row("usersInfo", Forward, Admin, Nothing),
    row("validate", Forward, Read, Collection),
    row("whatsmyuri", Forward, Read, Db),
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
///
/// Names are matched exactly, as MongoDB matches them. A name that is not in the table but
/// equals, ignoring case, one the gateway never forwards (`LOGOUT`, `getLastERROR`, `SaslStart`)
/// is refused as a connection-state command rather than forwarded as unknown: an upstream that
/// matched names more loosely, or an alias the table has missed, must not reach the state of a
/// shared connection, in any mode.
pub fn lookup(name: &str) -> Spec {
    let Some(&(start, end)) = LENGTH_RANGES.get(name.len()) else {
        return UNKNOWN;
    };
    let same_length = &BY_LENGTH[start..end];
    if let Some((_, spec)) = same_length
        .iter()
        .find(|(n, _)| same_bytes(n.as_bytes(), name.as_bytes()))
    {
        return *spec;
    }
    let never_forwarded = same_length
        .iter()
        .any(|(n, spec)| !spec.kind.is_forwarded() && n.eq_ignore_ascii_case(name));
    match never_forwarded {
        true => CONNECTION_STATE,
        false => UNKNOWN,
    }
}

/// The row given to a case variant of a command the gateway never forwards.
const CONNECTION_STATE: Spec = Spec {
    kind: Kind::ConnectionState,
    access: Access::Open,
    ns: Ns::Nothing,
};

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

    /// A row that reaches data must say where its namespaces are; one that does not reach
    /// data must not pretend to.
    #[test]
    fn data_rows_name_their_namespaces() {
        for (name, spec) in TABLE {
            let data = matches!(spec.access, Access::Read | Access::Write);
            assert_eq!(data, spec.ns != Ns::Nothing, "{name}");
        }
    }

    #[test]
    fn answered_kinds_are_open() {
        for (name, spec) in TABLE {
            if matches!(
                spec.kind,
                Kind::Hello | Kind::Ping | Kind::Sasl | Kind::ConnectionStatus
            ) {
                assert_eq!(spec.access, Access::Open, "{name}");
            }
        }
    }

    /// Commands that change the upstream connection itself are answered or refused by the
    /// gateway: none of them may ever be forwarded, whoever sends them, under any of the
    /// names the server knows them by.
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
            "getlasterror",
            "getPrevError",
            "getpreverror",
            "resetError",
            "reseterror",
            "forceerror",
        ] {
            let spec = lookup(name);
            assert!(!spec.kind.is_forwarded(), "{name} would be forwarded");
            // Open, so the dispatcher gives its own answer even before authentication.
            assert_eq!(spec.access, Access::Open, "{name}");
        }
    }

    /// Every spelling of a command the gateway answers or refuses itself, in any case, stays
    /// away from the upstream; a case variant of a forwarded command stays unknown (the server
    /// does not know it either).
    #[test]
    fn case_variants_of_never_forwarded_commands_are_refused() {
        let variants = |name: &str| {
            [
                name.to_ascii_uppercase(),
                name.to_ascii_lowercase(),
                name.chars()
                    .enumerate()
                    .map(|(i, c)| match i % 2 {
                        0 => c.to_ascii_uppercase(),
                        _ => c.to_ascii_lowercase(),
                    })
                    .collect(),
            ]
        };
        let mut checked = 0;
        for (name, _) in TABLE.iter().filter(|(_, s)| !s.kind.is_forwarded()) {
            for v in variants(name) {
                let found = lookup(&v);
                assert!(
                    !found.kind.is_forwarded(),
                    "{v} (a variant of {name}) would be forwarded"
                );
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} variants checked");
        assert_eq!(
            lookup("FIND"),
            UNKNOWN,
            "a variant of a forwarded command stays unknown"
        );
    }
}
