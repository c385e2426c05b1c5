//! Client authentication at the gateway: the server side of `saslStart` / `saslContinue`
//! (source/auth/auth.md, "SASL" and "SCRAM-SHA-256"), speculative authentication inside the
//! handshake, and per-identity session namespacing.
//!
//! Owns one connection's conversation state. It never reveals whether a user exists: unknown
//! users get a full conversation with stand-in parameters and fail at the proof with the same
//! AuthenticationFailed (18) as a wrong password.

use std::sync::Arc;

use bson::{doc, spec::BinarySubtype, Binary, Document, RawBsonRef, RawDocument};
use hmac::{Hmac, Mac};
use mongomux_auth::aws::{principal_arn, server_first, AwsServerFirst, StsRequest};
use mongomux_auth::{Mechanism, ScramServer};
use sha2::Sha256;

use crate::error::GatewayError;
use crate::identity::session_key::SessionKey;
use crate::identity::users::{User, UserStore};

/// A conversation in progress.
struct Conversation {
    id: i32,
    db: String,
    server: ScramServer,
    /// The proof was accepted but the client asked for the empty final round.
    verified: Option<Arc<User>>,
}

/// Authentication state of one client connection.
#[derive(Default)]
pub struct EdgeAuth {
    conversation: Option<Conversation>,
    /// A MONGODB-AWS conversation waiting for the client's signed request.
    aws: Option<(i32, AwsServerFirst)>,
    next_id: i32,
    /// The mechanism of the last conversation started, for logs.
    mechanism: &'static str,
    /// Who the client proved to be.
    pub identity: Option<Arc<User>>,
}

impl std::fmt::Debug for EdgeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeAuth")
            .field(
                "identity",
                &self.identity.as_ref().map(|u| u.qualified_name()),
            )
            .finish_non_exhaustive()
    }
}

fn payload_of(body: &RawDocument) -> Result<&[u8], GatewayError> {
    match body.get("payload") {
        Ok(Some(RawBsonRef::Binary(b))) => Ok(b.bytes),
        _ => Err(GatewayError::BadCommand(
            "SASL payload must be binary data".into(),
        )),
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

impl EdgeAuth {
    /// `saslStart` (also used for `speculativeAuthenticate`, whose `db` field replaces `$db`).
    /// Returns the reply fields without `ok`.
    pub fn start(
        &mut self,
        users: &UserStore,
        body: &RawDocument,
        db: &str,
        aws_host: &str,
    ) -> Result<Document, GatewayError> {
        let mechanism = body.get_str("mechanism").unwrap_or("");
        if mechanism == "MONGODB-AWS" {
            return self.start_aws(body, db, aws_host);
        }
        let mechanism = Mechanism::from_name(mechanism).ok_or_else(|| {
            GatewayError::MechanismUnavailable(format!(
                "mechanism {mechanism:?} is not supported by this gateway; use SCRAM-SHA-256 or SCRAM-SHA-1"
            ))
        })?;
        self.mechanism = match mechanism {
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        };
        let payload = payload_of(body)?;
        let (server, first) = ScramServer::start(mechanism, payload, |name| {
            users
                .get(db, name)
                .and_then(|u| u.credential(mechanism).cloned())
        })
        .map_err(|_| GatewayError::AuthenticationFailed)?;
        if let Some(current) = &self.identity {
            // Cursors and sessions opened so far belong to the current identity; letting the
            // connection change hands would hand them over too.
            if current.name != server.username() || current.db != db {
                return Err(GatewayError::Unauthorized(
                    "this connection is already authenticated as another user; open a new connection to change users".into(),
                ));
            }
        }
        self.next_id += 1;
        // A new conversation replaces any unfinished one, of either mechanism: a client that
        // gave up on MONGODB-AWS may fall back to SCRAM on the same connection.
        self.aws = None;
        self.conversation = Some(Conversation {
            id: self.next_id,
            db: db.to_string(),
            server,
            verified: None,
        });
        Ok(doc! { "conversationId": self.next_id, "done": false, "payload": binary(first) })
    }

    /// `saslContinue`. Returns the reply fields without `ok`; on `done: true` the identity is set.
    pub fn next(
        &mut self,
        users: &UserStore,
        body: &RawDocument,
    ) -> Result<Document, GatewayError> {
        let id = match body.get("conversationId") {
            Ok(Some(RawBsonRef::Int32(n))) => n,
            Ok(Some(RawBsonRef::Int64(n))) => n as i32,
            _ => return Err(GatewayError::AuthenticationFailed),
        };
        let mut conv = match self.conversation.take() {
            Some(c) if c.id == id => c,
            _ => return Err(GatewayError::AuthenticationFailed),
        };
        if let Some(user) = conv.verified.take() {
            // The empty final round of a client without skipEmptyExchange.
            self.identity = Some(user);
            return Ok(doc! { "conversationId": id, "done": true, "payload": binary(Vec::new()) });
        }
        let server_final = conv
            .server
            .finish(payload_of(body)?)
            .map_err(|_| GatewayError::AuthenticationFailed)?;
        let user = users
            .get(&conv.db, conv.server.username())
            .ok_or(GatewayError::AuthenticationFailed)?;
        let skip_empty = body
            .get_document("options")
            .ok()
            .and_then(|o| o.get_bool("skipEmptyExchange").ok())
            .unwrap_or(true);
        if skip_empty {
            self.identity = Some(user);
            Ok(doc! { "conversationId": id, "done": true, "payload": binary(server_final) })
        } else {
            conv.verified = Some(user);
            self.conversation = Some(conv);
            Ok(doc! { "conversationId": id, "done": false, "payload": binary(server_final) })
        }
    }

    fn start_aws(
        &mut self,
        body: &RawDocument,
        db: &str,
        host: &str,
    ) -> Result<Document, GatewayError> {
        self.mechanism = "MONGODB-AWS";
        if db != "$external" {
            return Err(GatewayError::AuthenticationFailed);
        }
        if self.identity.is_some() {
            return Err(GatewayError::Unauthorized(
                "this connection is already authenticated; open a new connection to change users"
                    .into(),
            ));
        }
        let (server, reply) = server_first(payload_of(body)?, host)
            .map_err(|_| GatewayError::AuthenticationFailed)?;
        self.next_id += 1;
        self.conversation = None;
        self.aws = Some((self.next_id, server));
        Ok(doc! { "conversationId": self.next_id, "done": false, "payload": binary(reply) })
    }

    /// For a `saslContinue` of a MONGODB-AWS conversation: the STS request to verify, after
    /// every local check. `None` when the conversation is not a MONGODB-AWS one.
    pub fn aws_request(
        &mut self,
        body: &RawDocument,
    ) -> Option<Result<(i32, StsRequest), GatewayError>> {
        let (id, server) = self.aws.take()?;
        let matches = matches!(
            body.get("conversationId"),
            Ok(Some(RawBsonRef::Int32(n))) if n == id
        ) || matches!(body.get("conversationId"), Ok(Some(RawBsonRef::Int64(n))) if n == id as i64);
        if !matches {
            return Some(Err(GatewayError::AuthenticationFailed));
        }
        Some(
            payload_of(body)
                .and_then(|p| {
                    server
                        .sts_request(p, std::time::SystemTime::now())
                        .map_err(|_| GatewayError::AuthenticationFailed)
                })
                .map(|r| (id, r)),
        )
    }

    /// Completes a MONGODB-AWS login for the ARN STS vouched for.
    pub fn finish_aws(
        &mut self,
        users: &UserStore,
        id: i32,
        arn: &str,
    ) -> Result<Document, GatewayError> {
        let principal = principal_arn(arn);
        let user = users
            .get("$external", &principal)
            .ok_or(GatewayError::AuthenticationFailed)?;
        self.identity = Some(user);
        Ok(doc! { "conversationId": id, "done": true, "payload": binary(Vec::new()) })
    }

    /// Drops any conversation in progress (the throttle refused it).
    pub fn abandon(&mut self) {
        self.conversation = None;
        self.aws = None;
    }

    /// The mechanism of the conversation started last ("" before any), for logs.
    pub fn mechanism(&self) -> &'static str {
        self.mechanism
    }

    /// The user name being authenticated, for logs (never the payload).
    pub fn pending_user(&self) -> Option<&str> {
        self.conversation.as_ref().map(|c| c.server.username())
    }
}

/// Maps a client's session UUID into the namespace of `user`, so that two identities can never
/// name the same upstream session, even when one guesses or copies the other's lsid.
///
/// A keyed MAC (HMAC-SHA256 under the deployment's [`SessionKey`]), not a plain hash: with a
/// plain hash anyone who knew a victim's UUID and name could compute the upstream id and name it
/// where ids are not rewritten. The mapping is deterministic for one key, so gateways sharing
/// `session_key` map a retried write to the same upstream session. Every part is
/// length-prefixed, so no (db, name, uuid) split can collide with another.
pub fn namespaced_session_id(key: &SessionKey, user: &User, uuid: &[u8]) -> [u8; 16] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(b"mongomux lsid v2\0");
    for part in [user.db.as_bytes(), user.name.as_bytes(), uuid] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    let digest = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::users::{Role, UserConfig};
    use bson::rawdoc;
    use mongomux_auth::{ScramClient, ScramCredential, Secret};

    fn user(db: &str, name: &str) -> Arc<User> {
        let config = UserConfig {
            name: name.into(),
            db: db.into(),
            role: Role::ReadWrite,
            databases: Vec::new(),
            scram: vec![ScramCredential::derive(
                Mechanism::ScramSha256,
                name,
                &Secret::new("pw"),
                4096,
            )],
            aws: false,
        };
        UserStore::from_config(&[config])
            .unwrap()
            .get(db, name)
            .unwrap()
    }

    #[test]
    fn namespacing_is_keyed_per_identity_and_stable_per_key() {
        let shared = SessionKey::parse(&Secret::new("00112233445566778899aabbccddeeff")).unwrap();
        let same = SessionKey::parse(&Secret::new("ABEiM0RVZneImaq7zN3u/w==")).unwrap();
        let other = SessionKey::generate();
        let (a, b) = (user("admin", "a"), user("admin", "b"));
        let uuid = [7u8; 16];
        let id = namespaced_session_id(&shared, &a, &uuid);
        assert_eq!(
            id,
            namespaced_session_id(&same, &a, &uuid),
            "gateways sharing the key agree"
        );
        assert_ne!(
            id,
            namespaced_session_id(&other, &a, &uuid),
            "the key matters"
        );
        assert_ne!(
            id,
            namespaced_session_id(&shared, &b, &uuid),
            "so does the user"
        );
        assert_ne!(id, namespaced_session_id(&shared, &a, &[8u8; 16]));
        // Moving a byte between the database and the name is another identity.
        let split = (user("admin.a", "x"), user("admin", "a.x"));
        assert_ne!(
            namespaced_session_id(&shared, &split.0, &uuid),
            namespaced_session_id(&shared, &split.1, &uuid)
        );
    }

    fn store() -> UserStore {
        let cred = ScramCredential::derive(Mechanism::ScramSha256, "u", &Secret::new("pw"), 4096);
        UserStore::from_config(&[UserConfig {
            name: "u".into(),
            db: "admin".into(),
            role: Role::Read,
            databases: vec!["a".into()],
            scram: vec![cred],
            aws: false,
        }])
        .unwrap()
    }

    fn payload_field(reply: &Document) -> Vec<u8> {
        reply.get_binary_generic("payload").unwrap().clone()
    }

    #[test]
    fn scram_after_an_abandoned_aws_conversation() {
        let users = store();
        let mut auth = EdgeAuth::default();
        let r = Binary {
            subtype: BinarySubtype::Generic,
            bytes: vec![1; 32],
        };
        let aws_first = rawdoc! { "r": r, "p": 110 }.into_bytes();
        let aws_start =
            rawdoc! { "saslStart": 1, "mechanism": "MONGODB-AWS", "payload": binary(aws_first) };
        auth.start(&users, &aws_start, "$external", "sts.amazonaws.com")
            .unwrap();
        // The client gives up on MONGODB-AWS and logs in with SCRAM on the same connection.
        let mut client = ScramClient::new(Mechanism::ScramSha256, "u", &Secret::new("pw"));
        let start = rawdoc! { "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": binary(client.client_first()) };
        let first = auth
            .start(&users, &start, "admin", "sts.amazonaws.com")
            .unwrap();
        let id = first.get_i32("conversationId").unwrap();
        let fin = client.client_final(&payload_field(&first)).unwrap();
        let cont = rawdoc! { "saslContinue": 1, "conversationId": id, "payload": binary(fin) };
        assert!(
            auth.aws_request(&cont).is_none(),
            "the AWS conversation is gone"
        );
        let done = auth.next(&users, &cont).unwrap();
        client.verify_server_final(&payload_field(&done)).unwrap();
        assert_eq!(auth.identity.as_ref().unwrap().name, "u");
    }
}
