//! Edge authentication in a session: `saslStart` / `saslContinue` answered by the gateway, with
//! the failed-login throttle applied before any work and MONGODB-AWS verified through STS. The
//! conversation state itself lives in [`EdgeAuth`](crate::identity::edge_auth::EdgeAuth).

use bson::{Document, RawDocument};

use super::reply::Outcome;
use super::Session;
use crate::command::CommandView;
use crate::error::GatewayError;
use crate::identity::users::UserStore;

impl Session {
    /// saslStart / saslContinue at the gateway.
    pub(super) async fn sasl(
        &mut self,
        users: &UserStore,
        view: &CommandView,
        body: &RawDocument,
    ) -> Outcome {
        let ip = self.peer.ip();
        // The user a failure is counted against: the one named in the conversation, or none
        // (MONGODB-AWS, where STS says who it was only on success).
        let mut user = self.auth.pending_user().map(str::to_string);
        let result = if view.name == "saslStart" {
            let r = Box::pin(self.start_throttled(users, body, &view.db)).await;
            user = match r {
                Ok(_) => self.auth.pending_user().map(str::to_string),
                Err(_) => None,
            };
            r
        } else if let Some(aws) = self.auth.aws_request(body) {
            Box::pin(self.finish_aws(users, aws)).await
        } else {
            let r = self.auth.next(users, body);
            if r.is_ok() && self.auth.identity.is_some() {
                let name = user.as_deref().unwrap_or("");
                self.shared.edge.limiter.succeeded(ip, name);
                tracing::info!(event = "auth_succeeded", peer = %self.peer, user = %name.escape_debug(), mechanism = self.auth.mechanism(), "client authenticated");
            }
            r
        };
        match result {
            Ok(mut reply) => {
                reply.insert("ok", 1.0);
                self.replier().reply(view.request_id, &reply)
            }
            Err(e) => {
                if matches!(e, GatewayError::AuthenticationFailed) {
                    self.shared.edge.limiter.failed(ip, user.as_deref());
                    tracing::info!(
                        event = "auth_failed",
                        peer = %self.peer,
                        user = %user.as_deref().unwrap_or("").escape_debug(),
                        mechanism = self.auth.mechanism(),
                        "client authentication failed"
                    );
                }
                self.replier().error(view.request_id, e, false)
            }
        }
    }

    /// Starts a conversation (`saslStart`, or `speculativeAuthenticate` in a hello) behind the
    /// failed-login throttle: the source's slot before any work, the (source, user) slot once
    /// the user is named and before any proof can be sent.
    pub(super) async fn start_throttled(
        &mut self,
        users: &UserStore,
        body: &RawDocument,
        db: &str,
    ) -> Result<Document, GatewayError> {
        let limiter = &self.shared.edge.limiter;
        let wait = limiter
            .reserve_source(self.peer.ip())
            .ok_or(GatewayError::AuthenticationFailed)?;
        tokio::time::sleep(wait).await;
        let host = self.shared.live.settings.load().aws_sts_host.clone();
        let first = self.auth.start(users, body, db, &host)?;
        if let Some(user) = self.auth.pending_user() {
            let Some(wait) = limiter.reserve_user(self.peer.ip(), user) else {
                self.auth.abandon();
                return Err(GatewayError::AuthenticationFailed);
            };
            tokio::time::sleep(wait).await;
        }
        Ok(first)
    }

    /// The last step of MONGODB-AWS: the client's signed request is verified by STS.
    async fn finish_aws(
        &mut self,
        users: &UserStore,
        aws: Result<(i32, mongomux_auth::aws::StsRequest), GatewayError>,
    ) -> Result<Document, GatewayError> {
        let (id, request) = match aws {
            Ok(ok) => ok,
            Err(e) => {
                self.shared.edge.sts.refused();
                return Err(e);
            }
        };
        let arn = self.shared.edge.sts.verify(&request).await?;
        let r = self.auth.finish_aws(users, id, &arn);
        if r.is_ok() {
            let who = self
                .auth
                .identity
                .as_ref()
                .map(|u| u.name.clone())
                .unwrap_or_default();
            self.shared.edge.limiter.succeeded(self.peer.ip(), &who);
            tracing::info!(event = "auth_succeeded", peer = %self.peer, user = %who.escape_debug(), mechanism = "MONGODB-AWS", "client authenticated with MONGODB-AWS");
        }
        r
    }
}
