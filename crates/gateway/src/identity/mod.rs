//! Who a client is: the gateway's own users and their scopes ([`users`]), the server side of
//! edge authentication (SCRAM and MONGODB-AWS conversations, [`edge_auth`]), and the STS client
//! that verifies MONGODB-AWS logins ([`sts`]), which refuses replayed signed requests
//! ([`replay`]), the key of session namespacing ([`session_key`]), and the Data API's keys
//! ([`api_keys`]).

pub mod api_keys;
pub mod edge_auth;
pub mod replay;
pub mod session_key;
pub mod sts;
pub mod users;
