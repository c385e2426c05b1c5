//! Authorization: whether an identity may run a request through the shared upstream user.
//!
//! Every upstream connection is authenticated as the gateway's own (usually powerful) user, so
//! the gateway refuses, for every client, the commands that would act on that user or on the
//! deployment itself, and enforces each client's own scope. It judges only the typed view of a
//! request and the command table; it never reads request bytes itself.

use super::table::Access;
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

/// Checks that `user` may run `view`.
pub fn authorize(user: &User, view: &CommandView) -> Result<(), GatewayError> {
    let deny = |why: String| Err(GatewayError::Unauthorized(why));
    let command = view.name.escape_debug();
    let db = view.db.escape_debug();
    let access = view.access();
    match access {
        Access::Open | Access::Session => Ok(()),
        Access::Admin => deny(format!(
            "command {command} is not allowed through mongomux: it administers the deployment or the gateway's shared upstream user"
        )),
        Access::Unreviewed => deny(format!(
            "command {command} is not on mongomux's list of reviewed commands and is refused"
        )),
        Access::Read | Access::Write => {
            // listDatabases runs on admin but reveals only names; the reply is not filtered,
            // so it needs access to every database.
            let scope_ok = if view.name == "listDatabases" {
                user.databases.is_empty()
            } else {
                user.may_use(&view.db)
            };
            if !scope_ok {
                return deny(format!(
                    "not authorized on {db} to execute command {{ {command}: ... }}"
                ));
            }
            if let Some(other) = view.other_databases.iter().find(|d| !user.may_use(d)) {
                return deny(format!(
                    "not authorized on {}: the pipeline reads or writes that database",
                    other.escape_debug()
                ));
            }
            if access == Access::Write && user.role == Role::Read {
                return deny(format!(
                    "user is read-only: not authorized on {db} to execute command {{ {command}: ... }}"
                ));
            }
            Ok(())
        }
    }
}
