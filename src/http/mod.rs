//! Talking to partners over HTTP: the client, the destination guard that keeps requests
//! off internal networks (with the address classes it refuses), partner authentication,
//! and the transport errors they share. Bottom up: address, guard, error, auth, client.

pub mod address;
pub mod auth;
pub mod client;
pub mod error;
pub mod guard;
