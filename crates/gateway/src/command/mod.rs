//! A request, decoded once: the typed view of a command ([`view`]), the table that says what the
//! gateway does with each command and what access it needs ([`table`]), the authorization that
//! judges a view against an identity ([`authz`]) on every namespace the request names
//! ([`namespaces`]), the commands the gateway answers itself ([`answer`]), and the facts read back from replies
//! ([`reply`]).

pub mod answer;
pub mod authz;
pub mod namespaces;
pub mod reply;
pub mod table;
pub mod view;

pub use table::{Access, Kind, Spec};
pub use view::CommandView;
