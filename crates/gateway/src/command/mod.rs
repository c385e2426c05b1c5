//! A request, decoded once: the typed view of a command ([`view`]), the table that says what the
//! gateway does with each command, what access it needs and where its namespaces come from
//! ([`table`]), every namespace a request names ([`namespaces`]), the authorization that judges
//! a view against an identity ([`authz`]), the replies the gateway composes itself ([`answer`]),
//! the facts read back from replies ([`reply`]), and the check that every value of a
//! request can safely reach a shared upstream connection ([`values`]).

pub mod answer;
pub mod authz;
pub mod namespaces;
pub mod reply;
pub mod table;
pub mod values;
pub mod view;

pub use table::{Access, Kind, Spec};
pub use view::CommandView;
