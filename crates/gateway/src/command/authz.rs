//! Authorization: whether an identity may run a request through the shared upstream user.
//!
//! Every upstream connection is authenticated as the gateway's own (usually powerful) user, so
//! the gateway refuses, for every client, the commands that would act on that user or on the
//! deployment itself, and enforces each client's own scope on every namespace the request names
//! (not only `$db`), on system collections, on the server's own databases (`local`, `config`) and
//! on server-wide information. It judges only the typed view of a request and the command
//! table; it never reads request bytes itself. The policy is described in docs/security.md.

use super::namespaces::Namespace;
use super::table::{Access, Ns};
use super::view::CommandView;
use crate::error::GatewayError;
use crate::identity::users::{Role, User, UserStore};

/// Decides whether the client, authenticated as `identity` (or not at all), may run `view`.
pub fn check(
    users: &UserStore,
    identity: Option<&User>,
    view: &CommandView,
) -> Result<(), GatewayError> {
    match identity {
        None if view.spec.access == Access::Open => Ok(()),
        None => Err(GatewayError::Unauthorized(format!(
            "command {} requires authentication",
            view.name.escape_debug()
        ))),
        Some(user) if !users.still_valid(user) => Err(GatewayError::Unauthorized(
            "this user was removed or changed; reconnect".into(),
        )),
        Some(user) => authorize(user, view),
    }
}

/// `system.*` collections a user may read (never write) in a database of its scope: view
/// definitions and stored functions belong to the database's own data. Every other `system.*`
/// collection (`admin.system.users`, `system.roles`, `system.version`, `system.profile`, ...)
/// holds the server's own state or other clients' traces and is refused to every gateway user.
const READABLE_SYSTEM: &[&str] = &["system.views", "system.js"];

/// The server's own databases: refused unless the user's scope names them explicitly.
const SERVER_DATABASES: &[&str] = &["local", "config"];

/// Checks that `user` may run `view`.
pub fn authorize(user: &User, view: &CommandView) -> Result<(), GatewayError> {
    let deny = |why: String| Err(GatewayError::Unauthorized(why));
    let command = view.name.escape_debug();
    let access = view.access();
    match access {
        Access::Open | Access::Session => Ok(()),
        Access::Admin => deny(format!(
            "command {command} is not allowed through mongomux: it administers the deployment or the gateway's shared upstream user"
        )),
        Access::Unreviewed => deny(format!(
            "command {command} is not on mongomux's list of reviewed commands and is refused"
        )),
        Access::GatewayMonitor | Access::GatewayAdmin => operate_allowed(user, view, access),
        Access::Read | Access::Write if user.role.is_operator() => deny(format!(
            "not authorized to execute command {{ {command}: ... }}: the {} role administers the gateway and has no access to data",
            user.role.name()
        )),
        Access::Read | Access::Write => {
            // Server-wide information (serverStatus, listDatabases, ...) is not filtered by
            // database, so only a user not restricted to some databases may see it.
            if view.spec.ns == Ns::Server && !user.databases.is_empty() {
                return deny(format!(
                    "not authorized to execute command {{ {command}: ... }}: it shows the whole server and this user is limited to some databases"
                ));
            }
            if let Some(stage) = &view.server_stage {
                return deny(format!(
                    "not authorized: the pipeline stage {} shows server-wide state",
                    stage.escape_debug()
                ));
            }
            // Fail closed: a data command whose namespaces could not be found is not judged
            // as touching nothing.
            if view.namespaces.is_empty() && view.spec.ns != Ns::Server {
                return deny(format!(
                    "not authorized to execute command {{ {command}: ... }}: it names no namespace mongomux can check"
                ));
            }
            for ns in &view.namespaces {
                namespace_allowed(user, ns, access)?;
            }
            if access == Access::Write && user.role == Role::Read {
                return deny(format!(
                    "user is read-only: not authorized on {} to execute command {{ {command}: ... }}",
                    view.db.escape_debug()
                ));
            }
            Ok(())
        }
    }
}

/// Whether `user` may run one of the gateway's admin commands: only on `admin`, as the server
/// requires of its own admin commands, and only with an operator role that covers it.
fn operate_allowed(user: &User, view: &CommandView, access: Access) -> Result<(), GatewayError> {
    let command = view.name.escape_debug();
    let role_covers = match access {
        Access::GatewayAdmin => user.role == Role::GatewayAdmin,
        _ => user.role.is_operator(),
    };
    if !role_covers {
        let needed = match access {
            Access::GatewayAdmin => "gatewayAdmin",
            _ => "gatewayMonitor or gatewayAdmin",
        };
        return Err(GatewayError::Unauthorized(format!(
            "not authorized to execute command {{ {command}: ... }}: it needs the gateway role {needed}"
        )));
    }
    if view.db != "admin" {
        return Err(GatewayError::Unauthorized(format!(
            "{command} may only be run against the admin database"
        )));
    }
    Ok(())
}

/// Whether `user` may touch `ns` with `access`.
fn namespace_allowed(user: &User, ns: &Namespace, access: Access) -> Result<(), GatewayError> {
    let name = match &ns.coll {
        Some(coll) => format!("{}.{}", ns.db, coll),
        None => ns.db.clone(),
    };
    let deny = |why: &str| {
        Err(GatewayError::Unauthorized(format!(
            "not authorized on {}: {why}",
            name.escape_debug()
        )))
    };
    let db = ns.db.as_str();
    if SERVER_DATABASES.contains(&db) && !user.databases.iter().any(|d| d == db) {
        return deny("the server's own database is not reachable through mongomux");
    }
    if !user.may_use(db) {
        return deny("outside this user's databases");
    }
    match ns.coll.as_deref() {
        // Only reads of the few system collections that are the database's own data pass.
        Some(coll)
            if coll.starts_with("system.")
                && (access == Access::Write || !READABLE_SYSTEM.contains(&coll)) =>
        {
            return deny("system collections are not reachable through mongomux");
        }
        // Writing the admin database as a whole (dropDatabase) would drop the server's users.
        None if access == Access::Write && db == "admin" => {
            return deny("the admin database cannot be changed as a whole");
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
