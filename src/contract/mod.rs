//! The partner's wire format (`contract/` at the top of the repository): the typed bodies
//! each event becomes, and how a request is signed. Nothing here does I/O.

pub mod payload;
pub mod signing;
