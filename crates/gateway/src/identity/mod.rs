//! Who a client is: the gateway's own users and their scopes ([`users`]), the server side of
//! edge authentication (SCRAM and MONGODB-AWS conversations, [`edge_auth`]), and the STS client
//! that verifies MONGODB-AWS logins ([`sts`]), which refuses replayed signed requests
//! ([`replay`]).

pub mod edge_auth;
pub mod replay;
pub mod sts;
pub mod users;
