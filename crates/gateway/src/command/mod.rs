//! A request, decoded once: the typed view of a command ([`view`]), the table that says what the
//! gateway does with each command and what access it needs ([`table`]), the authorization that
//! judges a view against an identity ([`authz`]), and the facts read back from replies
//! ([`reply`]).

pub mod authz;
pub mod reply;
pub mod table;
pub mod view;

pub use table::{Access, Kind, Spec};
pub use view::CommandView;
