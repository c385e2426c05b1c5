//! Replies the gateway composes itself for commands whose upstream answer would describe the
//! gateway's shared upstream account instead of the client.

use bson::{doc, Document};

use crate::identity::users::{Role, User};

/// `connectionStatus`: the client's own identity (none before authentication), in the server's
/// shape. The upstream's answer would name the gateway's upstream user and its roles.
pub fn connection_status(identity: Option<&User>) -> Document {
    let (users, roles) = match identity {
        None => (Vec::new(), Vec::new()),
        Some(user) => {
            let me = doc! { "user": user.name.as_str(), "db": user.db.as_str() };
            (vec![me], roles_of(user))
        }
    };
    doc! {
        "authInfo": { "authenticatedUsers": users, "authenticatedUserRoles": roles },
        "ok": 1.0,
    }
}

/// The user's gateway role in the server's vocabulary: per database, or the any-database role.
fn roles_of(user: &User) -> Vec<Document> {
    let (one, any) = match user.role {
        Role::Read => ("read", "readAnyDatabase"),
        Role::ReadWrite => ("readWrite", "readWriteAnyDatabase"),
        // The gateway's own roles have no server equivalent; they are named as they are.
        operator => return vec![doc! { "role": operator.name(), "db": "admin" }],
    };
    if user.databases.is_empty() {
        return vec![doc! { "role": any, "db": "admin" }];
    }
    user.databases
        .iter()
        .map(|db| doc! { "role": one, "db": db.as_str() })
        .collect()
}
