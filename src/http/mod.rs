//! Talking to partners over HTTP: the client, the destination guard that keeps requests
//! off internal networks, and partner authentication.

pub mod auth;
pub mod client;
pub mod guard;
