//! Talking to partners over HTTP: the client, the destination guard that keeps requests
//! off internal networks, partner authentication, and the transport errors they share.

pub mod auth;
pub mod client;
pub mod error;
pub mod guard;
