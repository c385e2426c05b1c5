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
        let result = if view.name == "saslStart" {
            match self.shared.edge.limiter.reserve(ip) {
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    let host = self.shared.live.settings.load().aws_sts_host.clone();
                    self.auth.start(users, body, &view.db, &host)
                }
                None => Err(GatewayError::AuthenticationFailed),
            }
        } else if let Some(aws) = self.auth.aws_request(body) {
            Box::pin(self.finish_aws(users, aws)).await
        } else {
            let user = self.auth.pending_user().map(str::to_string);
            let r = self.auth.next(users, body);
            if r.is_ok() && self.auth.identity.is_some() {
                self.shared.edge.limiter.succeeded(ip);
                tracing::info!(peer = %self.peer, user = %user.as_deref().unwrap_or("").escape_debug(), "client authenticated");
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
                    self.shared.edge.limiter.failed(ip);
                    tracing::info!(peer = %self.peer, "client authentication failed");
                }
                self.replier().error(view.request_id, e, false)
            }
        }
    }

    /// The last step of MONGODB-AWS: the client's signed request is verified by STS.
    async fn finish_aws(
        &mut self,
        users: &UserStore,
        aws: Result<(i32, mongomux_auth::aws::StsRequest), GatewayError>,
    ) -> Result<Document, GatewayError> {
        let (id, request) = aws?;
        let arn = self.shared.edge.sts.verify(&request).await?;
        let r = self.auth.finish_aws(users, id, &arn);
        if r.is_ok() {
            self.shared.edge.limiter.succeeded(self.peer.ip());
            let who = self
                .auth
                .identity
                .as_ref()
                .map(|u| u.name.clone())
                .unwrap_or_default();
            tracing::info!(peer = %self.peer, principal = %who.escape_debug(), "client authenticated with MONGODB-AWS");
        }
        r
    }
}
